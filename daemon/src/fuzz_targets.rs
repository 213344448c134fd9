//! The entry points of the fuzz targets (fuzz/, run by bench/fuzz), shared with
//! the regression test that replays every kept input (tests/corpus/). Each takes
//! arbitrary bytes and must return (Ok or a specific error) without panicking.

use dicom_ul::pdu::{PDataValueType, Pdu};

use crate::dimse::{Assembler, CommandSet, Fragment};

/// One target: arbitrary bytes in, no panic out.
pub type Target = fn(&[u8]);

/// The targets by name, as fuzz/ and tests/corpus/<name>/ call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("pdu", pdu),
    ("command", command),
    ("instance", instance),
    ("identifier", identifier),
    ("config", config),
    ("manifest", manifest),
];

/// An upper-layer PDU as the SCP reads it (strict, our largest PDU), and the
/// PDVs of a P-DATA-TF through the DIMSE message assembler.
pub fn pdu(data: &[u8]) {
    let Ok(Some(pdu)) = dicom_ul::pdu::read_pdu(data, 65536, true) else {
        return;
    };
    if let Pdu::PData { data } = pdu {
        let mut asm = Assembler::new();
        for pdv in data {
            let is_command = pdv.value_type == PDataValueType::Command;
            match asm.push(pdv) {
                Ok(Some(Fragment::Command { command, .. })) => {
                    assert!(is_command);
                    let _ = command.command_field();
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

/// A DIMSE command set; what decodes must encode and decode to the same thing.
pub fn command(data: &[u8]) {
    if let Ok(c) = CommandSet::decode(data) {
        let again = CommandSet::decode(&c.encode()).expect("an encoded command set decodes");
        assert_eq!(again.encode(), c.encode());
    }
}

/// A received instance as the C-STORE SCP parses it after the spool write.
pub fn instance(data: &[u8]) {
    if let Ok(h) = crate::store::parse_header_bytes(data) {
        // What becomes a path must be a valid UID.
        let _ = crate::store::valid_uid(&h.study_uid);
    }
}

/// A C-FIND/C-GET/C-MOVE identifier in explicit and implicit VR.
pub fn identifier(data: &[u8]) {
    for ts in ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"] {
        if let Ok(obj) = crate::qr::decode(data, ts) {
            let _ = crate::qr::matching::Query::parse(&obj);
        }
    }
}

/// A configuration file (one layer).
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::parse(text, "fuzz");
    }
}

/// A model bundle's manifest.toml.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::infer::manifest::Manifest::parse(text);
    }
}
