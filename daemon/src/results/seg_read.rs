//! Reading a segmentation a person sends back (an edit exported by OHIF, Slicer
//! or highdicom): BINARY or LABELMAP, uncompressed or RLE Lossless, frames in
//! any order and any subset. Each frame is placed on the source series' grid by
//! the source image it names (or else by its plane position), and each segment
//! is matched to one of our regions by its segmented property type code.
//! dicom-pixeldata's 1-bit read-back is not used (DESIGN.md section 5).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, ensure, Result};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::text;

pub const LABELMAP_SEGMENTATION: &str = "1.2.840.10008.5.1.4.1.1.66.7";
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// One segment of the returned SEG.
#[derive(Debug, Clone)]
pub struct ReturnedSegment {
    pub number: u16,
    pub label: String,
    pub type_code: String,
    /// On the source grid (slice-major), true inside.
    pub mask: Vec<bool>,
}

#[derive(Debug)]
pub struct ReturnedSeg {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_uid: String,
    /// The series it segments (ReferencedSeriesSequence), if it says.
    pub referenced_series: Option<String>,
    pub creator: String,
    pub institution: String,
    pub segments: Vec<ReturnedSegment>,
}

fn items(o: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    o.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .unwrap_or(&[])
}

fn first(o: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    items(o, tag).first()
}

fn uint(o: &InMemDicomObject, tag: Tag) -> Option<u32> {
    o.element_opt(tag).ok().flatten()?.to_int::<u32>().ok()
}

/// The referenced series of a returned SEG, read from its header only.
pub fn referenced_series(o: &InMemDicomObject) -> Option<String> {
    first(o, tags::REFERENCED_SERIES_SEQUENCE)
        .map(|s| text(s, tags::SERIES_INSTANCE_UID))
        .filter(|s| !s.is_empty())
}

/// Where each source slice is: (SOP instance UID, frame 1-based) and position
/// along the slice normal, in slice order.
pub struct SourceGrid<'a> {
    pub slices: Vec<(&'a str, u32, f64)>,
    pub normal: [f64; 3],
    pub spacing: f64,
    pub rows: usize,
    pub cols: usize,
}

/// Reads a returned SEG onto the source grid.
pub fn read(
    obj: &dicom_object::FileDicomObject<InMemDicomObject>,
    grid: &SourceGrid,
) -> Result<ReturnedSeg> {
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let sop_class_uid = text(obj, tags::SOP_CLASS_UID);
    let labelmap =
        sop_class_uid == LABELMAP_SEGMENTATION || text(obj, tags::SEGMENTATION_TYPE) == "LABELMAP";
    let (rows, cols) = (
        uint(obj, tags::ROWS).unwrap_or(0) as usize,
        uint(obj, tags::COLUMNS).unwrap_or(0) as usize,
    );
    ensure!(
        (rows, cols) == (grid.rows, grid.cols),
        "the SEG is {rows}x{cols}, its source series {}x{}",
        grid.rows,
        grid.cols
    );
    let nframes = uint(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1) as usize;
    let bits = uint(obj, tags::BITS_ALLOCATED).unwrap_or(1) as usize;
    let seg_type = text(obj, tags::SEGMENTATION_TYPE);
    ensure!(
        matches!(seg_type.as_str(), "BINARY" | "LABELMAP" | "FRACTIONAL"),
        "Segmentation Type {seg_type:?} is not BINARY, LABELMAP or FRACTIONAL"
    );
    let max_fraction = uint(obj, tags::MAXIMUM_FRACTIONAL_VALUE).unwrap_or(255);
    let frames = frame_values(obj, &ts, nframes, rows * cols, bits)?;
    let plane = rows * cols;
    let ns = grid.slices.len();
    let mut segments: Vec<ReturnedSegment> = items(obj, tags::SEGMENT_SEQUENCE)
        .iter()
        .map(|s| ReturnedSegment {
            number: uint(s, tags::SEGMENT_NUMBER).unwrap_or(0) as u16,
            label: text(s, tags::SEGMENT_LABEL),
            type_code: first(s, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE)
                .map(|c| text(c, tags::CODE_VALUE))
                .unwrap_or_default(),
            mask: vec![false; ns * plane],
        })
        .collect();
    ensure!(!segments.is_empty(), "the SEG has no Segment Sequence");
    let by_ref: BTreeMap<(&str, u32), usize> = grid
        .slices
        .iter()
        .enumerate()
        .map(|(i, (sop, f, _))| ((*sop, *f), i))
        .collect();
    let per_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    ensure!(
        per_frame.len() == nframes,
        "{} per-frame functional group items for {nframes} frames",
        per_frame.len()
    );
    for (f, fg) in per_frame.iter().enumerate() {
        let slice = frame_slice(fg, grid, &by_ref)
            .ok_or_else(|| anyhow!("frame {} matches no slice of the source series", f + 1))?;
        let values = &frames[f * plane..(f + 1) * plane];
        if labelmap {
            for seg in segments.iter_mut() {
                for (i, &v) in values.iter().enumerate() {
                    if v == seg.number as u32 {
                        seg.mask[slice * plane + i] = true;
                    }
                }
            }
        } else {
            let n = first(fg, tags::SEGMENT_IDENTIFICATION_SEQUENCE)
                .and_then(|s| uint(s, tags::REFERENCED_SEGMENT_NUMBER))
                .ok_or_else(|| anyhow!("frame {} names no segment", f + 1))?;
            let seg = segments
                .iter_mut()
                .find(|s| s.number as u32 == n)
                .ok_or_else(|| {
                    anyhow!(
                        "frame {} names segment {n}, which the SEG does not define",
                        f + 1
                    )
                })?;
            // FRACTIONAL: inside from half the maximum value up.
            let threshold = if seg_type == "FRACTIONAL" {
                max_fraction.div_ceil(2).max(1)
            } else {
                1
            };
            for (i, &v) in values.iter().enumerate() {
                if v >= threshold {
                    seg.mask[slice * plane + i] = true;
                }
            }
        }
    }
    Ok(ReturnedSeg {
        sop_class_uid,
        sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID),
        series_uid: text(obj, tags::SERIES_INSTANCE_UID),
        referenced_series: referenced_series(obj),
        creator: text(obj, tags::CONTENT_CREATOR_NAME),
        institution: text(obj, tags::INSTITUTION_NAME),
        segments,
    })
}

