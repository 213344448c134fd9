//! Storage commitment (Push Model, PS3.4 J): with `storage_commitment = true` an
//! object the destination stored is `committing` until the destination's
//! N-EVENT-REPORT says it holds it (then `delivered`) or that it failed (then it
//! is sent again, and dead-lettered with the reason after max_tries). No report
//! within commitment_timeout_s: sent again.

use std::collections::BTreeSet;

use anyhow::{anyhow, Result};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::dimse::command::tags as ctags;
use crate::dimse::{status, CommandField, CommandSet};
use crate::store::{now_ms, OutboxEntry, OutboxState};
use crate::App;

/// A fresh transaction UID (2.25 + 128 random-ish bits from the clock and pid).
pub fn transaction_uid(seq: u64) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{}-{}-{seq}", now_ms(), std::process::id()).as_bytes());
    let n = u128::from_be_bytes(h[..16].try_into().expect("16 bytes"));
    format!("2.25.{n}")
}

/// What a report says: committed SOP instances, failed ones with their reason.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub transaction_uid: String,
    pub committed: Vec<String>,
    pub failed: Vec<(String, u16)>,
}

pub fn parse_report(obj: &InMemDicomObject) -> Result<Report> {
    let txn = crate::store::attr_text(obj, tags::TRANSACTION_UID)
        .ok_or_else(|| anyhow!("Transaction UID (0008,1195) is missing"))?;
    let items = |tag| -> Vec<InMemDicomObject> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.items().map(|i| i.to_vec()))
            .unwrap_or_default()
    };
    let sop = |i: &InMemDicomObject| crate::store::attr_text(i, tags::REFERENCED_SOP_INSTANCE_UID);
    Ok(Report {
        transaction_uid: txn,
        committed: items(tags::REFERENCED_SOP_SEQUENCE)
            .iter()
            .filter_map(sop)
            .collect(),
        failed: items(tags::FAILED_SOP_SEQUENCE)
            .iter()
            .filter_map(|i| {
                let reason = crate::store::attr_text(i, tags::FAILURE_REASON)
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0x0110);
                Some((sop(i)?, reason))
            })
            .collect(),
    })
}

/// Applies a report to the outbox; returns how many entries it settled.
pub fn apply(app: &App, calling: &str, r: &Report) -> Result<usize> {
    let committed: BTreeSet<&String> = r.committed.iter().collect();
    let mut jobs = BTreeSet::new();
    let mut n = 0;
    for mut e in app.store.outbox_entries(None)? {
        if e.state != OutboxState::Committing
            || e.commitment_uid.as_deref() != Some(r.transaction_uid.as_str())
        {
            continue;
        }
        let label = format!("destination=\"{}\"", e.destination);
        if committed.contains(&e.sop_instance_uid) {
            e.state = OutboxState::Delivered;
            e.delivered_ms = Some(now_ms());
            e.last_error = None;
            app.metrics.inc("scanside_outbox_delivered_total", &label);
        } else if let Some((_, reason)) = r.failed.iter().find(|(s, _)| *s == e.sop_instance_uid) {
            let max = app
                .live()
                .upstream
                .iter()
                .find(|u| u.ae_title == e.destination)
                .map_or(1, |u| u.max_tries);
            refused(
                app,
                &mut e,
                format!("storage commitment failed, reason {reason:04X}"),
                max,
            );
        } else {
            continue; // not in this report (a partial one): still waiting
        }
        e.commitment_uid = None;
        e.committing_since_ms = None;
        app.store.outbox_update(&e)?;
        jobs.insert(e.job_id.clone());
        n += 1;
    }
    app.store.mark_delivered(&jobs)?;
    tracing::info!(calling_ae = %calling, settled = n, failed = r.failed.len(), "storage commitment report");
    Ok(n)
}

/// A refusal (a failed commitment): retried later, dead after `max_tries`.
pub fn refused(app: &App, e: &mut OutboxEntry, why: String, max_tries: u32) {
    let label = format!("destination=\"{}\"", e.destination);
    e.tries += 1;
    e.last_error = Some(why);
    if e.tries >= max_tries {
        e.state = OutboxState::Dead;
        app.metrics
            .inc("scanside_outbox_dead_letters_total", &label);
    } else {
        e.state = OutboxState::Pending;
        app.metrics.inc("scanside_outbox_retries_total", &label);
    }
}

