//! Part 10 files in the spool: writing the header, parsing what was received.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::{tags, StandardDataDictionary};
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
    /// What a C-FIND matches and returns.
    pub query: super::query::QueryAttrs,
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

/// An attribute's text value without padding; None when absent or empty.
pub fn attr_text(obj: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    attr_text(obj, tag)
}

fn int(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<i64> {
    text(obj, tag).and_then(|s| s.split('\\').next()?.trim().parse().ok())
}

const ENHANCED_MR: &str = "1.2.840.10008.5.1.4.1.1.4.1";
const LEGACY_ENHANCED_MR: &str = "1.2.840.10008.5.1.4.1.1.4.4";

const KNOWN_VRS: &[&[u8; 2]] = &[
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
];

/// Bytes per value of the binary VRs. dicom-parser reads length / size values
/// and moves on by that many bytes, not by the length: a length that is not a
/// multiple (an SL of 2 bytes) puts it off the element boundaries, where it read
/// a 4 GB length this walk never saw (fuzz input tests/corpus/instance/oom-6ff6...).
fn value_size(vr: &[u8; 2]) -> u32 {
    match vr {
        b"US" | b"SS" | b"OW" => 2,
        b"UL" | b"SL" | b"FL" | b"OF" | b"OL" | b"AT" => 4,
        b"FD" | b"OD" | b"SV" | b"UV" | b"OV" => 8,
        _ => 1,
    }
}

/// Walks the element headers of a data set and checks that no defined length runs
/// past the end of the data. dicom-rs allocates a value's buffer from its header
/// before reading it: a 10 KiB file with one bogus length made it take 1.2 GB and
/// 10 s to fail (pydicom's SC_rgb_jpeg.dcm). This bounds every allocation by the
/// file's own size. Deflated data sets are not walked (their bytes are compressed).
pub fn check_element_lengths(data: &[u8], implicit: bool, big_endian: bool) -> Result<()> {
    let u16_at = |p: usize| {
        let b = [data[p], data[p + 1]];
        if big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let u32_at = |p: usize| {
        let b = [data[p], data[p + 1], data[p + 2], data[p + 3]];
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let mut pos = 0usize;
    let mut in_fragments = false;
    // Undefined-length sequences, items and pixel data not yet delimited.
    let mut open_undefined = 0usize;
    while pos < data.len() {
        if data.len() - pos < 8 {
            return Err(anyhow!("truncated element header at byte {pos}"));
        }
        let (group, elem) = (u16_at(pos), u16_at(pos + 2));
        let remaining = |hdr: usize| data.len() - pos - hdr;
        if group == 0xFFFE {
            // Item and delimiters: always a 4-byte length, never a VR.
            let len = u32_at(pos + 4);
            pos += 8;
            if elem == 0xE0DD || elem == 0xE00D {
                // Sequence or item delimiter: closes the innermost undefined length.
                if open_undefined == 0 {
                    return Err(anyhow!("delimiter at byte {} closes nothing", pos - 8));
                }
                open_undefined -= 1;
                if elem == 0xE0DD {
                    in_fragments = false;
                }
            } else if elem != 0xE000 {
                // Only items and the two delimiters live in group FFFE; dicom-parser
                // reads anything else there as a value of the claimed length.
                return Err(anyhow!(
                    "(FFFE,{elem:04X}) at byte {} is not an item or a delimiter",
                    pos - 8
                ));
            } else if len == u32::MAX {
                open_undefined += 1;
            } else {
                if len as usize > data.len() - pos {
                    return Err(anyhow!(
                        "item claims {len} bytes, {} remain",
                        data.len() - pos
                    ));
                }
                // Pixel data fragments are opaque; sequence items hold elements.
                if in_fragments {
                    pos += len as usize;
                }
            }
            continue;
        }
        let (len, hdr, vr) = if implicit {
            // The VR the parser will take: the dictionary's (unknown: UN).
            let vr = StandardDataDictionary
                .by_tag(dicom_core::Tag(group, elem))
                .map_or([b'U', b'N'], |e| e.vr().relaxed().to_bytes());
            (u32_at(pos + 4), 8, vr)
        } else {
            let vr = [data[pos + 4], data[pos + 5]];
            if !KNOWN_VRS.contains(&&vr) {
                return Err(anyhow!(
                    "element ({group:04X},{elem:04X}) has no valid VR: the data set is not explicit VR as its transfer syntax says"
                ));
            }
            if matches!(
                &vr,
                b"OB"
                    | b"OW"
                    | b"OF"
                    | b"OD"
                    | b"OL"
                    | b"OV"
                    | b"SQ"
                    | b"UT"
                    | b"UN"
                    | b"UC"
                    | b"UR"
                    | b"SV"
                    | b"UV"
            ) {
                if data.len() - pos < 12 {
                    return Err(anyhow!("truncated element header at byte {pos}"));
                }
                (u32_at(pos + 8), 12, vr)
            } else {
                (u16_at(pos + 6) as u32, 8, vr)
            }
        };
        if len == u32::MAX {
            // Undefined length: a sequence, or encapsulated pixel data.
            in_fragments = (group, elem) == (0x7FE0, 0x0010);
            open_undefined += 1;
            pos += hdr;
            continue;
        }
        let size = value_size(&vr);
        if len % size != 0 {
            return Err(anyhow!(
                "element ({group:04X},{elem:04X}) {} has length {len}, not a multiple of {size}",
                String::from_utf8_lossy(&vr)
            ));
        }
        if len as usize > remaining(hdr) {
            return Err(anyhow!(
                "element ({group:04X},{elem:04X}) claims {len} bytes, {} remain",
                remaining(hdr)
            ));
        }
        pos += hdr;
        // A defined-length explicit SQ is walked into; everything else is skipped.
        if &vr != b"SQ" {
            pos += len as usize;
        }
    }
    if open_undefined > 0 {
        return Err(anyhow!(
            "data set ends inside {open_undefined} undefined-length sequence(s) or pixel data"
        ));
    }
    Ok(())
}

/// Checks the whole file (so a truncated data set is caught here, not later) and
/// returns its identifying attributes.
pub fn parse_header(path: &Path) -> Result<InstanceHeader> {
    parse_header_bytes(&std::fs::read(path)?)
}

/// The same from the file's bytes (what the fuzz target `instance` drives).
pub fn parse_header_bytes(bytes: &[u8]) -> Result<InstanceHeader> {
    if bytes.len() < 144 || &bytes[128..132] != b"DICM" {
        return Err(anyhow!("not a DICOM Part 10 file"));
    }
    if bytes[132..138] != [0x02, 0x00, 0x00, 0x00, b'U', b'L'] {
        return Err(anyhow!(
            "file meta does not start with its group length (0002,0000)"
        ));
    }
    let meta_len = u32::from_le_bytes([bytes[140], bytes[141], bytes[142], bytes[143]]) as usize;
    if meta_len > bytes.len() - 144 {
        return Err(anyhow!(
            "file meta group length {meta_len} runs past the end of the file"
        ));
    }
    // The meta group's element lengths are checked before dicom-object reads it:
    // it allocates whatever a length claims (fuzz input tests/corpus/instance/oom-*).
    check_element_lengths(&bytes[132..144 + meta_len], false, false)
        .map_err(|e| anyhow!("file meta: {e}"))?;
    // The file meta group alone: the data set is not touched before the walk below.
    let meta = dicom_object::meta::FileMetaTable::from_reader(&bytes[128..])
        .map_err(|e| anyhow!("file meta: {e}"))?;
    let ts = meta.transfer_syntax().trim_end_matches('\0').to_string();
    if ts != "1.2.840.10008.1.2.1.99" {
        let start = (144 + meta_len).min(bytes.len());
        check_element_lengths(
            &bytes[start..],
            ts == "1.2.840.10008.1.2",
            ts == "1.2.840.10008.1.2.2",
        )?;
    }
    // The walk has checked the whole data set (lengths, delimiters), so the parser
    // reads only the attributes before Pixel Data: the object is never in memory
    // twice, once as bytes and once parsed.
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .from_reader(&bytes[128..])
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
        query: super::query::QueryAttrs::from_object(&obj),
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

    fn el(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&group.to_le_bytes());
        v.extend_from_slice(&elem.to_le_bytes());
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn binary_values_must_fill_whole_values() {
        // Explicit: an SL of 2 bytes (dicom-parser would read none and lose its place).
        let bad = el(0x0028, 0x0102, b"SL", &[0x0F, 0x00]);
        let e = check_element_lengths(&bad, false, false).unwrap_err();
        assert!(e.to_string().contains("not a multiple of 4"), "{e}");
        assert!(
            check_element_lengths(&el(0x0028, 0x0102, b"US", &[0x0F, 0x00]), false, false).is_ok()
        );
        // Implicit: the dictionary's VR (HighBit is US) decides.
        let mut imp = vec![0x28, 0x00, 0x02, 0x01];
        imp.extend_from_slice(&3u32.to_le_bytes());
        imp.extend_from_slice(&[1, 2, 3]);
        let e = check_element_lengths(&imp, true, false).unwrap_err();
        assert!(e.to_string().contains("US has length 3"), "{e}");
        // Group FFFE holds items and delimiters only (fuzz input identifier/oom-578b...).
        let odd = [0xFE, 0xFF, 0x53, 0x5E, 0xFF, 0x00, 0xFB, 0xF9];
        let e = check_element_lengths(&odd, false, false).unwrap_err();
        assert!(e.to_string().contains("not an item or a delimiter"), "{e}");
    }

    #[test]
    fn element_lengths_are_bounded_by_the_data() {
        let mut ok = el(0x0008, 0x0060, b"CS", b"MR");
        ok.extend(el(0x0010, 0x0010, b"PN", b"A^B "));
        assert!(check_element_lengths(&ok, false, false).is_ok());
        // An OB element claiming 1 GB in a few bytes of data.
        let mut bogus = ok.clone();
        bogus.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
        bogus.extend_from_slice(&0x4000_0000u32.to_le_bytes());
        bogus.extend_from_slice(&[1, 2, 3, 4]);
        let e = check_element_lengths(&bogus, false, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("(7FE0,0010) claims 1073741824 bytes, 4 remain"),
            "{e}"
        );
        // Implicit VR: the same check with 4-byte lengths.
        let mut imp = Vec::new();
        imp.extend_from_slice(&[0x08, 0x00, 0x60, 0x00]);
        imp.extend_from_slice(&100u32.to_le_bytes());
        imp.extend_from_slice(b"MR");
        assert!(check_element_lengths(&imp, true, false).is_err());
        // Encapsulated pixel data: fragments are skipped by their item length.
        let mut enc = ok;
        enc.extend_from_slice(&[
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        for frag in [&b""[..], &b"\xFE\xFF\x00\xE0garbage!"[..]] {
            enc.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
            enc.extend_from_slice(&(frag.len() as u32).to_le_bytes());
            enc.extend_from_slice(frag);
        }
        let unterminated = enc.clone();
        enc.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert!(check_element_lengths(&enc, false, false).is_ok());
        // Cut before the sequence delimiter: truncated, refused.
        let e = check_element_lengths(&unterminated, false, false).unwrap_err();
        assert!(e.to_string().contains("ends inside"), "{e}");
    }

    #[test]
    fn hash_ref_is_stable_and_short() {
        assert_eq!(hash_ref("x"), hash_ref("x"));
        assert_ne!(hash_ref("x"), hash_ref("y"));
        assert_eq!(hash_ref("x").len(), 12);
    }
}