/// The source slice a frame belongs to: by the source image it was derived
/// from, else by its position along the normal (within half a slice).
fn frame_slice(
    fg: &InMemDicomObject,
    grid: &SourceGrid,
    by_ref: &BTreeMap<(&str, u32), usize>,
) -> Option<usize> {
    let src = first(fg, tags::DERIVATION_IMAGE_SEQUENCE)
        .and_then(|d| first(d, tags::SOURCE_IMAGE_SEQUENCE));
    if let Some(s) = src {
        let sop = text(s, tags::REFERENCED_SOP_INSTANCE_UID);
        let frame = uint(s, tags::REFERENCED_FRAME_NUMBER).unwrap_or(1);
        if let Some(&i) = by_ref.get(&(sop.as_str(), frame)) {
            return Some(i);
        }
    }
    let ipp: Vec<f64> = first(fg, tags::PLANE_POSITION_SEQUENCE)?
        .element_opt(tags::IMAGE_POSITION_PATIENT)
        .ok()
        .flatten()?
        .to_multi_float64()
        .ok()?;
    if ipp.len() != 3 {
        return None;
    }
    let d = ipp[0] * grid.normal[0] + ipp[1] * grid.normal[1] + ipp[2] * grid.normal[2];
    let (i, best) = grid
        .slices
        .iter()
        .enumerate()
        .map(|(i, s)| (i, (s.2 - d).abs()))
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    (best <= grid.spacing / 2.0 + 1e-3).then_some(i)
}

