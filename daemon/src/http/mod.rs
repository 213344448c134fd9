//! The HTTP side channel: health, readiness, Prometheus metrics, the jobs API.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::App;

type Body = Full<Bytes>;

pub async fn serve(app: Arc<App>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            // [http.tls]: HTTPS only, with the certificate in force (SIGHUP reloads it).
            let Some(tls) = app.tls.http() else {
                return serve_connection(app, stream, peer.ip()).await;
            };
            let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
            match tokio::time::timeout(Duration::from_secs(10), accept).await {
                Ok(Ok(s)) => serve_connection(app, s, peer.ip()).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "https handshake failed"),
                Err(_) => tracing::debug!("https handshake timed out"),
            }
        });
    }
}

async fn serve_connection<I>(app: Arc<App>, io: I, peer: IpAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(route(&app, req, peer).await) }
    });
    // Without a timer, hyper's header timeout does nothing.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with error");
    }
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string() + "\n")))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, json!({ "error": message }))
}

async fn route(app: &Arc<App>, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
    if req.method() == Method::POST {
        let path = req.uri().path().to_string();
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.to_string());
        let app = app.clone();
        return tokio::task::spawn_blocking(move || post(&app, &path, auth.as_deref(), peer))
            .await
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "handler panicked"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} is not allowed on {}", req.method(), req.uri().path()),
        );
    }
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let authorized = token_ok(app, auth);
    if auth.is_some() && !authorized {
        // A wrong token on a read: identifiers stay hidden, and the try is recorded.
        app.metrics.inc("scanside_http_token_failures_total", "");
        crate::audit::http_token(&app.audit, Some(peer), &path, false);
    }
    let app = app.clone();
    // Store reads may touch the disk: keep them off the reactor.
    tokio::task::spawn_blocking(move || route_blocking(&app, &path, authorized))
        .await
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "handler panicked"))
}

/// The status page (decision 0022): one embedded file, no build step.
const PAGE: &str = include_str!("page.html");

fn route_blocking(app: &App, path: &str, authorized: bool) -> Response<Body> {
    match path {
        "/" | "/index.html" => Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(PAGE)))
            .expect("valid"),
        "/healthz" => json_response(StatusCode::OK, json!({ "status": "alive" })),
        "/readyz" => readyz(app),
        "/metrics" => {
            app.refresh_gauges();
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(app.metrics.render())))
                .expect("valid")
        }
        "/api/v1/jobs" => match app.store.jobs() {
            Ok(jobs) => json_response(
                StatusCode::OK,
                serde_json::Value::Array(
                    jobs.iter()
                        .map(|j| job_summary(app, j, authorized))
                        .collect(),
                ),
            ),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("store: {e}")),
        },
        "/api/v1/outbox" => match app.store.outbox_entries(None) {
            Ok(e) => json_response(StatusCode::OK, serde_json::to_value(e).unwrap_or_default()),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("store: {e}")),
        },
        p if p.starts_with("/api/v1/patients/") => patient(app, &p["/api/v1/patients/".len()..]),
        p if p.starts_with("/api/v1/jobs/")
            && (p.ends_with("/trend.png") || p.ends_with("/trend.svg")) =>
        {
            let (id, ext) = p["/api/v1/jobs/".len()..]
                .split_once("/trend.")
                .expect("matched");
            job_picture(app, id, ext)
        }
        p if p.starts_with("/api/v1/jobs/") => {
            let id = &p["/api/v1/jobs/".len()..];
            if !valid_id(id) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "a job id is 16 hexadecimal characters",
                );
            }
            match app.store.job(id) {
                Ok(Some(job)) => {
                    let series = app.store.series(&job.series_instance_uid).ok().flatten();
                    let mut v = serde_json::to_value(&job).unwrap_or_default();
                    v["series"] = serde_json::to_value(series).unwrap_or_default();
                    v["stage_timings_ms"] = stage_timings(&job);
                    v["result_objects"] = serde_json::to_value(
                        job.results
                            .iter()
                            .chain(job.edits.iter().flat_map(|e| {
                                [&e.sr_sop_instance_uid, &e.picture_sop_instance_uid]
                            }))
                            .filter_map(|u| app.store.result(u).ok().flatten())
                            .collect::<Vec<_>>(),
                    )
                    .unwrap_or_default();
                    if job.measurement.is_some() {
                        v["trend_png"] = json!(format!("/api/v1/jobs/{}/trend.png", job.id));
                        v["trend_svg"] = json!(format!("/api/v1/jobs/{}/trend.svg", job.id));
                    }
                    if let Some(uid) = &job.notice_sop_instance_uid {
                        v["notice"] = serde_json::to_value(app.store.result(uid).ok().flatten())
                            .unwrap_or_default();
                    }
                    json_response(StatusCode::OK, v)
                }
                Ok(None) => error(StatusCode::NOT_FOUND, &format!("no job with id {id}")),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("store: {e}")),
            }
        }
        p if p.starts_with("/api/v1/series/") => {
            let uid = &p["/api/v1/series/".len()..];
            if !crate::store::valid_uid(uid) {
                return error(StatusCode::BAD_REQUEST, "not a valid Series Instance UID");
            }
            match (app.store.series(uid), app.store.instances_of_series(uid)) {
                (Ok(Some(s)), Ok(instances)) => {
                    let mut v = serde_json::to_value(&s).unwrap_or_default();
                    v["instances"] = serde_json::to_value(instances).unwrap_or_default();
                    json_response(StatusCode::OK, v)
                }
                (Ok(None), _) => error(StatusCode::NOT_FOUND, &format!("no series {uid}")),
                (Err(e), _) | (_, Err(e)) => {
                    error(StatusCode::SERVICE_UNAVAILABLE, &format!("store: {e}"))
                }
            }
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no such resource: {path}")),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A job's trend picture (PNG with the key slice, or SVG), as written with its results.
fn job_picture(app: &App, id: &str, ext: &str) -> Response<Body> {
    if !valid_id(id) {
        return error(
            StatusCode::BAD_REQUEST,
            "a job id is 16 hexadecimal characters",
        );
    }
    let job = match app.store.job(id) {
        Ok(Some(j)) => j,
        Ok(None) => return error(StatusCode::NOT_FOUND, &format!("no job with id {id}")),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &format!("store: {e}")),
    };
    let Some(m) = job.measurement.as_ref().filter(|_| !job.results.is_empty()) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("job {id} has no results yet (state {:?})", job.state),
        );
    };
    // After a person's edit, the picture made with the edited volumes.
    let picture = job
        .edits
        .last()
        .map(|e| e.picture_sop_instance_uid.clone())
        .unwrap_or_else(|| m.uids.picture.clone());
    match std::fs::read(
        app.store
            .root()
            .join("pictures")
            .join(format!("{picture}.{ext}")),
    ) {
        Ok(b) => Response::builder()
            .header(
                "content-type",
                if ext == "png" {
                    "image/png"
                } else {
                    "image/svg+xml"
                },
            )
            .body(Full::new(Bytes::from(b)))
            .expect("valid"),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("picture file: {e}"),
        ),
    }
}

