//! A blocking C-STORE SCU over dicom-ul's client association: one association,
//! explicit VR little endian, TCP_NODELAY, one request at a time, explicit
//! release. Used by `scanside demo`; the forwarder builds on the same messages.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use dicom_object::{FileDicomObject, InMemDicomObject};
use dicom_ul::association::client::{
    ClientAssociation, ClientAssociationOptions, CloseSocket, TlsStream,
};
use dicom_ul::pdu::Pdu;

use super::command::tags;
use super::{command_pdu, data_pdus, Assembler, CommandField, CommandSet, Fragment};

const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Storage Commitment Push Model SOP class and its well-known instance.
pub const STORAGE_COMMITMENT: &str = "1.2.840.10008.1.20.1";
pub const STORAGE_COMMITMENT_INSTANCE: &str = "1.2.840.10008.1.20.1.1";

/// Over plain TCP (`StoreScu`) or TLS (`StoreScu<TlsStream>`).
pub struct StoreScu<S = TcpStream> {
    assoc: ClientAssociation<S>,
    next_id: u16,
}

fn options<'a>(
    calling: &str,
    called: &str,
    contexts: &[(String, String)],
) -> ClientAssociationOptions<'a> {
    let mut o = ClientAssociationOptions::new()
        .calling_ae_title(calling.to_string())
        .called_ae_title(called.to_string())
        .read_timeout(Duration::from_secs(60))
        .write_timeout(Duration::from_secs(60))
        .connection_timeout(Duration::from_secs(10));
    for (class, ts) in contexts {
        o = o.with_presentation_context(class.clone(), vec![ts.clone()]);
    }
    o
}

impl StoreScu<TlsStream> {
    /// As `connect_contexts`, over TLS: the peer's certificate is checked
    /// against `tls`'s roots for `server_name`.
    pub fn connect_tls(
        addr: &str,
        calling: &str,
        called: &str,
        contexts: &[(String, String)],
        tls: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<StoreScu<TlsStream>> {
        let mut assoc = options(calling, called, contexts)
            .tls_config(tls)
            .server_name(server_name)
            .establish_tls(addr)
            .with_context(|| format!("cannot open a TLS association to {called} at {addr}"))?;
        assoc.inner_stream().sock.set_nodelay(true)?;
        Ok(StoreScu { assoc, next_id: 1 })
    }
}

impl StoreScu {
    /// Opens an association to `addr` offering each SOP class in `classes`.
    pub fn connect(addr: &str, calling: &str, called: &str, classes: &[&str]) -> Result<StoreScu> {
        let contexts: Vec<(String, String)> = classes
            .iter()
            .map(|c| (c.to_string(), EXPLICIT_VR_LE.to_string()))
            .collect();
        Self::connect_contexts(addr, calling, called, &contexts)
    }

    /// Opens an association offering one presentation context per (SOP class,
    /// transfer syntax) pair, so that each object can go as it is stored
    /// ((STORAGE_COMMITMENT, explicit VR LE) among them for storage commitment).
    pub fn connect_contexts(
        addr: &str,
        calling: &str,
        called: &str,
        contexts: &[(String, String)],
    ) -> Result<StoreScu> {
        let mut assoc = options(calling, called, contexts)
            .establish(addr)
            .with_context(|| format!("cannot open an association to {called} at {addr}"))?;
        // dicom-ul never sets it; without it each small message waits ~40 ms.
        assoc.inner_stream().set_nodelay(true)?;
        Ok(StoreScu { assoc, next_id: 1 })
    }
}

impl<S: CloseSocket + Read + Write> StoreScu<S> {
    /// Whether the peer accepted `class` in transfer syntax `ts`.
    pub fn accepts_ts(&self, class: &str, ts: &str) -> bool {
        self.context(class, ts).is_some()
    }

    /// The syntax to send an object stored in `stored` in: that one if the peer
    /// accepted it for `class`, else an accepted uncompressed one when `stored`
    /// is uncompressed (see syntax::proposals).
    pub fn syntax_for(&self, class: &str, stored: &str) -> Option<String> {
        if self.accepts_ts(class, stored) {
            return Some(stored.to_string());
        }
        if !super::syntax::is_native(stored) {
            return None;
        }
        [super::syntax::EXPLICIT_VR_LE, super::syntax::IMPLICIT_VR_LE]
            .into_iter()
            .find(|t| self.accepts_ts(class, t))
            .map(str::to_string)
    }

    fn context(&self, class: &str, ts: &str) -> Option<u8> {
        self.assoc
            .presentation_contexts()
            .iter()
            .find(|p| {
                p.abstract_syntax.trim_end_matches('\0') == class
                    && p.transfer_syntax.trim_end_matches('\0') == ts
                    && p.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance
            })
            .map(|p| p.id)
    }

    /// Sends one object; returns the C-STORE-RSP status.
    pub fn store(&mut self, obj: &FileDicomObject<InMemDicomObject>) -> Result<u16> {
        let class = obj
            .meta()
            .media_storage_sop_class_uid()
            .trim_end_matches('\0')
            .to_string();
        let sop = obj
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut data = Vec::new();
        obj.write_dataset_with_ts(&mut data, &ts)
            .map_err(|e| anyhow!("cannot encode the data set: {e}"))?;
        self.store_raw(&class, &sop, &data)
    }

    /// Sends a data set already encoded in explicit VR little endian (the bytes of a
    /// Part 10 file after its meta group), so the peer gets exactly what we stored.
    pub fn store_raw(&mut self, class: &str, sop: &str, data: &[u8]) -> Result<u16> {
        self.store_as(class, EXPLICIT_VR_LE, sop, data, None)
    }

