//! What the SCP accepts at negotiation. docs/CONFORMANCE.md mirrors these lists;
//! a test keeps the two in step.

pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// Storage SOP classes accepted: MR sources, our own result types coming back
/// edited, and the other common image classes, which are stored only so that the
/// gate can refuse them with a reason the technician sees (decision 0006).
pub const STORAGE_SOP_CLASSES: &[(&str, &str)] = &[
    ("1.2.840.10008.5.1.4.1.1.4", "MR Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.4.1", "Enhanced MR Image Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.4.4",
        "Legacy Converted Enhanced MR Image Storage",
    ),
    ("1.2.840.10008.5.1.4.1.1.66.4", "Segmentation Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.66.7",
        "Label Map Segmentation Storage",
    ),
    ("1.2.840.10008.5.1.4.1.1.88.22", "Enhanced SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.88.34",
        "Comprehensive 3D SR Storage",
    ),
    ("1.2.840.10008.5.1.4.1.1.2", "CT Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.2.1", "Enhanced CT Image Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.1",
        "Computed Radiography Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.1.1",
        "Digital X-Ray Image Storage - For Presentation",
    ),
    ("1.2.840.10008.5.1.4.1.1.6.1", "Ultrasound Image Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.3.1",
        "Ultrasound Multi-frame Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7",
        "Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.2",
        "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.3",
        "Multi-frame Grayscale Word Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.4",
        "Multi-frame True Color Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.12.1",
        "X-Ray Angiographic Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.20",
        "Nuclear Medicine Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.128",
        "Positron Emission Tomography Image Storage",
    ),
];

/// Everything offered at negotiation: Verification, the storage classes and
/// study-root query/retrieve.
pub fn abstract_syntaxes() -> impl Iterator<Item = &'static str> {
    std::iter::once(VERIFICATION)
        .chain(STORAGE_SOP_CLASSES.iter().map(|(u, _)| *u))
        .chain(crate::qr::SOP_CLASSES.iter().map(|(u, _)| *u))
        .chain(std::iter::once(crate::dimse::scu::STORAGE_COMMITMENT))
}

/// SCP/SCU role selection: a C-GET requestor may take the SCP role for any
/// storage class we hold (it receives the sub-operations), and an upstream the
/// SCP role for storage commitment (it sends the N-EVENT-REPORT); other proposals
/// are left unanswered, which keeps the default roles.
pub struct Roles;

impl dicom_ul::association::server::Negotiation for Roles {
    fn negotiate_roles(
        &self,
        sop_class_uid: &str,
        scu_role: bool,
        scp_role: bool,
    ) -> Option<dicom_ul::pdu::RequestorRoles> {
        let uid = sop_class_uid.trim_end_matches('\0');
        // An upstream that reports storage commitment is the SCP of that class.
        (STORAGE_SOP_CLASSES.iter().any(|(u, _)| *u == uid)
            || uid == crate::dimse::scu::STORAGE_COMMITMENT)
            .then_some(dicom_ul::pdu::RequestorRoles {
                scu: scu_role,
                scp: scp_role,
            })
    }
}

/// Transfer syntaxes accepted, each one stored as received and decodable by our
/// pixel decoder (tests/e2e/test_transfer_syntaxes.py proves both). Not here:
/// JPEG Extended (12-bit, the MR case, does not decode with jpeg-decoder), JPEG-LS
/// (needs CharLS) and HTJ2K (no test file and no encoder here to prove it).
pub const TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2",      // Implicit VR Little Endian
    "1.2.840.10008.1.2.1",    // Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99", // Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",    // Explicit VR Big Endian (retired, still sent by old scanners)
    "1.2.840.10008.1.2.4.50", // JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.57", // JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70", // JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.90", // JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91", // JPEG 2000
    "1.2.840.10008.1.2.5",    // RLE Lossless
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transfer_syntax_is_known_to_the_registry() {
        for ts in TRANSFER_SYNTAXES {
            assert!(
                dicom_ul::association::server::is_supported(ts),
                "{ts} not supported by the transfer syntax registry"
            );
        }
    }

    #[test]
    fn conformance_statement_lists_every_class_and_syntax() {
        let doc = include_str!("../../../docs/CONFORMANCE.md");
        for (uid, _) in STORAGE_SOP_CLASSES.iter().chain(crate::qr::SOP_CLASSES) {
            assert!(doc.contains(uid), "docs/CONFORMANCE.md lacks {uid}");
        }
        for uid in TRANSFER_SYNTAXES {
            assert!(
                doc.contains(&format!("`{uid}`")),
                "docs/CONFORMANCE.md lacks {uid}"
            );
        }
    }
}