/// GET /api/v1/patients/{key}/history: the visits in date order, each with its
/// change against the earlier ones. The key is the hash the jobs name
/// (measurement.patient_key), never a patient identifier.
fn patient(app: &App, rest: &str) -> Response<Body> {
    let Some(key) = rest.strip_suffix("/history") else {
        return error(
            StatusCode::NOT_FOUND,
            "patients/{key}/history is the only patient resource",
        );
    };
    if !valid_id(key) {
        return error(
            StatusCode::BAD_REQUEST,
            "a patient key is the hexadecimal hash named by a job (measurement.patient_key)",
        );
    }
    let visits = match app.store.patient_history(key) {
        Ok(v) if v.is_empty() => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no history for patient {key}"),
            )
        }
        Ok(v) => v,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &format!("store: {e}")),
    };
    let t = app.live().measure.thresholds();
    let items: Vec<serde_json::Value> = visits
        .iter()
        .map(|v| {
            let mut o = serde_json::to_value(v).unwrap_or_default();
            o["changes"] = serde_json::to_value(crate::measure::history::changes(&visits, v, t))
                .unwrap_or_default();
            o
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "patient_key": key,
            "progression_pct": t.progression_pct,
            "min_increase_ml": t.min_increase_ml,
            "visits": items,
        }),
    )
}

/// Whether `auth` ("Bearer ...") carries the configured token.
fn token_ok(app: &App, auth: Option<&str>) -> bool {
    let Some(token) = app.config.http.token.as_deref() else {
        return false;
    };
    let given = auth.and_then(|a| a.strip_prefix("Bearer "));
    // Compare without an early exit, so timing says nothing about the token.
    given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
    })
}

/// A job for the list: the record, its stage timings, the share of the budget
/// it used, its series description, and, only for a request with the token,
/// the patient's name and ID (from the query/retrieve index).
fn job_summary(app: &App, j: &crate::store::JobRecord, authorized: bool) -> serde_json::Value {
    let mut v = serde_json::to_value(j).unwrap_or_default();
    v["stage_timings_ms"] = stage_timings(j);
    // The budget runs from "series complete" to "results committed".
    let at = |s: crate::store::JobState| {
        j.history
            .iter()
            .rev()
            .find(|h| h.state == s)
            .map(|h| h.at_ms)
    };
    if let (Some(c), Some(w)) = (
        at(crate::store::JobState::Complete),
        at(crate::store::JobState::Written),
    ) {
        let used = w.saturating_sub(c) as f64 / (app.live().budget.seconds as f64 * 10.0);
        v["budget_used_pct"] = json!(used);
    }
    if let Ok(Some(s)) = app.store.series(&j.series_instance_uid) {
        v["series_description"] = json!(s.series_description);
    }
    let study = app
        .store
        .qr_studies(Some(std::slice::from_ref(&j.study_instance_uid)))
        .ok()
        .and_then(|mut v| v.pop());
    if let Some(st) = study {
        v["study_description"] = json!(st.attrs.study_description);
        if authorized {
            v["patient"] = json!({
                "name": st.attrs.patient_name,
                "id": st.attrs.patient_id,
                "birth_date": st.attrs.patient_birth_date,
            });
        }
    }
    v
}

