//! The store: received files (the source of truth) and the sled index over them.
//!
//! Only this module touches sled or the spool layout. Every commit follows
//! DESIGN.md section 4.1: tmp file, fsync, rename, fsync the directory, index row,
//! sled flush and a sync of sled's data file, and only then does the caller answer.

mod files;
pub mod query;
mod records;
mod retention;

pub use files::{
    attr_text, check_element_lengths, hash_ref, parse_header, parse_header_bytes, valid_uid,
    write_part10_header, InstanceHeader,
};
pub use files::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
pub use records::{
    EditRecord, InferenceRecord, JobRecord, JobState, MeasurementRecord, OutboxEntry, OutboxState,
    ResultRecord, ResultUids, SeriesRecord, SeriesState, StoredInstance,
};
pub use retention::Evicted;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

/// Outcome of committing one received instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Commit {
    /// Newly stored; the series now holds `series_count` instances.
    Stored {
        series_count: u64,
        reopened: bool,
        size: u64,
    },
    /// The SOP instance was stored before; the new copy was discarded.
    Duplicate,
}

pub struct Store {
    root: PathBuf,
    db: sled::Db,
    /// sled's data file and the write generation its last sync covered.
    db_file: Mutex<(File, u64)>,
    write_gen: AtomicU64,
    instances: sled::Tree,
    series: sled::Tree,
    jobs: sled::Tree,
    scanners: sled::Tree,
    results: sled::Tree,
    /// "series_uid/sop_uid" -> (): the instances of a series without a full scan.
    by_series: sled::Tree,
    /// Job ids waiting in `complete` for the pipeline.
    pending: sled::Tree,
    /// patient key -> visits ordered by date
    patients: sled::Tree,
    /// "<destination>\0<sequence, 20 digits>" -> OutboxEntry: commit order per destination
    outbox: sled::Tree,
    /// Query/retrieve index (see query.rs): study -> StudyRow,
    /// "study\0series" -> SeriesRow, "study\0series\0sop" -> InstanceRow.
    qr_studies: sled::Tree,
    qr_series: sled::Tree,
    qr_instances: sled::Tree,
    /// job id -> files of a retention removal not yet finished (retention.rs)
    evicting: sled::Tree,
    /// Upstream destinations every committed result is queued for, and those
    /// every received instance is queued for too (forward_sources).
    destinations: std::sync::RwLock<Vec<String>>,
    source_destinations: std::sync::RwLock<Vec<String>>,
}

/// What a job transition did.
enum Step {
    Unchanged { drop_pending: bool },
    Changed { keep_pending: bool },
}

/// What opening the store found and did, for the log and the status API.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct OpenReport {
    pub index_rebuilt: bool,
    pub rebuild_reason: Option<String>,
    pub files_indexed: u64,
    pub rows_without_file: u64,
    pub tmp_files_removed: u64,
}

/// sled's page cache. Its default (1 GiB) grows with the index under load and
/// would compete with the model for a Jetson's shared CPU/GPU memory.
const INDEX_CACHE_BYTES: u64 = 64 << 20;

