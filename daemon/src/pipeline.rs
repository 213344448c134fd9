//! Drives jobs through the boxes after series completion. Today: `complete` ->
//! gate -> `gated` | `rejected`. Every transition is durable in the store, so after
//! a restart the worker resumes each job from its last state.

use std::sync::Arc;
use std::time::Duration;

use crate::gate;
use crate::gate::quality::ScannerHistory;
use crate::store::{JobRecord, JobState};
use crate::App;

pub async fn run(app: Arc<App>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.changed() => return,
        }
        let a = app.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || step(&a)).await {
            // One job's panic must not stop the pipeline; the job stays `complete`.
            tracing::error!(error = %e, "pipeline step panicked");
        }
    }
}

/// Works through every job waiting in `complete`, oldest first.
pub fn step(app: &App) -> usize {
    let mut jobs = match app.store.jobs() {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "cannot list jobs");
            return 0;
        }
    };
    jobs.retain(|j| j.state == JobState::Complete);
    jobs.sort_by_key(|j| j.created_at_ms);
    let mut n = 0;
    for job in jobs {
        if let Err(e) = gate_job(app, &job) {
            tracing::error!(job = %job.id, error = %e, "gate failed; will retry");
        } else {
            n += 1;
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
    let changed = app.store.record_gate(
        &job.id,
        instances.len() as u64,
        serde_json::to_value(&decision)?,
        decision.passed,
        note,
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
