//! DIMSE command sets: group 0000 elements in Implicit VR Little Endian.

use std::collections::BTreeMap;

use super::DimseError;

/// Value of (0000,0800) CommandDataSetType meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;

/// Element numbers in group 0000 (PS3.7 section E.1).
pub mod tags {
    pub const COMMAND_GROUP_LENGTH: u16 = 0x0000;
    pub const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
    pub const REQUESTED_SOP_CLASS_UID: u16 = 0x0003;
    pub const COMMAND_FIELD: u16 = 0x0100;
    pub const MESSAGE_ID: u16 = 0x0110;
    pub const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
    pub const MOVE_DESTINATION: u16 = 0x0600;
    pub const PRIORITY: u16 = 0x0700;
    pub const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
    pub const STATUS: u16 = 0x0900;
    pub const OFFENDING_ELEMENT: u16 = 0x0901;
    pub const ERROR_COMMENT: u16 = 0x0902;
    pub const ERROR_ID: u16 = 0x0903;
    pub const AFFECTED_SOP_INSTANCE_UID: u16 = 0x1000;
    pub const EVENT_TYPE_ID: u16 = 0x1002;
    pub const ACTION_TYPE_ID: u16 = 0x1008;
    pub const REQUESTED_SOP_INSTANCE_UID: u16 = 0x1001;
    pub const NUMBER_OF_REMAINING_SUBOPERATIONS: u16 = 0x1020;
    pub const NUMBER_OF_COMPLETED_SUBOPERATIONS: u16 = 0x1021;
    pub const NUMBER_OF_FAILED_SUBOPERATIONS: u16 = 0x1022;
    pub const NUMBER_OF_WARNING_SUBOPERATIONS: u16 = 0x1023;
    pub const MOVE_ORIGINATOR_AE_TITLE: u16 = 0x1030;
    pub const MOVE_ORIGINATOR_MESSAGE_ID: u16 = 0x1031;
}

/// (0000,0100) CommandField values (PS3.7 section E.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CommandField {
    CStoreRq = 0x0001,
    CStoreRsp = 0x8001,
    CGetRq = 0x0010,
    CGetRsp = 0x8010,
    CFindRq = 0x0020,
    CFindRsp = 0x8020,
    CMoveRq = 0x0021,
    CMoveRsp = 0x8021,
    CEchoRq = 0x0030,
    CEchoRsp = 0x8030,
    NEventReportRq = 0x0100,
    NEventReportRsp = 0x8100,
    NActionRq = 0x0130,
    NActionRsp = 0x8130,
    CCancelRq = 0x0FFF,
}

impl CommandField {
    pub fn from_u16(v: u16) -> Option<Self> {
        use CommandField::*;
        Some(match v {
            0x0001 => CStoreRq,
            0x8001 => CStoreRsp,
            0x0010 => CGetRq,
            0x8010 => CGetRsp,
            0x0020 => CFindRq,
            0x8020 => CFindRsp,
            0x0021 => CMoveRq,
            0x8021 => CMoveRsp,
            0x0030 => CEchoRq,
            0x8030 => CEchoRsp,
            0x0100 => NEventReportRq,
            0x8100 => NEventReportRsp,
            0x0130 => NActionRq,
            0x8130 => NActionRsp,
            0x0FFF => CCancelRq,
            _ => return None,
        })
    }
}

/// A decoded command set. Values are kept as raw bytes keyed by element number so
/// that unknown (retired or future) elements survive a round trip.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandSet {
    elements: BTreeMap<u16, Vec<u8>>,
}

