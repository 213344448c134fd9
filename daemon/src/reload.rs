//! SIGHUP: the configuration file is read again. A file with any error is
//! refused, the reason logged with its key, and the running configuration kept.
//! A valid one replaces the DICOM allowlist at once; other changed sections are
//! named in the log as needing a restart (they are read at start-up only).

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::App;

pub async fn on_sighup(app: Arc<App>, source: Option<PathBuf>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(path) = source.clone() else {
            tracing::warn!("SIGHUP: running on the embedded default; there is no file to reload");
            continue;
        };
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
        match loaded {
            Ok(Ok(new)) => apply(&app, &new),
            Ok(Err(errors)) => {
                app.metrics
                    .inc("scanside_config_reloads_total", "outcome=\"refused\"");
                tracing::error!(
                    "SIGHUP: configuration reload refused, the running one is kept:\n{errors}"
                );
                crate::sys::notify_status(
                    "configuration reload refused (see the log); running on the previous one",
                );
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed"),
        }
    }
}

/// Applies what can change safely and names the rest.
pub fn apply(app: &App, new: &Config) {
    let rules = Arc::new(new.peer_rules());
    let allowlist_changed = *app.peer_rules() != *rules;
    if let Ok(mut w) = app.peer_rules.write() {
        *w = rules;
    }
    let restart = restart_needed(&app.config, new);
    app.metrics
        .inc("scanside_config_reloads_total", "outcome=\"applied\"");
    tracing::info!(
        allowlist_changed,
        needs_restart = ?restart,
        "SIGHUP: configuration reloaded (dicom.allowed_peers applied)"
    );
    if !restart.is_empty() {
        tracing::warn!(sections = ?restart, "SIGHUP: these changes take effect at the next restart");
    }
}

/// The top-level sections that differ, other than the allowlist.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let strip = |c: &Config| {
        let mut v = serde_json::to_value(c).unwrap_or_default();
        if let Some(d) = v.get_mut("dicom").and_then(|d| d.as_object_mut()) {
            d.remove("allowed_peers");
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
    fn only_the_allowlist_is_live_the_rest_is_named() {
        let old = Config::embedded_default();
        let mut new = old.clone();
        new.dicom.allowed_peers.clear();
        assert!(restart_needed(&old, &new).is_empty());
        new.measure.progression_pct = 25.0;
        new.dicom.max_associations += 1;
        assert_eq!(restart_needed(&old, &new), vec!["dicom", "measure"]);
    }
}
