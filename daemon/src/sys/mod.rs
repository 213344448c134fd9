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

/// The listening DICOM socket systemd passed (socket activation, sd_listen_fds:
/// LISTEN_PID is this process, LISTEN_FDS = 1, the socket is fd 3), if any. The
/// variables are cleared so that nothing started from here inherits them.
pub fn activated_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
    use anyhow::{bail, Context};
    let (Ok(pid), Ok(fds)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let n: u32 = fds.trim().parse().context("LISTEN_FDS is not a number")?;
    match n {
        0 => return Ok(None),
        1 => {}
        _ => bail!("socket activation passed {n} sockets; scanside takes one (the DICOM port)"),
    }
    // SAFETY: by the sd_listen_fds protocol fd 3 is ours, open, and not used by
    // anything else in this process; it is taken exactly once (the variables are
    // cleared above).
    let l = unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(3) };
    let addr = l
        .local_addr()
        .context("the socket systemd passed is not a TCP listener")?;
    l.set_nonblocking(true)?;
    tracing::info!(%addr, "DICOM listener passed by systemd (socket activation)");
    Ok(Some(l))
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

/// The current UTC date and time as DICOM DA and TM strings.
pub fn utc_now_dicom() -> (String, String) {
    dicom_datetime(now_ms())
}

/// The current UTC time as RFC 3339 with milliseconds (syslog, audit records).
pub fn rfc3339_now() -> String {
    let ms = now_ms();
    let (d, t) = dicom_datetime(ms);
    format!(
        "{}-{}-{}T{}:{}:{}.{:03}Z",
        &d[..4],
        &d[4..6],
        &d[6..],
        &t[..2],
        &t[2..4],
        &t[4..],
        ms % 1000
    )
}

/// A time (ms since the epoch, UTC) as DICOM DA and TM strings.
pub fn dicom_datetime(ms: u64) -> (String, String) {
    let secs = ms / 1000;
    let days = (secs / 86400) as i64;
    let t = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", t / 3600, (t / 60) % 60, t % 60),
    )
}
