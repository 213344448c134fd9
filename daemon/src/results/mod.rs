//! Objects the box produces for radiology: the "not processed" notice for a
//! refused series, and for a segmented one the DICOM SEG, the TID 1500 SR and the
//! trend picture (Secondary Capture, PNG, SVG). Every builder is a pure function of
//! the job's durable record and the source headers, with UIDs derived from the job,
//! so a repeated step writes the same object again.

pub mod codes;
pub mod notice;
pub mod seg;
pub mod seg_read;
pub mod sr;
pub mod trend;

use dicom_core::header::HasLength;
use dicom_core::value::{DataSetSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use sha2::{Digest, Sha256};

/// A UID under 2.25 derived from `parts`, so a repeated step makes the same object.
pub fn derived_uid(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // 2.25 takes a UUID-sized integer: clear the top bit to stay within 39 digits.
    b[0] &= 0x7f;
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// A coded concept (CodeValue, CodingSchemeDesignator, CodeMeaning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Code {
    pub value: &'static str,
    pub scheme: &'static str,
    pub meaning: &'static str,
}

pub const fn c(value: &'static str, scheme: &'static str, meaning: &'static str) -> Code {
    Code {
        value,
        scheme,
        meaning,
    }
}

impl Code {
    pub fn item(&self) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        put(&mut o, tags::CODE_VALUE, VR::SH, self.value);
        put(&mut o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, self.scheme);
        put(&mut o, tags::CODE_MEANING, VR::LO, self.meaning);
        o
    }

    /// The code as a one-item sequence element.
    pub fn seq(&self, tag: Tag) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, VR::SQ, seq(vec![self.item()]))
    }
}

pub fn seq(items: Vec<InMemDicomObject>) -> Value<InMemDicomObject> {
    Value::from(DataSetSequence::from(items))
}

pub fn put(o: &mut InMemDicomObject, tag: Tag, vr: VR, v: &str) {
    o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}

pub fn put_seq(o: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    o.put(DataElement::new(tag, VR::SQ, seq(items)));
}

/// A one-item sequence of one object.
pub fn put_item(o: &mut InMemDicomObject, tag: Tag, item: InMemDicomObject) {
    put_seq(o, tag, vec![item]);
}

/// A text attribute of a data set, trimmed; empty when absent.
pub fn text(o: &InMemDicomObject, tag: Tag) -> String {
    crate::store::attr_text(o, tag).unwrap_or_default()
}

/// Copies the Patient and General Study modules (and the character set) from a
/// source instance: Type 2 attributes always present (maybe empty), Type 3 ones
/// only when the source had them.
pub fn copy_patient_study(src: &InMemDicomObject, o: &mut InMemDicomObject) {
    let type2 = [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_INSTANCE_UID, VR::UI),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
    ];
    let type3 = [
        (tags::SPECIFIC_CHARACTER_SET, VR::CS),
        (tags::ISSUER_OF_PATIENT_ID, VR::LO),
        (tags::STUDY_DESCRIPTION, VR::LO),
    ];
    let value = |tag| {
        src.element_opt(tag)
            .ok()
            .flatten()
            .map(|e| e.value().clone())
    };
    for (tag, vr) in type2 {
        let v = value(tag).unwrap_or(Value::Primitive(PrimitiveValue::Empty));
        o.put(DataElement::new(tag, vr, v));
    }
    for (tag, vr) in type3 {
        if let Some(v) = value(tag).filter(|v| v.primitive().is_some_and(|p| !p.is_empty())) {
            o.put(DataElement::new(tag, vr, v));
        }
    }
}

/// SOP Common and General Series of an object we produce: a series of its own.
#[allow(clippy::too_many_arguments)]
pub fn put_identity(
    o: &mut InMemDicomObject,
    class: &str,
    sop: &str,
    created: (&str, &str),
    modality: &str,
    series: &str,
    series_number: u32,
    description: &str,
) {
    put(o, tags::SOP_CLASS_UID, VR::UI, class);
    put(o, tags::SOP_INSTANCE_UID, VR::UI, sop);
    put(o, tags::INSTANCE_CREATION_DATE, VR::DA, created.0);
    put(o, tags::INSTANCE_CREATION_TIME, VR::TM, created.1);
    put(o, tags::MODALITY, VR::CS, modality);
    put(o, tags::SERIES_INSTANCE_UID, VR::UI, series);
    put(o, tags::SERIES_NUMBER, VR::IS, &series_number.to_string());
    put(o, tags::SERIES_DESCRIPTION, VR::LO, description);
}

/// General and Enhanced General Equipment: the appliance and its model.
pub fn put_equipment(o: &mut InMemDicomObject, model: &ModelId) {
    put(o, tags::MANUFACTURER, VR::LO, "scanside");
    put(
        o,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        "scanside edge appliance",
    );
    put(o, tags::DEVICE_SERIAL_NUMBER, VR::LO, &device_serial());
    put(
        o,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        &format!(
            "scanside {}\\{} {}",
            env!("CARGO_PKG_VERSION"),
            model.name,
            model.version
        ),
    );
}

/// The box's serial number: /etc/machine-id on a device (stable across reboots
/// and reinstalls of the daemon), "unknown" elsewhere.
pub fn device_serial() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().chars().take(16).collect::<String>())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The model that produced a result, as every result object names it.
#[derive(Debug, Clone)]
pub struct ModelId {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// Adds the file meta (explicit VR little endian) to a finished data set.
pub fn into_file(o: InMemDicomObject) -> anyhow::Result<FileDicomObject<InMemDicomObject>> {
    o.with_meta(
        dicom_object::meta::FileMetaTableBuilder::new()
            .transfer_syntax("1.2.840.10008.1.2.1")
            .implementation_class_uid(crate::store::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(crate::store::IMPLEMENTATION_VERSION_NAME),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Reference to one instance (Referenced SOP Class/Instance UID).
pub fn sop_ref(class: &str, instance: &str) -> InMemDicomObject {
    let mut r = InMemDicomObject::new_empty();
    put(&mut r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
    put(&mut r, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance);
    r
}

/// A Hierarchical SOP Instance Reference item: one study, its series, their instances.
pub fn hierarchical_ref(
    study_uid: &str,
    series: &[(&str, Vec<(String, String)>)],
) -> InMemDicomObject {
    let mut study = InMemDicomObject::new_empty();
    put(&mut study, tags::STUDY_INSTANCE_UID, VR::UI, study_uid);
    let items = series
        .iter()
        .map(|(uid, inst)| {
            let mut s = InMemDicomObject::new_empty();
            put(&mut s, tags::SERIES_INSTANCE_UID, VR::UI, uid);
            put_seq(
                &mut s,
                tags::REFERENCED_SOP_SEQUENCE,
                inst.iter().map(|(c, i)| sop_ref(c, i)).collect(),
            );
            s
        })
        .collect();
    put_seq(&mut study, tags::REFERENCED_SERIES_SEQUENCE, items);
    study
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uids_are_valid_stable_and_distinct() {
        let a = derived_uid(&["notice", "j1", "1.2.3"]);
        assert_eq!(a, derived_uid(&["notice", "j1", "1.2.3"]));
        assert_ne!(a, derived_uid(&["notice", "j2", "1.2.3"]));
        assert!(crate::store::valid_uid(&a) && a.len() <= 64, "{a}");
    }
}