fn open_index(dir: &Path) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(dir)
        .cache_capacity(INDEX_CACHE_BYTES)
        .open()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the store under `root`, checks the index against
    /// the spool and rebuilds it from the files when it is missing or corrupt.
    pub fn open(root: &Path) -> Result<(Store, OpenReport)> {
        fs::create_dir_all(root.join("spool"))
            .with_context(|| format!("cannot create {}", root.join("spool").display()))?;
        fs::create_dir_all(root.join("tmp"))?;
        fs::create_dir_all(root.join("results"))?;
        fs::create_dir_all(root.join("labels"))?;
        let mut report = OpenReport::default();
        report.tmp_files_removed = clear_dir(&root.join("tmp"))?;

        let index_dir = root.join("index");
        let fresh = !index_dir.join("db").exists();
        let db = match open_index(&index_dir) {
            Ok(db) => {
                if fresh {
                    report.rebuild_reason = Some("index missing".into());
                }
                db
            }
            Err(e) => {
                // A corrupt index is set aside (never deleted) and rebuilt from the spool.
                let aside = root.join(format!("index.corrupt-{}", now_ms()));
                tracing::error!(error = %e, aside = %aside.display(), "index corrupt; rebuilding from spool");
                fs::rename(&index_dir, &aside)?;
                report.rebuild_reason = Some(format!("index corrupt: {e}"));
                open_index(&index_dir).context("cannot create a new index")?
            }
        };
        let db_file = File::open(index_dir.join("db")).context("sled data file missing")?;
        let store = Store {
            instances: db.open_tree("instances")?,
            series: db.open_tree("series")?,
            jobs: db.open_tree("jobs")?,
            scanners: db.open_tree("scanners")?,
            results: db.open_tree("results")?,
            by_series: db.open_tree("by_series")?,
            pending: db.open_tree("pending")?,
            patients: db.open_tree("patients")?,
            outbox: db.open_tree("outbox")?,
            qr_studies: db.open_tree("qr_studies")?,
            qr_series: db.open_tree("qr_series")?,
            qr_instances: db.open_tree("qr_instances")?,
            evicting: db.open_tree("evicting")?,
            destinations: Default::default(),
            source_destinations: Default::default(),
            db_file: Mutex::new((db_file, 0)),
            write_gen: AtomicU64::new(0),
            db,
            root: root.to_path_buf(),
        };
        store.finish_evictions()?;
        store.reconcile(&mut report)?;
        store.backfill_secondary_indexes()?;
        if fresh && report.files_indexed == 0 {
            // A new, empty data directory: nothing was rebuilt.
            report.rebuild_reason = None;
        }
        report.index_rebuilt = report.rebuild_reason.is_some();
        store.sync()?;
        Ok((store, report))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// sled's flush writes its buffers; syncing the data file makes sure they reach
    /// the disk and not just the page cache.
    ///
    /// Group commit: a caller whose write was already covered by another thread's
    /// sync (one that started after the write) returns at once, so concurrent
    /// associations share one flush instead of queueing for one each.
    fn sync(&self) -> Result<()> {
        let my_write = self.write_gen.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self
            .db_file
            .lock()
            .map_err(|_| anyhow!("index file lock poisoned"))?;
        if synced.1 >= my_write {
            return Ok(());
        }
        let covers = self.write_gen.load(Ordering::SeqCst);
        self.db.flush().context("index flush failed")?;
        synced.0.sync_all().context("index sync failed")?;
        synced.1 = covers;
        Ok(())
    }

    /// Quick liveness probe for readiness and the watchdog.
    pub fn ping(&self) -> bool {
        self.db.get(b"__ping").is_ok()
    }

    fn spool_path(&self, h: &InstanceHeader) -> PathBuf {
        // UIDs were validated (digits and dots only) before they reach this point.
        self.root
            .join("spool")
            .join(&h.study_uid)
            .join(&h.series_uid)
            .join(format!("{}.dcm", h.sop_instance_uid))
    }

    pub fn is_stored(&self, sop_instance_uid: &str) -> Result<bool> {
        Ok(self.instances.contains_key(sop_instance_uid.as_bytes())?)
    }

    /// Moves a fully written and fsynced tmp file into the spool and indexes it.
    pub fn commit_instance(
        &self,
        tmp: &Path,
        header: &InstanceHeader,
        calling_ae: &str,
    ) -> Result<Commit> {
        for uid in [
            &header.study_uid,
            &header.series_uid,
            &header.sop_instance_uid,
        ] {
            if !valid_uid(uid) {
                return Err(anyhow!("invalid UID {uid:?}"));
            }
        }
        if self.is_stored(&header.sop_instance_uid)? {
            fs::remove_file(tmp).ok();
            return Ok(Commit::Duplicate);
        }
        let dest = self.spool_path(header);
        let dir = dest.parent().expect("spool path has a parent");
        create_dir_durable(dir, &self.root.join("spool"))?;
        fs::rename(tmp, &dest).with_context(|| format!("rename to {}", dest.display()))?;
        let size = fs::metadata(&dest)?.len();
        let rel = dest
            .strip_prefix(&self.root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let qr = query::QrEntry::new(header, rel.clone(), size, query::Origin::Source);
        let rec = StoredInstance::new(header, rel, size, calling_ae, now_ms());
        // The index row is written before the directory fsync so that one journal
        // commit carries both the rename and sled's file growth. Nothing is
        // acknowledged before both syncs below; a crash in between leaves a file
        // without a row or a row without a file, and `reconcile` mends either.
        let outcome = self.index_instance(&rec, &qr)?;
        fsync_dir(dir)?;
        self.sync()?;
        Ok(outcome)
    }

    /// Inserts the instance row and updates its series in one transaction.
    fn index_instance(&self, rec: &StoredInstance, qr: &query::QrEntry) -> Result<Commit> {
        let inst_val = serde_json::to_vec(rec)?;
        let member = series_member_key(&rec.series_uid, &rec.sop_instance_uid);
        let forward: Vec<records::OutboxEntry> = {
            let dests = self
                .source_destinations
                .read()
                .map_err(|_| anyhow!("destinations lock poisoned"))?;
            if dests.is_empty() {
                Vec::new()
            } else {
                let seq = self.db.generate_id()?;
                dests
                    .iter()
                    .map(|d| records::OutboxEntry::source(d, seq, rec))
                    .collect()
            }
        };
        let res: Result<Commit, TransactionError<anyhow::Error>> = (
            &self.instances,
            &self.series,
            &self.by_series,
            &self.pending,
            &self.qr_studies,
            &self.qr_series,
            &self.qr_instances,
            &self.outbox,
        )
            .transaction(|(inst, ser, by, pending, qs, qse, qi, outbox)| {
                if inst.get(rec.sop_instance_uid.as_bytes())?.is_some() {
                    return Ok(Commit::Duplicate);
                }
                qr_insert(qs, qse, qi, qr)?;
                // Forwarded sources are queued with the instance: both or neither.
                for e in &forward {
                    let v = serde_json::to_vec(e)
                        .map_err(|e| ConflictableTransactionError::Abort(anyhow!(e)))?;
                    outbox.insert(e.key(), v)?;
                }
                inst.insert(rec.sop_instance_uid.as_bytes(), inst_val.clone())?;
                by.insert(member.as_slice(), &[][..])?;
                let mut s = match ser.get(rec.series_uid.as_bytes())? {
                    Some(v) => serde_json::from_slice::<SeriesRecord>(&v)
                        .map_err(|e| ConflictableTransactionError::Abort(anyhow!(e)))?,
                    None => SeriesRecord::new(rec),
                };
                let reopened = s.add_instance(rec);
                if reopened {
                    // The job waits for the series to complete again, not for the gate.
                    pending.remove(JobRecord::id_for(&rec.series_uid).as_bytes())?;
                }
                let count = s.instance_count;
                let v = serde_json::to_vec(&s)
                    .map_err(|e| ConflictableTransactionError::Abort(anyhow!(e)))?;
                ser.insert(rec.series_uid.as_bytes(), v)?;
                Ok(Commit::Stored {
                    series_count: count,
                    reopened,
                    size: rec.size,
                })
            });
        res.map_err(txn_error)
    }

    pub fn instance(&self, sop_instance_uid: &str) -> Result<Option<StoredInstance>> {
        get_json(&self.instances, sop_instance_uid)
    }

    pub fn instances_of_series(&self, series_uid: &str) -> Result<Vec<StoredInstance>> {
        let prefix = series_member_key(series_uid, "");
        let mut out = Vec::new();
        for kv in self.by_series.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let sop = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(r) = self.instance(&sop)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Builds the query/retrieve index from the files (a data dir from before it
    /// existed). A file that does not parse is logged and left out of it.
    fn backfill_qr(&self) -> Result<()> {
        let sources = all_json::<StoredInstance>(&self.instances)?
            .into_iter()
            .map(|r| (r.path, query::Origin::Source));
        let results = all_json::<ResultRecord>(&self.results)?
            .into_iter()
            .map(|r| (r.path, query::Origin::Result));
        for (rel, origin) in sources.chain(results) {
            let path = self.root.join(&rel);
            let entry = parse_header(&path).and_then(|h| {
                let size = fs::metadata(&path)?.len();
                Ok(query::QrEntry::new(&h, rel.clone(), size, origin))
            });
            match entry {
                Ok(e) => {
                    let r: Result<(), TransactionError<anyhow::Error>> =
                        (&self.qr_studies, &self.qr_series, &self.qr_instances)
                            .transaction(|(a, b, c)| qr_insert(a, b, c, &e));
                    r.map_err(txn_error)?;
                }
                Err(err) => {
                    tracing::error!(path = %rel, error = %err, "not indexed for query/retrieve")
                }
            }
        }
        Ok(())
    }

    /// Study rows; with `uids`, only those studies (direct lookups).
    /// The Patient ID the query/retrieve index holds for a study ("" if none).
    pub fn patient_id_of_study(&self, study_uid: &str) -> String {
        self.qr_studies(Some(&[study_uid.to_string()]))
            .ok()
            .and_then(|mut v| v.pop())
            .map(|s| s.attrs.patient_id)
            .unwrap_or_default()
    }

    pub fn qr_studies(&self, uids: Option<&[String]>) -> Result<Vec<query::StudyRow>> {
        match uids {
            Some(u) => u
                .iter()
                .filter_map(|k| get_json(&self.qr_studies, k).transpose())
                .collect(),
            None => all_json(&self.qr_studies),
        }
    }

    /// Series rows of one study (or of all studies when None).
    pub fn qr_series(&self, study: Option<&str>) -> Result<Vec<query::SeriesRow>> {
        let prefix = study.map(|s| format!("{s}\0")).unwrap_or_default();
        self.qr_series
            .scan_prefix(prefix.as_bytes())
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    /// Instance rows under a study and series prefix (either may be None = all).
    pub fn qr_instances(
        &self,
        study: Option<&str>,
        series: Option<&str>,
    ) -> Result<Vec<query::InstanceRow>> {
        let prefix = match (study, series) {
            (Some(st), Some(se)) => format!("{st}\0{se}\0"),
            (Some(st), None) => format!("{st}\0"),
            _ => String::new(),
        };
        let rows = self
            .qr_instances
            .scan_prefix(prefix.as_bytes())
            .map(|kv| Ok(serde_json::from_slice::<query::InstanceRow>(&kv?.1)?));
        rows.filter(|r: &Result<query::InstanceRow>| match (r, series, study) {
            (Ok(r), Some(se), None) => r.series_uid == se,
            _ => true,
        })
        .collect()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Jobs with work waiting (`complete`, `gated`, `inferred`, `measured`), oldest first.
    pub fn pending_jobs(&self) -> Result<Vec<JobRecord>> {
        let mut v = Vec::new();
        for k in self.pending.iter().keys() {
            if let Some(j) = self.job(&String::from_utf8_lossy(&k?))? {
                v.push(j);
            }
        }
        v.sort_by_key(|j: &JobRecord| j.created_at_ms);
        Ok(v)
    }

    /// Fills the secondary trees from the primary ones (an index from before they
    /// existed, or one rebuilt from the spool); idempotent.
    fn backfill_secondary_indexes(&self) -> Result<()> {
        if self.by_series.is_empty() && !self.instances.is_empty() {
            for r in all_json::<StoredInstance>(&self.instances)? {
                self.by_series.insert(
                    series_member_key(&r.series_uid, &r.sop_instance_uid),
                    &[][..],
                )?;
            }
        }
        if self.qr_instances.is_empty() {
            self.backfill_qr()?;
        }
        for j in all_json::<JobRecord>(&self.jobs)? {
            if matches!(
                j.state,
                JobState::Complete | JobState::Gated | JobState::Inferred | JobState::Measured
            ) {
                self.pending.insert(j.id.as_bytes(), &[][..])?;
            }
        }
        Ok(())
    }

    pub fn series(&self, series_uid: &str) -> Result<Option<SeriesRecord>> {
        get_json(&self.series, series_uid)
    }

    pub fn all_series(&self) -> Result<Vec<SeriesRecord>> {
        all_json(&self.series)
    }

    /// Read-modify-write of one series row, durably.
    pub fn update_series<F>(&self, series_uid: &str, f: F) -> Result<Option<SeriesRecord>>
    where
        F: Fn(&mut SeriesRecord),
    {
        let res = self.series.fetch_and_update(series_uid.as_bytes(), |old| {
            let mut s: SeriesRecord = serde_json::from_slice(old?).ok()?;
            f(&mut s);
            serde_json::to_vec(&s).ok()
        })?;
        self.sync()?;
        self.series(series_uid).map(|s| res.and(s))
    }

    /// Marks a series complete and creates (or revives) its job in one transaction.
    pub fn complete_series(&self, series_uid: &str, reason: &str) -> Result<Option<JobRecord>> {
        let now = now_ms();
        let res: Result<Option<JobRecord>, TransactionError<anyhow::Error>> =
            (&self.series, &self.jobs, &self.pending).transaction(|(ser, jobs, pending)| {
                let abort = |e: serde_json::Error| ConflictableTransactionError::Abort(anyhow!(e));
                let Some(v) = ser.get(series_uid.as_bytes())? else {
                    return Ok(None);
                };
                let mut s: SeriesRecord = serde_json::from_slice(&v).map_err(abort)?;
                if s.state == SeriesState::Complete {
                    return Ok(None);
                }
                s.complete(reason, now);
                let id = JobRecord::id_for(&s.series_uid);
                let job = match jobs.get(id.as_bytes())? {
                    Some(v) => {
                        let mut j: JobRecord = serde_json::from_slice(&v).map_err(abort)?;
                        j.series_completed_again(&s, now);
                        j
                    }
                    None => JobRecord::new(&s, now),
                };
                ser.insert(
                    series_uid.as_bytes(),
                    serde_json::to_vec(&s).map_err(abort)?,
                )?;
                jobs.insert(id.as_bytes(), serde_json::to_vec(&job).map_err(abort)?)?;
                pending.insert(id.as_bytes(), &[][..])?;
                Ok(Some(job))
            });
        let job = res.map_err(txn_error)?;
        self.sync()?;
        Ok(job)
    }

    /// Stores the gate's decision and moves the job to `gated` or `rejected`, unless
    /// the job changed meanwhile (its series was reopened): then nothing happens and
    /// the job is gated again once complete.
    pub fn record_gate(
        &self,
        id: &str,
        gated_instances: u64,
        decision: serde_json::Value,
        passed: bool,
        note: String,
        notice: Option<String>,
    ) -> Result<bool> {
        let now = now_ms();
        self.transition(id, |j| {
            if j.state != JobState::Complete {
                return Step::Unchanged { drop_pending: true };
            }
            if j.instance_count != gated_instances {
                return Step::Unchanged {
                    drop_pending: false,
                };
            }
            j.state = if passed {
                JobState::Gated
            } else {
                JobState::Rejected
            };
            j.gate_instances = gated_instances;
            j.gate = Some(decision.clone());
            j.notice_sop_instance_uid = notice.clone();
            j.history.push(records::StateChange {
                state: j.state,
                at_ms: now,
                note: Some(note.clone()),
            });
            // A gated job still has work waiting (inference).
            Step::Changed {
                keep_pending: passed,
            }
        })
    }

    /// One job state change in a transaction with the pending set, then synced.
    /// Returns whether the job changed.
    fn transition(&self, id: &str, f: impl Fn(&mut JobRecord) -> Step) -> Result<bool> {
        let res: Result<bool, TransactionError<anyhow::Error>> = (&self.jobs, &self.pending)
            .transaction(|(jobs, pending)| {
                let abort = |e: serde_json::Error| ConflictableTransactionError::Abort(anyhow!(e));
                let Some(v) = jobs.get(id.as_bytes())? else {
                    return Ok(false);
                };
                let mut j: JobRecord = serde_json::from_slice(&v).map_err(abort)?;
                match f(&mut j) {
                    Step::Unchanged { drop_pending } => {
                        if drop_pending {
                            pending.remove(id.as_bytes())?;
                        }
                        Ok(false)
                    }
                    Step::Changed { keep_pending } => {
                        jobs.insert(id.as_bytes(), serde_json::to_vec(&j).map_err(abort)?)?;
                        if !keep_pending {
                            pending.remove(id.as_bytes())?;
                        }
                        Ok(true)
                    }
                }
            });
        let changed = res.map_err(txn_error)?;
        self.sync()?;
        Ok(changed)
    }

    /// Writes a job's label volume (NIfTI bytes) to labels/<study>/<series>.nii with
    /// the durability rule of received files; the same job again replaces it.
    pub fn commit_labels(&self, study_uid: &str, series_uid: &str, bytes: &[u8]) -> Result<String> {
        for uid in [study_uid, series_uid] {
            if !valid_uid(uid) {
                return Err(anyhow!("invalid UID {uid:?}"));
            }
        }
        let labels = self.root.join("labels");
        let dir = labels.join(study_uid);
        create_dir_durable(&dir, &labels)?;
        let tmp = self
            .tmp_dir()
            .join(format!("labels-{}.part", hash_ref(series_uid)));
        {
            use std::io::Write;
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        let dest = dir.join(format!("{series_uid}.nii"));
        fs::rename(&tmp, &dest)?;
        fsync_dir(&dir)?;
        Ok(dest
            .strip_prefix(&self.root)
            .expect("under root")
            .to_string_lossy()
            .into_owned())
    }

    /// Moves a gated job to `inferred` with what inference produced. Returns false
    /// (and changes nothing) when the job is no longer gated: the series reopened
    /// or the step was already done.
    pub fn record_inference(
        &self,
        id: &str,
        rec: records::InferenceRecord,
        over_budget: bool,
    ) -> Result<bool> {
        let now = now_ms();
        self.transition(id, |j| {
            if j.state != JobState::Gated {
                return Step::Unchanged {
                    drop_pending: false,
                };
            }
            j.state = JobState::Inferred;
            j.over_budget = over_budget;
            j.history.push(records::StateChange {
                state: JobState::Inferred,
                at_ms: now,
                note: Some(format!("{} on {}", rec.model, rec.backend)),
            });
            j.inference = Some(rec.clone());
            Step::Changed { keep_pending: true }
        })
    }

    /// Moves an inferred job to `measured` with its measurements, history figures
    /// and the UIDs its results will carry. False when the job is not `inferred`.
    pub fn record_measurement(&self, id: &str, rec: records::MeasurementRecord) -> Result<bool> {
        let now = now_ms();
        self.transition(id, |j| {
            if j.state != JobState::Inferred {
                return Step::Unchanged {
                    drop_pending: false,
                };
            }
            j.state = JobState::Measured;
            j.history.push(records::StateChange {
                state: JobState::Measured,
                at_ms: now,
                note: None,
            });
            j.measurement = Some(rec.clone());
            Step::Changed { keep_pending: true }
        })
    }

    /// Moves a measured job to `written` once its result objects are committed.
    pub fn record_written(
        &self,
        id: &str,
        results: Vec<String>,
        over_budget: bool,
    ) -> Result<bool> {
        let now = now_ms();
        let dests = self
            .destinations
            .read()
            .map_err(|_| anyhow!("destinations lock poisoned"))?
            .len();
        self.transition(id, |j| {
            if j.state != JobState::Measured {
                return Step::Unchanged { drop_pending: true };
            }
            j.state = JobState::Written;
            j.over_budget |= over_budget;
            j.history.push(records::StateChange {
                state: JobState::Written,
                at_ms: now,
                note: Some(format!("{} result object(s)", results.len())),
            });
            if dests > 0 {
                // commit_result queued every object; the forwarder marks delivery.
                j.state = JobState::Queued;
                j.history.push(records::StateChange {
                    state: JobState::Queued,
                    at_ms: now,
                    note: Some(format!("for {dests} upstream destination(s)")),
                });
            }
            j.results = results.clone();
            Step::Changed {
                keep_pending: false,
            }
        })
    }

    /// Moves each of `jobs` that is `queued` and has every outbox entry delivered
    /// to `delivered`. Returns the jobs that moved.
    pub fn mark_delivered(&self, jobs: &std::collections::BTreeSet<String>) -> Result<Vec<String>> {
        let mut open = std::collections::HashSet::new();
        for e in all_json::<records::OutboxEntry>(&self.outbox)? {
            if e.state != records::OutboxState::Delivered && jobs.contains(&e.job_id) {
                open.insert(e.job_id);
            }
        }
        let mut moved = Vec::new();
        let now = now_ms();
        for id in jobs.iter().filter(|j| !open.contains(*j)) {
            let changed = self.transition(id, |j| {
                if j.state != JobState::Queued {
                    return Step::Unchanged {
                        drop_pending: false,
                    };
                }
                j.state = JobState::Delivered;
                j.history.push(records::StateChange {
                    state: JobState::Delivered,
                    at_ms: now,
                    note: Some("every object acknowledged upstream".into()),
                });
                Step::Changed {
                    keep_pending: false,
                }
            })?;
            if changed {
                moved.push(id.clone());
            }
        }
        Ok(moved)
    }

    /// Appends a person's edit to a job (the same returned SEG again replaces it).
    pub fn record_edit(&self, id: &str, e: records::EditRecord) -> Result<bool> {
        self.transition(id, |j| {
            j.edits
                .retain(|o| o.seg_sop_instance_uid != e.seg_sop_instance_uid);
            j.edits.push(e.clone());
            Step::Changed {
                keep_pending: matches!(
                    j.state,
                    JobState::Complete | JobState::Gated | JobState::Inferred | JobState::Measured
                ),
            }
        })
    }

    /// A patient's visits ordered by date (empty for a new patient).
    pub fn patient_history(&self, key: &str) -> Result<Vec<crate::measure::history::Visit>> {
        Ok(get_json(&self.patients, key)?.unwrap_or_default())
    }

    /// Inserts or replaces a visit in a patient's history; returns the history.
    pub fn upsert_visit(
        &self,
        key: &str,
        v: crate::measure::history::Visit,
    ) -> Result<Vec<crate::measure::history::Visit>> {
        let out = self.patients.update_and_fetch(key.as_bytes(), |old| {
            let mut visits: Vec<crate::measure::history::Visit> = old
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            crate::measure::history::upsert(&mut visits, v.clone());
            serde_json::to_vec(&visits).ok()
        })?;
        self.sync()?;
        Ok(out
            .map(|b| serde_json::from_slice(&b))
            .transpose()?
            .unwrap_or_default())
    }

    /// Every patient key with a history.
    pub fn patient_keys(&self) -> Result<Vec<String>> {
        self.patients
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    /// Writes a derived file (a picture) to <kind>/<job>.<ext> durably.
    pub fn commit_file(&self, kind: &str, name: &str, bytes: &[u8]) -> Result<String> {
        anyhow::ensure!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'),
            "bad file name {name:?}"
        );
        let dir = self.root.join(kind);
        create_dir_durable(&dir, &self.root)?;
        let tmp = self.tmp_dir().join(format!("{kind}-{name}.part"));
        {
            use std::io::Write;
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        let dest = dir.join(name);
        fs::rename(&tmp, &dest)?;
        fsync_dir(&dir)?;
        Ok(format!("{kind}/{name}"))
    }

    /// Moves a produced object (fsynced tmp file) into results/<study>/<series>/ and
    /// indexes it; the same SOP Instance UID again replaces the file (a repeated
    /// step produces the same object). Returns the path relative to the data dir.
    pub fn commit_result(&self, tmp: &Path, rec: &ResultRecord) -> Result<String> {
        for uid in [&rec.study_uid, &rec.series_uid, &rec.sop_instance_uid] {
            if !valid_uid(uid) {
                return Err(anyhow!("invalid UID {uid:?}"));
            }
        }
        let header = parse_header(tmp).context("a produced object does not parse")?;
        let size = fs::metadata(tmp)?.len();
        let results = self.root.join("results");
        let dir = results.join(&rec.study_uid).join(&rec.series_uid);
        create_dir_durable(&dir, &results)?;
        let dest = dir.join(format!("{}.dcm", rec.sop_instance_uid));
        fs::rename(tmp, &dest)?;
        fsync_dir(&dir)?;
        let rel = dest
            .strip_prefix(&self.root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let mut rec = rec.clone();
        rec.path = rel.clone();
        // The result and its outbox entries in one transaction: a crash leaves both
        // or neither; the same object again is not queued twice.
        let dests = self
            .destinations
            .read()
            .map_err(|_| anyhow!("destinations lock poisoned"))?
            .clone();
        let qr = query::QrEntry::new(&header, rel.clone(), size, query::Origin::Result);
        let seq = self.db.generate_id()?;
        let res: Result<(), TransactionError<anyhow::Error>> = (
            &self.results,
            &self.outbox,
            &self.qr_studies,
            &self.qr_series,
            &self.qr_instances,
        )
            .transaction(|(results, outbox, qs, qse, qi)| {
                let abort = |e: serde_json::Error| ConflictableTransactionError::Abort(anyhow!(e));
                let known = results.get(rec.sop_instance_uid.as_bytes())?.is_some();
                qr_insert(qs, qse, qi, &qr)?;
                results.insert(
                    rec.sop_instance_uid.as_bytes(),
                    serde_json::to_vec(&rec).map_err(abort)?,
                )?;
                if !known {
                    for d in &dests {
                        let e = records::OutboxEntry::new(d, seq, &rec);
                        outbox.insert(e.key(), serde_json::to_vec(&e).map_err(abort)?)?;
                    }
                }
                Ok(())
            });
        res.map_err(txn_error)?;
        self.sync()?;
        Ok(rel)
    }

    /// Sets the upstream destinations new results (and, for `sources`, new
    /// received instances) are queued for.
    pub fn set_destinations(&self, results: Vec<String>, sources: Vec<String>) {
        if let Ok(mut w) = self.destinations.write() {
            *w = results;
        }
        if let Ok(mut w) = self.source_destinations.write() {
            *w = sources;
        }
    }

    /// A destination's undelivered entries in commit order, up to `limit`, that are
    /// due at `now` (the first one not yet due stops the list: order is kept).
    pub fn outbox_due(
        &self,
        dest: &str,
        now: u64,
        limit: usize,
    ) -> Result<Vec<records::OutboxEntry>> {
        let mut out = Vec::new();
        for kv in self.outbox.scan_prefix(format!("{dest}\0").as_bytes()) {
            let e: records::OutboxEntry = serde_json::from_slice(&kv?.1)?;
            if e.state != records::OutboxState::Pending {
                continue;
            }
            if e.next_try_ms > now || out.len() >= limit {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Every entry of a destination (or all when None), in commit order.
    pub fn outbox_entries(&self, dest: Option<&str>) -> Result<Vec<records::OutboxEntry>> {
        let prefix = dest.map(|d| format!("{d}\0")).unwrap_or_default();
        self.outbox
            .scan_prefix(prefix.as_bytes())
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    /// Stores an entry's new state (delivered, retried, dead-lettered).
    pub fn outbox_update(&self, e: &records::OutboxEntry) -> Result<()> {
        self.outbox.insert(e.key(), serde_json::to_vec(e)?)?;
        self.sync()
    }

    pub fn result(&self, sop_instance_uid: &str) -> Result<Option<ResultRecord>> {
        get_json(&self.results, sop_instance_uid)
    }

    /// A scanner's running image-quality statistics (opaque JSON to the store).
    pub fn scanner_history<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        get_json(&self.scanners, key)
    }

    pub fn put_scanner_history<T: serde::Serialize>(&self, key: &str, v: &T) -> Result<()> {
        self.scanners
            .insert(key.as_bytes(), serde_json::to_vec(v)?)?;
        self.sync()
    }

    /// Marks a job `failed` with the reason (an internal error, never silent).
    pub fn record_failure(&self, id: &str, reason: &str) -> Result<()> {
        let now = now_ms();
        self.jobs.fetch_and_update(id.as_bytes(), |old| {
            let mut j: JobRecord = serde_json::from_slice(old?).ok()?;
            j.state = JobState::Failed;
            j.history.push(records::StateChange {
                state: JobState::Failed,
                at_ms: now,
                note: Some(reason.to_string()),
            });
            serde_json::to_vec(&j).ok()
        })?;
        self.pending.remove(id.as_bytes())?;
        self.sync()
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        get_json(&self.jobs, id)
    }

    pub fn jobs(&self) -> Result<Vec<JobRecord>> {
        let mut v: Vec<JobRecord> = all_json(&self.jobs)?;
        v.sort_by_key(|j| std::cmp::Reverse(j.created_at_ms));
        Ok(v)
    }

    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    /// Makes the index agree with the spool: index files that have no row (a crash
    /// between rename and commit, or a rebuild), drop rows whose file is gone.
    fn reconcile(&self, report: &mut OpenReport) -> Result<()> {
        let spool = self.root.join("spool");
        let mut on_disk = std::collections::HashSet::new();
        for path in walk_dcm(&spool)? {
            let Some(sop) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            on_disk.insert(sop.clone());
            if self.instances.contains_key(sop.as_bytes())? {
                continue;
            }
            match parse_header(&path) {
                Ok(h) if h.sop_instance_uid == sop => {
                    let size = fs::metadata(&path)?.len();
                    let rel = path
                        .strip_prefix(&self.root)
                        .expect("under root")
                        .to_string_lossy()
                        .into_owned();
                    let received = fs::metadata(&path)?
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or_else(now_ms);
                    let qr = query::QrEntry::new(&h, rel.clone(), size, query::Origin::Source);
                    let rec = StoredInstance::new(&h, rel, size, "", received);
                    self.index_instance(&rec, &qr)?;
                    report.files_indexed += 1;
                }
                Ok(_) | Err(_) => {
                    tracing::error!(path = %path.display(), "spool file unreadable or misnamed; left in place");
                }
            }
        }
        let stale: Vec<_> = self
            .instances
            .iter()
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !on_disk.contains(&*String::from_utf8_lossy(k)))
            .collect();
        for k in stale {
            if let Some(r) = self.instance(&String::from_utf8_lossy(&k))? {
                self.by_series
                    .remove(series_member_key(&r.series_uid, &r.sop_instance_uid))?;
            }
            tracing::error!(sop_ref = %files::hash_ref(&String::from_utf8_lossy(&k)), "index row without spool file removed");
            self.instances.remove(k)?;
            report.rows_without_file += 1;
        }
        if report.files_indexed > 0 && report.rebuild_reason.is_none() {
            report.rebuild_reason = Some(format!(
                "{} spool file(s) had no index row",
                report.files_indexed
            ));
        }
        Ok(())
    }
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<anyhow::Error>>;

/// Adds (or, for the same SOP instance again, refreshes) an instance in the
/// query/retrieve index and keeps the study and series counts true.
fn qr_insert(
    studies: &sled::transaction::TransactionalTree,
    series: &sled::transaction::TransactionalTree,
    instances: &sled::transaction::TransactionalTree,
    e: &query::QrEntry,
) -> TxResult<()> {
    let abort = |e: serde_json::Error| ConflictableTransactionError::Abort(anyhow!(e));
    let i = &e.instance;
    let ikey = query::instance_key(&i.study_uid, &i.series_uid, &i.sop_instance_uid);
    let new_instance = instances.get(&ikey)?.is_none();
    instances.insert(ikey, serde_json::to_vec(i).map_err(abort)?)?;
    if !new_instance {
        return Ok(());
    }
    let skey = query::series_key(&i.study_uid, &i.series_uid);
    let (mut srow, new_series) = match series.get(&skey)? {
        Some(v) => (
            serde_json::from_slice::<query::SeriesRow>(&v).map_err(abort)?,
            false,
        ),
        None => (e.series_row(), true),
    };
    srow.instance_count += 1;
    series.insert(skey, serde_json::to_vec(&srow).map_err(abort)?)?;
    let mut st = match studies.get(i.study_uid.as_bytes())? {
        Some(v) => serde_json::from_slice::<query::StudyRow>(&v).map_err(abort)?,
        None => e.study_row(),
    };
    st.instance_count += 1;
    st.series_count += u64::from(new_series);
    if !e.modality.is_empty() {
        st.modalities.insert(e.modality.clone());
    }
    st.sop_classes.insert(i.sop_class_uid.clone());
    studies.insert(
        i.study_uid.as_bytes(),
        serde_json::to_vec(&st).map_err(abort)?,
    )?;
    Ok(())
}

fn series_member_key(series_uid: &str, sop_uid: &str) -> Vec<u8> {
    format!("{series_uid}/{sop_uid}").into_bytes()
}

fn get_json<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>> {
    match tree.get(key.as_bytes())? {
        Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        None => Ok(None),
    }
}

fn all_json<T: serde::de::DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>> {
    tree.iter()
        .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
        .collect()
}

fn txn_error(e: TransactionError<anyhow::Error>) -> anyhow::Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => anyhow!(e),
    }
}

fn clear_dir(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_file() {
            fs::remove_file(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

fn walk_dcm(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "dcm") {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Creates `dir` and fsyncs each parent whose entry changed, up to `stop`.
fn create_dir_durable(dir: &Path, stop: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().expect("dir has a parent");
    if parent != stop {
        create_dir_durable(parent, stop)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => fsync_dir(parent),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(anyhow!(e).context(format!("mkdir {}", dir.display()))),
    }
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}