impl CommandSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DimseError> {
        let bad = |m: String| DimseError::BadCommand(m);
        let mut elements = BTreeMap::new();
        let mut i = 0usize;
        while i < bytes.len() {
            if bytes.len() - i < 8 {
                return Err(bad(format!("truncated element header at byte {i}")));
            }
            let group = u16::from_le_bytes([bytes[i], bytes[i + 1]]);
            let elem = u16::from_le_bytes([bytes[i + 2], bytes[i + 3]]);
            let len = u32::from_le_bytes([bytes[i + 4], bytes[i + 5], bytes[i + 6], bytes[i + 7]])
                as usize;
            i += 8;
            if group != 0x0000 {
                return Err(bad(format!(
                    "element ({group:04X},{elem:04X}) is not in the command group"
                )));
            }
            if len > bytes.len() - i {
                return Err(bad(format!(
                    "element (0000,{elem:04X}) claims {len} bytes, {} remain",
                    bytes.len() - i
                )));
            }
            elements.insert(elem, bytes[i..i + len].to_vec());
            i += len;
        }
        let cmd = CommandSet { elements };
        if cmd.command_field_raw().is_none() {
            return Err(bad("no (0000,0100) CommandField".into()));
        }
        if cmd.get_u16(tags::COMMAND_DATA_SET_TYPE).is_none() {
            return Err(bad("no (0000,0800) CommandDataSetType".into()));
        }
        Ok(cmd)
    }

    /// Encodes with a fresh (0000,0000) group length.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for (&elem, value) in &self.elements {
            if elem == tags::COMMAND_GROUP_LENGTH {
                continue;
            }
            body.extend_from_slice(&0u16.to_le_bytes());
            body.extend_from_slice(&elem.to_le_bytes());
            body.extend_from_slice(&(value.len() as u32).to_le_bytes());
            body.extend_from_slice(value);
        }
        let mut out = Vec::with_capacity(body.len() + 12);
        out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    pub fn set_u16(&mut self, elem: u16, v: u16) -> &mut Self {
        self.elements.insert(elem, v.to_le_bytes().to_vec());
        self
    }

    /// UI values are padded with NUL to even length.
    pub fn set_uid(&mut self, elem: u16, v: &str) -> &mut Self {
        let mut b = v.as_bytes().to_vec();
        if b.len() % 2 == 1 {
            b.push(0);
        }
        self.elements.insert(elem, b);
        self
    }

    /// AE, LO and other text values are padded with a space to even length.
    pub fn set_text(&mut self, elem: u16, v: &str) -> &mut Self {
        let mut b = v.as_bytes().to_vec();
        if b.len() % 2 == 1 {
            b.push(b' ');
        }
        self.elements.insert(elem, b);
        self
    }

    pub fn get_u16(&self, elem: u16) -> Option<u16> {
        let b = self.elements.get(&elem)?;
        (b.len() == 2).then(|| u16::from_le_bytes([b[0], b[1]]))
    }

    /// A UI value without its NUL/space padding.
    pub fn uid(&self, elem: u16) -> Option<String> {
        self.text(elem)
    }

    pub fn text(&self, elem: u16) -> Option<String> {
        let b = self.elements.get(&elem)?;
        let s = String::from_utf8_lossy(b);
        Some(s.trim_end_matches(['\0', ' ']).trim_start().to_string())
    }

    pub fn command_field_raw(&self) -> Option<u16> {
        self.get_u16(tags::COMMAND_FIELD)
    }

    pub fn command_field(&self) -> Option<CommandField> {
        self.command_field_raw().and_then(CommandField::from_u16)
    }

    pub fn message_id(&self) -> Option<u16> {
        self.get_u16(tags::MESSAGE_ID)
    }

    pub fn status(&self) -> Option<u16> {
        self.get_u16(tags::STATUS)
    }

    pub fn has_data_set(&self) -> bool {
        self.get_u16(tags::COMMAND_DATA_SET_TYPE)
            .is_some_and(|v| v != NO_DATA_SET)
    }

    /// A response to `rq` with the given command field and status, echoing the
    /// affected SOP class/instance as PS3.7 requires.
    pub fn response_to(rq: &CommandSet, field: CommandField, status: u16) -> CommandSet {
        let mut rsp = CommandSet::new();
        if let Some(v) = rq.elements.get(&tags::AFFECTED_SOP_CLASS_UID) {
            rsp.elements.insert(tags::AFFECTED_SOP_CLASS_UID, v.clone());
        }
        rsp.set_u16(tags::COMMAND_FIELD, field as u16);
        rsp.set_u16(
            tags::MESSAGE_ID_BEING_RESPONDED_TO,
            rq.message_id().unwrap_or(0),
        );
        rsp.set_u16(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET);
        rsp.set_u16(tags::STATUS, status);
        if let Some(v) = rq.elements.get(&tags::AFFECTED_SOP_INSTANCE_UID) {
            rsp.elements
                .insert(tags::AFFECTED_SOP_INSTANCE_UID, v.clone());
        }
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// C-ECHO-RQ, message id 1, as DCMTK's echoscu and pynetdicom put it on the wire.
    const ECHO_RQ: &[u8] = &[
        0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x38, 0x00, 0x00,
        0x00, // group length 56
        0x00, 0x00, 0x02, 0x00, 0x12, 0x00, 0x00, 0x00, b'1', b'.', b'2', b'.', b'8', b'4', b'0',
        b'.', b'1', b'0', b'0', b'0', b'8', b'.', b'1', b'.', b'1',
        0x00, // affected SOP class
        0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x30, 0x00, // command field C-ECHO-RQ
        0x00, 0x00, 0x10, 0x01, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, // message id 1
        0x00, 0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x00, 0x01, 0x01, // no data set
    ];

    #[test]
    fn decodes_echo_rq_fixture() {
        let c = CommandSet::decode(ECHO_RQ).unwrap();
        assert_eq!(c.command_field(), Some(CommandField::CEchoRq));
        assert_eq!(c.message_id(), Some(1));
        assert_eq!(
            c.uid(tags::AFFECTED_SOP_CLASS_UID).as_deref(),
            Some("1.2.840.10008.1.1")
        );
        assert!(!c.has_data_set());
    }

    #[test]
    fn encodes_echo_rq_fixture_byte_for_byte() {
        let mut c = CommandSet::new();
        c.set_uid(tags::AFFECTED_SOP_CLASS_UID, "1.2.840.10008.1.1")
            .set_u16(tags::COMMAND_FIELD, CommandField::CEchoRq as u16)
            .set_u16(tags::MESSAGE_ID, 1)
            .set_u16(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET);
        assert_eq!(c.encode(), ECHO_RQ);
    }

    #[test]
    fn echo_response_fixture() {
        let rq = CommandSet::decode(ECHO_RQ).unwrap();
        let rsp = CommandSet::response_to(&rq, CommandField::CEchoRsp, 0x0000);
        let expected: &[u8] = &[
            0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x42, 0x00, 0x00, 0x00, // 66
            0x00, 0x00, 0x02, 0x00, 0x12, 0x00, 0x00, 0x00, b'1', b'.', b'2', b'.', b'8', b'4',
            b'0', b'.', b'1', b'0', b'0', b'0', b'8', b'.', b'1', b'.', b'1', 0x00, //
            0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x30, 0x80, // C-ECHO-RSP
            0x00, 0x00, 0x20, 0x01, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, // responding to 1
            0x00, 0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x00, 0x01, 0x01, // no data set
            0x00, 0x00, 0x00, 0x09, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, // status 0000
        ];
        assert_eq!(rsp.encode(), expected);
    }

    #[test]
    fn text_padding_roundtrips() {
        let mut c = CommandSet::new();
        c.set_u16(tags::COMMAND_FIELD, 1)
            .set_u16(tags::COMMAND_DATA_SET_TYPE, 0)
            .set_text(tags::ERROR_COMMENT, "odd")
            .set_uid(tags::AFFECTED_SOP_INSTANCE_UID, "1.2.3");
        let d = CommandSet::decode(&c.encode()).unwrap();
        assert_eq!(d.text(tags::ERROR_COMMENT).as_deref(), Some("odd"));
        assert_eq!(
            d.uid(tags::AFFECTED_SOP_INSTANCE_UID).as_deref(),
            Some("1.2.3")
        );
        assert!(d.has_data_set());
    }

    #[test]
    fn truncated_and_foreign_elements_are_errors() {
        assert!(matches!(
            CommandSet::decode(&ECHO_RQ[..ECHO_RQ.len() - 1]),
            Err(DimseError::BadCommand(_))
        ));
        let mut foreign = ECHO_RQ.to_vec();
        foreign.extend_from_slice(&[0x08, 0x00, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00]);
        let e = CommandSet::decode(&foreign).unwrap_err();
        assert!(e.to_string().contains("(0008,0018)"), "{e}");
        // A command without CommandField is not a command.
        assert!(CommandSet::decode(&ECHO_RQ[..38]).is_err());
    }
}
