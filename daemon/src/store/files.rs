//! Part 10 files in the spool: writing the header, parsing what was received.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use sha2::{Digest, Sha256};

/// Our implementation class UID (a UUID-derived 2.25 UID, fixed for scanside).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.13732587490324042126429980261497844063";
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("SCANSIDE_", env!("CARGO_PKG_VERSION"));

/// The identifying attributes of a received instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceHeader {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub transfer_syntax: String,
    pub modality: String,
    pub series_description: String,
    pub instance_number: Option<i64>,
    pub expected_in_series: Option<u64>,
    pub number_of_frames: Option<u64>,
}

/// PS3.5 9.1: components of digits separated by dots, at most 64 characters, no
/// leading zero in a multi-digit component. Anything else never becomes a path.
pub fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

/// A short, stable, non-reversible reference for logs (no UIDs or PHI at info level).
pub fn hash_ref(s: &str) -> String {
    let h = Sha256::digest(s.as_bytes());
    h[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the preamble, "DICM" and the file meta group for a data set that follows
/// as received on the wire.
pub fn write_part10_header<W: Write>(
    mut w: W,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax: &str,
    calling_ae: &str,
) -> Result<()> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(calling_ae.trim())
        .build()
        .context("cannot build file meta")?;
    w.write_all(&[0u8; 128])?;
    w.write_all(b"DICM")?;
    meta.write(&mut w).context("cannot write file meta")?;
    Ok(())
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn int(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<i64> {
    text(obj, tag).and_then(|s| s.split('\\').next()?.trim().parse().ok())
}

const ENHANCED_MR: &str = "1.2.840.10008.5.1.4.1.1.4.1";
const LEGACY_ENHANCED_MR: &str = "1.2.840.10008.5.1.4.1.1.4.4";

/// Parses the whole file (so a truncated data set is caught here, not later) and
/// returns its identifying attributes.
pub fn parse_header(path: &Path) -> Result<InstanceHeader> {
    let obj = OpenFileOptions::new()
        .open_file(path)
        .map_err(|e| anyhow!("{e}"))?;
    let need = |tag, name: &str| text(&obj, tag).ok_or_else(|| anyhow!("{name} is missing"));
    let sop_class_uid = need(tags::SOP_CLASS_UID, "SOPClassUID (0008,0016)")?;
    let number_of_frames = int(&obj, tags::NUMBER_OF_FRAMES).and_then(|n| u64::try_from(n).ok());
    let images_in_acq = int(&obj, tags::IMAGES_IN_ACQUISITION)
        .and_then(|n| u64::try_from(n).ok())
        .filter(|&n| n > 0);
    // A multi-frame Enhanced MR instance carries the whole acquisition.
    let expected_in_series = images_in_acq.or_else(|| {
        ([ENHANCED_MR, LEGACY_ENHANCED_MR].contains(&sop_class_uid.as_str())
            && number_of_frames.is_some_and(|n| n > 1))
        .then_some(1)
    });
    Ok(InstanceHeader {
        sop_instance_uid: need(tags::SOP_INSTANCE_UID, "SOPInstanceUID (0008,0018)")?,
        study_uid: need(tags::STUDY_INSTANCE_UID, "StudyInstanceUID (0020,000D)")?,
        series_uid: need(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID (0020,000E)")?,
        transfer_syntax: obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string(),
        modality: text(&obj, tags::MODALITY).unwrap_or_default(),
        series_description: text(&obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        instance_number: int(&obj, tags::INSTANCE_NUMBER),
        expected_in_series,
        number_of_frames,
        sop_class_uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_validation() {
        assert!(valid_uid("1.2.840.10008.5.1.4.1.1.4"));
        assert!(valid_uid("2.25.0"));
        for bad in [
            "",
            "1..2",
            "1.2.",
            "../etc",
            "1.2/3",
            "1.02",
            "a.b",
            &"1.".repeat(40),
        ] {
            assert!(!valid_uid(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn hash_ref_is_stable_and_short() {
        assert_eq!(hash_ref("x"), hash_ref("x"));
        assert_ne!(hash_ref("x"), hash_ref("y"));
        assert_eq!(hash_ref("x").len(), 12);
    }
}
