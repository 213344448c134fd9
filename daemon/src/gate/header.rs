//! Stage 1: header rules (clinical.md 1(a), H1-H7). No single tag is trusted:
//! head evidence is a vote, an explicit other body part is a refusal.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::json;

use super::slice::SliceHeader;
use super::{Reason, StageResult};
use crate::config::GateConfig;

const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const ENHANCED_MR: &str = "1.2.840.10008.5.1.4.1.1.4.1";
const LEGACY_ENHANCED_MR: &str = "1.2.840.10008.5.1.4.1.1.4.4";

/// Our own result classes coming back edited: not source series.
const RESULT_CLASSES: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.66.7",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
];

const BAD_IMAGE_TYPES: &[&str] = &[
    "DERIVED",
    "SECONDARY",
    "LOCALIZER",
    "SCOUT",
    "PROJECTION IMAGE",
    "MIP",
    "MPR",
    "CSA MPR",
    "CSAPARALLEL",
    "SUBTRACTION",
    "MOSAIC",
    "DIFFUSION",
];
const PHASE_LIKE: &[&str] = &["P", "PHASE", "R", "I", "REAL", "IMAGINARY"];

/// Coil names that vote for the head (not configurable: vendor coil names).
static HEAD_COIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)head|hea|\bhn|neuro|20ch|32ch|64ch").expect("valid"));

/// The configured patterns, compiled once per series (validated by check-config).
struct Patterns {
    localizer: Regex,
    head: Regex,
    other_region: Regex,
    other_sequence: Regex,
    contrast: Regex,
}

impl Patterns {
    fn new(cfg: &GateConfig) -> Patterns {
        let re = |p: &str| Regex::new(p).unwrap_or_else(|_| Regex::new("$^").expect("valid"));
        Patterns {
            localizer: re(&cfg.localizer_pattern),
            head: re(&cfg.head_pattern),
            other_region: re(&cfg.other_region_pattern),
            other_sequence: re(&cfg.other_sequence_pattern),
            contrast: re(&cfg.contrast_pattern),
        }
    }
}

const OTHER_BODY_PARTS: &[&str] = &[
    "CHEST",
    "ABDOMEN",
    "PELVIS",
    "SPINE",
    "CSPINE",
    "TSPINE",
    "LSPINE",
    "KNEE",
    "SHOULDER",
    "BREAST",
    "PROSTATE",
    "LIVER",
    "HIP",
    "ANKLE",
    "WRIST",
    "ELBOW",
    "HEART",
    "EXTREMITY",
    "ABDOMENPELVIS",
    "CHESTABDOMEN",
    "LEG",
    "ARM",
    "HAND",
    "FOOT",
];
const HEAD_BODY_PARTS: &[&str] = &["BRAIN", "HEAD", "HEADNECK", "SKULL"];
/// SNOMED CT: 12738006 Brain, 69536005 Head.
const HEAD_REGION_CODES: &[&str] = &["12738006", "69536005", "T-A0100", "T-D1100"];

/// The sequence classes the pipeline knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SequenceClass {
    T1,
    T1Post,
    T2,
    Flair,
    Other,
}

