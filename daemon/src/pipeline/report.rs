//! `inferred` -> measure -> `measured` -> results -> `written`. The measure step
//! fixes everything the results show (measurements, history figures, UIDs, the
//! creation time) in the job record; the results step is a pure function of that
//! record and the source, so a resumed job writes the same objects again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::measure::history::{self, Visit};
use crate::measure::{self, RegionMeasurement};
use crate::results::{self, derived_uid, seg, sr, trend, ModelId};
use crate::store::{JobRecord, JobState, MeasurementRecord, ResultRecord, ResultUids};
use crate::volume::{resample, Volume};
use crate::App;

/// What segmentation hands on in memory (after a restart both are read again).
pub struct Segmented {
    pub volume: Volume,
    pub labels: Vec<u8>,
}

/// Takes an inferred or measured job as far as `written`.
pub fn run(app: &App, id: &str, mut done: Option<Segmented>) -> Result<bool> {
    let Some(job) = app.store.job(id)? else {
        return Ok(false);
    };
    if !matches!(job.state, JobState::Inferred | JobState::Measured) {
        return Ok(false);
    }
    let t = Instant::now();
    if done.is_none() {
        done = Some(reload(app, &job)?);
    }
    let seg = done.as_ref().expect("set above");
    let source = Source::read(app, &job)?;
    let mut progressed = false;
    let job = if job.state == JobState::Inferred {
        let rec = measure_job(app, &job, seg, &source)?;
        progressed |= app.store.record_measurement(&job.id, rec)?;
        match app.store.job(id)? {
            Some(j) if j.state == JobState::Measured => j,
            _ => return Ok(progressed),
        }
    } else {
        job
    };
    let measure_ms = t.elapsed().as_millis() as u64;
    let t = Instant::now();
    let written = write_results(app, &job, seg, &source)?;
    let since = super::since_complete_ms(&job);
    let over = since > app.live().budget.seconds * 1000;
    if app.store.record_written(&job.id, written, over)? {
        let write_ms = t.elapsed().as_millis() as u64;
        for (stage, ms) in [("measure", measure_ms), ("write", write_ms)] {
            app.metrics.observe(
                "scanside_stage_seconds",
                &format!("stage=\"{stage}\""),
                ms as f64 / 1000.0,
            );
        }
        app.metrics.observe(
            "scanside_stage_seconds",
            "stage=\"total\"",
            since as f64 / 1000.0,
        );
        app.metrics.inc("scanside_jobs_written_total", "");
        if over && !job.over_budget {
            app.metrics.inc("scanside_jobs_over_budget_total", "");
            tracing::warn!(job = %job.id, ms = since, "job over its time budget");
        }
        tracing::info!(job = %job.id, measure_ms, write_ms, total_ms = since, "results written");
        progressed = true;
    }
    Ok(progressed)
}

/// The volume decoded again and the labels read back from their NIfTI file.
pub fn reload(app: &App, job: &JobRecord) -> Result<Segmented> {
    let inf = job
        .inference
        .as_ref()
        .ok_or_else(|| anyhow!("inferred job without its inference record"))?;
    let volume = super::decode(app, job)?.volume;
    let bytes = std::fs::read(app.store.root().join(&inf.labels_path))
        .with_context(|| format!("labels file {}", inf.labels_path))?;
    let labels = crate::volume::nifti::read_labels(&bytes)?;
    anyhow::ensure!(
        labels.len() == volume.data.len(),
        "labels file does not match the series ({} voxels, series {})",
        labels.len(),
        volume.data.len()
    );
    Ok(Segmented { volume, labels })
}

/// The source series as the results need it.
pub struct Source {
    pub first: InMemDicomObject,
    /// (SOP class, SOP instance, frames) per file, in the order the volume used
    pub files: Vec<(String, String, u32)>,
    pub slice_thickness: Option<f64>,
}

impl Source {
    pub fn read(app: &App, job: &JobRecord) -> Result<Source> {
        let instances = app.store.instances_of_series(&job.series_instance_uid)?;
        let first_path: PathBuf = app.store.root().join(
            &instances
                .first()
                .ok_or_else(|| anyhow!("the series has no instances"))?
                .path,
        );
        let first = dicom_object::OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(&first_path)
            .map_err(|e| anyhow!("{e}"))?
            .into_inner();
        let slice_thickness = results::text(&first, tags::SLICE_THICKNESS).parse().ok();
        Ok(Source {
            files: instances
                .iter()
                .map(|i| (i.sop_class_uid.clone(), i.sop_instance_uid.clone(), 1))
                .collect(),
            first,
            slice_thickness,
        })
    }

    /// Hash of (issuer, patient id); a series without a patient id gets a key of
    /// its own study, so anonymous patients never share a history.
    pub fn patient_key(&self) -> String {
        let pid = results::text(&self.first, tags::PATIENT_ID);
        let issuer = results::text(&self.first, tags::ISSUER_OF_PATIENT_ID);
        let basis = if pid.is_empty() {
            format!(
                "study\0{}",
                results::text(&self.first, tags::STUDY_INSTANCE_UID)
            )
        } else {
            format!("{issuer}\0{pid}")
        };
        use sha2::Digest;
        let h = sha2::Sha256::digest(basis.as_bytes());
        h[..12].iter().map(|b| format!("{b:02x}")).collect()
    }
}

