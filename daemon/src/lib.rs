//! scanside: an edge appliance daemon beside an MRI scanner.
//!
//! One module per box of the flow in DESIGN.md: `scp` receives, `store` keeps,
//! `series` assembles, `http`, `audit` and `sys` are the side channels. `dimse` is the
//! message layer that the SCP (and later Q/R and the forwarder) share.

pub mod audit;
pub mod config;
pub mod demo;
pub mod dimse;
pub mod fuzz_targets;
pub mod gate;
pub mod http;
pub mod infer;
pub mod inspect;
pub mod measure;
pub mod metrics;
pub mod ota;
pub mod outbox;
pub mod pipeline;
pub mod qr;
pub mod reload;
pub mod results;
pub mod scp;
pub mod series;
pub mod store;
pub mod sys;
pub mod volume;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use config::{Config, PeerRule};
use metrics::Metrics;
use series::SeriesTracker;
use store::Store;

/// Everything the boxes share.
pub struct App {
    /// The configuration the daemon started with (what needs a restart to change).
    pub config: Config,
    /// The configuration in force: SIGHUP replaces it (reload.rs). The upstreams,
    /// the gate and measure thresholds and the budget are read from here.
    pub live: std::sync::RwLock<Arc<Config>>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub series: Arc<SeriesTracker>,
    /// The DICOM allowlist; SIGHUP replaces it (reload.rs).
    pub peer_rules: std::sync::RwLock<Arc<Vec<PeerRule>>>,
    pub heartbeat: sys::Heartbeat,
    pub active_associations: Arc<std::sync::atomic::AtomicUsize>,
    pub model: Arc<infer::ModelSlot>,
    /// Per upstream destination: up/down, since, last error, back-off.
    pub links: outbox::Links,
    /// Our TLS certificates (DICOM TLS listener, HTTPS); SIGHUP reloads them.
    pub tls: dimse::tls::ServerTls,
    pub audit: Arc<audit::Audit>,
    /// Whether the audit receiver took the last records, and its last error.
    pub audit_link: std::sync::Mutex<audit::Link>,
}

