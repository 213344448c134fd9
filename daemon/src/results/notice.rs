//! The "not processed" notice: a DICOM Basic Text SR in the refused series' study,
//! saying in plain words why the box did not segment it, so the hub (and any
//! viewer) learns of the refusal, not only the box's own status page.

use dicom_core::header::HasLength;
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use sha2::{Digest, Sha256};

use crate::gate::Decision;

pub const BASIC_TEXT_SR: &str = "1.2.840.10008.5.1.4.1.1.88.11";

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

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut c = InMemDicomObject::new_empty();
    c.put(DataElement::new(
        tags::CODE_VALUE,
        VR::SH,
        PrimitiveValue::from(value),
    ));
    c.put(DataElement::new(
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        PrimitiveValue::from(scheme),
    ));
    c.put(DataElement::new(
        tags::CODE_MEANING,
        VR::LO,
        PrimitiveValue::from(meaning),
    ));
    c
}

fn seq(items: Vec<InMemDicomObject>) -> dicom_core::value::Value<InMemDicomObject> {
    dicom_core::value::Value::from(DataSetSequence::from(items))
}

fn text_item(concept: InMemDicomObject, text: &str) -> InMemDicomObject {
    let mut t = InMemDicomObject::new_empty();
    t.put(DataElement::new(
        tags::RELATIONSHIP_TYPE,
        VR::CS,
        PrimitiveValue::from("CONTAINS"),
    ));
    t.put(DataElement::new(
        tags::VALUE_TYPE,
        VR::CS,
        PrimitiveValue::from("TEXT"),
    ));
    t.put(DataElement::new(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        VR::SQ,
        seq(vec![concept]),
    ));
    t.put(DataElement::new(
        tags::TEXT_VALUE,
        VR::UT,
        PrimitiveValue::from(text),
    ));
    t
}

/// The refused series as the notice needs it.
pub struct RefusedSeries<'a> {
    /// The first instance's data set (patient and study attributes are copied).
    pub source: &'a InMemDicomObject,
    pub series_uid: &'a str,
    pub series_description: &'a str,
    /// (SOP class, SOP instance) of every instance of the series.
    pub instances: Vec<(String, String)>,
    pub job_id: &'a str,
}