pub fn model_id(job: &JobRecord) -> ModelId {
    let inf = job.inference.as_ref();
    ModelId {
        name: inf.map(|i| i.model_name.clone()).unwrap_or_default(),
        version: inf.map(|i| i.model_version.clone()).unwrap_or_default(),
        sha256: inf.map(|i| i.model_sha256.clone()).unwrap_or_default(),
    }
}

/// Tracking UID of a region of a patient: the same at every visit.
pub fn tracking_uid(patient_key: &str, region: &str) -> String {
    derived_uid(&["tracking", patient_key, region])
}

fn measure_job(
    app: &App,
    job: &JobRecord,
    s: &Segmented,
    src: &Source,
) -> Result<MeasurementRecord> {
    let inf = job
        .inference
        .as_ref()
        .ok_or_else(|| anyhow!("no inference record"))?;
    let regions = measure::regions(&inf.label_names);
    let grid = resample::Grid::of(&s.volume);
    let m = measure::measure(&s.labels, &grid, &regions);
    let key = src.patient_key();
    // A series segmented again (reopened) gets new objects; a repeat of the same
    // inference gets the same ones.
    let round = job
        .history
        .iter()
        .filter(|h| h.state == JobState::Inferred)
        .count()
        .to_string();
    let u = |what: &str| derived_uid(&[what, &job.id, &round]);
    let uids = ResultUids {
        seg_series: u("seg-series"),
        seg: u("seg"),
        sr_series: u("sr-series"),
        sr: u("sr"),
        picture_series: u("picture-series"),
        picture: u("picture"),
    };
    let visit = Visit {
        study_uid: job.study_instance_uid.clone(),
        series_uid: job.series_instance_uid.clone(),
        job_id: job.id.clone(),
        study_date: results::text(&src.first, tags::STUDY_DATE),
        study_time: results::text(&src.first, tags::STUDY_TIME),
        volumes_ml: volumes(&m),
        source: "ai".into(),
        seg_uid: uids.seg.clone(),
        sr_uid: uids.sr.clone(),
        picture_uid: uids.picture.clone(),
    };
    let visits = app.store.upsert_visit(&key, visit.clone())?;
    let t = app.live().measure.thresholds();
    let changes = history::changes(&visits, &visit, t);
    let earlier = history::earlier(&visits, &visit)
        .into_iter()
        .cloned()
        .collect();
    Ok(MeasurementRecord {
        patient_key: key.clone(),
        study_date: visit.study_date.clone(),
        tracking_uids: regions.iter().map(|r| tracking_uid(&key, &r.key)).collect(),
        regions: m,
        changes,
        earlier,
        progression_pct: t.progression_pct,
        min_increase_ml: t.min_increase_ml,
        uids,
        created_ms: crate::store::now_ms(),
    })
}

pub fn volumes(m: &[RegionMeasurement]) -> BTreeMap<String, f64> {
    m.iter()
        .map(|r| (r.region.key.clone(), r.volume_ml))
        .collect()
}