impl App {
    pub fn live(&self) -> Arc<Config> {
        self.live
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Tells the store which destinations each new result (and source) goes to.
    pub fn set_destinations(&self, cfg: &Config) {
        self.store.set_destinations(
            cfg.upstream.iter().map(|u| u.ae_title.clone()).collect(),
            cfg.upstream
                .iter()
                .filter(|u| u.forward_sources)
                .map(|u| u.ae_title.clone())
                .collect(),
        );
    }

    /// The allowlist in force now (SIGHUP may have replaced it).
    pub fn peer_rules(&self) -> Arc<Vec<PeerRule>> {
        self.peer_rules
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn engine_cache_dir(&self) -> std::path::PathBuf {
        self.config
            .inference
            .engine_cache_dir
            .clone()
            .unwrap_or_else(|| self.store.root().join("engine-cache"))
    }

    /// Gauges computed at scrape time.
    pub fn refresh_gauges(&self) {
        if let Ok(free) = sys::disk_free(self.store.root()) {
            self.metrics
                .set_gauge("scanside_disk_free_bytes", "", free as f64);
            let refusing = free < self.config.storage.min_free_bytes;
            self.metrics
                .set_gauge("scanside_disk_refusing", "", f64::from(u8::from(refusing)));
        }
        self.metrics.set_gauge(
            "scanside_associations_active",
            "",
            self.active_associations
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
        let loaded = self.model.status().loaded;
        self.metrics
            .set_gauge("scanside_model_loaded", "", if loaded { 1.0 } else { 0.0 });
        let links = self.links.snapshot();
        for (dest, (pending, oldest, dead)) in outbox::queue_stats(self) {
            let l = format!("destination=\"{dest}\"");
            self.metrics
                .set_gauge("scanside_outbox_pending", &l, pending as f64);
            self.metrics
                .set_gauge("scanside_outbox_oldest_pending_seconds", &l, oldest);
            self.metrics
                .set_gauge("scanside_outbox_dead_letters", &l, dead as f64);
            let up = links.get(&dest).and_then(|s| s.up).unwrap_or(false);
            self.metrics
                .set_gauge("scanside_upstream_up", &l, if up { 1.0 } else { 0.0 });
        }
    }
}

/// How long SIGTERM waits for open associations before exiting anyway.
const DRAIN: Duration = Duration::from_secs(10);

/// The daemon: returns after SIGTERM/SIGINT once open associations drained.
/// `source` is the layered configuration files SIGHUP reloads (none: the embedded default).
pub async fn run(config: Config, source: Vec<std::path::PathBuf>) -> Result<()> {
    let data_dir = config.storage.data_dir.clone();
    // Opening can take long (an index rebuilt from a large spool, an interrupted
    // eviction finished): systemd is told to wait, in steps, until READY=1, so a
    // long open is not killed by TimeoutStartSec and restarted forever.
    let extend = tokio::spawn(async {
        loop {
            sys::notify(&[sd_notify::NotifyState::ExtendTimeoutUsec(30_000_000)]);
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });
    let opened = tokio::task::spawn_blocking(move || Store::open(&data_dir)).await;
    extend.abort();
    let (store, report) = opened?.with_context(|| {
        format!(
            "cannot open the store in {}",
            config.storage.data_dir.display()
        )
    })?;
    if report.index_rebuilt {
        tracing::warn!(?report, "index rebuilt from the spool");
    }
    let store = Arc::new(store);
    let audit = Arc::new(
        audit::Audit::open(store.root(), &config.dicom.ae_title)
            .context("cannot open the audit trail")?,
    );
    let tls = dimse::tls::ServerTls::default();
    tls.load(&config)
        .map_err(|(k, m)| anyhow::anyhow!("{k}: {m}"))?;
    let metrics = Arc::new(Metrics::default());
    let series = Arc::new(SeriesTracker::new(
        store.clone(),
        config.series.clone(),
        metrics.clone(),
    )?);
    let app = Arc::new(App {
        peer_rules: std::sync::RwLock::new(Arc::new(config.peer_rules())),
        store,
        metrics,
        series: series.clone(),
        heartbeat: sys::Heartbeat::default(),
        active_associations: Default::default(),
        model: Default::default(),
        links: Default::default(),
        tls,
        audit,
        audit_link: Default::default(),
        live: std::sync::RwLock::new(Arc::new(config.clone())),
        config,
    });
    app.set_destinations(&app.config);
    app.heartbeat.beat();

    // A socket systemd passed (scanside.socket) wins over dicom.listen.
    let dicom = match sys::activated_listener()? {
        Some(l) => TcpListener::from_std(l).context("the socket systemd passed")?,
        None => {
            let dicom_addr = app.config.dicom_listen();
            TcpListener::bind(dicom_addr)
                .await
                .with_context(|| format!("dicom.listen: cannot bind {dicom_addr}"))?
        }
    };
    let dicom_addr = dicom.local_addr()?;
    let dicom_tls = match &app.config.dicom.tls {
        Some(t) => {
            let addr = t.listen.parse::<std::net::SocketAddr>()?;
            Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("dicom.tls.listen: cannot bind {addr}"))?,
            )
        }
        None => None,
    };
    let http_addr = app.config.http_listen();
    let http = TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("http.listen: cannot bind {http_addr}"))?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(http::serve(app.clone(), http, stop_rx.clone()));
    tokio::spawn(series.run(stop_rx.clone()));
    // The model loads beside the DICOM service: storing never waits for it, and a
    // model that does not load leaves the daemon serving DICOM (readyz says why).
    // It is the OTA model in service when there is one, and is loaded again
    // when an install or rollback switches it.
    tokio::spawn(ota::fetch::watch_model(app.clone(), stop_rx.clone()));
    tokio::spawn(ota::fetch::pull(app.clone(), stop_rx.clone()));
    tokio::spawn(pipeline::run(app.clone(), stop_rx.clone()));
    tokio::spawn(outbox::run(app.clone(), stop_rx.clone()));
    tokio::spawn(outbox::retention(app.clone(), stop_rx.clone()));
    tokio::spawn(reload::on_sighup(app.clone(), source));
    tokio::spawn(sys::watchdog(app.clone()));
    let audit_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let audit_sender = {
        let (a, s) = (app.clone(), audit_stop.clone());
        std::thread::Builder::new()
            .name("audit-sender".into())
            .spawn(move || audit::run_sender(a, s))?
    };
    audit::application(&app.audit, true);
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        let _ = stop_tx.send(true);
    });

    tracing::info!(
        ae_title = %app.config.dicom.ae_title,
        dicom = %dicom_addr,
        http = %http_addr,
        instances = app.store.instance_count(),
        "scanside ready"
    );
    sys::notify(&[sd_notify::NotifyState::Ready]);
    sys::notify_status(&format!(
        "listening as {} on {}; {} instances stored",
        app.config.dicom.ae_title,
        dicom_addr,
        app.store.instance_count()
    ));

    // What `systemctl status scanside` shows, kept current.
    let status_app = app.clone();
    let mut status_stop = stop_rx.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = status_stop.changed() => return,
            }
            let a = status_app.clone();
            let _ = tokio::task::spawn_blocking(move || {
                sys::notify_status(&format!(
                    "{} instances stored; {} series open; {} association(s) open; {} job(s) waiting",
                    a.store.instance_count(),
                    a.series.open_count(),
                    a.active_associations.load(std::sync::atomic::Ordering::Relaxed),
                    a.store.pending_count(),
                ))
            })
            .await;
        }
    });

    let scp = Arc::new(scp::Scp::new(app.clone()));
    let tls_served = dicom_tls.map(|l| {
        tracing::info!(dicom_tls = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "DICOM TLS listener");
        let (scp, stop) = (scp.clone(), stop_rx.clone());
        tokio::spawn(async move { scp.serve(l, true, stop, DRAIN).await })
    });
    scp.serve(dicom, false, stop_rx, DRAIN).await;
    if let Some(t) = tls_served {
        let _ = t.await;
    }
    audit::application(&app.audit, false);
    app.audit.flush();
    audit_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // The sender gets a moment to pass on the last records; they stay in the file anyway.
    let _ = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !audit_sender.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await;

    sys::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining associations"),
        _ = int.recv() => tracing::info!("SIGINT: draining associations"),
    }
}
