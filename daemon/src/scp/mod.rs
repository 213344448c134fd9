//! The DICOM listener: C-ECHO and C-STORE SCP.
//!
//! Every association runs in its own task; a panic or error there ends that
//! association only. A C-STORE is answered 0000 only after the store committed it.

mod access;
pub mod assoc;
mod incoming;
pub mod sop;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_ul::association::server::ServerAssociationOptions;
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJSource, Pdu,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::dimse::command::tags;
use crate::dimse::{self, status, Assembler, CommandField, CommandSet, Fragment};
use crate::App;
use access::PeerAccess;
pub use assoc::ServerAssoc;
use incoming::Incoming;

/// Counts open associations; the guard gives the slot back when dropped, even on panic.
struct Slot(Arc<AtomicUsize>);
impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Scp {
    app: Arc<App>,
    active: Arc<AtomicUsize>,
    /// Refusals being written (A-ASSOCIATE-RJ after reading the request).
    rejecting: Arc<AtomicUsize>,
}

/// At most this many refusals wait for their A-ASSOCIATE-RQ at once; past it a
/// connection over the limit is closed at once.
const MAX_REJECTING: usize = 32;

impl Scp {
    pub fn new(app: Arc<App>) -> Self {
        Scp {
            active: app.active_associations.clone(),
            rejecting: Default::default(),
            app,
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Accepts associations until `shutdown` turns true, then waits (bounded) for
    /// the open ones to finish. `tls`: this is the DICOM TLS listener.
    pub async fn serve(
        &self,
        listener: TcpListener,
        tls: bool,
        mut shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) {
        loop {
            self.app.heartbeat.beat();
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.changed() => break,
                // Wake up regularly so the watchdog heartbeat shows the loop is alive.
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // dicom-rs never sets TCP_NODELAY; without it each small PDU waits ~40 ms.
            let _ = stream.set_nodelay(true);
            let n = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            let slot = Slot(self.active.clone());
            let app = self.app.clone();
            if n > app.config.dicom.max_associations {
                // A refusal holds no association slot: refusals must not keep
                // out the peers that come once a real slot is free.
                drop(slot);
                let r = self.rejecting.fetch_add(1, Ordering::SeqCst) + 1;
                let guard = Slot(self.rejecting.clone());
                if tls || r > MAX_REJECTING {
                    // Over TLS the refusal would need a handshake first: close.
                    app.metrics.inc(
                        "scanside_associations_rejected_total",
                        "reason=\"too_many_associations\"",
                    );
                    continue;
                }
                tokio::spawn(async move {
                    let _guard = guard;
                    reject_busy(stream, &app).await;
                });
                continue;
            }
            tokio::spawn(async move {
                let _slot = slot;
                let m = app.metrics.clone();
                // A panic inside is caught by the join of this inner task.
                let inner = tokio::spawn(handle_association(app, stream, peer, tls));
                if let Err(e) = inner.await {
                    tracing::error!(error = %e, "association task panicked");
                    m.inc("scanside_associations_aborted_total", "reason=\"panic\"");
                }
            });
        }
        // Refuse new connections at once instead of leaving them in the backlog.
        drop(listener);
        let deadline = Instant::now() + drain;
        while self.active() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.active() > 0 {
            tracing::warn!(
                open = self.active(),
                "shutdown: associations still open after the drain time"
            );
        }
    }
}

/// Over the association limit: A-ASSOCIATE-RJ, transient, local limit exceeded.
async fn reject_busy(mut stream: TcpStream, app: &App) {
    use dicom_ul::pdu::{read_pdu, write_pdu};
    let mut buf = bytes::BytesMut::with_capacity(16 * 1024);
    let read = async {
        loop {
            if let Ok(Some(_)) =
                read_pdu(&mut std::io::Cursor::new(&buf[..]), 16 * 1024 * 1024, false)
            {
                return true;
            }
            match tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    };
    if !tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or(false)
    {
        return;
    }
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut out = Vec::new();
    if write_pdu(&mut out, &rj).is_ok() {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    }
    app.metrics.inc(
        "scanside_associations_rejected_total",
        "reason=\"too_many_associations\"",
    );
    tracing::warn!(
        limit = app.config.dicom.max_associations,
        "association rejected: too many open associations"
    );
}

fn reject_reason(e: &dicom_ul::association::Error) -> &'static str {
    use dicom_ul::association::Error as E;
    use dicom_ul::pdu::AssociationRJServiceUserReason as R;
    match e {
        E::Rejected { association_rj, .. } => match &association_rj.source {
            AssociationRJSource::ServiceUser(R::CallingAETitleNotRecognized) => {
                "calling_ae_not_allowed"
            }
            AssociationRJSource::ServiceUser(R::CalledAETitleNotRecognized) => "called_ae_wrong",
            AssociationRJSource::ServiceUser(R::ApplicationContextNameNotSupported) => {
                "application_context"
            }
            _ => "other",
        },
        E::Timeout { .. } => "timeout",
        E::TlsHandshake { .. } => "tls_handshake",
        E::ReceivePdu { .. } | E::UnknownPdu { .. } | E::UnexpectedPdu { .. } => "bad_pdu",
        E::ConnectionClosed { .. } | E::WireRead { .. } => "connection_closed",
        _ => "other",
    }
}

/// Why an established association ended with an error.
fn receive_error_reason(e: &dicom_ul::association::Error) -> &'static str {
    use dicom_ul::association::Error as E;
    match e {
        E::ReceivePdu {
            source: dicom_ul::pdu::ReadError::PduTooLarge { .. },
        } => "pdu_too_large",
        E::ReceivePdu { .. } | E::UnknownPdu { .. } => "bad_pdu",
        E::ConnectionClosed { .. } | E::WireRead { .. } => "connection_closed",
        E::Timeout { .. } => "read_timeout",
        _ => "other",
    }
}

async fn handle_association(app: Arc<App>, stream: TcpStream, peer: SocketAddr, tls: bool) {
    let cfg = &app.config.dicom;
    let read_timeout = Duration::from_secs(cfg.read_timeout_s);
    let rules = app.peer_rules();
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(PeerAccess::new(rules.clone(), peer.ip(), tls))
        .ae_title(cfg.ae_title.clone())
        .max_pdu_length(cfg.max_pdu_length)
        .strict(true)
        .read_timeout(read_timeout)
        .write_timeout(read_timeout)
        .with_negotiation(sop::Roles);
    for uid in sop::abstract_syntaxes() {
        options = options.with_abstract_syntax(uid);
    }
    for uid in sop::TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(*uid);
    }
    let established = if tls {
        let Some(server) = app.tls.dicom() else {
            tracing::error!("TLS connection without a TLS configuration; closed");
            return;
        };
        // dicom-ul's read timeout starts after the handshake: a peer that
        // stalls in it must not hold a slot.
        let handshake = options.tls_config(server);
        match tokio::time::timeout(read_timeout, handshake.establish_tls_async(stream)).await {
            Ok(r) => r.map(|a| ServerAssoc::Tls(Box::new(a))),
            Err(_) => {
                app.metrics.inc(
                    "scanside_associations_rejected_total",
                    "reason=\"tls_handshake_timeout\"",
                );
                tracing::warn!(peer = %peer.ip(), "TLS handshake timed out");
                crate::audit::association(&app, peer.ip(), None, false, "TLS handshake timed out");
                return;
            }
        }
    } else {
        options
            .establish_async(stream)
            .await
            .map(ServerAssoc::Plain)
    };
    let mut assoc = match established {
        Ok(a) => a,
        Err(e) => {
            let reason = reject_reason(&e);
            app.metrics.inc(
                "scanside_associations_rejected_total",
                &format!("reason=\"{reason}\""),
            );
            tracing::warn!(peer = %peer.ip(), tls, reason, error = %e, "association rejected");
            crate::audit::association(&app, peer.ip(), None, false, reason);
            return;
        }
    };
    // A peer allowed only with a client certificate: checked once TLS is up,
    // before any message is read; without one the association is aborted.
    let calling = assoc.peer_ae_title().trim().to_string();
    if !access::certificate_ok(&rules, &calling, peer.ip(), tls, assoc.client_certificate()) {
        app.metrics.inc(
            "scanside_associations_rejected_total",
            "reason=\"client_certificate_required\"",
        );
        tracing::warn!(peer = %peer.ip(), calling_ae = %calling, "association aborted: this peer must present a client certificate");
        crate::audit::association(
            &app,
            peer.ip(),
            Some(&calling),
            false,
            "client_certificate_required",
        );
        let _ = assoc.abort().await;
        return;
    }
    app.metrics.inc("scanside_associations_accepted_total", "");
    tracing::info!(peer = %peer.ip(), calling_ae = %calling, tls, "association accepted");
    crate::audit::association(
        &app,
        peer.ip(),
        Some(&calling),
        true,
        if tls { "tls" } else { "tcp" },
    );
    let mut session = Session {
        app: app.clone(),
        calling,
        peer: peer.ip(),
        asm: Assembler::new(),
        incoming: None,
        qr: None,
        series_touched: Default::default(),
        received: Default::default(),
    };
    let end = session.run(assoc, read_timeout).await;
    for (study, (patient, classes)) in std::mem::take(&mut session.received) {
        crate::audit::transfer(
            &app.audit,
            crate::audit::Transfer {
                peer: &session.calling,
                address: Some(peer.ip()),
                received: true,
                export: false,
                study_uid: &study,
                patient_id: &patient,
                classes: classes.into_iter().collect(),
                ok: true,
                description: "instances received",
            },
        );
    }
    if !session.series_touched.is_empty() && end == End::Released {
        app.series
            .released(session.series_touched.iter().cloned().collect());
    }
    if let Some(inc) = session.incoming.take() {
        inc.discard();
    }
}

