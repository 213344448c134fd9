//! A segmentation sent back by a person (the technician's or radiologist's edit
//! of our SEG) is matched to the job that segmented its source series, measured
//! again (the whole tumour recomputed from the edited sub-regions, never taken
//! from a stale composite), set against the patient's history, and reported in a
//! new SR: VERIFIED, FINAL, naming the preliminary SR as its predecessor and
//! referencing the edited SEG. The Dice between the AI's and the edited
//! segmentation is kept with the job and exported (model monitoring).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use dicom_dictionary_std::tags;

use super::report::{self, Source};
use crate::measure::history::{self, Visit};
use crate::measure::{self, Region};
use crate::results::seg_read::{self, SourceGrid};
use crate::results::{codes, derived_uid, sr};
use crate::store::{EditRecord, JobRecord, StoredInstance};
use crate::App;

/// Label value for voxels a returned SEG marks as tumour without a sub-region.
const UNSPECIFIED: u8 = 255;

/// Applies every SEG instance of a returned series; returns a note for its job.
pub fn apply(app: &App, instances: &[StoredInstance]) -> Result<String> {
    let mut notes = Vec::new();
    for i in instances.iter().filter(|i| {
        i.sop_class_uid == crate::results::seg::SEGMENTATION_STORAGE
            || i.sop_class_uid == seg_read::LABELMAP_SEGMENTATION
    }) {
        notes.push(apply_one(app, i)?);
    }
    if notes.is_empty() {
        bail!("no segmentation instance in the returned series");
    }
    Ok(notes.join("; "))
}

