//! Series assembly: instances grouped by SeriesInstanceUID, completion detection,
//! and the job each completed series becomes.
//!
//! A series is complete when (a) its headers' expected count is reached, (b) the
//! association that last added to it was released and [series].release_quiet_s passed
//! with nothing new, or (c) [series].idle_timeout_s passed with nothing new.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::SeriesConfig;
use crate::metrics::Metrics;
use crate::store::{hash_ref, now_ms, SeriesState, Store};

pub const REASON_EXPECTED: &str = "expected_count";
pub const REASON_RELEASED: &str = "association_released";
pub const REASON_IDLE: &str = "idle_timeout";

pub struct SeriesTracker {
    store: Arc<Store>,
    cfg: SeriesConfig,
    metrics: Arc<Metrics>,
    /// Series not yet complete; rebuilt from the store at start.
    open: Mutex<BTreeSet<String>>,
}

impl SeriesTracker {
    pub fn new(
        store: Arc<Store>,
        cfg: SeriesConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let open = store
            .all_series()?
            .into_iter()
            .filter(|s| s.state == SeriesState::Open)
            .map(|s| s.series_uid)
            .collect();
        Ok(SeriesTracker {
            store,
            cfg,
            metrics,
            open: Mutex::new(open),
        })
    }

    pub fn open_count(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }

    /// Called after an instance was committed (from a blocking context).
    pub fn on_stored(&self, series_uid: &str, _count: u64) {
        if let Ok(mut o) = self.open.lock() {
            o.insert(series_uid.to_string());
        }
        match self.store.series(series_uid) {
            Ok(Some(s)) if s.state == SeriesState::Open && s.expected_reached() => {
                self.complete(series_uid, REASON_EXPECTED)
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "series lookup failed"),
        }
    }

    /// The association that sent to these series was released.
    pub fn released(&self, series: Vec<String>) {
        let now = now_ms();
        let _ = tokio::task::block_in_place(|| {
            for uid in series {
                if let Err(e) = self.store.update_series(&uid, |s| {
                    if s.state == SeriesState::Open {
                        s.released_at_ms = Some(now);
                    }
                }) {
                    tracing::error!(error = %e, "cannot record association release");
                }
            }
        });
    }

    /// Completes what is due; returns how many series completed.
    pub fn tick(&self) -> usize {
        let now = now_ms();
        let quiet = self.cfg.release_quiet_s * 1000;
        let idle = self.cfg.idle_timeout_s * 1000;
        let uids: Vec<String> = self
            .open
            .lock()
            .map(|o| o.iter().cloned().collect())
            .unwrap_or_default();
        let mut n = 0;
        for uid in uids {
            let s = match self.store.series(&uid) {
                Ok(Some(s)) => s,
                Ok(None) => {
                    self.forget(&uid);
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "series lookup failed");
                    continue;
                }
            };
            if s.state == SeriesState::Complete {
                self.forget(&uid);
                continue;
            }
            let reason = if s.expected_reached() {
                Some(REASON_EXPECTED)
            } else if s
                .released_at_ms
                .is_some_and(|r| now >= r.max(s.last_received_ms) + quiet)
            {
                Some(REASON_RELEASED)
            } else if now >= s.last_received_ms + idle {
                Some(REASON_IDLE)
            } else {
                None
            };
            if let Some(r) = reason {
                self.complete(&uid, r);
                n += 1;
            }
        }
        n
    }

    fn forget(&self, uid: &str) {
        if let Ok(mut o) = self.open.lock() {
            o.remove(uid);
        }
    }

    fn complete(&self, uid: &str, reason: &str) {
        match self.store.complete_series(uid, reason) {
            Ok(Some(job)) => {
                self.metrics.inc(
                    "scanside_series_completed_total",
                    &format!("reason=\"{reason}\""),
                );
                tracing::info!(job = %job.id, series_ref = %hash_ref(uid), instances = job.instance_count, reason, "series complete; job created");
                self.forget(uid);
            }
            Ok(None) => self.forget(uid),
            Err(e) => tracing::error!(error = %e, "cannot complete series"),
        }
    }

    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => return,
            }
            let me = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || me.tick()).await {
                tracing::error!(error = %e, "series tick panicked");
            }
        }
    }
}