#[derive(Debug, PartialEq)]
enum End {
    Released,
    Aborted,
}

struct Session {
    app: Arc<App>,
    calling: String,
    peer: std::net::IpAddr,
    asm: Assembler,
    incoming: Option<Incoming>,
    /// A C-FIND/C-GET/C-MOVE identifier or an N-EVENT-REPORT data set arriving.
    qr: Option<crate::qr::Pending>,
    series_touched: std::collections::BTreeSet<String>,
    /// Per study: the patient and instances per SOP class (one audit record each).
    received:
        std::collections::BTreeMap<String, (String, std::collections::BTreeMap<String, usize>)>,
}

impl Session {
    async fn run(&mut self, mut assoc: ServerAssoc, read_timeout: Duration) -> End {
        loop {
            let pdu = match tokio::time::timeout(read_timeout, assoc.receive()).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    let reason = receive_error_reason(&e);
                    self.abort_metric(reason);
                    tracing::warn!(calling_ae = %self.calling, reason, error = %e, "association ended by error");
                    let _ = assoc.abort().await;
                    return End::Aborted;
                }
                Err(_) => {
                    self.abort_metric("read_timeout");
                    tracing::warn!(calling_ae = %self.calling, "association idle past read timeout; aborting");
                    let _ = assoc.abort().await;
                    return End::Aborted;
                }
            };
            match pdu {
                Pdu::PData { data } => {
                    for pdv in data {
                        if let Err(e) = self.on_pdv(&mut assoc, pdv).await {
                            self.abort_metric("protocol");
                            tracing::warn!(calling_ae = %self.calling, error = %e, "protocol error; aborting association");
                            let _ = assoc.abort().await;
                            return End::Aborted;
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    let _ = assoc.send(&Pdu::ReleaseRP).await;
                    return End::Released;
                }
                Pdu::AbortRQ { .. } => {
                    self.abort_metric("peer_abort");
                    return End::Aborted;
                }
                other => {
                    self.abort_metric("unexpected_pdu");
                    tracing::warn!(pdu = %other.short_description(), "unexpected PDU; aborting");
                    let _ = assoc.abort().await;
                    return End::Aborted;
                }
            }
        }
    }

