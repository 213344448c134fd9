//! The query/retrieve SCP (study root): C-FIND over the index of what the box
//! keeps, C-GET (sub-operations on the same association, SCP role negotiated)
//! and C-MOVE (to the AEs in [qr].move_destinations), with pending responses,
//! sub-operation counts and C-CANCEL. Access is the association's: the same
//! allowlist as C-STORE.

pub mod matching;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags as dtags;
use dicom_object::InMemDicomObject;
use dicom_ul::pdu::{Pdu, PresentationContextNegotiated, PresentationContextResultReason};

use crate::dimse::command::tags;
use crate::dimse::syntax::{dataset_in, is_native, ts_of};
use crate::dimse::{self, status, Assembler, CommandField, CommandSet, Fragment};
use crate::store::query::InstanceRow;
use crate::App;
use matching::{BadIdentifier, Level, Query, Record};

pub const FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
pub const GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";

pub const SOP_CLASSES: &[(&str, &str)] = &[
    (FIND, "Study Root Query/Retrieve Information Model - FIND"),
    (MOVE, "Study Root Query/Retrieve Information Model - MOVE"),
    (GET, "Study Root Query/Retrieve Information Model - GET"),
];

/// Identifiers are small; a bigger one is refused rather than buffered.
pub const MAX_IDENTIFIER_BYTES: usize = 1 << 20;

// Q/R statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
pub const PENDING: u16 = 0xFF00;
pub const PENDING_WARNING: u16 = 0xFF01;
pub const CANCEL: u16 = 0xFE00;
pub const IDENTIFIER_DOES_NOT_MATCH: u16 = 0xA900;
pub const UNABLE_TO_PROCESS: u16 = 0xC000;
pub const MOVE_DESTINATION_UNKNOWN: u16 = 0xA801;
pub const UNABLE_TO_PERFORM_SUBOPS: u16 = 0xA702;
pub const SUBOPS_WITH_FAILURES: u16 = 0xB000;

/// The association and its message assembler, borrowed from the SCP session.
pub struct Conn<'a> {
    pub assoc: &'a mut crate::scp::ServerAssoc,
    pub asm: &'a mut Assembler,
    pub calling: &'a str,
    pub peer: std::net::IpAddr,
}

/// A Q/R request whose identifier is being received.
pub struct Pending {
    pub pc_id: u8,
    pub cmd: CommandSet,
    pub identifier: Vec<u8>,
    pub too_large: bool,
}

impl Pending {
    pub fn push(&mut self, bytes: &[u8]) {
        if self.identifier.len() + bytes.len() > MAX_IDENTIFIER_BYTES {
            self.too_large = true;
            self.identifier.clear();
        } else if !self.too_large {
            self.identifier.extend_from_slice(bytes);
        }
    }
}

