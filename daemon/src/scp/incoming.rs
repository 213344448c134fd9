//! One C-STORE in flight: checks at the command, the data set streamed to a tmp file,
//! then parse, validate, commit, and the response status.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dicom_ul::pdu::PresentationContextNegotiated;

use crate::dimse::command::tags;
use crate::dimse::{status, CommandField, CommandSet};
use crate::store::{self, Commit};
use crate::App;

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

enum State {
    Writing {
        file: BufWriter<File>,
        path: PathBuf,
        failed: Option<String>,
    },
    /// Refused at the command; the data set is read and dropped.
    Refused { status: u16, comment: String },
}

/// What a successful C-STORE stored (for series assembly and the audit trail).
pub struct Received {
    pub series_uid: String,
    pub study_uid: String,
    pub patient_id: String,
    pub sop_class_uid: String,
}

impl Received {
    fn of(h: &store::InstanceHeader) -> Received {
        Received {
            series_uid: h.series_uid.clone(),
            study_uid: h.study_uid.clone(),
            patient_id: h.query.patient_id.clone(),
            sop_class_uid: h.sop_class_uid.clone(),
        }
    }
}

pub struct Incoming {
    pc_id: u8,
    rq: CommandSet,
    state: State,
    started: Instant,
}

impl Incoming {
    pub fn start(
        app: &App,
        rq: &CommandSet,
        pc_id: u8,
        pc: &PresentationContextNegotiated,
        calling: &str,
    ) -> Incoming {
        let started = Instant::now();
        let refuse = |status: u16, comment: String| Incoming {
            pc_id,
            rq: rq.clone(),
            state: State::Refused { status, comment },
            started,
        };
        let class = rq.uid(tags::AFFECTED_SOP_CLASS_UID).unwrap_or_default();
        let instance = rq.uid(tags::AFFECTED_SOP_INSTANCE_UID).unwrap_or_default();
        if class != pc.abstract_syntax.trim_end_matches('\0') {
            return refuse(
                status::SOP_CLASS_NOT_SUPPORTED,
                "SOP class differs from the presentation context".into(),
            );
        }
        if !store::valid_uid(&instance) {
            return refuse(
                status::UID_MISMATCH,
                "Affected SOP Instance UID is not a valid UID".into(),
            );
        }
        match crate::sys::disk_free(app.store.root()) {
            Ok(free) if free >= app.config.storage.min_free_bytes => {}
            Ok(free) => {
                app.metrics
                    .set_gauge("scanside_disk_free_bytes", "", free as f64);
                tracing::error!(
                    free,
                    floor = app.config.storage.min_free_bytes,
                    "disk below reserve: refusing C-STORE"
                );
                return refuse(status::OUT_OF_RESOURCES, "Storage below reserve".into());
            }
            Err(e) => {
                tracing::error!(error = %e, "statvfs failed: refusing C-STORE");
                return refuse(status::OUT_OF_RESOURCES, "Cannot check free space".into());
            }
        }
        let path = app.store.tmp_dir().join(format!(
            "{}-{}.part",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let opened = File::create(&path).map(BufWriter::new).and_then(|mut f| {
            store::write_part10_header(&mut f, &class, &instance, &pc.transfer_syntax, calling)
                .map_err(std::io::Error::other)?;
            Ok(f)
        });
        match opened {
            Ok(file) => Incoming {
                pc_id,
                rq: rq.clone(),
                state: State::Writing {
                    file,
                    path,
                    failed: None,
                },
                started,
            },
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tracing::error!(error = %e, "cannot create spool tmp file");
                refuse(status::PROCESSING_FAILURE, "Cannot write to spool".into())
            }
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        if let State::Writing { file, failed, .. } = &mut self.state {
            if failed.is_none() {
                if let Err(e) = file.write_all(bytes) {
                    *failed = Some(e.to_string());
                }
            }
        }
    }

    /// Drops a partly received instance (association aborted mid-instance).
    pub fn discard(self) {
        if let State::Writing { path, .. } = self.state {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Completes the C-STORE: returns the context id, the response, and what was
    /// stored.
    pub fn finish(self, app: &App, calling: &str) -> (u8, CommandSet, Option<Received>) {
        let (status, comment, series) = match self.state {
            State::Refused { status, comment } => (status, Some(comment), None),
            State::Writing { file, path, failed } => {
                // fsync, parsing and the index commit block: keep them off the reactor.
                let r = tokio::task::block_in_place(|| {
                    commit(app, &self.rq, file, &path, failed, calling)
                });
                if r.0 != status::SUCCESS {
                    let _ = std::fs::remove_file(&path);
                }
                r
            }
        };
        let mut rsp = CommandSet::response_to(&self.rq, CommandField::CStoreRsp, status);
        if let Some(c) = &comment {
            // ErrorComment is LO: 64 characters at most.
            let c: String = c.chars().take(64).collect();
            rsp.set_text(tags::ERROR_COMMENT, &c);
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        app.metrics.observe_store_latency(elapsed);
        if status != status::SUCCESS {
            app.metrics.inc(
                "scanside_instances_refused_total",
                &format!("status=\"{status:04X}\""),
            );
            tracing::warn!(
                status = format!("{status:04X}"),
                comment = comment.as_deref().unwrap_or(""),
                "C-STORE refused"
            );
        }
        (self.pc_id, rsp, series)
    }
}

fn commit(
    app: &App,
    rq: &CommandSet,
    file: BufWriter<File>,
    path: &std::path::Path,
    failed: Option<String>,
    calling: &str,
) -> (u16, Option<String>, Option<Received>) {
    let fail = |s: u16, c: String| (s, Some(c), None);
    if let Some(e) = failed {
        tracing::error!(error = %e, "spool write failed");
        return fail(status::PROCESSING_FAILURE, "Write to spool failed".into());
    }
    let synced = file
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all());
    if let Err(e) = synced {
        tracing::error!(error = %e, "spool fsync failed");
        return fail(status::PROCESSING_FAILURE, "Write to spool failed".into());
    }
    let header = match store::parse_header(path) {
        Ok(h) => h,
        Err(e) => {
            return fail(
                status::CANNOT_UNDERSTAND,
                format!("Data set does not parse: {e}"),
            )
        }
    };
    let class = rq.uid(tags::AFFECTED_SOP_CLASS_UID).unwrap_or_default();
    let instance = rq.uid(tags::AFFECTED_SOP_INSTANCE_UID).unwrap_or_default();
    if header.sop_instance_uid != instance {
        return fail(
            status::UID_MISMATCH,
            "SOP Instance UID in data set differs from command".into(),
        );
    }
    if header.sop_class_uid != class {
        return fail(
            status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Class UID in data set differs from command".into(),
        );
    }
    for (name, uid) in [("Study", &header.study_uid), ("Series", &header.series_uid)] {
        if !store::valid_uid(uid) {
            return fail(
                status::UID_MISMATCH,
                format!("{name} Instance UID is not a valid UID"),
            );
        }
    }
    match app.store.commit_instance(path, &header, calling) {
        Ok(Commit::Stored {
            series_count,
            reopened,
            size,
        }) => {
            app.metrics.inc("scanside_instances_stored_total", "");
            app.metrics.add("scanside_bytes_stored_total", "", size);
            if reopened {
                app.metrics.inc("scanside_series_reopened_total", "");
                tracing::warn!(series_ref = %store::hash_ref(&header.series_uid), "late instance reopened a complete series");
            }
            app.series.on_stored(&header.series_uid, series_count);
            (status::SUCCESS, None, Some(Received::of(&header)))
        }
        Ok(Commit::Duplicate) => {
            app.metrics.inc("scanside_instances_duplicate_total", "");
            (
                status::DUPLICATE_AS_SUCCESS,
                None,
                Some(Received::of(&header)),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "commit failed");
            fail(status::PROCESSING_FAILURE, "Commit to store failed".into())
        }
    }
}
