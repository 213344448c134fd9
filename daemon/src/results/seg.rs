//! DICOM Segmentation (BINARY) on the exact source grid: one frame per source
//! slice per segment (empty frames included), the source's frame of reference,
//! plane positions copied from the source slices, and references from every frame
//! to the slice it was derived from, as OHIF, Slicer (dcmqi) and highdicom expect.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::codes::{self, region_type};
use super::{copy_patient_study, put, put_item, put_seq, sop_ref, ModelId};
use crate::measure::Region;

pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// The source series as the SEG refers to it.
pub struct SourceSeries<'a> {
    /// The first instance's data set: patient, study, frame of reference.
    pub first: &'a InMemDicomObject,
    pub series_uid: &'a str,
    /// (SOP class, SOP instance, number of frames) per file, in file order.
    pub files: &'a [(String, String, u32)],
    /// Per slice, in slice order: file index, frame (0-based), IPP.
    pub slices: &'a [crate::volume::SliceSource],
    pub rows: usize,
    pub cols: usize,
    /// row direction cosines then column direction cosines
    pub iop: [f64; 6],
    /// mm: between slices, between rows, between columns
    pub spacing: [f64; 3],
    pub slice_thickness: f64,
}

/// One segment: its region, tracking identity and how it was made.
pub struct Segment<'a> {
    pub region: &'a Region,
    pub tracking_uid: String,
    /// AUTOMATIC for the model's output; SEMIAUTOMATIC for a person's edit
    pub algorithm_type: &'a str,
}

pub struct SegObject<'a> {
    pub sop_uid: &'a str,
    pub series_uid: &'a str,
    pub series_number: u32,
    /// (DA, TM) of content creation
    pub created: (&'a str, &'a str),
    pub model: &'a ModelId,
}

