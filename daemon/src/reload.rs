//! SIGHUP: the configuration files (all layers) are read again. A set with any
//! error is refused, the reason logged with its key, and the running
//! configuration kept. A valid one applies at once what can change safely: the
//! DICOM allowlist, the upstreams (forwarders start, change or stop; queued
//! entries stay), the gate and measure thresholds and the time budget (from the
//! next job on). Other changed sections are named in the log as needing a
//! restart (they are read at start-up only).

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::App;

/// The sections (or keys) SIGHUP applies live.
const LIVE: &[&str] = &[
    "dicom.allowed_peers",
    "upstream",
    "gate",
    "measure",
    "budget",
];

pub async fn on_sighup(app: Arc<App>, source: Vec<PathBuf>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        if source.is_empty() {
            tracing::warn!("SIGHUP: running on the embedded default; there is no file to reload");
            continue;
        }
        let paths = source.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::config::load_layers(&paths)).await;
        match loaded {
            Ok(Ok(new)) => {
                apply(&app, &new);
                crate::audit::change(
                    &app.audit,
                    crate::audit::NETWORK_CONFIGURATION,
                    true,
                    &files(&source),
                    "configuration reloaded",
                );
            }
            Ok(Err(errors)) => {
                app.metrics
                    .inc("scanside_config_reloads_total", "outcome=\"refused\"");
                tracing::error!(
                    "SIGHUP: configuration reload refused, the running one is kept:\n{errors}"
                );
                crate::audit::change(
                    &app.audit,
                    crate::audit::NETWORK_CONFIGURATION,
                    false,
                    &files(&source),
                    &format!("configuration reload refused: {errors}"),
                );
                crate::sys::notify_status(
                    "configuration reload refused (see the log); running on the previous one",
                );
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed"),
        }
    }
}

fn files(source: &[PathBuf]) -> String {
    source
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Applies what can change safely and names the rest. The TLS certificate
/// files are read again whatever changed (a renewed certificate keeps its path).
pub fn apply(app: &App, new: &Config) {
    if let Err((key, m)) = app.tls.load(new) {
        tracing::error!(
            key,
            error = m,
            "SIGHUP: certificates not reloaded; the previous ones stay"
        );
    }
    let old = app.live();
    let rules = Arc::new(new.peer_rules());
    if let Ok(mut w) = app.peer_rules.write() {
        *w = rules;
    }
    let changed: Vec<&str> = LIVE
        .iter()
        .copied()
        .filter(|k| section(&old, k) != section(new, k))
        .collect();
    if let Ok(mut w) = app.live.write() {
        *w = Arc::new(new.clone());
    }
    app.set_destinations(new);
    let restart = restart_needed(&app.config, new);
    app.metrics
        .inc("scanside_config_reloads_total", "outcome=\"applied\"");
    tracing::info!(applied = ?changed, "SIGHUP: configuration reloaded");
    if !restart.is_empty() {
        tracing::warn!(sections = ?restart, "SIGHUP: these changes take effect at the next restart");
    }
}

/// A section (or a dotted key) of a configuration, as JSON.
fn section(c: &Config, key: &str) -> serde_json::Value {
    let v = serde_json::to_value(c).unwrap_or_default();
    key.split('.')
        .try_fold(&v, |v, k| v.get(k))
        .cloned()
        .unwrap_or_default()
}

/// The top-level sections that differ from the start-up configuration, other
/// than what applies live.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let strip = |c: &Config| {
        let mut v = serde_json::to_value(c).unwrap_or_default();
        for k in LIVE {
            match k.split_once('.') {
                Some((s, key)) => {
                    if let Some(d) = v.get_mut(s).and_then(|d| d.as_object_mut()) {
                        d.remove(key);
                    }
                }
                None => {
                    if let Some(m) = v.as_object_mut() {
                        m.remove(*k);
                    }
                }
            }
        }
        v
    };
    let (a, b) = (strip(old), strip(new));
    let keys = a
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    keys.into_iter().filter(|k| a.get(k) != b.get(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sections_apply_the_rest_is_named() {
        let old = Config::embedded_default();
        let mut new = old.clone();
        new.dicom.allowed_peers.clear();
        new.measure.progression_pct = 25.0;
        new.gate.min_slices = 5;
        new.budget.seconds = 100;
        assert!(restart_needed(&old, &new).is_empty());
        new.dicom.max_associations += 1;
        new.series.idle_timeout_s += 1;
        assert_eq!(restart_needed(&old, &new), vec!["dicom", "series"]);
        assert_ne!(section(&old, "measure"), section(&new, "measure"));
        assert_eq!(section(&old, "qr"), section(&new, "qr"));
    }
}