pub fn check(first: &SliceHeader, all: &[SliceHeader], cfg: &GateConfig) -> StageResult {
    let mut r = StageResult::new("header");
    let pat = Patterns::new(cfg);
    if RESULT_CLASSES.contains(&first.sop_class_uid.as_str()) {
        r.refuse(Reason::new(
            "returned_result",
            "This is a segmentation or report sent back to the box (for example after editing), not a source series; it is kept for the results stage and not segmented.",
            json!({ "sop_class_uid": first.sop_class_uid }),
        ));
        return r;
    }
    // H1/H2: SOP class and modality. Stop here: nothing else applies to a non-MR.
    if ![MR, ENHANCED_MR, LEGACY_ENHANCED_MR].contains(&first.sop_class_uid.as_str()) {
        r.refuse(Reason::new(
            "not_mr_sop_class",
            &format!(
                "Not an MR image series (SOP class {}); only MR and Enhanced MR brain series are segmented.",
                sop_class_name(&first.sop_class_uid)
            ),
            json!({ "sop_class_uid": first.sop_class_uid, "modality": first.modality }),
        ));
        return r;
    }
    if first.modality != "MR" {
        r.refuse(Reason::new(
            "not_mr_modality",
            &format!("Modality is {:?}, not MR.", first.modality),
            json!({ "modality": first.modality }),
        ));
        return r;
    }
    // H3: image type, checked on every instance (a series may mix them).
    let mut bad_types: Vec<String> = Vec::new();
    let mut not_original = false;
    for s in all {
        if s.image_type.first().is_some_and(|v| v != "ORIGINAL") {
            not_original = true;
        }
        for v in &s.image_type {
            if BAD_IMAGE_TYPES.contains(&v.as_str()) && !bad_types.contains(v) {
                bad_types.push(v.clone());
            }
        }
    }
    let phase = first
        .image_type
        .get(2)
        .filter(|v| PHASE_LIKE.contains(&v.as_str()));
    if bad_types.iter().any(|t| t == "LOCALIZER" || t == "SCOUT") {
        r.refuse(Reason::new(
            "localizer_image_type",
            "ImageType marks these images as a localizer/scout, not a diagnostic series.",
            json!({ "image_type": first.image_type }),
        ));
    } else if bad_types
        .iter()
        .any(|t| ["PROJECTION IMAGE", "MIP", "MPR", "CSA MPR", "CSAPARALLEL"].contains(&t.as_str()))
    {
        r.refuse(Reason::new(
            "projection_or_reformat",
            "ImageType marks these images as projections or reformats (MIP/MPR), not acquired slices.",
            json!({ "image_type": first.image_type }),
        ));
    } else if not_original || !bad_types.is_empty() {
        r.refuse(Reason::new(
            "derived_image",
            "ImageType is not ORIGINAL (derived or secondary images); send the original acquisition.",
            json!({ "image_type": first.image_type }),
        ));
    } else if let Some(p) = phase {
        r.refuse(Reason::new(
            "phase_image",
            "These are phase/real/imaginary images; a magnitude series is needed.",
            json!({ "image_type_value_3": p }),
        ));
    }
    // H4: localizer words in the series description or protocol.
    let desc = format!("{} {}", first.series_description, first.protocol_name);
    if let Some(m) = pat.localizer.find(&desc) {
        r.refuse(Reason::new(
            "localizer_description",
            &format!("The series description names a localizer/calibration scan ({:?}).", m.as_str()),
            json!({ "series_description": first.series_description, "protocol_name": first.protocol_name }),
        ));
    }
    // H5: head evidence as votes; an explicit other region refuses.
    let texts = [
        &first.study_description,
        &first.series_description,
        &first.protocol_name,
        &first.requested_procedure_description,
    ];
    let mut votes = Vec::new();
    if texts.iter().any(|t| pat.head.is_match(t)) {
        votes.push("description");
    }
    if HEAD_BODY_PARTS.contains(&first.body_part.as_str()) {
        votes.push("body_part");
    }
    if HEAD_COIL.is_match(&first.receive_coil) {
        votes.push("coil");
    }
    if HEAD_REGION_CODES.contains(&first.anatomic_region_code.as_str()) {
        votes.push("anatomic_region");
    }
    r.facts["head_evidence"] = json!(votes);
    if OTHER_BODY_PARTS.contains(&first.body_part.replace([' ', '_', '-'], "").as_str()) {
        r.refuse(Reason::new(
            "other_body_part",
            &format!("Body Part Examined is {}, not the head.", first.body_part),
            json!({ "body_part_examined": first.body_part }),
        ));
    } else if let Some(m) = texts.iter().find_map(|t| pat.other_region.find(t)) {
        if votes.is_empty() {
            r.refuse(Reason::new(
                "other_body_region",
                &format!(
                    "The study or series description names another body region ({:?}).",
                    m.as_str()
                ),
                json!({ "word": m.as_str() }),
            ));
        }
    }
    // H6: sequence class.
    let class = classify_with(first, &pat);
    r.facts["sequence_class"] = json!(class);
    if class == SequenceClass::Other {
        r.refuse(Reason::new(
            "unsupported_sequence",
            "The sequence is not T1, T1 post-contrast, T2 or FLAIR (for example diffusion, angiography, susceptibility), or its parameters do not say which.",
            json!({
                "scanning_sequence": first.scanning_sequence,
                "sequence_name": first.sequence_name,
                "repetition_time_ms": first.repetition_time,
                "echo_time_ms": first.echo_time,
                "inversion_time_ms": first.inversion_time,
            }),
        ));
    }
    // H7: field strength floor (missing: not refused, recorded).
    match first.field_strength {
        Some(t) if t < cfg.min_field_strength_t => r.refuse(Reason::new(
            "low_field_strength",
            &format!(
                "Field strength {t} T is below the {} T this model is validated for.",
                cfg.min_field_strength_t
            ),
            json!({ "field_strength_t": t, "minimum_t": cfg.min_field_strength_t }),
        )),
        Some(t) => r.facts["field_strength_t"] = json!(t),
        None => r.facts["field_strength_t"] = json!(null),
    }
    r
}