/// Answers a complete C-FIND, C-GET or C-MOVE request.
pub async fn handle(app: &Arc<App>, conn: &mut Conn<'_>, p: Pending) -> Result<()> {
    let pc = conn
        .assoc
        .presentation_contexts()
        .iter()
        .find(|c| c.id == p.pc_id)
        .cloned()
        .ok_or_else(|| anyhow!("presentation context {} not negotiated", p.pc_id))?;
    let field = p.cmd.command_field().expect("dispatched on a known field");
    let rsp_field = match field {
        CommandField::CFindRq => CommandField::CFindRsp,
        CommandField::CGetRq => CommandField::CGetRsp,
        _ => CommandField::CMoveRsp,
    };
    let parsed = if p.too_large {
        Err((
            UNABLE_TO_PROCESS,
            format!("identifier larger than {MAX_IDENTIFIER_BYTES} bytes"),
        ))
    } else {
        decode(&p.identifier, &pc.transfer_syntax)
            .map_err(|e| {
                (
                    UNABLE_TO_PROCESS,
                    format!("identifier does not parse: {e:#}"),
                )
            })
            .and_then(|obj| Query::parse(&obj).map_err(|e| (IDENTIFIER_DOES_NOT_MATCH, e.0)))
    };
    if field == CommandField::CFindRq {
        app.audit.record(&crate::audit::Event {
            id: crate::audit::QUERY,
            kind: None,
            action: crate::audit::Action::E,
            outcome: if parsed.is_ok() {
                crate::audit::Outcome::Success
            } else {
                crate::audit::Outcome::MinorFailure
            },
            description: if parsed.is_ok() {
                "C-FIND"
            } else {
                "C-FIND refused"
            },
            peers: vec![crate::audit::Peer {
                ae_title: conn.calling,
                address: Some(conn.peer),
                role: crate::audit::PeerRole::Source,
            }],
            objects: vec![crate::audit::Object::Query {
                sop_class: pc.abstract_syntax.trim_end_matches('\0'),
                identifier: &p.identifier,
            }],
        });
    }
    let q = match parsed {
        Ok(q) => q,
        Err((st, why)) => {
            // The values the peer sent may be PHI (a birth date): the log names the key only.
            let redacted: String = why
                .split('"')
                .enumerate()
                .map(|(i, part)| if i % 2 == 1 { "…" } else { part })
                .collect::<Vec<_>>()
                .join("\"");
            tracing::warn!(calling_ae = %conn.calling, status = format!("{st:04X}"), reason = %redacted, "query/retrieve request refused");
            app.metrics.inc(
                "scanside_qr_requests_total",
                &format!("op=\"{}\",outcome=\"refused\"", op_name(field)),
            );
            let mut rsp = CommandSet::response_to(&p.cmd, rsp_field, st);
            rsp.set_text(tags::ERROR_COMMENT, &truncate(&why, 64));
            return send_command(conn, pc.id, &rsp).await;
        }
    };
    app.metrics.inc(
        "scanside_qr_requests_total",
        &format!("op=\"{}\",outcome=\"answered\"", op_name(field)),
    );
    match field {
        CommandField::CFindRq => find(app, conn, &pc, &p.cmd, &q).await,
        CommandField::CGetRq => retrieve(app, conn, &pc, &p.cmd, &q, Target::Get).await,
        _ => {
            let dest = p.cmd.text(tags::MOVE_DESTINATION).unwrap_or_default();
            let known = app
                .config
                .qr
                .move_destinations
                .iter()
                .find(|d| d.ae_title == dest)
                .cloned();
            let Some(d) = known else {
                tracing::warn!(calling_ae = %conn.calling, destination = %dest, "C-MOVE to an unknown destination refused");
                let mut rsp = CommandSet::response_to(&p.cmd, rsp_field, MOVE_DESTINATION_UNKNOWN);
                rsp.set_text(
                    tags::ERROR_COMMENT,
                    &truncate(&format!("move destination {dest:?} is not configured"), 64),
                );
                return send_command(conn, pc.id, &rsp).await;
            };
            retrieve(app, conn, &pc, &p.cmd, &q, Target::Move(d)).await
        }
    }
}

fn op_name(f: CommandField) -> &'static str {
    match f {
        CommandField::CFindRq => "find",
        CommandField::CGetRq => "get",
        _ => "move",
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A data set a peer sent (an identifier, an N-EVENT-REPORT). Its element
/// lengths are checked first: dicom-object allocates whatever a length claims
/// (fuzz input tests/corpus/identifier/length-past-end), and a deflated one could
/// inflate without bound, so it is refused.
pub fn decode(bytes: &[u8], ts: &str) -> Result<InMemDicomObject> {
    let uid = ts.trim_end_matches('\0');
    if uid == "1.2.840.10008.1.2.1.99" {
        bail!("a deflated identifier is not accepted");
    }
    crate::store::check_element_lengths(
        bytes,
        uid == "1.2.840.10008.1.2",
        uid == "1.2.840.10008.1.2.2",
    )?;
    let ts = ts_of(ts)?;
    InMemDicomObject::read_dataset_with_ts(bytes, ts).map_err(|e| anyhow!("{e}"))
}

fn encode(obj: &InMemDicomObject, ts: &str) -> Result<Vec<u8>> {
    let ts = ts_of(ts)?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| anyhow!("{e}"))?;
    Ok(out)
}

