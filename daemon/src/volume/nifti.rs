//! NIfTI-1 (.nii) label volumes: what the segmentation stage keeps on disk, on the
//! series' own grid, readable by any research tool (nibabel, 3D Slicer, ITK-SNAP).

use super::resample::Grid;

/// A uint8 volume (index (axis0 * d1 + axis1) * d2 + axis2) as a .nii file whose
/// sform maps voxels to RAS millimetres (DICOM's LPS with x and y negated).
pub fn labels_nii(labels: &[u8], g: &Grid, description: &str) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    let put_i16 = |h: &mut [u8], at: usize, v: i16| h[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 = |h: &mut [u8], at: usize, v: f32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    // NIfTI i (fastest) is grid axis 2, j axis 1, k axis 0.
    let dim = [3, g.dims[2], g.dims[1], g.dims[0], 1, 1, 1, 1];
    for (n, d) in dim.iter().enumerate() {
        put_i16(&mut h, 40 + 2 * n, *d as i16);
    }
    put_i16(&mut h, 70, 2); // DT_UINT8
    put_i16(&mut h, 72, 8);
    let pix = [
        1.0,
        g.spacing[2],
        g.spacing[1],
        g.spacing[0],
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    for (n, p) in pix.iter().enumerate() {
        put_f32(&mut h, 76 + 4 * n, *p as f32);
    }
    put_f32(&mut h, 108, 352.0); // vox_offset
    put_f32(&mut h, 112, 1.0); // scl_slope
    h[123] = 2; // mm
    let d = description.as_bytes();
    h[148..148 + d.len().min(79)].copy_from_slice(&d[..d.len().min(79)]);
    put_i16(&mut h, 254, 1); // sform_code: scanner anatomical
    let col = |axis: usize| [0, 1, 2].map(|r| g.axes[axis][r] * g.spacing[axis]);
    let (ci, cj, ck) = (col(2), col(1), col(0));
    for r in 0..3 {
        let sign = if r < 2 { -1.0 } else { 1.0 };
        let row = [ci[r], cj[r], ck[r], g.origin[r]].map(|v| (sign * v) as f32);
        for (n, v) in row.iter().enumerate() {
            put_f32(&mut h, 280 + 16 * r + 4 * n, *v);
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    h.extend_from_slice(labels);
    h
}

/// The voxels of a uint8 .nii written by `labels_nii` (header checked).
pub fn read_labels(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        bytes.len() >= 352 && bytes[0..4] == 348i32.to_le_bytes() && &bytes[344..348] == b"n+1\0",
        "not a NIfTI-1 file"
    );
    let i16_at = |at: usize| i16::from_le_bytes([bytes[at], bytes[at + 1]]);
    anyhow::ensure!(i16_at(70) == 2, "labels are not uint8");
    let n: usize = (1..=3)
        .map(|k| i16_at(40 + 2 * k).max(0) as usize)
        .product();
    let off = f32::from_le_bytes(bytes[108..112].try_into().expect("4 bytes")) as usize;
    anyhow::ensure!(bytes.len() >= off + n, "NIfTI file is truncated");
    Ok(bytes[off..off + n].to_vec())
}