/// Entries that waited longer than the timeout for their report go back in the
/// queue (they are sent, and committed, again).
pub fn expire(app: &App, u: &crate::config::UpstreamConfig) -> Result<()> {
    let now = now_ms();
    for mut e in app.store.outbox_entries(Some(&u.ae_title))? {
        let waited = e.committing_since_ms.map(|t| now.saturating_sub(t));
        if e.state == OutboxState::Committing && waited > Some(u.commitment_timeout_s * 1000) {
            e.state = OutboxState::Pending;
            e.last_error = Some(format!(
                "no storage commitment report within {} s; sent again",
                u.commitment_timeout_s
            ));
            e.commitment_uid = None;
            e.committing_since_ms = None;
            app.store.outbox_update(&e)?;
        }
    }
    Ok(())
}

/// Our SCP's answer to an N-EVENT-REPORT-RQ carrying a storage commitment result.
pub fn on_event_report(
    app: &App,
    calling: &str,
    cmd: &CommandSet,
    obj: Result<InMemDicomObject>,
) -> CommandSet {
    let mut rsp = CommandSet::new();
    rsp.set_uid(
        ctags::AFFECTED_SOP_CLASS_UID,
        &cmd.uid(ctags::AFFECTED_SOP_CLASS_UID).unwrap_or_default(),
    )
    .set_u16(ctags::COMMAND_FIELD, CommandField::NEventReportRsp as u16)
    .set_u16(
        ctags::MESSAGE_ID_BEING_RESPONDED_TO,
        cmd.message_id().unwrap_or(0),
    )
    .set_u16(ctags::COMMAND_DATA_SET_TYPE, crate::dimse::NO_DATA_SET)
    .set_uid(
        ctags::AFFECTED_SOP_INSTANCE_UID,
        &cmd.uid(ctags::AFFECTED_SOP_INSTANCE_UID)
            .unwrap_or_default(),
    );
    if let Some(t) = cmd.get_u16(ctags::EVENT_TYPE_ID) {
        rsp.set_u16(ctags::EVENT_TYPE_ID, t);
    }
    let outcome = obj
        .and_then(|o| parse_report(&o))
        .and_then(|r| apply(app, calling, &r));
    let st = match outcome {
        Ok(_) => status::SUCCESS,
        Err(e) => {
            tracing::warn!(calling_ae = %calling, error = %format!("{e:#}"), "storage commitment report not understood");
            rsp.set_text(
                ctags::ERROR_COMMENT,
                &format!("{e:#}").chars().take(64).collect::<String>(),
            );
            status::PROCESSING_FAILURE
        }
    };
    rsp.set_u16(ctags::STATUS, st);
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    fn item(sop: &str, reason: Option<&str>) -> InMemDicomObject {
        let mut i = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.66.4"),
            ),
            DataElement::new(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(sop),
            ),
        ]);
        if let Some(r) = reason {
            i.put(DataElement::new(
                tags::FAILURE_REASON,
                VR::US,
                PrimitiveValue::from(r),
            ));
        }
        i
    }

    #[test]
    fn a_report_names_committed_and_failed_instances() {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(
            tags::TRANSACTION_UID,
            VR::UI,
            PrimitiveValue::from("2.25.7"),
        ));
        obj.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![
                item("1.2.3", None),
                item("1.2.4", None),
            ]),
        ));
        obj.put(DataElement::new(
            tags::FAILED_SOP_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![item("1.2.5", Some("274"))]),
        ));
        let r = parse_report(&obj).unwrap();
        assert_eq!(r.transaction_uid, "2.25.7");
        assert_eq!(r.committed, vec!["1.2.3", "1.2.4"]);
        assert_eq!(r.failed, vec![("1.2.5".to_string(), 274)]);
        let empty = InMemDicomObject::new_empty();
        assert!(parse_report(&empty)
            .unwrap_err()
            .to_string()
            .contains("(0008,1195)"));
    }

    #[test]
    fn transaction_uids_are_valid_and_fresh() {
        let (a, b) = (transaction_uid(1), transaction_uid(2));
        assert!(crate::store::valid_uid(&a), "{a}");
        assert_ne!(a, b);
    }
}