async fn send_command(conn: &mut Conn<'_>, pc: u8, rsp: &CommandSet) -> Result<()> {
    conn.assoc.send(&dimse::command_pdu(pc, rsp)).await?;
    Ok(())
}

async fn send_with_data(conn: &mut Conn<'_>, pc: u8, cmd: &CommandSet, data: &[u8]) -> Result<()> {
    conn.assoc.send(&dimse::command_pdu(pc, cmd)).await?;
    let max = conn.assoc.requestor_max_pdu_length();
    for pdu in dimse::data_pdus(pc, data, max) {
        conn.assoc.send(&pdu).await?;
    }
    Ok(())
}

/// Reads what the peer sent meanwhile, without waiting. True on a C-CANCEL-RQ
/// for `msg_id`; the association's read buffer keeps any partial PDU.
async fn cancel_requested(conn: &mut Conn<'_>, msg_id: u16) -> Result<bool> {
    let mut cancelled = false;
    loop {
        // Poll the read once and move on when nothing is there (a zero timeout
        // would wait for the timer's next 1 ms tick on every response).
        let pdu = {
            let fut = conn.assoc.receive();
            tokio::pin!(fut);
            match std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await {
                std::task::Poll::Pending => return Ok(cancelled),
                std::task::Poll::Ready(r) => r?,
            }
        };
        cancelled |= on_peer_pdu(conn, pdu, msg_id, None)?.0;
    }
}

/// Handles one PDU from the peer during an operation: returns (cancel seen,
/// status of the C-STORE-RSP to `store_id` if this PDU completed it).
fn on_peer_pdu(
    conn: &mut Conn<'_>,
    pdu: Pdu,
    msg_id: u16,
    store_id: Option<u16>,
) -> Result<(bool, Option<u16>)> {
    let Pdu::PData { data } = pdu else {
        bail!("peer sent {} during an operation", pdu.short_description());
    };
    let (mut cancel, mut store_status) = (false, None);
    for pdv in data {
        match conn.asm.push(pdv)? {
            Some(Fragment::Command { command, .. }) => match command.command_field() {
                Some(CommandField::CCancelRq)
                    if command.get_u16(tags::MESSAGE_ID_BEING_RESPONDED_TO) == Some(msg_id) =>
                {
                    cancel = true
                }
                Some(CommandField::CStoreRsp)
                    if store_id.is_some()
                        && command.get_u16(tags::MESSAGE_ID_BEING_RESPONDED_TO) == store_id =>
                {
                    store_status = Some(command.status().unwrap_or(UNABLE_TO_PROCESS))
                }
                other => bail!("unexpected {other:?} during an operation"),
            },
            Some(Fragment::Data { .. }) => bail!("unexpected data set during an operation"),
            None => {}
        }
    }
    Ok((cancel, store_status))
}