/// Requests that change state: a bearer token is required.
fn post(app: &App, path: &str, auth: Option<&str>, peer: IpAddr) -> Response<Body> {
    if app.config.http.token.is_none() {
        return error(
            StatusCode::FORBIDDEN,
            "changes through the HTTP API are disabled: set http.token in the config",
        );
    }
    if !token_ok(app, auth) {
        tracing::warn!(path, "HTTP request with a missing or wrong token refused");
        app.metrics.inc("scanside_http_token_failures_total", "");
        crate::audit::http_token(&app.audit, Some(peer), path, false);
        return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    }
    crate::audit::http_token(&app.audit, Some(peer), path, true);
    // POST /api/v1/outbox/{destination}/{seq}/replay: a dead letter goes back in the queue.
    let rest = path
        .strip_prefix("/api/v1/outbox/")
        .and_then(|r| r.strip_suffix("/replay"));
    let Some((dest, seq)) = rest.and_then(|r| r.split_once('/')) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no such action: POST {path}"),
        );
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, "the entry's seq is a number");
    };
    match app.store.outbox_entries(Some(dest)) {
        Ok(entries) => match entries.into_iter().find(|e| e.seq == seq) {
            Some(mut e) if e.state == crate::store::OutboxState::Dead => {
                e.state = crate::store::OutboxState::Pending;
                e.tries = 0;
                e.next_try_ms = 0;
                if let Err(err) = app.store.outbox_update(&e) {
                    return error(StatusCode::SERVICE_UNAVAILABLE, &format!("store: {err}"));
                }
                tracing::info!(destination = dest, seq, "dead letter replayed");
                json_response(StatusCode::OK, serde_json::to_value(e).unwrap_or_default())
            }
            Some(e) => error(
                StatusCode::CONFLICT,
                &format!("entry {seq} for {dest} is {:?}, not dead-lettered", e.state),
            ),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("no outbox entry {seq} for {dest}"),
            ),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("store: {e}")),
    }
}

/// Link and queue state per upstream destination.
fn upstreams(app: &App) -> serde_json::Value {
    let links = app.links.snapshot();
    let stats = crate::outbox::queue_stats(app);
    let mut m = serde_json::Map::new();
    for u in &app.live().upstream {
        let (pending, oldest, dead) = stats.get(&u.ae_title).copied().unwrap_or_default();
        let l = links.get(&u.ae_title).cloned().unwrap_or_default();
        m.insert(
            u.ae_title.clone(),
            json!({
                "address": format!("{}:{}", u.host, u.port),
                "link": match l.up { Some(true) => "up", Some(false) => "down", None => "unknown" },
                "since_ms": l.since_ms,
                "last_error": l.last_error,
                "pending": pending,
                "oldest_pending_s": oldest,
                "dead_letters": dead,
            }),
        );
    }
    serde_json::Value::Object(m)
}

/// Milliseconds spent between consecutive states, keyed by the state entered.
fn stage_timings(job: &crate::store::JobRecord) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for w in job.history.windows(2) {
        let key = serde_json::to_value(w[1].state).unwrap_or_default();
        let key = key.as_str().unwrap_or("?").to_string();
        m.insert(key, json!(w[1].at_ms.saturating_sub(w[0].at_ms)));
    }
    serde_json::Value::Object(m)
}

/// Where the audit trail goes and whether its receiver takes it.
fn audit_state(app: &App) -> serde_json::Value {
    let l = app.audit_link.lock().map(|l| l.clone()).unwrap_or_default();
    json!({
        "receiver": app.config.audit.syslog,
        "link": match (&app.config.audit.syslog, l.up) {
            (None, _) => "none",
            (_, Some(true)) => "up",
            (_, Some(false)) => "down",
            (_, None) => "unknown",
        },
        "last_error": l.last_error,
    })
}

fn readyz(app: &App) -> Response<Body> {
    let store_ok = app.store.ping();
    let free = crate::sys::disk_free(app.store.root()).ok();
    let disk_ok = free.is_some_and(|f| f >= app.config.storage.min_free_bytes);
    let model = app.model.status();
    let ready = store_ok && disk_ok && model.loaded;
    let body = json!({
        "ready": ready,
        "model_loaded": model.loaded,
        "model": model,
        "store_open": store_ok,
        "disk_ok": disk_ok,
        "disk": if disk_ok {
            "ok".to_string()
        } else {
            format!(
                "free space below the reserve ([storage].min_free_bytes = {}): new data is refused (A700); \
                 delivered data past [storage].retention is removed, undelivered data is kept",
                app.config.storage.min_free_bytes
            )
        },
        "retention": app.config.storage.retention,
        "disk_free_bytes": free,
        "min_free_bytes": app.config.storage.min_free_bytes,
        "open_series": app.series.open_count(),
        "upstreams": upstreams(app),
        "audit": audit_state(app),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body)
}