/// T1 / T1 post / T2 / FLAIR / other from acquisition parameters first, the
/// description second (clinical.md H6; typical 1.5 T / 3 T values).
pub fn classify(h: &SliceHeader, cfg: &GateConfig) -> SequenceClass {
    classify_with(h, &Patterns::new(cfg))
}

fn classify_with(h: &SliceHeader, pat: &Patterns) -> SequenceClass {
    let desc = format!(
        "{} {} {}",
        h.series_description, h.protocol_name, h.sequence_name
    );
    let seq = &h.scanning_sequence;
    if seq.contains("EP") || pat.other_sequence.is_match(&desc) {
        return SequenceClass::Other;
    }
    let (tr, te, ti) = (h.repetition_time, h.echo_time, h.inversion_time);
    let ir = seq.contains("IR");
    let from_params = match (tr, te) {
        (Some(tr), Some(te)) => {
            if ir && ti.is_some_and(|ti| ti > 1500.0) && te > 70.0 {
                Some(SequenceClass::Flair)
            } else if seq.contains("GR") && tr < 2500.0 && te < 10.0 {
                Some(SequenceClass::T1)
            } else if seq.contains("SE") && !ir && (250.0..=900.0).contains(&tr) && te < 30.0 {
                Some(SequenceClass::T1)
            } else if seq.contains("SE") && !ir && tr > 2000.0 && te >= 60.0 {
                Some(SequenceClass::T2)
            } else if ir && ti.is_some_and(|ti| (300.0..=1300.0).contains(&ti)) && te < 15.0 {
                Some(SequenceClass::T1)
            } else {
                None
            }
        }
        _ => None,
    };
    let class = from_params.unwrap_or_else(|| {
        let d = desc.to_lowercase();
        if d.contains("flair") {
            SequenceClass::Flair
        } else if d.contains("t2") {
            SequenceClass::T2
        } else if ["t1", "mprage", "bravo", "spgr", "tfe", "fspgr"]
            .iter()
            .any(|w| d.contains(w))
        {
            SequenceClass::T1
        } else {
            SequenceClass::Other
        }
    });
    if class == SequenceClass::T1 && (!h.contrast_agent.is_empty() || pat.contrast.is_match(&desc))
    {
        SequenceClass::T1Post
    } else {
        class
    }
}