/// Every frame's values (one per pixel), frames concatenated.
fn frame_values(
    obj: &InMemDicomObject,
    ts: &str,
    nframes: usize,
    plane: usize,
    bits: usize,
) -> Result<Vec<u32>> {
    let px = obj
        .element(tags::PIXEL_DATA)
        .map_err(|_| anyhow!("the SEG has no Pixel Data"))?;
    let mut out = Vec::with_capacity(nframes * plane);
    if ts == RLE_LOSSLESS {
        let frags = px
            .value()
            .fragments()
            .ok_or_else(|| anyhow!("RLE Lossless pixel data is not encapsulated"))?;
        ensure!(
            frags.len() == nframes,
            "{} RLE fragments for {nframes} frames",
            frags.len()
        );
        for f in frags {
            let segs = rle_frame(f)?;
            match bits {
                1 => {
                    ensure!(
                        segs.len() == 1,
                        "1-bit RLE frame with {} segments",
                        segs.len()
                    );
                    out.extend(unpack_bits(&segs[0], 0, plane));
                }
                8 => {
                    ensure!(
                        segs.len() == 1 && segs[0].len() >= plane,
                        "bad 8-bit RLE frame"
                    );
                    out.extend(segs[0][..plane].iter().map(|&b| b as u32));
                }
                16 => {
                    ensure!(
                        segs.len() == 2,
                        "16-bit RLE frame with {} segments",
                        segs.len()
                    );
                    ensure!(
                        segs[0].len() >= plane && segs[1].len() >= plane,
                        "short RLE segment"
                    );
                    out.extend((0..plane).map(|i| (segs[0][i] as u32) << 8 | segs[1][i] as u32));
                }
                b => bail!("Bits Allocated {b} is not supported for a SEG"),
            }
        }
        return Ok(out);
    }
    ensure!(
        matches!(ts, "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1"),
        "SEG transfer syntax {ts} is not supported (uncompressed or RLE Lossless)"
    );
    let bytes = px
        .value()
        .to_bytes()
        .map_err(|e| anyhow!("cannot read the pixel data: {e}"))?;
    match bits {
        // Frames follow one another bit by bit (no padding between frames).
        1 => {
            ensure!(
                bytes.len() * 8 >= nframes * plane,
                "pixel data shorter than its frames"
            );
            out.extend(unpack_bits(&bytes, 0, nframes * plane));
        }
        8 => {
            ensure!(
                bytes.len() >= nframes * plane,
                "pixel data shorter than its frames"
            );
            out.extend(bytes[..nframes * plane].iter().map(|&b| b as u32));
        }
        16 => {
            ensure!(
                bytes.len() >= 2 * nframes * plane,
                "pixel data shorter than its frames"
            );
            out.extend(
                bytes
                    .chunks_exact(2)
                    .take(nframes * plane)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
            );
        }
        b => bail!("Bits Allocated {b} is not supported for a SEG"),
    }
    Ok(out)
}

/// `n` bits from `start`, least significant bit first (PS3.5 8.1.1).
fn unpack_bits(b: &[u8], start: usize, n: usize) -> impl Iterator<Item = u32> + '_ {
    (start..start + n).map(move |i| ((b[i / 8] >> (i % 8)) & 1) as u32)
}

/// The decoded segments of one RLE Lossless frame (PS3.5 Annex G).
fn rle_frame(f: &[u8]) -> Result<Vec<Vec<u8>>> {
    ensure!(f.len() >= 64, "RLE frame shorter than its header");
    let word = |i: usize| {
        u32::from_le_bytes([f[4 * i], f[4 * i + 1], f[4 * i + 2], f[4 * i + 3]]) as usize
    };
    let n = word(0);
    ensure!((1..=15).contains(&n), "RLE header names {n} segments");
    let offsets: Vec<usize> = (1..=n).map(word).collect();
    let mut out = Vec::with_capacity(n);
    for (k, &start) in offsets.iter().enumerate() {
        let end = offsets.get(k + 1).copied().unwrap_or(f.len());
        ensure!(
            start >= 64 && start <= end && end <= f.len(),
            "RLE segment offsets out of range"
        );
        out.push(packbits(&f[start..end]));
    }
    Ok(out)
}

fn packbits(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let h = s[i] as i8;
        i += 1;
        if h >= 0 {
            let n = h as usize + 1;
            out.extend_from_slice(&s[i..(i + n).min(s.len())]);
            i += n;
        } else if h != -128 {
            if let Some(&b) = s.get(i) {
                out.extend(std::iter::repeat_n(b, (1 - h as isize) as usize));
            }
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_runs_and_literals() {
        // literal of 3, run of 4 x 0xAA, a no-op, literal of 1
        let enc = [2u8, 1, 2, 3, (-3i8) as u8, 0xAA, 0x80, 0, 9];
        assert_eq!(packbits(&enc), vec![1, 2, 3, 0xAA, 0xAA, 0xAA, 0xAA, 9]);
    }

    #[test]
    fn bits_are_least_significant_first_across_bytes() {
        let v: Vec<u32> = unpack_bits(&[0b0000_0101, 0b1000_0000], 0, 16).collect();
        assert_eq!(v[..3], [1, 0, 1]);
        assert_eq!(v[15], 1);
        assert_eq!(v.iter().sum::<u32>(), 3);
    }
}