/// Every match of a C-FIND, as response identifiers, in index order.
pub fn find_matches(app: &App, q: &Query) -> Result<Vec<InMemDicomObject>> {
    let ae = &app.config.dicom.ae_title;
    let study_uids = q.uid_list(dtags::STUDY_INSTANCE_UID);
    let studies: BTreeMap<String, _> = app
        .store
        .qr_studies(study_uids.as_deref())?
        .into_iter()
        .map(|s| (s.study_uid.clone(), s))
        .collect();
    let mut out = Vec::new();
    if q.level == Level::Study {
        for st in studies.values() {
            let r = Record {
                study: st,
                series: None,
                instance: None,
            };
            if q.matches(&r) {
                out.push(q.response(&r, ae));
            }
        }
        return Ok(out);
    }
    let series_uids = q.uid_list(dtags::SERIES_INSTANCE_UID);
    let scope: Vec<Option<&str>> = match &study_uids {
        Some(u) => u.iter().map(|s| Some(s.as_str())).collect(),
        None => vec![None],
    };
    for study in scope {
        let series: BTreeMap<String, _> = app
            .store
            .qr_series(study)?
            .into_iter()
            .filter(|s| {
                series_uids
                    .as_ref()
                    .is_none_or(|l| l.contains(&s.series_uid))
            })
            .map(|s| (format!("{}\0{}", s.study_uid, s.series_uid), s))
            .collect();
        if q.level == Level::Series {
            for s in series.values() {
                let Some(st) = studies.get(&s.study_uid) else {
                    continue;
                };
                let r = Record {
                    study: st,
                    series: Some(s),
                    instance: None,
                };
                if q.matches(&r) {
                    out.push(q.response(&r, ae));
                }
            }
            continue;
        }
        let lists: Vec<Option<&str>> = match (&series_uids, study) {
            (Some(l), Some(_)) => l.iter().map(|s| Some(s.as_str())).collect(),
            _ => vec![None],
        };
        for se in lists {
            for i in app.store.qr_instances(study, se)? {
                let key = format!("{}\0{}", i.study_uid, i.series_uid);
                let (Some(st), Some(s)) = (studies.get(&i.study_uid), series.get(&key)) else {
                    continue;
                };
                let r = Record {
                    study: st,
                    series: Some(s),
                    instance: Some(&i),
                };
                if q.matches(&r) {
                    out.push(q.response(&r, ae));
                }
            }
        }
    }
    Ok(out)
}

async fn find(
    app: &Arc<App>,
    conn: &mut Conn<'_>,
    pc: &PresentationContextNegotiated,
    cmd: &CommandSet,
    q: &Query,
) -> Result<()> {
    let msg_id = cmd.message_id().unwrap_or(0);
    let matches = {
        let (app, q) = (app.clone(), q.clone());
        tokio::task::spawn_blocking(move || find_matches(&app, &q)).await?
    };
    let matches = match matches {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "C-FIND failed");
            let mut rsp = CommandSet::response_to(cmd, CommandField::CFindRsp, UNABLE_TO_PROCESS);
            rsp.set_text(tags::ERROR_COMMENT, "index read failed");
            return send_command(conn, pc.id, &rsp).await;
        }
    };
    let pending = if q.unsupported.is_empty() {
        PENDING
    } else {
        PENDING_WARNING
    };
    for m in &matches {
        if cancel_requested(conn, msg_id).await? {
            let rsp = CommandSet::response_to(cmd, CommandField::CFindRsp, CANCEL);
            return send_command(conn, pc.id, &rsp).await;
        }
        let mut rsp = CommandSet::response_to(cmd, CommandField::CFindRsp, pending);
        rsp.set_u16(tags::COMMAND_DATA_SET_TYPE, 0x0000);
        send_with_data(conn, pc.id, &rsp, &encode(m, &pc.transfer_syntax)?).await?;
    }
    let rsp = CommandSet::response_to(cmd, CommandField::CFindRsp, status::SUCCESS);
    send_command(conn, pc.id, &rsp).await
}

