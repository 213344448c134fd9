//! The TID 1500 Measurement Report as Enhanced SR: the appliance as device
//! observer (with the model's identity), the procedure, an image library of the
//! source series, and one TID 1411 volumetric measurement group per region with
//! its tracking identifier/UID (the same as the SEG segment's, stable across
//! visits), finding, finding site, algorithm, time point, the volume in cm3, the
//! referenced SEG segment and source series. The patient's history rides in the
//! same group under a declared private scheme: volumes at earlier visits with
//! their dates, change against the previous visit and the nadir, growth rate,
//! doubling time, and the volumetric progression flag (decision support).
//! The AI's report is PRELIMINARY and UNVERIFIED; a report from a person's edit is
//! VERIFIED and names the preliminary one as its predecessor.

use std::collections::BTreeMap;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::codes::{self, region_type};
use super::seg::{capitalised, ds};
use super::{c, copy_patient_study, hierarchical_ref, put, put_item, put_seq, Code, ModelId};
use crate::measure::history::{RegionChange, Thresholds, Visit};
use crate::measure::RegionMeasurement;

pub const ENHANCED_SR: &str = "1.2.840.10008.5.1.4.1.1.88.22";

/// The person who confirmed or edited the segmentation, and what they replaced.
pub struct Verification<'a> {
    pub observer: &'a str,
    pub organization: &'a str,
    /// DICOM DT
    pub datetime: &'a str,
    /// The preliminary SR: (SOP class, instance, series)
    pub predecessor: (&'a str, &'a str, &'a str),
}

pub struct Report<'a> {
    /// First source instance: patient and study.
    pub first: &'a InMemDicomObject,
    pub study_uid: &'a str,
    pub source_series_uid: &'a str,
    /// (SOP class, SOP instance) of every source instance
    pub source_instances: &'a [(String, String)],
    /// The SEG the groups reference: (SOP class, instance, series).
    pub seg: (&'a str, &'a str, &'a str),
    pub measurements: &'a [RegionMeasurement],
    /// Per measurement, the SEG segment number(s) it measured.
    pub segment_numbers: &'a [Vec<u16>],
    pub tracking_uids: &'a [String],
    pub changes: &'a BTreeMap<String, RegionChange>,
    /// The visits dated before this one (for the prior volumes)
    pub earlier: &'a [Visit],
    pub thresholds: Thresholds,
    pub model: &'a ModelId,
    pub sop_uid: &'a str,
    pub series_uid: &'a str,
    pub series_number: u32,
    pub created: (&'a str, &'a str),
    pub verification: Option<Verification<'a>>,
}

fn item(rel: &str, vt: &str, concept: Code) -> InMemDicomObject {
    let mut t = InMemDicomObject::new_empty();
    put(&mut t, tags::RELATIONSHIP_TYPE, VR::CS, rel);
    put(&mut t, tags::VALUE_TYPE, VR::CS, vt);
    t.put(concept.seq(tags::CONCEPT_NAME_CODE_SEQUENCE));
    t
}

fn text(rel: &str, concept: Code, v: &str) -> InMemDicomObject {
    let mut t = item(rel, "TEXT", concept);
    put(&mut t, tags::TEXT_VALUE, VR::UT, v);
    t
}

fn code(rel: &str, concept: Code, v: Code) -> InMemDicomObject {
    let mut t = item(rel, "CODE", concept);
    t.put(v.seq(tags::CONCEPT_CODE_SEQUENCE));
    t
}

fn uidref(rel: &str, concept: Code, v: &str) -> InMemDicomObject {
    let mut t = item(rel, "UIDREF", concept);
    put(&mut t, tags::UID, VR::UI, v);
    t
}

