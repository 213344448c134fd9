//! Drives jobs through the boxes after series completion: `complete` -> gate ->
//! `gated` | `rejected`; `gated` -> segmentation -> `inferred` -> measure ->
//! `measured` -> results -> `written`. Every transition is durable in the store,
//! so after a restart the worker resumes each job from its last state. A gated
//! job waits while no model is loaded.

mod edit;
mod report;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gate;
use crate::gate::quality::ScannerHistory;
use crate::measure;
use crate::store::{InferenceRecord, JobRecord, JobState};
use crate::volume::{self, Volume};
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

/// One round: gates every job waiting in `complete` (oldest first), then segments
/// one gated job. Gating never waits behind more than one segmentation; a series
/// gated with nothing else waiting goes straight on with its decoded volume.
pub fn step(app: &App) -> usize {
    let jobs = match app.store.pending_jobs() {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "cannot list pending jobs");
            return 0;
        }
    };
    let mut n = 0;
    let complete: Vec<&JobRecord> = jobs
        .iter()
        .filter(|j| j.state == JobState::Complete)
        .collect();
    for (i, job) in complete.iter().enumerate() {
        let last = i + 1 == complete.len();
        if let Some(pre) = guarded(app, job, "gate", || gate_job(app, job)).flatten() {
            n += 1;
            if last && app.store.pending_count() == 1 {
                n += segment_and_report(app, job, Some(pre));
                return n;
            }
        }
    }
    // Jobs past segmentation first: they are nearest to done.
    for job in jobs
        .iter()
        .filter(|j| matches!(j.state, JobState::Inferred | JobState::Measured))
    {
        n += guarded(app, job, "results", || report::run(app, &job.id, None)).unwrap_or(false)
            as usize;
    }
    if let Some(job) = jobs.iter().find(|j| j.state == JobState::Gated) {
        n += segment_and_report(app, job, None);
    }
    n
}

/// Segments a gated job and goes straight on to its results with the volume and
/// labels in memory.
fn segment_and_report(app: &App, job: &JobRecord, pre: Option<Decoded>) -> usize {
    match guarded(app, job, "segmentation", || infer_job(app, job, pre)).flatten() {
        Some(done) => {
            1 + guarded(app, job, "results", || {
                report::run(app, &job.id, Some(done))
            })
            .unwrap_or(false) as usize
        }
        None => 0,
    }
}

/// Runs one stage of one job. A panic or an error fails that job, visibly, and
/// the others go on.
fn guarded<T>(
    app: &App,
    job: &JobRecord,
    stage: &str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> Option<T> {
    let failure = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => return Some(v),
        Ok(Err(e)) => format!("{stage} could not run: {e:#}"),
        Err(_) => format!("{stage} stopped on an internal error (panic); see the log"),
    };
    tracing::error!(job = %job.id, reason = %failure, "job failed");
    app.metrics
        .inc("scanside_jobs_failed_total", &format!("stage=\"{stage}\""));
    if let Err(e) = app.store.record_failure(&job.id, &failure) {
        tracing::error!(job = %job.id, error = %e, "cannot record the failure");
    }
    None
}

/// What the gate hands on to segmentation: the decoded volume and its timings.
struct Decoded {
    volume: Volume,
    decode_ms: u64,
    gate_ms: u64,
}