fn apply_one(app: &App, inst: &StoredInstance) -> Result<String> {
    let path = app.store.root().join(&inst.path);
    let obj =
        dicom_object::open_file(&path).map_err(|e| anyhow!("cannot read the returned SEG: {e}"))?;
    // The series it segments: ReferencedSeriesSequence, else the first source image.
    let target_series = seg_read::referenced_series(&obj)
        .or_else(|| {
            let frame = obj
                .element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
                .ok()
                .flatten()?
                .items()?
                .first()?
                .element_opt(tags::DERIVATION_IMAGE_SEQUENCE)
                .ok()
                .flatten()?
                .items()?
                .first()?
                .element_opt(tags::SOURCE_IMAGE_SEQUENCE)
                .ok()
                .flatten()?
                .items()?
                .first()?
                .clone();
            let sop = crate::results::text(&frame, tags::REFERENCED_SOP_INSTANCE_UID);
            app.store
                .instance(&sop)
                .ok()
                .flatten()
                .map(|i| i.series_uid)
        })
        .ok_or_else(|| anyhow!("the returned SEG names no source series"))?;
    let job = app
        .store
        .job(&JobRecord::id_for(&target_series))?
        .filter(|j| j.measurement.is_some() && !j.results.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "the returned SEG segments series {}, which this box has not segmented",
                crate::store::hash_ref(&target_series)
            )
        })?;
    let m = job.measurement.clone().expect("filtered");
    // The source grid and the AI's labels on it.
    let seg_done = report::reload(app, &job)?;
    let v = &seg_done.volume;
    let src = Source::read(app, &job)?;
    let pos = |p: [f64; 3]| p[0] * v.normal[0] + p[1] * v.normal[1] + p[2] * v.normal[2];
    let grid = SourceGrid {
        slices: v
            .slices
            .iter()
            .map(|s| (src.files[s.file].1.as_str(), s.frame + 1, pos(s.ipp)))
            .collect(),
        normal: v.normal,
        spacing: v.spacing[0],
        rows: v.dims[1],
        cols: v.dims[2],
    };
    let returned = seg_read::read(&obj, &grid).context("returned SEG")?;
    // Edited labels: each sub-region segment paints its label value.
    let regions: Vec<Region> = m.regions.iter().map(|r| r.region.clone()).collect();
    let keys: Vec<String> = regions.iter().map(|r| r.key.clone()).collect();
    let mut labels = vec![0u8; seg_done.labels.len()];
    let mut numbers: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    let mut whole: Option<&seg_read::ReturnedSegment> = None;
    for s in &returned.segments {
        let Some(key) = codes::region_of_type(&s.type_code, &keys) else {
            tracing::warn!(segment = s.number, code = %s.type_code, "returned segment matches no region; ignored");
            continue;
        };
        if key == "whole_tumour" {
            whole = Some(s);
            continue;
        }
        let value = regions
            .iter()
            .find(|r| r.key == key)
            .expect("matched")
            .values[0];
        for (l, &inside) in labels.iter_mut().zip(&s.mask) {
            if inside {
                *l = value;
            }
        }
        numbers.entry(key).or_default().push(s.number);
    }
    let mut regions = regions;
    if numbers.is_empty() {
        // Only a whole-tumour segment: tumour of no stated sub-region.
        let w = whole.ok_or_else(|| {
            anyhow!("no segment of the returned SEG is a tumour region we report")
        })?;
        for (l, &inside) in labels.iter_mut().zip(&w.mask) {
            if inside {
                *l = UNSPECIFIED;
            }
        }
        regions[0].values.push(UNSPECIFIED);
        numbers.insert("whole_tumour".into(), vec![w.number]);
    } else {
        let wt = match whole {
            Some(w) => vec![w.number],
            None => numbers.values().flatten().copied().collect(),
        };
        numbers.insert("whole_tumour".into(), wt);
    }
    let g = crate::volume::resample::Grid::of(v);
    let all = measure::measure(&labels, &g, &regions);
    // Dice per region, AI against edited.
    let dice: BTreeMap<String, f64> = regions
        .iter()
        .zip(&m.regions)
        .map(|(r, ai)| {
            let (mut both, mut a, mut b) = (0usize, 0usize, 0usize);
            for (x, y) in seg_done.labels.iter().zip(&labels) {
                let (ia, ib) = (ai.region.values.contains(x), r.values.contains(y));
                a += ia as usize;
                b += ib as usize;
                both += (ia && ib) as usize;
            }
            let d = if a + b == 0 {
                1.0
            } else {
                2.0 * both as f64 / (a + b) as f64
            };
            (r.key.clone(), d)
        })
        .collect();
    // Report only the regions the returned SEG has (and the whole tumour).
    let (kept, segment_numbers): (Vec<_>, Vec<_>) = all
        .iter()
        .filter_map(|r| numbers.get(&r.region.key).map(|n| (r.clone(), n.clone())))
        .unzip();
    let tracking: Vec<String> = kept
        .iter()
        .map(|r| report::tracking_uid(&m.patient_key, &r.region.key))
        .collect();
    let sr_uid = derived_uid(&["verified-sr", &job.id, &returned.sop_instance_uid]);
    let sr_series = derived_uid(&["verified-sr-series", &job.id]);
    let picture = derived_uid(&["verified-picture", &job.id, &returned.sop_instance_uid]);
    let visit = Visit {
        study_uid: job.study_instance_uid.clone(),
        series_uid: job.series_instance_uid.clone(),
        job_id: job.id.clone(),
        study_date: m.study_date.clone(),
        study_time: crate::results::text(&src.first, tags::STUDY_TIME),
        volumes_ml: report::volumes(&all),
        source: "edited".into(),
        seg_uid: returned.sop_instance_uid.clone(),
        sr_uid: sr_uid.clone(),
        picture_uid: picture.clone(),
    };
    let visits = app.store.upsert_visit(&m.patient_key, visit.clone())?;
    let t = app.live().measure.thresholds();
    let changes = history::changes(&visits, &visit, t);
    let earlier: Vec<Visit> = history::earlier(&visits, &visit)
        .into_iter()
        .cloned()
        .collect();
    let model = report::model_id(&job);
    let created = crate::sys::dicom_datetime(inst.received_at_ms);
    let created = (created.0.as_str(), created.1.as_str());
    let observer = if returned.creator.is_empty() {
        "Unknown^Editor"
    } else {
        returned.creator.as_str()
    };
    let organization = if returned.institution.is_empty() {
        "unknown"
    } else {
        returned.institution.as_str()
    };
    let instances: Vec<(String, String)> = src
        .files
        .iter()
        .map(|f| (f.0.clone(), f.1.clone()))
        .collect();
    let dt = format!("{}{}", created.0, created.1);
    let report_obj = sr::build(&sr::Report {
        first: &src.first,
        study_uid: &job.study_instance_uid,
        source_series_uid: &job.series_instance_uid,
        source_instances: &instances,
        seg: (
            &returned.sop_class_uid,
            &returned.sop_instance_uid,
            &returned.series_uid,
        ),
        measurements: &kept,
        segment_numbers: &segment_numbers,
        tracking_uids: &tracking,
        changes: &changes,
        earlier: &earlier,
        thresholds: t,
        model: &model,
        sop_uid: &sr_uid,
        series_uid: &sr_series,
        series_number: 9905,
        created,
        verification: Some(sr::Verification {
            observer,
            organization,
            datetime: &dt,
            predecessor: (sr::ENHANCED_SR, &m.uids.sr, &m.uids.sr_series),
        }),
    })?;
    report::commit(
        app,
        &job,
        report_obj,
        sr::ENHANCED_SR,
        &sr_series,
        "verified_sr",
    )?;
    let mut all_visits = earlier.clone();
    all_visits.push(visit.clone());
    let mut pm = m.clone();
    pm.progression_pct = t.progression_pct;
    pm.min_increase_ml = t.min_increase_ml;
    report::write_picture(
        app,
        &job,
        &all_visits,
        &regions,
        &pm,
        Some((v, &labels)),
        &model,
        created,
        &picture,
        &derived_uid(&["verified-picture-series", &job.id]),
        "trend_picture",
        &src.first,
    )?;
    let volumes = report::volumes(&all);
    app.store.record_edit(
        &job.id,
        EditRecord {
            seg_sop_instance_uid: returned.sop_instance_uid.clone(),
            received_at_ms: inst.received_at_ms,
            observer: observer.to_string(),
            volumes_ml: volumes.clone(),
            dice: dice.clone(),
            regions: all,
            changes,
            sr_sop_instance_uid: sr_uid,
            sr_series_uid: sr_series,
            picture_sop_instance_uid: picture,
        },
    )?;
    app.metrics.inc("scanside_edits_received_total", "");
    for (k, d) in &dice {
        app.metrics
            .observe("scanside_edit_dice", &format!("region=\"{k}\""), *d);
    }
    let ai = m.regions.first().map(|r| r.volume_ml).unwrap_or(0.0);
    tracing::info!(job = %job.id, dice_whole_tumour = dice.get("whole_tumour").copied().unwrap_or(0.0), "edited segmentation applied");
    Ok(format!(
        "edited segmentation applied to job {}: whole tumour {:.2} mL (AI {:.2} mL, Dice {:.3}); verified SR written",
        job.id,
        volumes.get("whole_tumour").copied().unwrap_or(0.0),
        ai,
        dice.get("whole_tumour").copied().unwrap_or(0.0)
    ))
}