/// The instances a C-GET or C-MOVE names: its level's unique keys are required
/// (a UID or a list of UIDs), those above it narrow the scan.
pub fn retrieve_set(
    app: &App,
    q: &Query,
) -> Result<std::result::Result<Vec<InstanceRow>, BadIdentifier>> {
    let study = q.uid_list(dtags::STUDY_INSTANCE_UID);
    let series = q.uid_list(dtags::SERIES_INSTANCE_UID);
    let sops = q.uid_list(dtags::SOP_INSTANCE_UID);
    let need = |name: &str| {
        Ok(Err(BadIdentifier(format!(
            "a {} retrieve needs {name}",
            q.level.name()
        ))))
    };
    let mut rows = Vec::new();
    match q.level {
        Level::Study => {
            let Some(study) = study else {
                return need("StudyInstanceUID (0020,000D)");
            };
            for st in &study {
                rows.extend(app.store.qr_instances(Some(st), None)?);
            }
        }
        Level::Series => {
            let Some(series) = series else {
                return need("SeriesInstanceUID (0020,000E)");
            };
            for se in &series {
                match &study {
                    Some(sts) => {
                        for st in sts {
                            rows.extend(app.store.qr_instances(Some(st), Some(se))?);
                        }
                    }
                    None => rows.extend(app.store.qr_instances(None, Some(se))?),
                }
            }
        }
        Level::Image => {
            let Some(sops) = sops else {
                return need("SOPInstanceUID (0008,0018)");
            };
            let wanted: BTreeSet<&String> = sops.iter().collect();
            let scopes: Vec<(Option<&str>, Option<&str>)> = match (&study, &series) {
                (Some(st), Some(se)) if st.len() == 1 => se
                    .iter()
                    .map(|s| (Some(st[0].as_str()), Some(s.as_str())))
                    .collect(),
                (Some(st), _) => st.iter().map(|s| (Some(s.as_str()), None)).collect(),
                _ => vec![(None, None)],
            };
            for (st, se) in scopes {
                rows.extend(
                    app.store
                        .qr_instances(st, se)?
                        .into_iter()
                        .filter(|r| wanted.contains(&r.sop_instance_uid)),
                );
            }
        }
    }
    Ok(Ok(rows))
}

enum Target {
    Get,
    Move(crate::config::MoveDestination),
}

#[derive(Default)]
struct Counts {
    remaining: u16,
    completed: u16,
    failed: u16,
    warning: u16,
    failed_uids: Vec<String>,
}

impl Counts {
    fn record(&mut self, sop: &str, status: Option<u16>) {
        self.remaining = self.remaining.saturating_sub(1);
        match status {
            Some(0x0000) => self.completed += 1,
            Some(s) if s & 0xF000 == 0xB000 => self.warning += 1,
            _ => {
                self.failed += 1;
                self.failed_uids.push(sop.to_string());
            }
        }
    }

    fn response(
        &self,
        cmd: &CommandSet,
        field: CommandField,
        st: u16,
        pending: bool,
    ) -> CommandSet {
        let mut rsp = CommandSet::response_to(cmd, field, st);
        if pending {
            rsp.set_u16(tags::NUMBER_OF_REMAINING_SUBOPERATIONS, self.remaining);
        }
        rsp.set_u16(tags::NUMBER_OF_COMPLETED_SUBOPERATIONS, self.completed)
            .set_u16(tags::NUMBER_OF_FAILED_SUBOPERATIONS, self.failed)
            .set_u16(tags::NUMBER_OF_WARNING_SUBOPERATIONS, self.warning);
        rsp
    }

    /// The final status: success, warning (some failed), failure (all failed).
    fn final_status(&self, cancelled: bool) -> u16 {
        if cancelled {
            CANCEL
        } else if self.failed == 0 && self.warning == 0 {
            status::SUCCESS
        } else if self.completed == 0 && self.warning == 0 {
            UNABLE_TO_PERFORM_SUBOPS
        } else {
            SUBOPS_WITH_FAILURES
        }
    }
}

async fn send_final(
    conn: &mut Conn<'_>,
    pc: &PresentationContextNegotiated,
    cmd: &CommandSet,
    field: CommandField,
    counts: &Counts,
    cancelled: bool,
    comment: Option<&str>,
) -> Result<()> {
    let st = counts.final_status(cancelled);
    let mut rsp = counts.response(cmd, field, st, cancelled);
    if let Some(c) = comment {
        rsp.set_text(tags::ERROR_COMMENT, &truncate(c, 64));
    }
    if counts.failed_uids.is_empty() && !cancelled {
        return send_command(conn, pc.id, &rsp).await;
    }
    // The Failed SOP Instance UID List says which ones (PS3.4 C.4.2.1.4).
    let mut id = InMemDicomObject::new_empty();
    id.put(DataElement::new(
        dtags::FAILED_SOP_INSTANCE_UID_LIST,
        VR::UI,
        PrimitiveValue::Strs(counts.failed_uids.iter().cloned().collect()),
    ));
    rsp.set_u16(tags::COMMAND_DATA_SET_TYPE, 0x0000);
    send_with_data(conn, pc.id, &rsp, &encode(&id, &pc.transfer_syntax)?).await
}