/// Gates a complete job; returns the decoded volume when it passed.
fn gate_job(app: &App, job: &JobRecord) -> anyhow::Result<Option<Decoded>> {
    let t0 = Instant::now();
    let instances = app.store.instances_of_series(&job.series_instance_uid)?;
    let paths: Vec<_> = instances
        .iter()
        .map(|i| app.store.root().join(&i.path))
        .collect();
    let mut key = None;
    let outcome = gate::run_series(&paths, &app.live().gate, |h| {
        let k = gate::scanner_key(h);
        let history = app.store.scanner_history(&k)?;
        key = Some((k, history.clone()));
        Ok(history)
    })?;
    let (decision, metrics) = (outcome.decision, outcome.metrics);
    // Only accepted series teach the scanner's history what normal looks like.
    if let (true, Some(m), Some((k, h))) = (decision.passed, metrics, key) {
        let mut h: ScannerHistory = h.unwrap_or_default();
        h.add(&m);
        app.store.put_scanner_history(&k, &h)?;
    }
    let codes = decision.codes();
    let returned = codes.contains(&"returned_result");
    let note = if decision.passed {
        "gate passed".to_string()
    } else if returned && instances.iter().any(|i| i.modality == "SEG") {
        // A person's edit of our segmentation: measured again, reported verified.
        match edit::apply(app, &instances) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %format!("{e:#}"), "returned segmentation not applied");
                format!("returned segmentation not applied: {e:#}")
            }
        }
    } else {
        format!("refused: {}", codes.join(", "))
    };
    // A refused source series gets its notice before the job records the refusal,
    // so a crash in between repeats the step and rewrites the same object.
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
        return Ok(None);
    }
    let total_ms = t0.elapsed().as_millis() as u64;
    app.metrics.observe(
        "scanside_stage_seconds",
        "stage=\"gate\"",
        total_ms as f64 / 1000.0,
    );
    if decision.passed {
        app.metrics.inc("scanside_gate_passed_total", "");
        tracing::info!(job = %job.id, "gate passed");
        return Ok(outcome.volume.map(|volume| Decoded {
            volume,
            decode_ms: outcome.decode_ms,
            gate_ms: total_ms.saturating_sub(outcome.decode_ms),
        }));
    } else {
        for c in &codes {
            app.metrics
                .inc("scanside_gate_refusals_total", &format!("code=\"{c}\""));
        }
        tracing::warn!(job = %job.id, codes = ?codes, "series refused by the gate");
    }
    Ok(None)
}