fn sop_class_name(uid: &str) -> String {
    let name = match uid {
        "1.2.840.10008.5.1.4.1.1.2" => "CT Image Storage",
        "1.2.840.10008.5.1.4.1.1.2.1" => "Enhanced CT Image Storage",
        "1.2.840.10008.5.1.4.1.1.1" => "Computed Radiography Image Storage",
        "1.2.840.10008.5.1.4.1.1.1.1" => "Digital X-Ray Image Storage",
        "1.2.840.10008.5.1.4.1.1.6.1" => "Ultrasound Image Storage",
        "1.2.840.10008.5.1.4.1.1.3.1" => "Ultrasound Multi-frame Image Storage",
        "1.2.840.10008.5.1.4.1.1.7" => "Secondary Capture Image Storage",
        _ => return uid.to_string(),
    };
    format!("{name}, {uid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn t1_brain() -> SliceHeader {
        SliceHeader {
            sop_class_uid: MR.into(),
            modality: "MR".into(),
            image_type: vec!["ORIGINAL".into(), "PRIMARY".into(), "M".into()],
            study_description: "MRI BRAIN".into(),
            series_description: "T1 MPRAGE".into(),
            scanning_sequence: "GR\\IR".into(),
            repetition_time: Some(2300.0),
            echo_time: Some(2.3),
            inversion_time: Some(900.0),
            field_strength: Some(3.0),
            ..Default::default()
        }
    }

    fn codes(h: &SliceHeader) -> Vec<&'static str> {
        check(h, std::slice::from_ref(h), &GateConfig::default())
            .reasons
            .iter()
            .map(|r| r.code)
            .collect()
    }

    #[test]
    fn t1_brain_passes_and_is_classified() {
        let h = t1_brain();
        let r = check(&h, std::slice::from_ref(&h), &GateConfig::default());
        assert!(r.passed, "{:?}", r.reasons);
        assert_eq!(r.facts["sequence_class"], "t1");
        assert_eq!(r.facts["head_evidence"], json!(["description"]));
    }

    #[test]
    fn contrast_makes_t1_post() {
        let mut h = t1_brain();
        h.contrast_agent = "Gadovist".into();
        assert_eq!(classify(&h, &GateConfig::default()), SequenceClass::T1Post);
        let mut h = t1_brain();
        h.series_description = "T1 MPRAGE POST GD".into();
        assert_eq!(classify(&h, &GateConfig::default()), SequenceClass::T1Post);
    }

    #[test]
    fn t2_and_flair_from_parameters() {
        let mut h = t1_brain();
        h.series_description = "ax".into();
        h.scanning_sequence = "SE".into();
        h.repetition_time = Some(4000.0);
        h.echo_time = Some(100.0);
        h.inversion_time = None;
        assert_eq!(classify(&h, &GateConfig::default()), SequenceClass::T2);
        h.scanning_sequence = "SE\\IR".into();
        h.repetition_time = Some(9000.0);
        h.inversion_time = Some(2500.0);
        assert_eq!(classify(&h, &GateConfig::default()), SequenceClass::Flair);
        h.scanning_sequence = "EP".into();
        assert_eq!(classify(&h, &GateConfig::default()), SequenceClass::Other);
    }

    #[test]
    fn refusals_have_specific_codes() {
        let mut h = t1_brain();
        h.sop_class_uid = "1.2.840.10008.5.1.4.1.1.2".into();
        assert_eq!(codes(&h), ["not_mr_sop_class"]);
        let mut h = t1_brain();
        h.image_type = vec!["DERIVED".into(), "SECONDARY".into()];
        assert_eq!(codes(&h), ["derived_image"]);
        let mut h = t1_brain();
        h.image_type = vec![
            "DERIVED".into(),
            "SECONDARY".into(),
            "PROJECTION IMAGE".into(),
        ];
        assert_eq!(codes(&h), ["projection_or_reformat"]);
        let mut h = t1_brain();
        h.series_description = "FAST LOCALIZER".into();
        assert_eq!(codes(&h), ["localizer_description"]);
        let mut h = t1_brain();
        h.body_part = "ABDOMEN".into();
        assert_eq!(codes(&h), ["other_body_part"]);
        let mut h = t1_brain();
        h.study_description = "MRI KNEE".into();
        assert_eq!(codes(&h), ["other_body_region"]);
        let mut h = t1_brain();
        h.image_type[2] = "P".into();
        assert_eq!(codes(&h), ["phase_image"]);
        let mut h = t1_brain();
        h.sop_class_uid = "1.2.840.10008.5.1.4.1.1.66.4".into();
        assert_eq!(codes(&h), ["returned_result"]);
    }

    #[test]
    fn field_strength_floor_boundary() {
        let mut h = t1_brain();
        h.field_strength = Some(1.0);
        assert!(codes(&h).is_empty(), "exactly at the floor passes");
        h.field_strength = Some(0.99);
        assert_eq!(codes(&h), ["low_field_strength"]);
        h.field_strength = None;
        assert!(
            codes(&h).is_empty(),
            "a missing field strength is recorded, not refused"
        );
    }

    #[test]
    fn missing_head_evidence_alone_does_not_refuse() {
        let mut h = t1_brain();
        h.study_description.clear();
        assert!(codes(&h).is_empty());
        // ... but a head vote outweighs a stray region word.
        let mut h = t1_brain();
        h.series_description = "T1 MPRAGE brain, cervical spine coverage".into();
        assert!(codes(&h).is_empty());
    }
}
