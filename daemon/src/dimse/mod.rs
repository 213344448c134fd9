//! The DIMSE message layer shared by the SCP, the Q/R SCP and the forwarder.
//!
//! dicom-ul gives us PDUs; this module turns them into DIMSE messages: command sets
//! (group 0000, always Implicit VR Little Endian, PS3.7 section 6.3.1), their
//! reassembly from P-DATA fragments per presentation context, data-set streaming,
//! and status codes.

pub mod command;
pub mod scu;
pub mod status;
pub mod syntax;
pub mod tls;

pub use command::{CommandField, CommandSet, NO_DATA_SET};

use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};

/// Commands are small; anything bigger is an attack or a broken peer.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DimseError {
    #[error("command set is malformed: {0}")]
    BadCommand(String),
    #[error("command set larger than {MAX_COMMAND_BYTES} bytes")]
    CommandTooLarge,
    #[error("data fragment on presentation context {got} while the command came on {expected}")]
    ContextMismatch { expected: u8, got: u8 },
    #[error("data fragment without a preceding command that announces a data set")]
    UnexpectedData,
    #[error("new command fragment while the data set of the previous message is incomplete")]
    CommandDuringData,
}

/// What the assembler hands back once a fragment completes something.
#[derive(Debug)]
pub enum Fragment {
    /// A complete command set, and whether a data set follows.
    Command { pc_id: u8, command: CommandSet },
    /// A piece of the data set of the last command. `last` ends the message.
    Data {
        pc_id: u8,
        bytes: Vec<u8>,
        last: bool,
    },
}

/// Reassembles DIMSE messages from P-DATA-TF values. A command may arrive in several
/// PDVs (and PDUs); data set fragments are passed on as they come so that a large
/// object is streamed to disk instead of being held in memory.
#[derive(Debug, Default)]
pub struct Assembler {
    command_buf: Vec<u8>,
    command_pc: Option<u8>,
    /// Set while the data set of a command is being received.
    data_pc: Option<u8>,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// True while a data set is expected or partially received.
    pub fn in_data(&self) -> bool {
        self.data_pc.is_some()
    }

    pub fn push(&mut self, pdv: PDataValue) -> Result<Option<Fragment>, DimseError> {
        match pdv.value_type {
            PDataValueType::Command => {
                if self.data_pc.is_some() {
                    return Err(DimseError::CommandDuringData);
                }
                if let Some(pc) = self.command_pc {
                    if pc != pdv.presentation_context_id {
                        return Err(DimseError::ContextMismatch {
                            expected: pc,
                            got: pdv.presentation_context_id,
                        });
                    }
                }
                if self.command_buf.len() + pdv.data.len() > MAX_COMMAND_BYTES {
                    return Err(DimseError::CommandTooLarge);
                }
                self.command_pc = Some(pdv.presentation_context_id);
                self.command_buf.extend_from_slice(&pdv.data);
                if !pdv.is_last {
                    return Ok(None);
                }
                let bytes = std::mem::take(&mut self.command_buf);
                self.command_pc = None;
                let command = CommandSet::decode(&bytes)?;
                if command.has_data_set() {
                    self.data_pc = Some(pdv.presentation_context_id);
                }
                Ok(Some(Fragment::Command {
                    pc_id: pdv.presentation_context_id,
                    command,
                }))
            }
            PDataValueType::Data => {
                let expected = self.data_pc.ok_or(DimseError::UnexpectedData)?;
                if expected != pdv.presentation_context_id {
                    return Err(DimseError::ContextMismatch {
                        expected,
                        got: pdv.presentation_context_id,
                    });
                }
                if pdv.is_last {
                    self.data_pc = None;
                }
                Ok(Some(Fragment::Data {
                    pc_id: expected,
                    bytes: pdv.data,
                    last: pdv.is_last,
                }))
            }
        }
    }
}

/// A P-DATA-TF PDU carrying a whole command set in one PDV (commands always fit).
pub fn command_pdu(pc_id: u8, command: &CommandSet) -> Pdu {
    Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: command.encode(),
        }],
    }
}