async fn retrieve(
    app: &Arc<App>,
    conn: &mut Conn<'_>,
    pc: &PresentationContextNegotiated,
    cmd: &CommandSet,
    q: &Query,
    target: Target,
) -> Result<()> {
    let field = match target {
        Target::Get => CommandField::CGetRsp,
        Target::Move(_) => CommandField::CMoveRsp,
    };
    let rows = match retrieve_set(app, q) {
        Ok(Ok(r)) => r,
        Ok(Err(bad)) => {
            let mut rsp = CommandSet::response_to(cmd, field, IDENTIFIER_DOES_NOT_MATCH);
            rsp.set_text(tags::ERROR_COMMENT, &truncate(&bad.0, 64));
            return send_command(conn, pc.id, &rsp).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "retrieve: index read failed");
            let mut rsp = CommandSet::response_to(cmd, field, UNABLE_TO_PROCESS);
            rsp.set_text(tags::ERROR_COMMENT, "index read failed");
            return send_command(conn, pc.id, &rsp).await;
        }
    };
    let mut counts = Counts {
        remaining: rows.len().min(u16::MAX as usize) as u16,
        ..Default::default()
    };
    let destination = match &target {
        Target::Get => conn.calling.to_string(),
        Target::Move(d) => d.ae_title.clone(),
    };
    let studies = studies_of(&rows);
    let (cancelled, comment) = match target {
        Target::Get => (
            get_subops(app, conn, pc, cmd, &rows, &mut counts).await?,
            None,
        ),
        Target::Move(d) => move_subops(app, conn, pc, cmd, rows, d, &mut counts).await?,
    };
    for (study, classes) in studies {
        let patient = app.store.patient_id_of_study(&study);
        crate::audit::transfer(
            &app.audit,
            crate::audit::Transfer {
                peer: &destination,
                address: None,
                received: false,
                export: false,
                study_uid: &study,
                patient_id: &patient,
                classes,
                ok: counts.failed == 0 && !cancelled,
                description: if matches!(field, CommandField::CGetRsp) {
                    "C-GET"
                } else {
                    "C-MOVE"
                },
            },
        );
    }
    let label = if matches!(field, CommandField::CGetRsp) {
        "get"
    } else {
        "move"
    };
    app.metrics.add(
        "scanside_qr_suboperations_total",
        &format!("op=\"{label}\",outcome=\"completed\""),
        (counts.completed + counts.warning) as u64,
    );
    app.metrics.add(
        "scanside_qr_suboperations_total",
        &format!("op=\"{label}\",outcome=\"failed\""),
        counts.failed as u64,
    );
    send_final(conn, pc, cmd, field, &counts, cancelled, comment.as_deref()).await
}

/// Per study, the SOP classes and instance counts of a retrieve (for the audit trail).
fn studies_of(rows: &[InstanceRow]) -> Vec<(String, Vec<(String, usize)>)> {
    let mut m: std::collections::BTreeMap<&str, std::collections::BTreeMap<&str, usize>> =
        Default::default();
    for r in rows {
        *m.entry(&r.study_uid)
            .or_default()
            .entry(&r.sop_class_uid)
            .or_default() += 1;
    }
    m.into_iter()
        .map(|(s, c)| {
            (
                s.to_string(),
                c.into_iter().map(|(k, n)| (k.to_string(), n)).collect(),
            )
        })
        .collect()
}