/// Builds the SEG of `labels` (the source grid, slice-major) with one segment per
/// region; segments may overlap (the whole tumour contains its sub-regions).
pub fn build(
    src: &SourceSeries,
    segments: &[Segment],
    labels: &[u8],
    out: &SegObject,
) -> anyhow::Result<FileDicomObject<InMemDicomObject>> {
    let (ns, plane) = (src.slices.len(), src.rows * src.cols);
    anyhow::ensure!(
        labels.len() == ns * plane,
        "labels have {} voxels, the series {}",
        labels.len(),
        ns * plane
    );
    let mut o = InMemDicomObject::new_empty();
    copy_patient_study(src.first, &mut o);
    // SOP Common, General Series, Segmentation Series.
    super::put_identity(
        &mut o,
        SEGMENTATION_STORAGE,
        out.sop_uid,
        out.created,
        "SEG",
        out.series_uid,
        out.series_number,
        &format!("scanside tumour segmentation ({})", out.model.name),
    );
    // Frame of Reference: the source's.
    put(
        &mut o,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        &super::text(src.first, tags::FRAME_OF_REFERENCE_UID),
    );
    put(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    super::put_equipment(&mut o, out.model);
    // General Image, Segmentation Image, Content Identification.
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put(&mut o, tags::CONTENT_DATE, VR::DA, out.created.0);
    put(&mut o, tags::CONTENT_TIME, VR::TM, out.created.1);
    put(&mut o, tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY");
    put(&mut o, tags::CONTENT_LABEL, VR::CS, "TUMOUR_SEG");
    put(
        &mut o,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        "Brain tumour segmentation (AI, preliminary)",
    );
    put(&mut o, tags::CONTENT_CREATOR_NAME, VR::PN, "scanside");
    put(&mut o, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put(&mut o, tags::SEGMENTS_OVERLAP, VR::CS, "YES");
    put(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    // Image Pixel: 1 bit per pixel.
    o.put(DataElement::new(
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(1u16),
    ));
    put(
        &mut o,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    for (tag, v) in [
        (tags::ROWS, src.rows as u16),
        (tags::COLUMNS, src.cols as u16),
        (tags::BITS_ALLOCATED, 1),
        (tags::BITS_STORED, 1),
        (tags::HIGH_BIT, 0),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
    }
    let nframes = ns * segments.len();
    put(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, &nframes.to_string());
    // Segment Sequence.
    let items = segments
        .iter()
        .enumerate()
        .map(|(k, s)| segment_item(k + 1, s, out.model))
        .collect();
    put_seq(&mut o, tags::SEGMENT_SEQUENCE, items);
    // Multi-frame Dimension: segment number, then position.
    let dim_uid = super::derived_uid(&["seg-dimensions", out.sop_uid]);
    let mut org = InMemDicomObject::new_empty();
    put(&mut org, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dim_uid);
    put_item(&mut o, tags::DIMENSION_ORGANIZATION_SEQUENCE, org);
    put(&mut o, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D");
    let dim = |pointer: dicom_core::Tag, group: dicom_core::Tag, label: &str| {
        let mut d = InMemDicomObject::new_empty();
        put(&mut d, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dim_uid);
        d.put(DataElement::new(
            tags::DIMENSION_INDEX_POINTER,
            VR::AT,
            PrimitiveValue::from(pointer),
        ));
        d.put(DataElement::new(
            tags::FUNCTIONAL_GROUP_POINTER,
            VR::AT,
            PrimitiveValue::from(group),
        ));
        put(&mut d, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
        d
    };
    put_seq(
        &mut o,
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dim(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "ReferencedSegmentNumber",
            ),
            dim(
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "ImagePositionPatient",
            ),
        ],
    );
    // Shared functional groups: orientation and pixel measures.
    let mut shared = InMemDicomObject::new_empty();
    let mut orient = InMemDicomObject::new_empty();
    put(
        &mut orient,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        &ds(&src.iop),
    );
    put_item(&mut shared, tags::PLANE_ORIENTATION_SEQUENCE, orient);
    let mut measures = InMemDicomObject::new_empty();
    put(
        &mut measures,
        tags::PIXEL_SPACING,
        VR::DS,
        &ds(&[src.spacing[1], src.spacing[2]]),
    );
    put(
        &mut measures,
        tags::SLICE_THICKNESS,
        VR::DS,
        &ds(&[src.slice_thickness]),
    );
    put(
        &mut measures,
        tags::SPACING_BETWEEN_SLICES,
        VR::DS,
        &ds(&[src.spacing[0]]),
    );
    put_item(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, measures);
    put_item(&mut o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, shared);
    // Per-frame functional groups and the bits, segment-major.
    let multi_frame = src.files.iter().any(|f| f.2 > 1);
    let mut frames = Vec::with_capacity(nframes);
    let mut bits = vec![0u8; (nframes * plane).div_ceil(8)];
    for (k, s) in segments.iter().enumerate() {
        for (z, sl) in src.slices.iter().enumerate() {
            let (class, inst, _) = &src.files[sl.file];
            let mut f = InMemDicomObject::new_empty();
            let mut source = sop_ref(class, inst);
            if multi_frame {
                put(
                    &mut source,
                    tags::REFERENCED_FRAME_NUMBER,
                    VR::IS,
                    &(sl.frame + 1).to_string(),
                );
            }
            source.put(codes::SOURCE_FOR_PROCESSING.seq(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE));
            put(
                &mut source,
                tags::SPATIAL_LOCATIONS_PRESERVED,
                VR::CS,
                "YES",
            );
            let mut deriv = InMemDicomObject::new_empty();
            deriv.put(codes::SEGMENTATION.seq(tags::DERIVATION_CODE_SEQUENCE));
            put_item(&mut deriv, tags::SOURCE_IMAGE_SEQUENCE, source);
            put_item(&mut f, tags::DERIVATION_IMAGE_SEQUENCE, deriv);
            let mut content = InMemDicomObject::new_empty();
            content.put(DataElement::new(
                tags::DIMENSION_INDEX_VALUES,
                VR::UL,
                PrimitiveValue::from([(k + 1) as u32, (z + 1) as u32]),
            ));
            put_item(&mut f, tags::FRAME_CONTENT_SEQUENCE, content);
            let mut pos = InMemDicomObject::new_empty();
            put(&mut pos, tags::IMAGE_POSITION_PATIENT, VR::DS, &ds(&sl.ipp));
            put_item(&mut f, tags::PLANE_POSITION_SEQUENCE, pos);
            let mut ident = InMemDicomObject::new_empty();
            ident.put(DataElement::new(
                tags::REFERENCED_SEGMENT_NUMBER,
                VR::US,
                PrimitiveValue::from((k + 1) as u16),
            ));
            put_item(&mut f, tags::SEGMENT_IDENTIFICATION_SEQUENCE, ident);
            frames.push(f);
            // Frame bits follow one another with no padding (PS3.5 8.1.1).
            let base = (k * ns + z) * plane;
            for (i, l) in labels[z * plane..(z + 1) * plane].iter().enumerate() {
                if s.region.values.contains(l) {
                    let b = base + i;
                    bits[b / 8] |= 1 << (b % 8);
                }
            }
        }
    }
    if bits.len() % 2 == 1 {
        bits.push(0);
    }
    put_seq(&mut o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frames);
    // Common Instance Reference: the source series and every instance of it.
    let mut series = InMemDicomObject::new_empty();
    put(
        &mut series,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        src.series_uid,
    );
    put_seq(
        &mut series,
        tags::REFERENCED_INSTANCE_SEQUENCE,
        src.files.iter().map(|(c, i, _)| sop_ref(c, i)).collect(),
    );
    put_item(&mut o, tags::REFERENCED_SERIES_SEQUENCE, series);
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(bits),
    ));
    super::into_file(o)
}

fn segment_item(number: usize, s: &Segment, model: &ModelId) -> InMemDicomObject {
    let (ty, lab) = region_type(&s.region.key);
    let mut it = InMemDicomObject::new_empty();
    it.put(DataElement::new(
        tags::SEGMENT_NUMBER,
        VR::US,
        PrimitiveValue::from(number as u16),
    ));
    let label = capitalised(&s.region.name);
    put(&mut it, tags::SEGMENT_LABEL, VR::LO, &label);
    let values: Vec<String> = s.region.values.iter().map(|v| v.to_string()).collect();
    put(
        &mut it,
        tags::SEGMENT_DESCRIPTION,
        VR::ST,
        &format!("{label}: model label value(s) {}", values.join(", ")),
    );
    put(
        &mut it,
        tags::SEGMENT_ALGORITHM_TYPE,
        VR::CS,
        s.algorithm_type,
    );
    put(&mut it, tags::SEGMENT_ALGORITHM_NAME, VR::LO, &model.name);
    let mut alg = InMemDicomObject::new_empty();
    alg.put(codes::AI.seq(tags::ALGORITHM_FAMILY_CODE_SEQUENCE));
    put(&mut alg, tags::ALGORITHM_NAME, VR::LO, &model.name);
    put(&mut alg, tags::ALGORITHM_VERSION, VR::LO, &model.version);
    put(
        &mut alg,
        tags::ALGORITHM_PARAMETERS,
        VR::LT,
        &format!("model sha256 {}", model.sha256),
    );
    put_item(
        &mut it,
        tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
        alg,
    );
    it.put(codes::MORPHOLOGICALLY_ABNORMAL.seq(tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE));
    it.put(ty.seq(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE));
    it.put(codes::BRAIN.seq(tags::ANATOMIC_REGION_SEQUENCE));
    put(&mut it, tags::TRACKING_ID, VR::UT, &label);
    put(&mut it, tags::TRACKING_UID, VR::UI, &s.tracking_uid);
    it.put(DataElement::new(
        tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
        VR::US,
        PrimitiveValue::from(lab),
    ));
    it
}

pub fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Decimal strings for DS values: at most 16 characters each.
pub fn ds(v: &[f64]) -> String {
    v.iter()
        .map(|x| {
            let mut s = format!("{x:.6}");
            if s.contains('.') {
                s = s.trim_end_matches('0').trim_end_matches('.').to_string();
            }
            if s == "-0" {
                s = "0".into();
            }
            s.chars().take(16).collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\\")
}