/// Splits a data set into P-DATA-TF PDUs no larger than the peer's maximum.
/// `peer_max_pdu` is the PDU length the peer announced (0 = unlimited).
pub fn data_pdus(pc_id: u8, data: &[u8], peer_max_pdu: u32) -> impl Iterator<Item = Pdu> + '_ {
    // Each PDV item costs 6 bytes: length (4), context id (1), control header (1).
    let max = if peer_max_pdu == 0 {
        1 << 20
    } else {
        peer_max_pdu.min(1 << 20)
    };
    let chunk = (max as usize).saturating_sub(6).max(1);
    let n = data.len().div_ceil(chunk).max(1);
    (0..n).map(move |i| {
        let start = i * chunk;
        let end = (start + chunk).min(data.len());
        Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Data,
                is_last: i + 1 == n,
                data: data[start..end].to_vec(),
            }],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdv(pc: u8, t: PDataValueType, last: bool, data: &[u8]) -> PDataValue {
        PDataValue {
            presentation_context_id: pc,
            value_type: t,
            is_last: last,
            data: data.to_vec(),
        }
    }

    fn store_rq_bytes() -> Vec<u8> {
        let mut c = CommandSet::new();
        c.set_uid(
            command::tags::AFFECTED_SOP_CLASS_UID,
            "1.2.840.10008.5.1.4.1.1.4",
        );
        c.set_u16(command::tags::COMMAND_FIELD, CommandField::CStoreRq as u16);
        c.set_u16(command::tags::MESSAGE_ID, 7);
        c.set_u16(command::tags::PRIORITY, 0);
        c.set_u16(command::tags::COMMAND_DATA_SET_TYPE, 0x0000);
        c.set_uid(command::tags::AFFECTED_SOP_INSTANCE_UID, "1.2.3.4");
        c.encode()
    }

    #[test]
    fn command_split_over_three_pdvs_is_reassembled() {
        let bytes = store_rq_bytes();
        let (a, rest) = bytes.split_at(10);
        let (b, c) = rest.split_at(17);
        let mut asm = Assembler::new();
        assert!(asm
            .push(pdv(3, PDataValueType::Command, false, a))
            .unwrap()
            .is_none());
        assert!(asm
            .push(pdv(3, PDataValueType::Command, false, b))
            .unwrap()
            .is_none());
        match asm.push(pdv(3, PDataValueType::Command, true, c)).unwrap() {
            Some(Fragment::Command { pc_id, command }) => {
                assert_eq!(pc_id, 3);
                assert_eq!(command.message_id(), Some(7));
                assert_eq!(
                    command
                        .uid(command::tags::AFFECTED_SOP_INSTANCE_UID)
                        .as_deref(),
                    Some("1.2.3.4")
                );
                assert!(command.has_data_set());
            }
            other => panic!("expected a command, got {other:?}"),
        }
        assert!(asm.in_data());
        match asm
            .push(pdv(3, PDataValueType::Data, false, b"abc"))
            .unwrap()
        {
            Some(Fragment::Data { bytes, last, .. }) => {
                assert_eq!(bytes, b"abc");
                assert!(!last);
            }
            other => panic!("{other:?}"),
        }
        match asm.push(pdv(3, PDataValueType::Data, true, b"d")).unwrap() {
            Some(Fragment::Data { last, .. }) => assert!(last),
            other => panic!("{other:?}"),
        }
        assert!(!asm.in_data());
    }

    #[test]
    fn data_on_another_context_is_refused() {
        let mut asm = Assembler::new();
        asm.push(pdv(1, PDataValueType::Command, true, &store_rq_bytes()))
            .unwrap();
        assert_eq!(
            asm.push(pdv(3, PDataValueType::Data, true, b"x"))
                .unwrap_err(),
            DimseError::ContextMismatch {
                expected: 1,
                got: 3
            }
        );
    }

    #[test]
    fn data_without_command_is_refused() {
        let mut asm = Assembler::new();
        assert_eq!(
            asm.push(pdv(1, PDataValueType::Data, true, b"x"))
                .unwrap_err(),
            DimseError::UnexpectedData
        );
    }

    #[test]
    fn command_during_data_is_refused() {
        let mut asm = Assembler::new();
        asm.push(pdv(1, PDataValueType::Command, true, &store_rq_bytes()))
            .unwrap();
        assert_eq!(
            asm.push(pdv(1, PDataValueType::Command, true, &store_rq_bytes()))
                .unwrap_err(),
            DimseError::CommandDuringData
        );
    }

    #[test]
    fn oversized_command_is_refused() {
        let mut asm = Assembler::new();
        let big = vec![0u8; MAX_COMMAND_BYTES];
        asm.push(pdv(1, PDataValueType::Command, false, &big))
            .unwrap();
        assert_eq!(
            asm.push(pdv(1, PDataValueType::Command, false, b"x"))
                .unwrap_err(),
            DimseError::CommandTooLarge
        );
    }

    #[test]
    fn data_is_split_to_the_peer_maximum() {
        let data = vec![9u8; 100];
        let pdus: Vec<_> = data_pdus(5, &data, 16 + 6).collect();
        assert_eq!(pdus.len(), 7);
        let mut total = 0;
        for (i, p) in pdus.iter().enumerate() {
            let Pdu::PData { data } = p else { panic!() };
            assert_eq!(data[0].presentation_context_id, 5);
            assert_eq!(data[0].is_last, i == 6);
            assert!(data[0].data.len() <= 16);
            total += data[0].data.len();
        }
        assert_eq!(total, 100);
    }
}