    fn abort_metric(&self, reason: &str) {
        self.app.metrics.inc(
            "scanside_associations_aborted_total",
            &format!("reason=\"{reason}\""),
        );
    }

    async fn on_pdv(
        &mut self,
        assoc: &mut ServerAssoc,
        pdv: dicom_ul::pdu::PDataValue,
    ) -> anyhow::Result<()> {
        match self.asm.push(pdv)? {
            None => Ok(()),
            Some(Fragment::Command { pc_id, command }) => {
                self.on_command(assoc, pc_id, command).await
            }
            Some(Fragment::Data { bytes, last, .. }) if self.qr.is_some() => {
                let p = self.qr.as_mut().expect("checked");
                p.push(&bytes);
                if last && p.cmd.command_field() == Some(CommandField::NEventReportRq) {
                    let p = self.qr.take().expect("checked");
                    let ts = assoc
                        .presentation_contexts()
                        .iter()
                        .find(|c| c.id == p.pc_id)
                        .map(|c| c.transfer_syntax.clone())
                        .unwrap_or_default();
                    let (app, calling) = (self.app.clone(), self.calling.clone());
                    let rsp = tokio::task::spawn_blocking(move || {
                        let obj = crate::qr::decode(&p.identifier, &ts);
                        crate::outbox::commitment::on_event_report(&app, &calling, &p.cmd, obj)
                    })
                    .await?;
                    assoc.send(&dimse::command_pdu(p.pc_id, &rsp)).await?;
                } else if last {
                    let p = self.qr.take().expect("checked");
                    let mut conn = crate::qr::Conn {
                        assoc,
                        asm: &mut self.asm,
                        calling: &self.calling,
                        peer: self.peer,
                    };
                    crate::qr::handle(&self.app, &mut conn, p).await?;
                }
                Ok(())
            }
            Some(Fragment::Data { bytes, last, .. }) => {
                let Some(inc) = self.incoming.as_mut() else {
                    // Data of a command we answered already (unknown operation): drop it.
                    return Ok(());
                };
                inc.write(&bytes);
                if last {
                    let inc = self.incoming.take().expect("present");
                    let (pc_id, rsp, stored) = inc.finish(&self.app, &self.calling);
                    if let Some(r) = stored {
                        self.series_touched.insert(r.series_uid);
                        let study = self
                            .received
                            .entry(r.study_uid)
                            .or_insert_with(|| (r.patient_id, Default::default()));
                        *study.1.entry(r.sop_class_uid).or_default() += 1;
                    }
                    assoc.send(&dimse::command_pdu(pc_id, &rsp)).await?;
                }
                Ok(())
            }
        }
    }

