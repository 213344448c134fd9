//! From stored instances to a 3D volume: slices sorted along the normal, pixel data
//! decoded with the modality LUT (rescale slope/intercept) applied, geometry kept.
//! Enhanced MR contributes one slice per frame. `resample` moves images and labels
//! between the source grid and a model grid.

pub mod nifti;
pub mod resample;

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use dicom_pixeldata::PixelDecoder;

use crate::gate::slice::{FrameGeometry, SliceHeader};

/// Voxels as f32, index = (slice * rows + row) * cols + col.
pub struct Volume {
    pub data: Vec<f32>,
    /// slices, rows, columns
    pub dims: [usize; 3],
    /// mm between slices, between rows, between columns
    pub spacing: [f64; 3],
    /// Patient (LPS) position of the first voxel of the first slice.
    pub origin: [f64; 3],
    pub row_dir: [f64; 3],
    pub col_dir: [f64; 3],
    pub normal: [f64; 3],
    /// Where each slice came from, in slice order (a SEG references these per frame).
    pub slices: Vec<SliceSource>,
}

/// One slice's source: index of the file in the list given to `load`, the frame
/// within it (0-based) and the slice's own Image Position (Patient).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SliceSource {
    pub file: usize,
    pub frame: u32,
    pub ipp: [f64; 3],
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Builds the volume of one series from its files and their already-read headers
/// (the same order). The gate's geometry stage has checked the geometry.
pub fn load(files: &[&Path], headers: &[SliceHeader]) -> Result<Volume> {
    if files.is_empty() || files.len() != headers.len() {
        bail!("no instances");
    }
    // (position along normal, file index, frame, geometry)
    let mut planes: Vec<(f64, usize, u32, FrameGeometry)> = Vec::new();
    let mut normal = None;
    for (i, h) in headers.iter().enumerate() {
        let frames: Vec<FrameGeometry> = if !h.frames.is_empty() {
            h.frames.clone()
        } else {
            let (Some(iop), Some(ipp), Some(ps)) = (h.iop, h.ipp, h.pixel_spacing) else {
                bail!("instance without geometry");
            };
            vec![FrameGeometry {
                iop,
                ipp,
                pixel_spacing: ps,
                slice_thickness: h.slice_thickness,
            }]
        };
        for (f, g) in frames.into_iter().enumerate() {
            let r = [g.iop[0], g.iop[1], g.iop[2]];
            let c = [g.iop[3], g.iop[4], g.iop[5]];
            let n = *normal.get_or_insert([
                r[1] * c[2] - r[2] * c[1],
                r[2] * c[0] - r[0] * c[2],
                r[0] * c[1] - r[1] * c[0],
            ]);
            planes.push((dot(g.ipp, n), i, f as u32, g));
        }
    }
    planes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let normal = normal.ok_or_else(|| anyhow!("no slice"))?;
    let (rows, cols) = (headers[0].rows as usize, headers[0].columns as usize);
    let mut data = Vec::with_capacity(planes.len() * rows * cols);
    // Decode each file once, even when several of its frames are planes.
    let mut cache: Option<(usize, dicom_pixeldata::DecodedPixelData<'static>)> = None;
    for &(_, i, frame, _) in &planes {
        if cache.as_ref().is_none_or(|(ci, _)| *ci != i) {
            let obj = dicom_object::open_file(files[i]).map_err(|e| anyhow!("{e}"))?;
            let px = obj
                .decode_pixel_data()
                .map_err(|e| anyhow!("cannot decode pixel data: {e}"))?
                .to_owned();
            cache = Some((i, px));
        }
        let px = &cache.as_ref().expect("set above").1;
        if px.rows() as usize != rows
            || px.columns() as usize != cols
            || px.samples_per_pixel() != 1
        {
            bail!("pixel data is not {rows}x{cols} grayscale");
        }
        let v: Vec<f32> = px
            .to_vec_frame(frame)
            .map_err(|e| anyhow!("cannot convert pixel data: {e}"))?;
        data.extend_from_slice(&v);
    }
    let g0 = planes[0].3;
    let step = if planes.len() > 1 {
        (planes[planes.len() - 1].0 - planes[0].0) / (planes.len() - 1) as f64
    } else {
        g0.slice_thickness.unwrap_or(1.0)
    };
    Ok(Volume {
        data,
        dims: [planes.len(), rows, cols],
        spacing: [step, g0.pixel_spacing[0], g0.pixel_spacing[1]],
        origin: g0.ipp,
        row_dir: [g0.iop[0], g0.iop[1], g0.iop[2]],
        col_dir: [g0.iop[3], g0.iop[4], g0.iop[5]],
        normal,
        slices: planes
            .iter()
            .map(|&(_, file, frame, g)| SliceSource {
                file,
                frame,
                ipp: g.ipp,
            })
            .collect(),
    })
}