/// C-GET: each instance as a C-STORE on this association, on a context where
/// the requestor took the SCP role, in the stored syntax or an uncompressed one.
async fn get_subops(
    app: &Arc<App>,
    conn: &mut Conn<'_>,
    pc: &PresentationContextNegotiated,
    cmd: &CommandSet,
    rows: &[InstanceRow],
    counts: &mut Counts,
) -> Result<bool> {
    let msg_id = cmd.message_id().unwrap_or(0);
    let mut next_id: u16 = msg_id.wrapping_add(1).max(1);
    let mut cancelled = false;
    for row in rows {
        cancelled |= cancel_requested(conn, msg_id).await?;
        if cancelled {
            break;
        }
        let status = match prepare_get_subop(app, conn, row).await {
            Err(why) => {
                tracing::warn!(sop_ref = %crate::store::hash_ref(&row.sop_instance_uid), reason = %why, "C-GET sub-operation failed");
                None
            }
            Ok((sub_pc, data)) => {
                let sub_id = next_id;
                next_id = next_id.wrapping_add(1).max(1);
                let mut rq = CommandSet::new();
                rq.set_uid(tags::AFFECTED_SOP_CLASS_UID, &row.sop_class_uid)
                    .set_u16(tags::COMMAND_FIELD, CommandField::CStoreRq as u16)
                    .set_u16(tags::MESSAGE_ID, sub_id)
                    .set_u16(tags::PRIORITY, 0)
                    .set_u16(tags::COMMAND_DATA_SET_TYPE, 0x0000)
                    .set_uid(tags::AFFECTED_SOP_INSTANCE_UID, &row.sop_instance_uid);
                send_with_data(conn, sub_pc, &rq, &data).await?;
                loop {
                    let pdu = conn.assoc.receive().await?;
                    let (c, st) = on_peer_pdu(conn, pdu, msg_id, Some(sub_id))?;
                    cancelled |= c;
                    if st.is_some() {
                        break st;
                    }
                }
            }
        };
        counts.record(&row.sop_instance_uid, status);
        if counts.remaining > 0 && !cancelled {
            let rsp = counts.response(cmd, CommandField::CGetRsp, PENDING, true);
            send_command(conn, pc.id, &rsp).await?;
        }
    }
    Ok(cancelled)
}

/// The context and the encoded data set for one C-GET sub-operation.
async fn prepare_get_subop(
    app: &App,
    conn: &mut Conn<'_>,
    row: &InstanceRow,
) -> std::result::Result<(u8, Vec<u8>), String> {
    let contexts: Vec<&PresentationContextNegotiated> = conn
        .assoc
        .presentation_contexts()
        .iter()
        .filter(|c| {
            c.reason == PresentationContextResultReason::Acceptance
                && c.abstract_syntax.trim_end_matches('\0') == row.sop_class_uid
        })
        .collect();
    if contexts.is_empty() {
        return Err(format!("no presentation context for {}", row.sop_class_uid));
    }
    if !conn.assoc.requestor_roles_for(&row.sop_class_uid).scp {
        return Err(format!(
            "the requestor did not take the SCP role for {}",
            row.sop_class_uid
        ));
    }
    let stored = row.transfer_syntax.as_str();
    let chosen = contexts
        .iter()
        .find(|c| c.transfer_syntax.trim_end_matches('\0') == stored)
        .or_else(|| {
            contexts
                .iter()
                .find(|c| is_native(stored) && is_native(&c.transfer_syntax))
        })
        .ok_or_else(|| format!("no context in {stored} or an uncompressed syntax"))?;
    let (id, to) = (
        chosen.id,
        chosen.transfer_syntax.trim_end_matches('\0').to_string(),
    );
    let path = app.store.root().join(&row.path);
    let from = stored.to_string();
    let data = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).map_err(|e| format!("read: {e}"))?;
        dataset_in(&bytes, &from, &to).map_err(|e| format!("{e:#}"))
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok((id, data))
}

enum Progress {
    Done(String, Option<u16>),
}

