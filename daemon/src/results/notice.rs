//! The "not processed" notice: a DICOM Basic Text SR in the refused series' study,
//! saying in plain words why the box did not segment it, so the hub (and any
//! viewer) learns of the refusal, not only the box's own status page.

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::{c, copy_patient_study, derived_uid, hierarchical_ref, put, put_seq, Code};
use crate::gate::Decision;

pub const BASIC_TEXT_SR: &str = "1.2.840.10008.5.1.4.1.1.88.11";

fn text_item(concept: Code, text: &str) -> InMemDicomObject {
    let mut t = InMemDicomObject::new_empty();
    put(&mut t, tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS");
    put(&mut t, tags::VALUE_TYPE, VR::CS, "TEXT");
    t.put(concept.seq(tags::CONCEPT_NAME_CODE_SEQUENCE));
    put(&mut t, tags::TEXT_VALUE, VR::UT, text);
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
    copy_patient_study(s.source, &mut o);
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
    // SOP Common, SR Document Series, General Equipment.
    super::put_identity(
        &mut o,
        BASIC_TEXT_SR,
        &sop_uid,
        now,
        "SR",
        &series_uid,
        9901,
        "scanside: series not processed",
    );
    put_seq(
        &mut o,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    );
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
    put_seq(&mut o, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    // The refused series as evidence (Hierarchical SOP Instance Reference macro).
    put_seq(
        &mut o,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![hierarchical_ref(
            &study_uid,
            &[(s.series_uid, s.instances.clone())],
        )],
    );
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
        c("121071", "DCM", "Finding"),
        &format!("{what} was received by scanside and not processed: no tumour segmentation or volume was produced for it."),
    )];
    for stage in &d.stages {
        for r in &stage.reasons {
            items.push(text_item(
                c("121071", "DCM", "Finding"),
                &format!("{} (check: {}, code: {})", r.message, stage.stage, r.code),
            ));
        }
    }
    put(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    o.put(c("18748-4", "LN", "Diagnostic imaging report").seq(tags::CONCEPT_NAME_CODE_SEQUENCE));
    put(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(&mut o, tags::CONTENT_SEQUENCE, items);
    super::into_file(o)
}