    async fn on_command(
        &mut self,
        assoc: &mut ServerAssoc,
        pc_id: u8,
        cmd: CommandSet,
    ) -> anyhow::Result<()> {
        let Some(pc) = assoc
            .presentation_contexts()
            .iter()
            .find(|p| p.id == pc_id)
            .cloned()
        else {
            anyhow::bail!("command on presentation context {pc_id}, which was not negotiated");
        };
        match cmd.command_field() {
            Some(CommandField::CEchoRq) => {
                let rsp = CommandSet::response_to(&cmd, CommandField::CEchoRsp, status::SUCCESS);
                assoc.send(&dimse::command_pdu(pc_id, &rsp)).await?;
            }
            Some(CommandField::CStoreRq) => {
                let inc = Incoming::start(&self.app, &cmd, pc_id, &pc, &self.calling);
                if cmd.has_data_set() {
                    self.incoming = Some(inc);
                } else {
                    let (pc_id, rsp, _) = inc.finish(&self.app, &self.calling);
                    assoc.send(&dimse::command_pdu(pc_id, &rsp)).await?;
                }
            }
            Some(CommandField::CFindRq | CommandField::CGetRq | CommandField::CMoveRq)
                if cmd.has_data_set() =>
            {
                let expected = match cmd.command_field() {
                    Some(CommandField::CFindRq) => crate::qr::FIND,
                    Some(CommandField::CGetRq) => crate::qr::GET,
                    _ => crate::qr::MOVE,
                };
                if pc.abstract_syntax.trim_end_matches('\0') != expected {
                    anyhow::bail!(
                        "{:?} on a context for {}, not {expected}",
                        cmd.command_field(),
                        pc.abstract_syntax
                    );
                }
                self.qr = Some(crate::qr::Pending {
                    pc_id,
                    cmd,
                    identifier: Vec::new(),
                    too_large: false,
                });
            }
            Some(CommandField::NEventReportRq)
                if cmd.has_data_set()
                    && pc.abstract_syntax.trim_end_matches('\0')
                        == crate::dimse::scu::STORAGE_COMMITMENT =>
            {
                self.qr = Some(crate::qr::Pending {
                    pc_id,
                    cmd,
                    identifier: Vec::new(),
                    too_large: false,
                });
            }
            Some(CommandField::CCancelRq) => {
                // A cancel for an operation already answered: nothing to do.
            }
            _ => {
                let raw = cmd.command_field_raw().unwrap_or(0);
                tracing::warn!(
                    command = format!("{raw:#06x}"),
                    "unsupported DIMSE operation"
                );
                let mut rsp = CommandSet::new();
                rsp.set_u16(tags::COMMAND_FIELD, raw | 0x8000)
                    .set_u16(
                        tags::MESSAGE_ID_BEING_RESPONDED_TO,
                        cmd.message_id().unwrap_or(0),
                    )
                    .set_u16(tags::COMMAND_DATA_SET_TYPE, dimse::NO_DATA_SET)
                    .set_u16(tags::STATUS, status::UNRECOGNIZED_OPERATION);
                assoc.send(&dimse::command_pdu(pc_id, &rsp)).await?;
            }
        }
        Ok(())
    }
}
