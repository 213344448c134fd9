//! Drives jobs through the boxes after series completion. Today: `complete` ->
//! gate -> `gated` | `rejected`. Every transition is durable in the store, so after
//! a restart the worker resumes each job from its last state.

use std::sync::Arc;
use std::time::Duration;

use crate::gate;
use crate::gate::quality::ScannerHistory;
use crate::store::JobRecord;
use crate::App;

pub async fn run(app: Arc<App>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.changed() => return,
        }
        let a = app.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || step(&a)).await {
            // Jobs catch their own panics in step(); this catches the rest (listing).
            tracing::error!(error = %e, "pipeline step panicked");
        }
    }
}

/// Works through every job waiting in `complete`, oldest first.
pub fn step(app: &App) -> usize {
    let jobs = match app.store.pending_jobs() {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "cannot list pending jobs");
            return 0;
        }
    };
    let mut n = 0;
    for job in jobs {
        // A panic or an error in one job fails that job, visibly, and the others go on.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gate_job(app, &job)));
        let failure = match outcome {
            Ok(Ok(())) => {
                n += 1;
                continue;
            }
            Ok(Err(e)) => format!("gate could not run: {e:#}"),
            Err(_) => "gate stopped on an internal error (panic); see the log".to_string(),
        };
        tracing::error!(job = %job.id, reason = %failure, "job failed");
        app.metrics
            .inc("scanside_jobs_failed_total", "stage=\"gate\"");
        if let Err(e) = app.store.record_failure(&job.id, &failure) {
            tracing::error!(job = %job.id, error = %e, "cannot record the failure");
        }
    }
    n
}

fn gate_job(app: &App, job: &JobRecord) -> anyhow::Result<()> {
    let instances = app.store.instances_of_series(&job.series_instance_uid)?;
    let paths: Vec<_> = instances
        .iter()
        .map(|i| app.store.root().join(&i.path))
        .collect();
    let mut key = None;
    let (decision, metrics) = gate::run_series(&paths, &app.config.gate, |h| {
        let k = gate::scanner_key(h);
        let history = app.store.scanner_history(&k)?;
        key = Some((k, history.clone()));
        Ok(history)
    })?;
    // Only accepted series teach the scanner's history what normal looks like.
    if let (true, Some(m), Some((k, h))) = (decision.passed, metrics, key) {
        let mut h: ScannerHistory = h.unwrap_or_default();
        h.add(&m);
        app.store.put_scanner_history(&k, &h)?;
    }
    let codes = decision.codes();
    let note = if decision.passed {
        "gate passed".to_string()
    } else {
        format!("refused: {}", codes.join(", "))
    };
    // A refused source series gets its notice before the job records the refusal,
    // so a crash in between repeats the step and rewrites the same object.
    let returned = decision.codes().contains(&"returned_result");
    let notice = if decision.passed || returned {
        None
    } else {
        Some(write_notice(app, job, &instances, &paths, &decision)?)
    };
    let changed = app.store.record_gate(
        &job.id,
        instances.len() as u64,
        serde_json::to_value(&decision)?,
        decision.passed,
        note,
        notice,
    )?;
    if !changed {
        return Ok(());
    }
    if decision.passed {
        app.metrics.inc("scanside_gate_passed_total", "");
        tracing::info!(job = %job.id, "gate passed");
    } else {
        for c in &codes {
            app.metrics
                .inc("scanside_gate_refusals_total", &format!("code=\"{c}\""));
        }
        tracing::warn!(job = %job.id, codes = ?codes, "series refused by the gate");
    }
    Ok(())
}

fn write_notice(
    app: &App,
    job: &JobRecord,
    instances: &[crate::store::StoredInstance],
    paths: &[std::path::PathBuf],
    decision: &gate::Decision,
) -> anyhow::Result<String> {
    use crate::results::notice;
    let source = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(&paths[0])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let refused = notice::RefusedSeries {
        source: &source,
        series_uid: &job.series_instance_uid,
        series_description: &instances[0].series_description,
        instances: instances
            .iter()
            .map(|i| (i.sop_class_uid.clone(), i.sop_instance_uid.clone()))
            .collect(),
        job_id: &job.id,
    };
    let now = crate::sys::utc_now_dicom();
    let obj = notice::build(&refused, decision, (&now.0, &now.1))?;
    let sop = obj
        .meta()
        .media_storage_sop_instance_uid()
        .trim_end_matches('\0')
        .to_string();
    let tmp = app.store.tmp_dir().join(format!("notice-{}.part", job.id));
    obj.write_to_file(&tmp)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    let study = source
        .element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches('\0').to_string())
        .unwrap_or_default();
    let series = obj
        .element(dicom_dictionary_std::tags::SERIES_INSTANCE_UID)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    app.store.commit_result(
        &tmp,
        &crate::store::ResultRecord {
            sop_instance_uid: sop.clone(),
            sop_class_uid: notice::BASIC_TEXT_SR.into(),
            study_uid: study,
            series_uid: series,
            job_id: job.id.clone(),
            kind: "not_processed_notice".into(),
            path: String::new(),
            created_at_ms: crate::store::now_ms(),
        },
    )?;
    app.metrics.inc("scanside_notices_written_total", "");
    Ok(sop)
}
