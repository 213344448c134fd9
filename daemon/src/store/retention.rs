//! Retention: a finished job whose every outbox entry was delivered, and that
//! has been quiet longer than [storage].retention, has its files removed (its
//! sources, results, label volume and pictures), oldest first. Its job row and
//! the patient's visit history stay, so the trend of later visits is intact.
//! Nothing undelivered is ever removed; without any upstream nothing counts as
//! delivered, so nothing is removed.
//!
//! Removal is two steps made safe against a crash: one transaction drops the
//! index rows and records the file list in `evicting`; then the files go and the
//! record is cleared. Opening the store finishes a recorded removal before the
//! spool is reconciled, so a removed instance is never indexed again.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;

use anyhow::{anyhow, Result};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{
    all_json, fsync_dir, now_ms, query, series_member_key, txn_error, JobRecord, JobState,
    OutboxEntry, OutboxState, Store,
};

/// What one removal did.
#[derive(Debug, Default, Clone, serde::Serialize, PartialEq)]
pub struct Evicted {
    pub job_id: String,
    pub files: u64,
    pub bytes: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    paths: Vec<String>,
    studies: Vec<String>,
}

fn finished(s: JobState) -> bool {
    matches!(
        s,
        JobState::Written | JobState::Queued | JobState::Delivered | JobState::Rejected
    )
}

impl Store {
    /// Jobs whose data may go at `now` with `retention_ms`, oldest first.
    pub fn evictable_jobs(&self, now: u64, retention_ms: u64) -> Result<Vec<JobRecord>> {
        let (mut delivered, mut undelivered) = (HashSet::new(), HashSet::new());
        for e in all_json::<OutboxEntry>(&self.outbox)? {
            if e.state == OutboxState::Delivered {
                delivered.insert(e.job_id);
            } else {
                undelivered.insert(e.job_id);
            }
        }
        let mut jobs: Vec<JobRecord> = all_json::<JobRecord>(&self.jobs)?
            .into_iter()
            .filter(|j| {
                let quiet_since = j.history.last().map_or(j.created_at_ms, |h| h.at_ms);
                finished(j.state)
                    && j.evicted_at_ms.is_none()
                    && !self.pending.contains_key(j.id.as_bytes()).unwrap_or(true)
                    && delivered.contains(&j.id)
                    && !undelivered.contains(&j.id)
                    && now.saturating_sub(quiet_since) > retention_ms
            })
            .collect();
        jobs.sort_by_key(|j| j.created_at_ms);
        Ok(jobs)
    }

    /// Removes one job's files and index rows (see the module comment).
    pub fn evict_job(&self, job: &JobRecord) -> Result<Evicted> {
        let instances = self.instances_of_series(&job.series_instance_uid)?;
        let result_uids: BTreeSet<String> = job
            .results
            .iter()
            .chain(job.notice_sop_instance_uid.iter())
            .chain(
                job.edits
                    .iter()
                    .flat_map(|e| [&e.sr_sop_instance_uid, &e.picture_sop_instance_uid]),
            )
            .cloned()
            .collect();
        let results: Vec<super::ResultRecord> = result_uids
            .iter()
            .filter_map(|u| self.result(u).transpose())
            .collect::<Result<_>>()?;
        let outbox_keys: Vec<Vec<u8>> = all_json::<OutboxEntry>(&self.outbox)?
            .into_iter()
            .filter(|e| e.job_id == job.id)
            .map(|e| e.key())
            .collect();
        let mut paths: Vec<String> = instances.iter().map(|i| i.path.clone()).collect();
        paths.extend(results.iter().map(|r| r.path.clone()));
        if let Some(inf) = &job.inference {
            paths.push(inf.labels_path.clone());
        }
        for r in results.iter().filter(|r| r.kind == "trend_picture") {
            for ext in ["png", "svg"] {
                paths.push(format!("pictures/{}.{ext}", r.sop_instance_uid));
            }
        }
        let qr_keys: Vec<Vec<u8>> = instances
            .iter()
            .map(|i| query::instance_key(&i.study_uid, &i.series_uid, &i.sop_instance_uid))
            .chain(
                results
                    .iter()
                    .map(|r| query::instance_key(&r.study_uid, &r.series_uid, &r.sop_instance_uid)),
            )
            .collect();
        let studies: BTreeSet<String> = instances
            .iter()
            .map(|i| i.study_uid.clone())
            .chain(results.iter().map(|r| r.study_uid.clone()))
            .collect();
        let pending = serde_json::to_vec(&Pending {
            paths: paths.clone(),
            studies: studies.into_iter().collect(),
        })?;
        let now = now_ms();
        let id = job.id.as_bytes();
        let res: Result<(), TransactionError<anyhow::Error>> = (
            &self.instances,
            &self.by_series,
            &self.series,
            &self.results,
            &self.outbox,
            &self.qr_instances,
            &self.jobs,
            &self.evicting,
        )
            .transaction(|(inst, by, ser, res, outbox, qi, jobs, evicting)| {
                let abort = |e: serde_json::Error| ConflictableTransactionError::Abort(anyhow!(e));
                for i in &instances {
                    inst.remove(i.sop_instance_uid.as_bytes())?;
                    by.remove(series_member_key(&i.series_uid, &i.sop_instance_uid))?;
                }
                ser.remove(job.series_instance_uid.as_bytes())?;
                for r in &results {
                    res.remove(r.sop_instance_uid.as_bytes())?;
                }
                for k in &outbox_keys {
                    outbox.remove(k.as_slice())?;
                }
                for k in &qr_keys {
                    qi.remove(k.as_slice())?;
                }
                if let Some(v) = jobs.get(id)? {
                    let mut j: JobRecord = serde_json::from_slice(&v).map_err(abort)?;
                    j.evicted_at_ms = Some(now);
                    jobs.insert(id, serde_json::to_vec(&j).map_err(abort)?)?;
                }
                evicting.insert(id, pending.clone())?;
                Ok(())
            });
        res.map_err(txn_error)?;
        self.sync()?;
        let (files, bytes) = self.finish_eviction(&job.id)?;
        Ok(Evicted {
            job_id: job.id.clone(),
            files,
            bytes,
        })
    }