/// Writes SEG, SR and the picture (DICOM, PNG, SVG); returns their SOP UIDs.
fn write_results(app: &App, job: &JobRecord, s: &Segmented, src: &Source) -> Result<Vec<String>> {
    let rec = job
        .measurement
        .as_ref()
        .ok_or_else(|| anyhow!("no measurement record"))?;
    let model = model_id(job);
    let created = crate::sys::dicom_datetime(rec.created_ms);
    let created = (created.0.as_str(), created.1.as_str());
    let v = &s.volume;
    let files = frames_per_file(&src.files, v);
    let source = seg::SourceSeries {
        first: &src.first,
        series_uid: &job.series_instance_uid,
        files: &files,
        slices: &v.slices,
        rows: v.dims[1],
        cols: v.dims[2],
        iop: [
            v.row_dir[0],
            v.row_dir[1],
            v.row_dir[2],
            v.col_dir[0],
            v.col_dir[1],
            v.col_dir[2],
        ],
        spacing: v.spacing,
        slice_thickness: src.slice_thickness.unwrap_or(v.spacing[0]),
    };
    let regions: Vec<_> = rec.regions.iter().map(|m| m.region.clone()).collect();
    let segments: Vec<seg::Segment> = regions
        .iter()
        .zip(&rec.tracking_uids)
        .map(|(r, t)| seg::Segment {
            region: r,
            tracking_uid: t.clone(),
            algorithm_type: "AUTOMATIC",
        })
        .collect();
    let u = &rec.uids;
    let seg_obj = seg::build(
        &source,
        &segments,
        &s.labels,
        &seg::SegObject {
            sop_uid: &u.seg,
            series_uid: &u.seg_series,
            series_number: 9902,
            created,
            model: &model,
        },
    )?;
    commit(
        app,
        job,
        seg_obj,
        seg::SEGMENTATION_STORAGE,
        &u.seg_series,
        "seg",
    )?;
    let instances: Vec<(String, String)> = src
        .files
        .iter()
        .map(|f| (f.0.clone(), f.1.clone()))
        .collect();
    let report = sr::Report {
        first: &src.first,
        study_uid: &job.study_instance_uid,
        source_series_uid: &job.series_instance_uid,
        source_instances: &instances,
        seg: (seg::SEGMENTATION_STORAGE, &u.seg, &u.seg_series),
        measurements: &rec.regions,
        segment_numbers: &(1..=rec.regions.len() as u16)
            .map(|k| vec![k])
            .collect::<Vec<_>>(),
        tracking_uids: &rec.tracking_uids,
        changes: &rec.changes,
        earlier: &rec.earlier,
        thresholds: history::Thresholds {
            progression_pct: rec.progression_pct,
            min_increase_ml: rec.min_increase_ml,
        },
        model: &model,
        sop_uid: &u.sr,
        series_uid: &u.sr_series,
        series_number: 9903,
        created,
        verification: None,
    };
    commit(
        app,
        job,
        sr::build(&report)?,
        sr::ENHANCED_SR,
        &u.sr_series,
        "sr",
    )?;
    let this = Visit {
        study_uid: job.study_instance_uid.clone(),
        series_uid: job.series_instance_uid.clone(),
        job_id: job.id.clone(),
        study_date: rec.study_date.clone(),
        study_time: String::new(),
        volumes_ml: volumes(&rec.regions),
        source: "ai".into(),
        seg_uid: u.seg.clone(),
        sr_uid: u.sr.clone(),
        picture_uid: u.picture.clone(),
    };
    let mut visits = rec.earlier.clone();
    visits.push(this);
    write_picture(
        app,
        job,
        &visits,
        &regions,
        rec,
        Some((v, &s.labels)),
        &model,
        created,
        &u.picture,
        &u.picture_series,
        "trend_picture",
        &src.first,
    )?;
    Ok(vec![u.seg.clone(), u.sr.clone(), u.picture.clone()])
}

/// The picture as DICOM SC, PNG and SVG (pictures/<sop>.png|svg).
#[allow(clippy::too_many_arguments)]
pub fn write_picture(
    app: &App,
    job: &JobRecord,
    visits: &[Visit],
    regions: &[measure::Region],
    rec: &MeasurementRecord,
    slice_of: Option<(&Volume, &[u8])>,
    model: &ModelId,
    created: (&str, &str),
    sop: &str,
    series: &str,
    kind: &str,
    first: &InMemDicomObject,
) -> Result<()> {
    let t = trend::Trend {
        visits,
        this_study: &job.study_instance_uid,
        regions,
        thresholds: history::Thresholds {
            progression_pct: rec.progression_pct,
            min_increase_ml: rec.min_increase_ml,
        },
    };
    let wt: Vec<u8> = regions
        .first()
        .map(|r| r.values.clone())
        .unwrap_or_default();
    let key = slice_of.and_then(|(v, l)| trend::key_slice(v, l, &wt));
    let rgb = trend::render(&t, key.as_ref());
    app.store.commit_file(
        "pictures",
        &format!("{sop}.png"),
        &trend::png(&rgb, trend::WIDTH, trend::HEIGHT)?,
    )?;
    let panel = key
        .as_ref()
        .map(|_| trend::key_panel_png(&rgb))
        .transpose()?;
    app.store.commit_file(
        "pictures",
        &format!("{sop}.svg"),
        trend::svg(&t, panel.as_deref()).as_bytes(),
    )?;
    let sc = trend::secondary_capture(
        rgb,
        &trend::ScObject {
            first,
            sop_uid: sop,
            series_uid: series,
            series_number: 9904,
            created,
            model,
        },
    )?;
    commit(app, job, sc, trend::SECONDARY_CAPTURE, series, kind)
}

/// Frames per source file as the volume used them (Enhanced MR: several).
fn frames_per_file(files: &[(String, String, u32)], v: &Volume) -> Vec<(String, String, u32)> {
    let mut out = files.to_vec();
    for s in &v.slices {
        if let Some(f) = out.get_mut(s.file) {
            f.2 = f.2.max(s.frame + 1);
        }
    }
    out
}

/// Writes one result object with the durability rule and indexes it.
pub fn commit(
    app: &App,
    job: &JobRecord,
    obj: dicom_object::FileDicomObject<InMemDicomObject>,
    class: &str,
    series: &str,
    kind: &str,
) -> Result<()> {
    let sop = obj
        .meta()
        .media_storage_sop_instance_uid()
        .trim_end_matches('\0')
        .to_string();
    let tmp = app.store.tmp_dir().join(format!("{kind}-{}.part", job.id));
    obj.write_to_file(&tmp).map_err(|e| anyhow!("{e}"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    app.store.commit_result(
        &tmp,
        &ResultRecord {
            sop_instance_uid: sop,
            sop_class_uid: class.into(),
            study_uid: job.study_instance_uid.clone(),
            series_uid: series.into(),
            job_id: job.id.clone(),
            kind: kind.into(),
            path: String::new(),
            created_at_ms: crate::store::now_ms(),
        },
    )?;
    Ok(())
}
