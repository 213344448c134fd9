//! Bundles over the network: a small HTTP/1.1 GET (plain, or TLS trusting only
//! the site CA) with a size cap and a truncation check, the daemon's periodic
//! pull of [ota] update_url, and the watcher that loads whatever model `active`
//! names.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{Config, UpstreamTls};
use crate::infer::manifest::sha256_hex;
use crate::App;

/// Largest signature file read.
const MAX_SIGNATURE: u64 = 64 << 10;

/// GETs `url`, at most `max` bytes; a body shorter than its Content-Length (a
/// download cut off) is an error, never a short bundle.
pub async fn get(url: &str, ca_file: Option<&Path>, max: u64) -> Result<Vec<u8>, String> {
    tokio::time::timeout(Duration::from_secs(600), get_inner(url, ca_file, max))
        .await
        .map_err(|_| format!("{url}: no complete answer within 600 s"))?
}

async fn get_inner(url: &str, ca_file: Option<&Path>, max: u64) -> Result<Vec<u8>, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url}: only http:// and https:// are supported")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.clone());
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("scanside/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(30),
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("{host}:{port}: connect timed out"))?
    .map_err(|e| format!("{host}:{port}: {e}"))?;
    if !https {
        return send(TokioIo::new(tcp), req, url, max).await;
    }
    let Some(ca) = ca_file else {
        return Err("ota.ca_file: needed for https".into());
    };
    let tls = crate::dimse::tls::client_config(&UpstreamTls {
        ca_file: ca.to_path_buf(),
        cert_file: None,
        key_file: None,
        server_name: None,
    })
    .map_err(|(key, why)| format!("ota.{key}: {why}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("{host}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{url}: TLS: {e}"))?;
    send(TokioIo::new(stream), req, url, max).await
}

async fn send<T>(
    io: T,
    req: hyper::Request<Empty<Bytes>>,
    url: &str,
    max: u64,
) -> Result<Vec<u8>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status() != hyper::StatusCode::OK {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let expected: Option<u64> = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if expected.is_some_and(|n| n > max) {
        return Err(format!(
            "{url}: {} bytes is more than the {max} allowed",
            expected.unwrap_or_default()
        ));
    }
    let of = || expected.map_or(String::new(), |n| format!(" of {n}"));
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            format!(
                "{url}: download truncated after {}{} bytes ({e})",
                out.len(),
                of()
            )
        })?;
        if let Some(d) = frame.data_ref() {
            out.extend_from_slice(d);
            if out.len() as u64 > max {
                return Err(format!("{url}: more than the {max} bytes allowed"));
            }
        }
    }
    if expected.is_some_and(|n| n != out.len() as u64) {
        return Err(format!(
            "{url}: download truncated after {}{} bytes",
            out.len(),
            of()
        ));
    }
    Ok(out)
}

/// Fetches a bundle and its signature (URL + ".minisig").
pub async fn get_bundle(cfg: &Config, url: &str) -> Result<(Vec<u8>, String), String> {
    let ca = cfg.ota.ca_file.as_deref();
    let sig = get(&format!("{url}.minisig"), ca, MAX_SIGNATURE).await?;
    let sig = String::from_utf8(sig).map_err(|_| format!("{url}.minisig is not text"))?;
    let data = get(url, ca, cfg.ota.max_bundle_bytes).await?;
    Ok((data, sig))
}

/// Every [ota] check_interval_s: fetch the signature; when it is new (not the
/// model in service, not a bundle refused before) fetch the bundle and install it.
pub async fn pull(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(url) = app.config.ota.update_url.clone() else {
        return;
    };
    let mut wait = Duration::from_secs(2);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        wait = Duration::from_secs(app.config.ota.check_interval_s);
        let outcome = pull_once(&app, &url).await;
        app.metrics.inc(
            "scanside_ota_pulls_total",
            &format!("outcome=\"{outcome}\""),
        );
    }
}

fn refused_marker(cfg: &Config, sig: &str) -> PathBuf {
    cfg.storage
        .data_dir
        .join("models")
        .join("refused")
        .join(sha256_hex(sig.as_bytes()))
}

async fn pull_once(app: &Arc<App>, url: &str) -> &'static str {
    let cfg = &app.config;
    let sig = match get(
        &format!("{url}.minisig"),
        cfg.ota.ca_file.as_deref(),
        MAX_SIGNATURE,
    )
    .await
    {
        Ok(s) => String::from_utf8_lossy(&s).into_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "OTA: update server not reachable");
            return "unreachable";
        }
    };
    if crate::ota::active_signature(cfg).as_deref() == Some(sig.as_str()) {
        return "up_to_date";
    }
    let marker = refused_marker(cfg, &sig);
    if marker.exists() {
        return "refused_before";
    }
    let data = match get(url, cfg.ota.ca_file.as_deref(), cfg.ota.max_bundle_bytes).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "OTA: bundle download failed; tried again next time");
            return "download_failed";
        }
    };
    let c = cfg.clone();
    let s = sig.clone();
    match tokio::task::spawn_blocking(move || crate::ota::install(&c, &data, &s)).await {
        Ok(Ok(_)) => "installed",
        Ok(Err(r)) => {
            // Not tried again until the server offers another signed bundle.
            if let Some(d) = marker.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            let _ = std::fs::write(&marker, r.to_string());
            "refused"
        }
        Err(_) => "failed",
    }
}

/// Loads the model `active` names (or the configured one) at start and again
/// whenever an install or rollback changes it. A model that fails to load
/// leaves the one in service.
pub async fn watch_model(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tried: Option<Option<PathBuf>> = None;
    loop {
        let want = crate::ota::model_dir(&app.config);
        if tried.as_ref() != Some(&want) {
            tried = Some(want.clone());
            let a = app.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut inference = a.config.inference.clone();
                inference.model_dir = want;
                a.model.load(&inference, &a.engine_cache_dir())
            })
            .await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}