    /// Deletes the files of a recorded removal, refreshes the query/retrieve
    /// counts of its studies, and clears the record. Safe to repeat.
    fn finish_eviction(&self, job_id: &str) -> Result<(u64, u64)> {
        let Some(v) = self.evicting.get(job_id.as_bytes())? else {
            return Ok((0, 0));
        };
        let p: Pending = serde_json::from_slice(&v)?;
        let (mut files, mut bytes) = (0, 0);
        let mut dirs = BTreeSet::new();
        for rel in &p.paths {
            let path = self.root.join(rel);
            if let Ok(m) = fs::metadata(&path) {
                bytes += m.len();
                fs::remove_file(&path)?;
                files += 1;
            }
            if let Some(d) = path.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        for d in &dirs {
            if d.is_dir() {
                fsync_dir(d)?;
            }
            // Empty series and study folders go too; the top folders (spool,
            // results, labels, pictures) stay.
            let mut cur = d.as_path();
            while cur
                .strip_prefix(&self.root)
                .is_ok_and(|r| r.components().count() >= 2)
            {
                if fs::remove_dir(cur).is_err() {
                    break;
                }
                cur = match cur.parent() {
                    Some(p) => p,
                    None => break,
                };
            }
        }
        for st in &p.studies {
            self.refresh_qr_study(st)?;
        }
        self.evicting.remove(job_id.as_bytes())?;
        self.sync()?;
        Ok((files, bytes))
    }

    /// Finishes removals a crash interrupted (called before the spool is reconciled).
    pub(super) fn finish_evictions(&self) -> Result<()> {
        let ids: Vec<String> = self
            .evicting
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect::<Result<_>>()?;
        for id in ids {
            tracing::warn!(job = %id, "finishing an interrupted retention removal");
            self.finish_eviction(&id)?;
        }
        Ok(())
    }

    /// Recomputes a study's and its series' query/retrieve rows from the instance
    /// rows left (after a removal).
    fn refresh_qr_study(&self, study: &str) -> Result<()> {
        let rows = self.qr_instances(Some(study), None)?;
        let mut per_series: BTreeMap<String, u64> = BTreeMap::new();
        for r in &rows {
            *per_series.entry(r.series_uid.clone()).or_default() += 1;
        }
        let mut modalities = BTreeSet::new();
        for s in self.qr_series(Some(study))? {
            let key = query::series_key(study, &s.series_uid);
            match per_series.get(&s.series_uid) {
                Some(&n) => {
                    modalities.insert(s.modality.clone());
                    let mut s = s;
                    s.instance_count = n;
                    self.qr_series.insert(key, serde_json::to_vec(&s)?)?;
                }
                None => {
                    self.qr_series.remove(key)?;
                }
            }
        }
        let Some(mut st) = self.qr_studies(Some(&[study.to_string()]))?.pop() else {
            return Ok(());
        };
        if rows.is_empty() {
            self.qr_studies.remove(study.as_bytes())?;
            return Ok(());
        }
        st.instance_count = rows.len() as u64;
        st.series_count = per_series.len() as u64;
        modalities.retain(|m| !m.is_empty());
        st.modalities = modalities;
        st.sop_classes = rows.iter().map(|r| r.sop_class_uid.clone()).collect();
        self.qr_studies
            .insert(study.as_bytes(), serde_json::to_vec(&st)?)?;
        Ok(())
    }
}
