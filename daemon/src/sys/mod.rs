//! Operating-system side: free disk space, systemd notification, the watchdog.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::store::now_ms;

/// Bytes available to unprivileged writers on the file system holding `path`.
pub fn disk_free(path: &Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Updated by the accept loop; the watchdog pets systemd only while it is fresh.
#[derive(Default)]
pub struct Heartbeat(AtomicU64);

impl Heartbeat {
    pub fn beat(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }
    pub fn age_ms(&self) -> u64 {
        now_ms().saturating_sub(self.0.load(Ordering::Relaxed))
    }
}

/// sd_notify, a no-op outside systemd (NOTIFY_SOCKET unset).
pub fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn notify_status(text: &str) {
    notify(&[sd_notify::NotifyState::Status(text)]);
}

/// Sends WATCHDOG=1 at half the configured interval, but only while the accept
/// loop beats and the store answers: a wedged daemon gets restarted by systemd.
pub async fn watchdog(app: Arc<crate::App>) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    let stale_ms = (usec / 1000).max(3000);
    tracing::info!(interval_ms = usec / 1000, "systemd watchdog enabled");
    loop {
        tokio::time::sleep(period).await;
        let a = app.clone();
        let store_ok = tokio::task::spawn_blocking(move || a.store.ping())
            .await
            .unwrap_or(false);
        if store_ok && app.heartbeat.age_ms() < stale_ms {
            notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(
                store_ok,
                heartbeat_age_ms = app.heartbeat.age_ms(),
                "health check failed: withholding WATCHDOG=1"
            );
        }
    }
}
