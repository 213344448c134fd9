//! Transfer syntaxes of stored objects on the way out: the data set as stored,
//! or re-encoded between the uncompressed syntaxes when the peer accepted
//! another one (compressed data go only as stored: no transcoding of pixels).

use anyhow::{anyhow, bail, Result};
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";

/// Implicit VR LE, explicit VR LE, explicit VR BE: re-encodable into each other.
pub fn is_native(uid: &str) -> bool {
    [IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE].contains(&uid.trim_end_matches('\0'))
}

pub fn ts_of(uid: &str) -> Result<&'static dicom_encoding::TransferSyntax> {
    TransferSyntaxRegistry
        .get(uid.trim_end_matches('\0'))
        .ok_or_else(|| anyhow!("transfer syntax {uid} unknown"))
}

/// The data set of a Part 10 file: what follows the meta group ((0002,0000) gives
/// its length), as stored.
pub fn dataset_of(b: &[u8]) -> Result<&[u8]> {
    if b.len() < 144 || &b[128..132] != b"DICM" || b[132..136] != [2, 0, 0, 0] {
        return Err(anyhow!("not a Part 10 file with a meta group length"));
    }
    let len = u32::from_le_bytes([b[140], b[141], b[142], b[143]]) as usize;
    b.get(144 + len..)
        .ok_or_else(|| anyhow!("meta group longer than the file"))
}

/// The data set of a stored file in transfer syntax `to`: as stored when it is
/// already in `to`, re-encoded between the uncompressed syntaxes otherwise.
pub fn dataset_in(bytes: &[u8], from: &str, to: &str) -> Result<Vec<u8>> {
    if from == to {
        return Ok(dataset_of(bytes)?.to_vec());
    }
    if !(is_native(from) && is_native(to)) {
        bail!("stored in {from}, which cannot be re-encoded as {to}");
    }
    let obj = dicom_object::OpenFileOptions::new()
        .from_reader(&bytes[128.min(bytes.len())..])
        .map_err(|e| anyhow!("{e}"))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts_of(to)?)
        .map_err(|e| anyhow!("{e}"))?;
    Ok(out)
}

/// Presentation contexts for objects stored as (SOP class, syntax): the stored
/// syntax first, and for an uncompressed one the other two as fall-backs, so the
/// peer's choice decides (PS3.8: one transfer syntax per proposed context).
pub fn proposals(stored: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (class, ts) in stored {
        let mut add = |t: &str| {
            let p = (class.clone(), t.to_string());
            if !out.contains(&p) {
                out.push(p);
            }
        };
        add(ts);
        if is_native(ts) {
            for t in [EXPLICIT_VR_LE, IMPLICIT_VR_LE] {
                add(t);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_set_follows_the_meta_group() {
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        f.extend_from_slice(&[2, 0, 0, 0, b'U', b'L', 4, 0]);
        f.extend_from_slice(&4u32.to_le_bytes());
        f.extend_from_slice(&[9, 9, 9, 9]); // the rest of the meta group
        f.extend_from_slice(&[8, 0, 0x16, 0]);
        assert_eq!(dataset_of(&f).unwrap(), &[8, 0, 0x16, 0]);
        assert!(dataset_of(&f[..100]).is_err());
    }

    #[test]
    fn uncompressed_objects_offer_fallbacks_compressed_ones_do_not() {
        let p = proposals(&[
            ("A".into(), EXPLICIT_VR_LE.into()),
            ("B".into(), "1.2.840.10008.1.2.4.90".into()),
            ("A".into(), IMPLICIT_VR_LE.into()),
        ]);
        assert_eq!(
            p,
            vec![
                ("A".to_string(), EXPLICIT_VR_LE.to_string()),
                ("A".to_string(), IMPLICIT_VR_LE.to_string()),
                ("B".to_string(), "1.2.840.10008.1.2.4.90".to_string()),
            ]
        );
    }
}
