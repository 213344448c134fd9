//! The forwarder: sends every committed result to each [[upstream]] in commit
//! order, one association per batch, and marks an entry delivered only on a
//! success (or warning) status. Errors are classed:
//! - transient (connection refused/reset, timeout, association rejected, A7xx
//!   out of resources): the link is down; the whole queue waits and is retried
//!   with exponential back-off and jitter, capped, without limit;
//! - permanent (the destination accepts no presentation context for the class,
//!   A9xx/Cxxx refusals of the data): the entry is retried with back-off and,
//!   after max_tries, dead-lettered with the reason (kept, listed, never deleted).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::config::UpstreamConfig;
use crate::dimse::scu::StoreScu;
use crate::store::{now_ms, OutboxEntry, OutboxState};
use crate::App;

pub mod commitment;

/// What /readyz and the metrics say of one destination.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkState {
    pub up: Option<bool>,
    pub since_ms: u64,
    pub last_error: Option<String>,
    /// Failures in a row (the back-off exponent)
    pub failures: u32,
    pub next_attempt_ms: u64,
}

#[derive(Default)]
pub struct Links(Mutex<BTreeMap<String, LinkState>>);

impl Links {
    pub fn snapshot(&self) -> BTreeMap<String, LinkState> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn update(&self, dest: &str, f: impl FnOnce(&mut LinkState)) {
        if let Ok(mut m) = self.0.lock() {
            f(m.entry(dest.to_string()).or_default());
        }
    }
}

/// Back-off after `failures` failures in a row: initial x 2^(n-1), capped, +-25%.
pub fn backoff_ms(u: &UpstreamConfig, failures: u32, jitter: f64) -> u64 {
    let base = u.retry_initial_s * 2f64.powi(failures.saturating_sub(1).min(30) as i32);
    let capped = base.min(u.retry_max_s);
    (capped * (0.75 + 0.5 * jitter.clamp(0.0, 1.0)) * 1000.0) as u64
}

/// A cheap jitter source (no RNG crate): the clock's nanoseconds.
fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (n % 1000) as f64 / 1000.0
}

/// Runs one forwarder per destination until shutdown. The destinations are those
/// of the live configuration: SIGHUP may add, change or remove one; a forwarder
/// reads its settings each round and ends when its destination is gone (its
/// entries stay queued, and go if it comes back).
pub async fn run(app: Arc<App>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut running: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut stop = shutdown.clone();
    loop {
        running.retain(|_, h| !h.is_finished());
        for u in &app.live().upstream {
            if running.contains_key(&u.ae_title) {
                continue;
            }
            let (app, mut stop, title) = (app.clone(), shutdown.clone(), u.ae_title.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Some(u) = app
                        .live()
                        .upstream
                        .iter()
                        .find(|u| u.ae_title == title)
                        .cloned()
                    else {
                        tracing::info!(destination = %title, "upstream removed from the configuration; its forwarder stops");
                        return;
                    };
                    let a = app.clone();
                    let wait = tokio::task::spawn_blocking(move || forward_once(&a, &u))
                        .await
                        .unwrap_or_else(|_| Duration::from_secs(1));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return,
                    }
                }
            });
            running.insert(u.ae_title.clone(), task);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Retention: every sweep removes the files of jobs delivered everywhere and