    /// Sends a data set encoded in `ts`; `originator` is the (AE title, message
    /// id) of the C-MOVE this C-STORE is a sub-operation of.
    pub fn store_as(
        &mut self,
        class: &str,
        ts: &str,
        sop: &str,
        data: &[u8],
        originator: Option<(&str, u16)>,
    ) -> Result<u16> {
        let pc = self.context(class, ts).ok_or_else(|| {
            anyhow!("the peer accepted no presentation context for {class} in {ts}")
        })?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut rq = CommandSet::new();
        rq.set_uid(tags::AFFECTED_SOP_CLASS_UID, class)
            .set_u16(tags::COMMAND_FIELD, CommandField::CStoreRq as u16)
            .set_u16(tags::MESSAGE_ID, id)
            .set_u16(tags::PRIORITY, 0)
            .set_u16(tags::COMMAND_DATA_SET_TYPE, 0x0000)
            .set_uid(tags::AFFECTED_SOP_INSTANCE_UID, sop);
        if let Some((ae, msg)) = originator {
            rq.set_text(tags::MOVE_ORIGINATOR_AE_TITLE, ae)
                .set_u16(tags::MOVE_ORIGINATOR_MESSAGE_ID, msg);
        }
        self.assoc.send(&command_pdu(pc, &rq))?;
        let max = self.assoc.acceptor_max_pdu_length();
        for pdu in data_pdus(pc, data, max) {
            self.assoc.send(&pdu)?;
        }
        self.response(CommandField::CStoreRsp)?
            .status()
            .ok_or_else(|| anyhow!("C-STORE-RSP without a status"))
    }

    /// Asks for storage commitment of `refs` (SOP class, SOP instance) under
    /// `transaction_uid`: N-ACTION-RQ, action type 1. Returns the N-ACTION-RSP
    /// status; the outcome comes later in an N-EVENT-REPORT to our SCP.
    pub fn request_commitment(
        &mut self,
        transaction_uid: &str,
        refs: &[(String, String)],
    ) -> Result<u16> {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_dictionary_std::tags as t;
        let pc = self
            .context(STORAGE_COMMITMENT, EXPLICIT_VR_LE)
            .ok_or_else(|| {
                anyhow!("the peer accepted no presentation context for storage commitment")
            })?;
        let mut ds = InMemDicomObject::new_empty();
        ds.put(DataElement::new(
            t::TRANSACTION_UID,
            VR::UI,
            PrimitiveValue::from(transaction_uid),
        ));
        let items = refs
            .iter()
            .map(|(class, sop)| {
                InMemDicomObject::from_element_iter([
                    DataElement::new(
                        t::REFERENCED_SOP_CLASS_UID,
                        VR::UI,
                        PrimitiveValue::from(class.as_str()),
                    ),
                    DataElement::new(
                        t::REFERENCED_SOP_INSTANCE_UID,
                        VR::UI,
                        PrimitiveValue::from(sop.as_str()),
                    ),
                ])
            })
            .collect::<Vec<_>>();
        ds.put(DataElement::new(
            t::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(items),
        ));
        let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut data = Vec::new();
        ds.write_dataset_with_ts(&mut data, &ts)
            .map_err(|e| anyhow!("cannot encode the commitment request: {e}"))?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut rq = CommandSet::new();
        rq.set_uid(tags::REQUESTED_SOP_CLASS_UID, STORAGE_COMMITMENT)
            .set_u16(tags::COMMAND_FIELD, CommandField::NActionRq as u16)
            .set_u16(tags::MESSAGE_ID, id)
            .set_u16(tags::COMMAND_DATA_SET_TYPE, 0x0000)
            .set_uid(
                tags::REQUESTED_SOP_INSTANCE_UID,
                STORAGE_COMMITMENT_INSTANCE,
            )
            .set_u16(tags::ACTION_TYPE_ID, 1);
        self.assoc.send(&command_pdu(pc, &rq))?;
        for pdu in data_pdus(pc, &data, self.assoc.acceptor_max_pdu_length()) {
            self.assoc.send(&pdu)?;
        }
        let rsp = self.response(CommandField::NActionRsp)?;
        // A data set may follow the response; it carries nothing we need.
        if rsp.has_data_set() {
            self.skip_data()?;
        }
        rsp.status()
            .ok_or_else(|| anyhow!("N-ACTION-RSP without a status"))
    }

    /// The next command from the peer, which must be `expected`.
    fn response(&mut self, expected: CommandField) -> Result<CommandSet> {
        let mut asm = Assembler::new();
        loop {
            match self.assoc.receive()? {
                Pdu::PData { data } => {
                    for pdv in data {
                        if let Some(Fragment::Command { command, .. }) = asm.push(pdv)? {
                            if command.command_field() != Some(expected) {
                                bail!("unexpected response {:?}", command.command_field());
                            }
                            return Ok(command);
                        }
                    }
                }
                Pdu::AbortRQ { source } => bail!("the peer aborted the association ({source:?})"),
                other => bail!("unexpected PDU {other:?}"),
            }
        }
    }

    fn skip_data(&mut self) -> Result<()> {
        loop {
            match self.assoc.receive()? {
                Pdu::PData { data } => {
                    if data.iter().any(|p| p.is_last) {
                        return Ok(());
                    }
                }
                other => bail!("unexpected PDU {other:?}"),
            }
        }
    }

    pub fn release(self) -> Result<()> {
        self.assoc.release().map_err(|e| anyhow!("release: {e}"))
    }
}