/// Builds the notice. `now` is (YYYYMMDD, HHMMSS).
pub fn build(
    s: &RefusedSeries,
    d: &Decision,
    now: (&str, &str),
) -> anyhow::Result<FileDicomObject<InMemDicomObject>> {
    let mut o = InMemDicomObject::new_empty();
    let copy = |o: &mut InMemDicomObject, tag, vr| {
        let v = s
            .source
            .element_opt(tag)
            .ok()
            .flatten()
            .map(|e| e.value().clone())
            .unwrap_or(dicom_core::value::Value::Primitive(PrimitiveValue::Empty));
        o.put(DataElement::new(tag, vr, v));
    };
    // Patient and General Study modules: copied (Type 2 attributes present, maybe empty).
    for (tag, vr) in [
        (tags::SPECIFIC_CHARACTER_SET, VR::CS),
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::ISSUER_OF_PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_INSTANCE_UID, VR::UI),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
        (tags::STUDY_DESCRIPTION, VR::LO),
    ] {
        copy(&mut o, tag, vr);
    }
    // Drop copied Type 3 attributes that the source did not have.
    for tag in [
        tags::SPECIFIC_CHARACTER_SET,
        tags::ISSUER_OF_PATIENT_ID,
        tags::STUDY_DESCRIPTION,
    ] {
        if o.element(tag)
            .map(|e| e.value().primitive().is_none_or(|p| p.is_empty()))
            .unwrap_or(true)
        {
            o.remove_element(tag);
        }
    }
    let study_uid = o
        .element(tags::STUDY_INSTANCE_UID)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches('\0').to_string())
        .ok_or_else(|| anyhow::anyhow!("source has no Study Instance UID"))?;
    let sop_uid = derived_uid(&[
        "notice",
        s.job_id,
        s.series_uid,
        &s.instances.len().to_string(),
    ]);
    let series_uid = derived_uid(&["notice-series", s.job_id, s.series_uid]);
    let put = |o: &mut InMemDicomObject, tag, vr, v: &str| {
        o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    };
    // SOP Common, SR Document Series, General Equipment.
    put(&mut o, tags::SOP_CLASS_UID, VR::UI, BASIC_TEXT_SR);
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
    put(&mut o, tags::INSTANCE_CREATION_DATE, VR::DA, now.0);
    put(&mut o, tags::INSTANCE_CREATION_TIME, VR::TM, now.1);
    put(&mut o, tags::MODALITY, VR::CS, "SR");
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
    put(&mut o, tags::SERIES_NUMBER, VR::IS, "9901");
    put(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "scanside: series not processed",
    );
    o.put(DataElement::new(
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        VR::SQ,
        seq(vec![]),
    ));
    put(&mut o, tags::MANUFACTURER, VR::LO, "scanside");
    put(
        &mut o,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        env!("CARGO_PKG_VERSION"),
    );
    // SR Document General.
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put(&mut o, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put(&mut o, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put(&mut o, tags::CONTENT_DATE, VR::DA, now.0);
    put(&mut o, tags::CONTENT_TIME, VR::TM, now.1);
    o.put(DataElement::new(
        tags::PERFORMED_PROCEDURE_CODE_SEQUENCE,
        VR::SQ,
        seq(vec![]),
    ));
    // The refused series as evidence (Hierarchical SOP Instance Reference macro).
    let refs: Vec<InMemDicomObject> = s
        .instances
        .iter()
        .map(|(c, i)| {
            let mut r = InMemDicomObject::new_empty();
            r.put(DataElement::new(
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(c.as_str()),
            ));
            r.put(DataElement::new(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(i.as_str()),
            ));
            r
        })
        .collect();
    let mut series = InMemDicomObject::new_empty();
    series.put(DataElement::new(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(s.series_uid),
    ));
    series.put(DataElement::new(
        tags::REFERENCED_SOP_SEQUENCE,
        VR::SQ,
        seq(refs),
    ));
    let mut study = InMemDicomObject::new_empty();
    study.put(DataElement::new(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(study_uid.as_str()),
    ));
    study.put(DataElement::new(
        tags::REFERENCED_SERIES_SEQUENCE,
        VR::SQ,
        seq(vec![series]),
    ));
    o.put(DataElement::new(
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        VR::SQ,
        seq(vec![study]),
    ));
    // SR Document Content: a container of plain-language findings.
    let what = if s.series_description.is_empty() {
        format!("The series of {} image(s)", s.instances.len())
    } else {
        format!(
            "The series \"{}\" ({} image(s))",
            s.series_description,
            s.instances.len()
        )
    };
    let mut items = vec![text_item(
        code("121071", "DCM", "Finding"),
        &format!("{what} was received by scanside and not processed: no tumour segmentation or volume was produced for it."),
    )];
    for stage in &d.stages {
        for r in &stage.reasons {
            items.push(text_item(
                code("121071", "DCM", "Finding"),
                &format!("{} (check: {}, code: {})", r.message, stage.stage, r.code),
            ));
        }
    }
    put(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    o.put(DataElement::new(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        VR::SQ,
        seq(vec![code("18748-4", "LN", "Diagnostic imaging report")]),
    ));
    put(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    o.put(DataElement::new(tags::CONTENT_SEQUENCE, VR::SQ, seq(items)));
    o.with_meta(
        dicom_object::meta::FileMetaTableBuilder::new()
            .transfer_syntax("1.2.840.10008.1.2.1")
            .implementation_class_uid(crate::store::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(crate::store::IMPLEMENTATION_VERSION_NAME),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
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