/// Segments a gated job and records it `inferred`; returns the volume and the
/// labels, or None when no model is loaded (the job waits) or the job moved on.
fn infer_job(
    app: &App,
    job: &JobRecord,
    pre: Option<Decoded>,
) -> anyhow::Result<Option<report::Segmented>> {
    if !app.model.status().loaded {
        return Ok(None);
    }
    let Some(job) = app.store.job(&job.id)? else {
        return Ok(None);
    };
    if job.state != JobState::Gated {
        return Ok(None);
    }
    let pre = match pre {
        Some(p) => p,
        None => decode(app, &job)?,
    };
    let vol = &pre.volume;
    let Some(r) = app.model.with(|m| -> anyhow::Result<_> {
        let seg = m.segment(vol)?;
        Ok((
            seg,
            m.bundle.manifest.clone(),
            m.bundle.sha256.clone(),
            m.backend.name(),
        ))
    }) else {
        return Ok(None);
    };
    let (seg, manifest, sha, backend) = r?;
    let t_post = Instant::now();
    let mut labels = seg.labels;
    let g = measure::Grid {
        dims: vol.dims,
        spacing: vol.spacing,
    };
    let removed =
        measure::remove_small_components(&mut labels, g, app.config.inference.min_component_ml);
    let mut counts = vec![0u64; manifest.classes()];
    for &l in &labels {
        counts[l as usize] += 1;
    }
    let voxel_ml = vol.spacing.iter().product::<f64>() / 1000.0;
    let ml =
        |which: &[u8]| which.iter().map(|&l| counts[l as usize]).sum::<u64>() as f64 * voxel_ml;
    let mut volumes = BTreeMap::new();
    let tumour: Vec<u8> = (1..manifest.classes() as u8).collect();
    volumes.insert("whole_tumour".to_string(), ml(&tumour));
    if manifest.classes() == 4 {
        // BraTS labels: 1 necrotic core, 2 oedema, 3 enhancing tumour.
        volumes.insert("tumour_core".to_string(), ml(&[1, 3]));
        volumes.insert("enhancing".to_string(), ml(&[3]));
    }
    for l in 1..manifest.classes() as u8 {
        volumes.insert(manifest.label_name(l).replace(' ', "_"), ml(&[l]));
    }
    let nii = volume::nifti::labels_nii(
        &labels,
        &seg.grid,
        &format!("scanside {} {}", manifest.name, manifest.version),
    );
    let labels_path =
        app.store
            .commit_labels(&job.study_instance_uid, &job.series_instance_uid, &nii)?;
    let post_ms = seg.post_ms + t_post.elapsed().as_millis() as u64;
    let mut stage_ms = BTreeMap::new();
    stage_ms.insert("decode".to_string(), pre.decode_ms);
    if pre.gate_ms > 0 {
        stage_ms.insert("gate".to_string(), pre.gate_ms);
    }
    stage_ms.insert("resample".to_string(), seg.resample_ms);
    stage_ms.insert("infer".to_string(), seg.infer_ms);
    stage_ms.insert("post".to_string(), post_ms);
    let since_complete = since_complete_ms(&job);
    let over = since_complete > app.live().budget.seconds * 1000;
    let rec = InferenceRecord {
        model: format!("{} {}", manifest.name, manifest.version),
        model_sha256: sha,
        backend,
        labels_path,
        voxel_counts: counts,
        volumes_ml: volumes,
        removed_components: removed,
        stage_ms: stage_ms.clone(),
        model_grid: seg.model_grid.dims,
        patches: seg.patches,
        label_names: (0..manifest.classes() as u8)
            .map(|l| (l, manifest.label_name(l).to_string()))
            .collect(),
        model_name: manifest.name.clone(),
        model_version: manifest.version.clone(),
    };
    if !app.store.record_inference(&job.id, rec, over)? {
        return Ok(None);
    }
    // The gate's time was observed when it decided.
    for (stage, ms) in stage_ms.iter().filter(|(s, _)| s.as_str() != "gate") {
        app.metrics.observe(
            "scanside_stage_seconds",
            &format!("stage=\"{stage}\""),
            *ms as f64 / 1000.0,
        );
    }
    app.metrics.inc("scanside_jobs_inferred_total", "");
    if over {
        app.metrics.inc("scanside_jobs_over_budget_total", "");
        tracing::warn!(job = %job.id, ms = since_complete, budget_s = app.live().budget.seconds, "job over its time budget");
    }
    tracing::info!(job = %job.id, ?stage_ms, "segmented");
    Ok(Some(report::Segmented {
        volume: pre.volume,
        labels,
    }))
}

/// The budget runs from "series complete" (the job's first state after received).
fn since_complete_ms(job: &JobRecord) -> u64 {
    job.history
        .iter()
        .find(|h| h.state == JobState::Complete)
        .map(|h| crate::store::now_ms().saturating_sub(h.at_ms))
        .unwrap_or(0)
}

/// Decodes a job's series again (after a restart).
fn decode(app: &App, job: &JobRecord) -> anyhow::Result<Decoded> {
    let instances = app.store.instances_of_series(&job.series_instance_uid)?;
    if instances.len() as u64 != job.gate_instances && job.gate_instances != 0 {
        anyhow::bail!("the series changed after it was gated");
    }
    let paths: Vec<_> = instances
        .iter()
        .map(|i| app.store.root().join(&i.path))
        .collect();
    let t = Instant::now();
    let headers = paths
        .iter()
        .map(|p| gate::slice::SliceHeader::read(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
    let volume = volume::load(&refs, &headers)?;
    Ok(Decoded {
        volume,
        decode_ms: t.elapsed().as_millis() as u64,
        gate_ms: 0,
    })
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
    let series = crate::results::text(&obj, dicom_dictionary_std::tags::SERIES_INSTANCE_UID);
    report::commit(
        app,
        job,
        obj,
        notice::BASIC_TEXT_SR,
        &series,
        "not_processed_notice",
    )?;
    app.metrics.inc("scanside_notices_written_total", "");
    Ok(sop)
}