fn container(rel: &str, concept: Code, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut t = item(rel, "CONTAINER", concept);
    put(&mut t, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(&mut t, tags::CONTENT_SEQUENCE, children);
    t
}

fn template(id: &str) -> InMemDicomObject {
    let mut t = InMemDicomObject::new_empty();
    put(&mut t, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put(&mut t, tags::TEMPLATE_IDENTIFIER, VR::CS, id);
    t
}

/// A NUM with its unit and the children every NUM gets (OHIF reads a NUM's
/// ContentSequence unconditionally).
fn num(concept: Code, v: f64, unit: Code, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut t = item("CONTAINS", "NUM", concept);
    let mut mv = InMemDicomObject::new_empty();
    put(&mut mv, tags::NUMERIC_VALUE, VR::DS, &ds(&[v]));
    mv.put(unit.seq(tags::MEASUREMENT_UNITS_CODE_SEQUENCE));
    put_item(&mut t, tags::MEASURED_VALUE_SEQUENCE, mv);
    put_seq(&mut t, tags::CONTENT_SEQUENCE, children);
    t
}

fn algorithm(model: &ModelId) -> Vec<InMemDicomObject> {
    vec![
        text(
            "HAS CONCEPT MOD",
            c("111001", "DCM", "Algorithm Name"),
            &model.name,
        ),
        text(
            "HAS CONCEPT MOD",
            c("111003", "DCM", "Algorithm Version"),
            &model.version,
        ),
    ]
}

const TIME_POINT: Code = c("C2348792", "UMLS", "Time Point");

fn date_text(d: &str) -> String {
    if d.len() == 8 {
        format!("{}-{}-{}", &d[0..4], &d[4..6], &d[6..8])
    } else {
        "unknown date".into()
    }
}

pub fn build(r: &Report) -> anyhow::Result<FileDicomObject<InMemDicomObject>> {
    let mut o = InMemDicomObject::new_empty();
    copy_patient_study(r.first, &mut o);
    // Our private scheme, declared.
    let mut scheme = InMemDicomObject::new_empty();
    put(
        &mut scheme,
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        codes::PRIVATE_SCHEME,
    );
    put(
        &mut scheme,
        tags::CODING_SCHEME_NAME,
        VR::ST,
        "scanside longitudinal measures",
    );
    put(
        &mut scheme,
        tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
        VR::ST,
        "scanside",
    );
    put_item(&mut o, tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE, scheme);
    let what = if r.verification.is_some() {
        "verified"
    } else {
        "preliminary AI"
    };
    // SOP Common, SR Document Series.
    super::put_identity(
        &mut o,
        ENHANCED_SR,
        r.sop_uid,
        r.created,
        "SR",
        r.series_uid,
        r.series_number,
        &format!("scanside tumour volumes ({what})"),
    );
    put_seq(
        &mut o,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    );
    super::put_equipment(&mut o, r.model);
    // SR Document General.
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    let partial = r.measurements.iter().any(|m| m.touches_edge);
    put(
        &mut o,
        tags::COMPLETION_FLAG,
        VR::CS,
        if partial { "PARTIAL" } else { "COMPLETE" },
    );
    put(&mut o, tags::CONTENT_DATE, VR::DA, r.created.0);
    put(&mut o, tags::CONTENT_TIME, VR::TM, r.created.1);
    match &r.verification {
        None => {
            put(&mut o, tags::PRELIMINARY_FLAG, VR::CS, "PRELIMINARY");
            put(&mut o, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
        }
        Some(v) => {
            put(&mut o, tags::PRELIMINARY_FLAG, VR::CS, "FINAL");
            put(&mut o, tags::VERIFICATION_FLAG, VR::CS, "VERIFIED");
            let mut obs = InMemDicomObject::new_empty();
            put(&mut obs, tags::VERIFYING_OBSERVER_NAME, VR::PN, v.observer);
            put_seq(
                &mut obs,
                tags::VERIFYING_OBSERVER_IDENTIFICATION_CODE_SEQUENCE,
                vec![],
            );
            put(
                &mut obs,
                tags::VERIFYING_ORGANIZATION,
                VR::LO,
                v.organization,
            );
            put(&mut obs, tags::VERIFICATION_DATE_TIME, VR::DT, v.datetime);
            put_item(&mut o, tags::VERIFYING_OBSERVER_SEQUENCE, obs);
            let (class, inst, series) = v.predecessor;
            put_item(
                &mut o,
                tags::PREDECESSOR_DOCUMENTS_SEQUENCE,
                hierarchical_ref(r.study_uid, &[(series, vec![(class.into(), inst.into())])]),
            );
        }
    }
    put_seq(&mut o, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    // Evidence: the source series and the SEG.
    put_item(
        &mut o,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        hierarchical_ref(
            r.study_uid,
            &[
                (r.source_series_uid, r.source_instances.to_vec()),
                (r.seg.2, vec![(r.seg.0.into(), r.seg.1.into())]),
            ],
        ),
    );
    // SR Document Content: the TID 1500 tree.
    put(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    o.put(c("126000", "DCM", "Imaging Measurement Report").seq(tags::CONCEPT_NAME_CODE_SEQUENCE));
    put(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_item(&mut o, tags::CONTENT_TEMPLATE_SEQUENCE, template("1500"));
    put_seq(&mut o, tags::CONTENT_SEQUENCE, content(r));
    super::into_file(o)
}

fn content(r: &Report) -> Vec<InMemDicomObject> {
    let serial = super::device_serial();
    let mut items = vec![
        code(
            "HAS CONCEPT MOD",
            c("121049", "DCM", "Language of Content Item and Descendants"),
            c("en-US", "RFC5646", "English (United States)"),
        ),
        code(
            "HAS OBS CONTEXT",
            c("121005", "DCM", "Observer Type"),
            c("121007", "DCM", "Device"),
        ),
        uidref(
            "HAS OBS CONTEXT",
            c("121012", "DCM", "Device Observer UID"),
            &super::derived_uid(&["device", &serial]),
        ),
        text(
            "HAS OBS CONTEXT",
            c("121013", "DCM", "Device Observer Name"),
            "scanside",
        ),
        text(
            "HAS OBS CONTEXT",
            c("121014", "DCM", "Device Observer Manufacturer"),
            "scanside",
        ),
        text(
            "HAS OBS CONTEXT",
            c("121015", "DCM", "Device Observer Model Name"),
            &format!(
                "{} {} (sha256 {})",
                r.model.name, r.model.version, r.model.sha256
            ),
        ),
        text(
            "HAS OBS CONTEXT",
            c("121016", "DCM", "Device Observer Serial Number"),
            &serial,
        ),
    ];
    if let Some(v) = &r.verification {
        items.push(code(
            "HAS OBS CONTEXT",
            c("121005", "DCM", "Observer Type"),
            c("121006", "DCM", "Person"),
        ));
        let mut p = item(
            "HAS OBS CONTEXT",
            "PNAME",
            c("121008", "DCM", "Person Observer Name"),
        );
        put(&mut p, tags::PERSON_NAME, VR::PN, v.observer);
        items.push(p);
    }
    items.push(code(
        "HAS CONCEPT MOD",
        c("121058", "DCM", "Procedure reported"),
        c("24590-2", "LN", "MR Brain"),
    ));
    // Image library: every source instance.
    let images = r
        .source_instances
        .iter()
        .map(|(class, inst)| {
            let mut t = InMemDicomObject::new_empty();
            put(&mut t, tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS");
            put(&mut t, tags::VALUE_TYPE, VR::CS, "IMAGE");
            put_item(
                &mut t,
                tags::REFERENCED_SOP_SEQUENCE,
                super::sop_ref(class, inst),
            );
            t
        })
        .collect();
    items.push(container(
        "CONTAINS",
        c("111028", "DCM", "Image Library"),
        vec![container(
            "CONTAINS",
            c("126200", "DCM", "Image Library Group"),
            images,
        )],
    ));
    let groups = r
        .measurements
        .iter()
        .enumerate()
        .map(|(k, m)| group(r, k, m))
        .collect();
    items.push(container(
        "CONTAINS",
        c("126010", "DCM", "Imaging Measurements"),
        groups,
    ));
    items
}

/// One TID 1411 group: this visit's measurement of one region and its history.
fn group(r: &Report, k: usize, m: &RegionMeasurement) -> InMemDicomObject {
    let (finding, _) = region_type(&m.region.key);
    let label = capitalised(&m.region.name);
    let mut g = vec![
        text(
            "HAS OBS CONTEXT",
            c("112039", "DCM", "Tracking Identifier"),
            &label,
        ),
        uidref(
            "HAS OBS CONTEXT",
            c("112040", "DCM", "Tracking Unique Identifier"),
            &r.tracking_uids[k],
        ),
        code(
            "CONTAINS",
            c("276214006", "SCT", "Finding category"),
            codes::MORPHOLOGICALLY_ABNORMAL,
        ),
        code("CONTAINS", c("121071", "DCM", "Finding"), finding),
        text(
            "HAS OBS CONTEXT",
            TIME_POINT,
            &date_text(&super::text(r.first, tags::STUDY_DATE)),
        ),
    ];
    let mut seg = item(
        "CONTAINS",
        "IMAGE",
        c("121191", "DCM", "Referenced Segment"),
    );
    let mut rs = super::sop_ref(r.seg.0, r.seg.1);
    rs.put(DataElement::new(
        tags::REFERENCED_SEGMENT_NUMBER,
        VR::US,
        PrimitiveValue::U16(r.segment_numbers[k].iter().copied().collect()),
    ));
    put_item(&mut seg, tags::REFERENCED_SOP_SEQUENCE, rs);
    g.push(seg);
    g.push(uidref(
        "CONTAINS",
        c("121232", "DCM", "Source series for segmentation"),
        r.source_series_uid,
    ));
    g.push(code(
        "HAS CONCEPT MOD",
        c("363698007", "SCT", "Finding Site"),
        codes::BRAIN,
    ));
    g.extend(algorithm(r.model));
    g.push(num(
        c("118565006", "SCT", "Volume"),
        m.volume_ml,
        codes::CM3,
        algorithm(r.model),
    ));
    let mm = c("mm", "UCUM", "millimeter");
    g.push(num(
        c("103339001", "SCT", "Long Axis"),
        m.stats.max_axial_diameter_mm,
        mm,
        algorithm(r.model),
    ));
    g.push(num(
        c("103340004", "SCT", "Short Axis"),
        m.stats.perpendicular_diameter_mm,
        mm,
        algorithm(r.model),
    ));
    // History: earlier volumes with their dates, then the derived figures.
    for v in r.earlier {
        if let Some(&ml) = v.volumes_ml.get(&m.region.key) {
            g.push(num(
                codes::VISIT_VOLUME,
                ml,
                codes::CM3,
                vec![text(
                    "HAS CONCEPT MOD",
                    TIME_POINT,
                    &date_text(&v.study_date),
                )],
            ));
        }
    }
    if let Some(ch) = r.changes.get(&m.region.key) {
        let note = |s: &str| vec![text("HAS CONCEPT MOD", TIME_POINT, s)];
        if let Some(p) = &ch.previous {
            let when = format!("against {}", date_text(&p.study_date));
            g.push(num(
                codes::CHANGE_PREVIOUS_ML,
                p.change_ml,
                codes::CM3,
                note(&when),
            ));
            if let Some(pct) = p.change_pct {
                g.push(num(
                    codes::CHANGE_PREVIOUS_PCT,
                    pct,
                    codes::PERCENT,
                    note(&when),
                ));
            }
        }
        if let Some(n) = &ch.nadir {
            let when = format!("nadir at {}", date_text(&n.study_date));
            g.push(num(
                codes::NADIR_VOLUME,
                n.volume_ml,
                codes::CM3,
                note(&when),
            ));
            if let Some(pct) = n.change_pct {
                g.push(num(
                    codes::CHANGE_NADIR_PCT,
                    pct,
                    codes::PERCENT,
                    note(&when),
                ));
            }
        }
        if let Some(sgr) = ch.growth_rate_per_day {
            g.push(num(
                codes::GROWTH_RATE,
                sgr,
                codes::PER_DAY,
                algorithm(r.model),
            ));
        }
        if let Some(dt) = ch.doubling_time_days {
            g.push(num(
                codes::DOUBLING_TIME,
                dt,
                codes::DAYS,
                algorithm(r.model),
            ));
        }
        if ch.nadir.is_some() {
            g.push(num(
                codes::THRESHOLD_PCT,
                r.thresholds.progression_pct,
                codes::PERCENT,
                vec![text(
                    "HAS CONCEPT MOD",
                    c("121106", "DCM", "Comment"),
                    "RANO 2.0 volumetric threshold; decision support, not a RANO determination",
                )],
            ));
            g.push(code(
                "CONTAINS",
                codes::PROGRESSION,
                if ch.progression {
                    codes::YES
                } else {
                    codes::NO
                },
            ));
        }
    }
    let mut grp = container("CONTAINS", c("125007", "DCM", "Measurement Group"), g);
    put_item(&mut grp, tags::CONTENT_TEMPLATE_SEQUENCE, template("1411"));
    grp
}