/// C-MOVE: a blocking C-STORE SCU to the destination runs in a worker thread;
/// this side turns its progress into pending responses and watches for C-CANCEL.
async fn move_subops(
    app: &Arc<App>,
    conn: &mut Conn<'_>,
    pc: &PresentationContextNegotiated,
    cmd: &CommandSet,
    rows: Vec<InstanceRow>,
    dest: crate::config::MoveDestination,
    counts: &mut Counts,
) -> Result<(bool, Option<String>)> {
    let msg_id = cmd.message_id().unwrap_or(0);
    if rows.is_empty() {
        return Ok((false, None));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = {
        let (app, stop) = (app.clone(), stop.clone());
        let originator = conn.calling.to_string();
        tokio::task::spawn_blocking(move || {
            move_worker(&app, &dest, &rows, &originator, msg_id, &stop, &tx)
        })
    };
    let mut cancelled = false;
    while let Some(Progress::Done(sop, st)) = rx.recv().await {
        counts.record(&sop, st);
        if cancel_requested(conn, msg_id).await? {
            cancelled = true;
            stop.store(true, Ordering::SeqCst);
        }
        if counts.remaining > 0 && !cancelled {
            let rsp = counts.response(cmd, CommandField::CMoveRsp, PENDING, true);
            send_command(conn, pc.id, &rsp).await?;
        }
    }
    match worker.await? {
        Ok(()) => Ok((cancelled, None)),
        Err(e) => {
            // Could not reach the destination: every remaining instance failed.
            let why = format!("{e:#}");
            tracing::warn!(error = %why, "C-MOVE destination unreachable");
            Ok((cancelled, Some(why)))
        }
    }
}

fn move_worker(
    app: &App,
    dest: &crate::config::MoveDestination,
    rows: &[InstanceRow],
    originator: &str,
    msg_id: u16,
    stop: &AtomicBool,
    tx: &tokio::sync::mpsc::UnboundedSender<Progress>,
) -> Result<()> {
    let mut contexts: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.sop_class_uid.clone(), r.transfer_syntax.clone()))
        .collect();
    contexts.sort();
    contexts.dedup();
    let contexts = crate::dimse::syntax::proposals(&contexts);
    let addr = format!("{}:{}", dest.host, dest.port);
    let fail_all = |from: usize| {
        for r in &rows[from..] {
            let _ = tx.send(Progress::Done(r.sop_instance_uid.clone(), None));
        }
    };
    let mut scu = match crate::dimse::scu::StoreScu::connect_contexts(
        &addr,
        &app.config.dicom.ae_title,
        &dest.ae_title,
        &contexts,
    ) {
        Ok(s) => s,
        Err(e) => {
            fail_all(0);
            return Err(e);
        }
    };
    for (i, r) in rows.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let sent = (|| {
            let ts = scu
                .syntax_for(&r.sop_class_uid, &r.transfer_syntax)
                .ok_or_else(|| {
                    anyhow!(
                        "{} refused {} in {}",
                        dest.ae_title,
                        r.sop_class_uid,
                        r.transfer_syntax
                    )
                })?;
            let bytes = std::fs::read(app.store.root().join(&r.path))?;
            let data = dataset_in(&bytes, &r.transfer_syntax, &ts)?;
            scu.store_as(
                &r.sop_class_uid,
                &ts,
                &r.sop_instance_uid,
                &data,
                Some((originator, msg_id)),
            )
        })();
        match sent {
            Ok(st) => {
                let _ = tx.send(Progress::Done(r.sop_instance_uid.clone(), Some(st)));
            }
            Err(e) => {
                tracing::warn!(sop_ref = %crate::store::hash_ref(&r.sop_instance_uid), error = %format!("{e:#}"), "C-MOVE sub-operation failed");
                let _ = tx.send(Progress::Done(r.sop_instance_uid.clone(), None));
                if e.downcast_ref::<dicom_ul::association::Error>().is_some() {
                    fail_all(i + 1);
                    return Err(e);
                }
            }
        }
    }
    scu.release()
}
