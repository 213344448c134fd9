//! The per-instance attributes the gate decides on, read from a spool file's header.

use std::path::Path;

use anyhow::{anyhow, Result};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SliceHeader {
    pub sop_class_uid: String,
    pub modality: String,
    pub image_type: Vec<String>,
    pub study_description: String,
    pub series_description: String,
    pub protocol_name: String,
    pub requested_procedure_description: String,
    pub body_part: String,
    pub receive_coil: String,
    pub anatomic_region_code: String,
    pub scanning_sequence: String,
    pub sequence_variant: String,
    pub mr_acquisition_type: String,
    pub sequence_name: String,
    pub repetition_time: Option<f64>,
    pub echo_time: Option<f64>,
    pub inversion_time: Option<f64>,
    pub contrast_agent: String,
    pub field_strength: Option<f64>,
    pub manufacturer: String,
    pub model: String,
    pub station: String,
    pub rows: u32,
    pub columns: u32,
    pub number_of_frames: u32,
    pub iop: Option<[f64; 6]>,
    pub ipp: Option<[f64; 3]>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
    pub echo_number: Option<i64>,
    pub temporal_position: Option<i64>,
    pub instance_number: Option<i64>,
    /// Enhanced MR: (IOP, IPP, pixel spacing) per frame from the functional groups.
    pub frames: Vec<FrameGeometry>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameGeometry {
    pub iop: [f64; 6],
    pub ipp: [f64; 3],
    pub pixel_spacing: [f64; 2],
    pub slice_thickness: Option<f64>,
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    crate::store::attr_text(obj, tag).unwrap_or_default()
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Vec<f64> {
    text(obj, tag)
        .split('\\')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    floats(obj, tag).first().copied()
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    text(obj, tag).split('\\').next()?.trim().parse().ok()
}

fn arr<const N: usize>(v: Vec<f64>) -> Option<[f64; N]> {
    v.try_into().ok()
}

/// The first item of a sequence element, if any.
fn item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.element_opt(tag).ok().flatten()?.items()?.first()
}

/// Looks a functional-group macro up in the per-frame item, then in the shared one.
fn group<'a>(
    shared: Option<&'a InMemDicomObject>,
    frame: Option<&'a InMemDicomObject>,
    seq: Tag,
) -> Option<&'a InMemDicomObject> {
    frame
        .and_then(|f| item(f, seq))
        .or_else(|| shared.and_then(|s| item(s, seq)))
}

fn enhanced_frames(obj: &InMemDicomObject) -> Vec<FrameGeometry> {
    let shared = item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame = obj
        .element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items().map(|i| i.to_vec()))
        .unwrap_or_default();
    let mut out = Vec::new();
    for f in &per_frame {
        let orient = group(shared, Some(f), tags::PLANE_ORIENTATION_SEQUENCE)
            .and_then(|g| arr::<6>(floats(g, tags::IMAGE_ORIENTATION_PATIENT)));
        let pos = group(shared, Some(f), tags::PLANE_POSITION_SEQUENCE)
            .and_then(|g| arr::<3>(floats(g, tags::IMAGE_POSITION_PATIENT)));
        let measures = group(shared, Some(f), tags::PIXEL_MEASURES_SEQUENCE);
        let spacing = measures.and_then(|g| arr::<2>(floats(g, tags::PIXEL_SPACING)));
        let thickness = measures.and_then(|g| float(g, tags::SLICE_THICKNESS));
        if let (Some(iop), Some(ipp), Some(ps)) = (orient, pos, spacing) {
            out.push(FrameGeometry {
                iop,
                ipp,
                pixel_spacing: ps,
                slice_thickness: thickness,
            });
        }
    }
    out
}

impl SliceHeader {
    pub fn read(path: &Path) -> Result<SliceHeader> {
        let obj: DefaultDicomObject = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(path)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Self::from_object(&obj))
    }

    pub fn from_object(obj: &InMemDicomObject) -> SliceHeader {
        let anatomic = item(obj, tags::ANATOMIC_REGION_SEQUENCE)
            .map(|i| text(i, tags::CODE_VALUE))
            .unwrap_or_default();
        SliceHeader {
            sop_class_uid: text(obj, tags::SOP_CLASS_UID),
            modality: text(obj, tags::MODALITY),
            image_type: text(obj, tags::IMAGE_TYPE)
                .split('\\')
                .map(|s| s.trim().to_uppercase())
                .filter(|s| !s.is_empty())
                .collect(),
            study_description: text(obj, tags::STUDY_DESCRIPTION),
            series_description: text(obj, tags::SERIES_DESCRIPTION),
            protocol_name: text(obj, tags::PROTOCOL_NAME),
            requested_procedure_description: text(obj, tags::REQUESTED_PROCEDURE_DESCRIPTION),
            body_part: text(obj, tags::BODY_PART_EXAMINED).to_uppercase(),
            receive_coil: text(obj, tags::RECEIVE_COIL_NAME),
            anatomic_region_code: anatomic,
            scanning_sequence: text(obj, tags::SCANNING_SEQUENCE).to_uppercase(),
            sequence_variant: text(obj, tags::SEQUENCE_VARIANT).to_uppercase(),
            mr_acquisition_type: text(obj, tags::MR_ACQUISITION_TYPE).to_uppercase(),
            sequence_name: {
                let s = text(obj, tags::SEQUENCE_NAME);
                if s.is_empty() {
                    text(obj, tags::PULSE_SEQUENCE_NAME)
                } else {
                    s
                }
            },
            repetition_time: float(obj, tags::REPETITION_TIME),
            echo_time: float(obj, tags::ECHO_TIME),
            inversion_time: float(obj, tags::INVERSION_TIME),
            contrast_agent: text(obj, tags::CONTRAST_BOLUS_AGENT),
            field_strength: float(obj, tags::MAGNETIC_FIELD_STRENGTH),
            manufacturer: text(obj, tags::MANUFACTURER),
            model: text(obj, tags::MANUFACTURER_MODEL_NAME),
            station: text(obj, tags::STATION_NAME),
            rows: int(obj, tags::ROWS).unwrap_or(0).max(0) as u32,
            columns: int(obj, tags::COLUMNS).unwrap_or(0).max(0) as u32,
            number_of_frames: int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1) as u32,
            iop: arr(floats(obj, tags::IMAGE_ORIENTATION_PATIENT)),
            ipp: arr(floats(obj, tags::IMAGE_POSITION_PATIENT)),
            pixel_spacing: arr(floats(obj, tags::PIXEL_SPACING)),
            slice_thickness: float(obj, tags::SLICE_THICKNESS),
            echo_number: int(obj, tags::ECHO_NUMBERS),
            temporal_position: int(obj, tags::TEMPORAL_POSITION_IDENTIFIER),
            instance_number: int(obj, tags::INSTANCE_NUMBER),
            frames: enhanced_frames(obj),
        }
    }
}