/// quiet past [storage].retention, oldest first (store/retention.rs says what).
pub async fn retention(app: Arc<App>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(r) = app.config.storage.retention.as_deref() else {
        return;
    };
    let Ok(secs) = crate::config::parse_duration_s(r) else {
        return; // validated at start-up
    };
    // Sweep a few times per retention period, at least every 5 minutes.
    let every = Duration::from_millis((secs * 250).clamp(500, 300_000));
    loop {
        let a = app.clone();
        let swept = tokio::task::spawn_blocking(move || sweep(&a, secs * 1000)).await;
        if let Ok(Err(e)) = swept {
            tracing::error!(error = %format!("{e:#}"), "retention sweep failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn sweep(app: &App, retention_ms: u64) -> Result<()> {
    for job in app.store.evictable_jobs(now_ms(), retention_ms)? {
        let ev = app.store.evict_job(&job)?;
        app.metrics
            .add("scanside_retention_removed_files_total", "", ev.files);
        app.metrics
            .add("scanside_retention_removed_bytes_total", "", ev.bytes);
        tracing::info!(job = %ev.job_id, files = ev.files, bytes = ev.bytes, "retention: delivered job removed");
    }
    Ok(())
}

/// Outcome of one C-STORE.
enum Sent {
    Delivered,
    Transient(String),
    Permanent(String),
}

fn classify(status: u16) -> Sent {
    match status {
        0x0000 | 0x0001 | 0xB000 | 0xB006 | 0xB007 => Sent::Delivered,
        s if s & 0xFF00 == 0xA700 => Sent::Transient(format!("status {s:04X} (out of resources)")),
        s => Sent::Permanent(format!("status {s:04X} (refused)")),
    }
}

/// One round for one destination; returns how long to wait before the next.
fn forward_once(app: &App, u: &UpstreamConfig) -> Duration {
    let now = now_ms();
    let link = app
        .links
        .snapshot()
        .get(&u.ae_title)
        .cloned()
        .unwrap_or_default();
    if link.next_attempt_ms > now {
        return Duration::from_millis((link.next_attempt_ms - now).min(1000));
    }
    if u.storage_commitment {
        if let Err(e) = commitment::expire(app, u) {
            tracing::error!(error = %e, "cannot expire storage commitment waits");
        }
    }
    let batch = match app.store.outbox_due(&u.ae_title, now, u.batch) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the outbox");
            return Duration::from_secs(1);
        }
    };
    if batch.is_empty() {
        return Duration::from_millis(300);
    }
    let sent = send_batch(app, u, &batch);
    // Jobs whose last object just went move to `delivered` (also after a batch
    // that failed half way: what was delivered stays delivered).
    let jobs = batch.iter().map(|e| e.job_id.clone()).collect();
    match app.store.mark_delivered(&jobs) {
        Ok(moved) => {
            for id in moved {
                tracing::info!(job = %id, "job delivered upstream");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot update job states"),
    }
    match sent {
        Ok(()) => Duration::from_millis(0),
        Err(e) => {
            let reason = format!("{e:#}");
            app.links.update(&u.ae_title, |l| {
                if l.up != Some(false) {
                    l.since_ms = now_ms();
                }
                l.up = Some(false);
                l.failures += 1;
                l.next_attempt_ms = now_ms() + backoff_ms(u, l.failures, jitter());
                l.last_error = Some(reason.clone());
            });
            app.metrics.inc(
                "scanside_outbox_retries_total",
                &format!("destination=\"{}\"", u.ae_title),
            );
            tracing::warn!(destination = %u.ae_title, error = %reason, "upstream link down; will retry");
            Duration::from_millis(100)
        }
    }
}

/// Sends a batch on one association. Err means the link failed (transient): the
/// entries not yet answered stay pending as they were.
fn send_batch(app: &App, u: &UpstreamConfig, batch: &[OutboxEntry]) -> Result<()> {
    // One context per (class, syntax): each object goes as it is stored.
    let mut contexts: Vec<(String, String)> = batch
        .iter()
        .map(|e| (e.sop_class_uid.clone(), e.transfer_syntax.clone()))
        .collect();
    contexts.sort();
    contexts.dedup();
    let mut contexts = crate::dimse::syntax::proposals(&contexts);
    if u.storage_commitment {
        contexts.push((
            crate::dimse::scu::STORAGE_COMMITMENT.to_string(),
            "1.2.840.10008.1.2.1".to_string(),
        ));
    }
    let calling = u
        .calling_ae_title
        .as_deref()
        .unwrap_or(&app.config.dicom.ae_title);
    let addr = format!("{}:{}", u.host, u.port);
    match &u.tls {
        None => {
            let scu = StoreScu::connect_contexts(&addr, calling, &u.ae_title, &contexts)?;
            send_on(app, u, batch, scu)
        }
        Some(t) => {
            let cfg = crate::dimse::tls::client_config(t)
                .map_err(|(k, m)| anyhow!("upstream tls.{k}: {m}"))?;
            let name = t.server_name.as_deref().unwrap_or(&u.host);
            let scu = StoreScu::connect_tls(&addr, calling, &u.ae_title, &contexts, cfg, name)?;
            send_on(app, u, batch, scu)
        }
    }
}

/// The batch on an open association (plain or TLS).
fn send_on<S>(
    app: &App,
    u: &UpstreamConfig,
    batch: &[OutboxEntry],
    mut scu: StoreScu<S>,
) -> Result<()>
where
    S: dicom_ul::association::client::CloseSocket + std::io::Read + std::io::Write,
{
    let label = format!("destination=\"{}\"", u.ae_title);
    app.links.update(&u.ae_title, |l| {
        if l.up != Some(true) {
            l.since_ms = now_ms();
        }
        l.up = Some(true);
        l.failures = 0;
        l.next_attempt_ms = 0;
        l.last_error = None;
    });
    let txn = commitment::transaction_uid(batch[0].seq);
    let mut to_commit = Vec::new();
    let mut exported = Vec::new();
    for e in batch {
        let outcome = if let Some(ts) = scu.syntax_for(&e.sop_class_uid, &e.transfer_syntax) {
            let bytes = std::fs::read(app.store.root().join(&e.path))
                .map_err(|err| anyhow!("file {}: {err}", e.path))?;
            let data = crate::dimse::syntax::dataset_in(&bytes, &e.transfer_syntax, &ts)?;
            match scu.store_as(&e.sop_class_uid, &ts, &e.sop_instance_uid, &data, None) {
                Ok(status) => classify(status),
                Err(err) => return Err(err.context("C-STORE")),
            }
        } else {
            Sent::Permanent(format!(
                "{} accepts no presentation context for SOP class {} in {} (or, for an \
                 uncompressed object, in any uncompressed syntax)",
                u.ae_title, e.sop_class_uid, e.transfer_syntax
            ))
        };
        let mut e = e.clone();
        match outcome {
            Sent::Delivered if u.storage_commitment => {
                // Stored there; delivered once the commitment report says so.
                e.state = OutboxState::Committing;
                e.commitment_uid = Some(txn.clone());
                e.committing_since_ms = Some(now_ms());
                e.last_error = None;
                to_commit.push((e.sop_class_uid.clone(), e.sop_instance_uid.clone()));
            }
            Sent::Delivered => {
                e.state = OutboxState::Delivered;
                e.delivered_ms = Some(now_ms());
                e.last_error = None;
                app.metrics.inc("scanside_outbox_delivered_total", &label);
            }
            Sent::Transient(why) => {
                app.store.outbox_update(&e)?;
                let _ = scu.release();
                return Err(anyhow!("{} answered {why}", u.ae_title));
            }
            Sent::Permanent(why) => {
                e.tries += 1;
                e.last_error = Some(why.clone());
                if e.tries >= u.max_tries {
                    e.state = OutboxState::Dead;
                    app.metrics
                        .inc("scanside_outbox_dead_letters_total", &label);
                    tracing::error!(destination = %u.ae_title, sop_ref = %crate::store::hash_ref(&e.sop_instance_uid), reason = %why, "dead-lettered");
                } else {
                    e.next_try_ms = now_ms() + backoff_ms(u, e.tries, jitter());
                    app.metrics.inc("scanside_outbox_retries_total", &label);
                }
            }
        }
        app.store.outbox_update(&e)?;
        if matches!(e.state, OutboxState::Delivered | OutboxState::Committing) {
            exported.push(e.clone());
        }
        if e.state == OutboxState::Pending {
            // Commit order: later entries wait behind this one's back-off.
            break;
        }
    }
    audit_export(app, u, &exported);
    if !to_commit.is_empty() {
        let st = scu.request_commitment(&txn, &to_commit)?;
        if st != 0 {
            // Refused outright: those objects go again (and count as tries).
            for mut e in app.store.outbox_entries(Some(&u.ae_title))? {
                if e.commitment_uid.as_deref() == Some(txn.as_str()) {
                    commitment::refused(
                        app,
                        &mut e,
                        format!("storage commitment request refused, status {st:04X}"),
                        u.max_tries,
                    );
                    e.commitment_uid = None;
                    e.committing_since_ms = None;
                    app.store.outbox_update(&e)?;
                }
            }
        }
    }
    scu.release()?;
    Ok(())
}

/// One Export record per study of what the destination took in this batch.
fn audit_export(app: &App, u: &UpstreamConfig, sent: &[OutboxEntry]) {
    let mut studies: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for e in sent {
        let study = app
            .store
            .job(&e.job_id)
            .ok()
            .flatten()
            .map(|j| j.study_instance_uid)
            .unwrap_or_default();
        *studies
            .entry(study)
            .or_default()
            .entry(e.sop_class_uid.clone())
            .or_default() += 1;
    }
    for (study, classes) in studies {
        let patient = app.store.patient_id_of_study(&study);
        crate::audit::transfer(
            &app.audit,
            crate::audit::Transfer {
                peer: &u.ae_title,
                address: format!("{}:{}", u.host, u.port)
                    .parse::<std::net::SocketAddr>()
                    .ok()
                    .map(|a| a.ip()),
                received: false,
                export: true,
                study_uid: &study,
                patient_id: &patient,
                classes: classes.into_iter().collect(),
                ok: true,
                description: "forwarded upstream",
            },
        );
    }
}

/// Per destination: pending count, oldest pending age (s), dead letters.
pub fn queue_stats(app: &App) -> BTreeMap<String, (usize, f64, usize)> {
    let now = now_ms();
    let mut out = BTreeMap::new();
    for u in &app.live().upstream {
        let entries = app
            .store
            .outbox_entries(Some(&u.ae_title))
            .unwrap_or_default();
        let pending: Vec<&OutboxEntry> = entries
            .iter()
            .filter(|e| matches!(e.state, OutboxState::Pending | OutboxState::Committing))
            .collect();
        let oldest = pending
            .iter()
            .map(|e| now.saturating_sub(e.created_ms) as f64 / 1000.0)
            .fold(0.0, f64::max);
        let dead = entries
            .iter()
            .filter(|e| e.state == OutboxState::Dead)
            .count();
        out.insert(u.ae_title.clone(), (pending.len(), oldest, dead));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> UpstreamConfig {
        UpstreamConfig {
            ae_title: "HUB".into(),
            host: "h".into(),
            port: 1,
            calling_ae_title: None,
            batch: 10,
            max_tries: 3,
            retry_initial_s: 2.0,
            retry_max_s: 60.0,
            forward_sources: false,
            storage_commitment: false,
            commitment_timeout_s: 600,
            tls: None,
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let u = up();
        assert_eq!(backoff_ms(&u, 1, 0.5), 2000);
        assert_eq!(backoff_ms(&u, 2, 0.5), 4000);
        assert_eq!(backoff_ms(&u, 3, 0.5), 8000);
        assert_eq!(backoff_ms(&u, 20, 0.5), 60_000);
        assert_eq!(backoff_ms(&u, 1, 0.0), 1500);
        assert_eq!(backoff_ms(&u, 1, 1.0), 2500);
    }

    #[test]
    fn statuses_are_classed() {
        assert!(matches!(classify(0x0000), Sent::Delivered));
        assert!(matches!(classify(0xB000), Sent::Delivered));
        assert!(matches!(classify(0xA700), Sent::Transient(_)));
        assert!(matches!(classify(0xA900), Sent::Permanent(_)));
        assert!(matches!(classify(0xC000), Sent::Permanent(_)));
    }
}
