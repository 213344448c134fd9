//! Sliding-window inference over a volume, as MONAI's sliding_window_inference
//! does it (the reference the tests hold it to): patches every
//! int(patch * (1 - overlap)) voxels, the last one moved back inside the volume,
//! each patch's logits weighted by a Gaussian importance map (sigma = patch / 8,
//! clamped below at 1e-3), summed and normalised; a volume smaller than the patch
//! is zero-padded symmetrically. Optional mirroring test-time augmentation; argmax
//! in Rust (models export no Softmax/ArgMax).
//!
//! The model is any function from one input patch (channels x patch voxels) to its
//! logits (classes x patch voxels); the backends (ONNX Runtime, tract) provide it.

use anyhow::{bail, Result};

/// Start offsets of the patches along one axis of `dim` voxels (`dim >= patch`),
/// MONAI's _get_scan_interval + dense_patch_slices.
pub fn tile_starts(dim: usize, patch: usize, overlap: f32) -> Vec<usize> {
    if dim <= patch {
        return vec![0];
    }
    let interval = ((patch as f64 * (1.0 - overlap as f64)) as usize).max(1);
    let mut starts = Vec::new();
    let mut d = 0;
    loop {
        let s = d * interval;
        starts.push(s.min(dim - patch));
        if s + patch >= dim {
            return starts;
        }
        d += 1;
    }
}

/// Gaussian importance map over a patch as MONAI computes it: centred at
/// (n - 1) / 2, sigma = n / 8 per axis, product of the axes in f32, peak 1, and
/// clamped below at max(min, 1e-3) so far corners still count a little.
pub fn gaussian_importance(patch: [usize; 3]) -> Vec<f32> {
    let axis = |n: usize| -> Vec<f32> {
        let s = n as f32 * 0.125;
        (0..n)
            .map(|i| {
                let x = i as f32 - (n as f32 - 1.0) / 2.0;
                (x * x / (-2.0 * s * s)).exp()
            })
            .collect()
    };
    let (a, b, c) = (axis(patch[0]), axis(patch[1]), axis(patch[2]));
    let mut w: Vec<f32> = Vec::with_capacity(patch.iter().product());
    for x in &a {
        for y in &b {
            for z in &c {
                w.push(x * y * z);
            }
        }
    }
    let floor = w.iter().copied().fold(f32::MAX, f32::min).max(1e-3);
    for v in &mut w {
        *v = v.max(floor);
    }
    w
}

/// The flips used by mirroring TTA: every subset of the three axes.
const MIRRORS: [[bool; 3]; 8] = [
    [false, false, false],
    [true, false, false],
    [false, true, false],
    [false, false, true],
    [true, true, false],
    [true, false, true],
    [false, true, true],
    [true, true, true],
];

pub struct Window {
    pub patch: [usize; 3],
    pub overlap: f32,
    pub classes: usize,
    pub mirror: bool,
}

/// Calls `f(patch_index, volume_index)` for every voxel of a patch placed at
/// `start` (flipped along the axes in `flip`) that lies inside the volume.
fn for_each_voxel(
    dims: [usize; 3],
    start: [usize; 3],
    patch: [usize; 3],
    flip: [bool; 3],
    mut f: impl FnMut(usize, usize),
) {
    let at = |a: usize, i: usize| start[a] + if flip[a] { patch[a] - 1 - i } else { i };
    for i in 0..patch[0] {
        let vi = at(0, i);
        if vi >= dims[0] {
            continue;
        }
        for j in 0..patch[1] {
            let vj = at(1, j);
            if vj >= dims[1] {
                continue;
            }
            for k in 0..patch[2] {
                let vk = at(2, k);
                if vk < dims[2] {
                    f(
                        (i * patch[1] + j) * patch[2] + k,
                        (vi * dims[1] + vj) * dims[2] + vk,
                    );
                }
            }
        }
    }
}

/// Copies `src` (channels x dims) into a patch at `start`, zero-padding where the
/// patch extends past the volume, optionally flipped along some axes.
fn extract(
    src: &[f32],
    ch: usize,
    dims: [usize; 3],
    start: [usize; 3],
    patch: [usize; 3],
    flip: [bool; 3],
) -> Vec<f32> {
    let pv = patch[0] * patch[1] * patch[2];
    let dv = dims[0] * dims[1] * dims[2];
    let mut out = vec![0f32; ch * pv];
    for_each_voxel(dims, start, patch, flip, |pi, v| {
        for c in 0..ch {
            out[c * pv + pi] = src[c * dv + v];
        }
    });
    out
}

impl Window {
    /// Runs `model` over `input` (channels x dims) and returns the blended logits
    /// (classes x dims).
    pub fn run(
        &self,
        input: &[f32],
        channels: usize,
        dims: [usize; 3],
        mut model: impl FnMut(&[f32]) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let dv = dims[0] * dims[1] * dims[2];
        if input.len() != channels * dv {
            bail!(
                "input has {} values, expected {channels} x {dv}",
                input.len()
            );
        }
        let p = self.patch;
        if dims.iter().zip(p).any(|(d, p)| *d < p) {
            return self.run_padded(input, channels, dims, model);
        }
        let pv = p[0] * p[1] * p[2];
        let weight = gaussian_importance(p);
        let mut acc = vec![0f32; self.classes * dv];
        let mut norm = vec![0f32; dv];
        let starts = [0, 1, 2].map(|a| tile_starts(dims[a], p[a], self.overlap));
        let mirrors: &[[bool; 3]] = if self.mirror { &MIRRORS } else { &MIRRORS[..1] };
        for &s0 in &starts[0] {
            for &s1 in &starts[1] {
                for &s2 in &starts[2] {
                    let start = [s0, s1, s2];
                    for &flip in mirrors {
                        let patch_in = extract(input, channels, dims, start, p, flip);
                        let logits = model(&patch_in)?;
                        if logits.len() != self.classes * pv {
                            bail!(
                                "model returned {} values, expected {} x {pv}",
                                logits.len(),
                                self.classes
                            );
                        }
                        // The Gaussian is symmetric, so a flipped patch index weighs the same.
                        for_each_voxel(dims, start, p, flip, |pi, v| {
                            let w = weight[pi];
                            norm[v] += w;
                            for c in 0..self.classes {
                                acc[c * dv + v] += w * logits[c * pv + pi];
                            }
                        });
                    }
                }
            }
        }
        for c in 0..self.classes {
            for v in 0..dv {
                acc[c * dv + v] /= norm[v];
            }
        }
        Ok(acc)
    }
}

impl Window {
    /// MONAI pads a volume smaller than the patch with zeros, half before and half
    /// after, runs the window on that and crops the result back.
    fn run_padded(
        &self,
        input: &[f32],
        channels: usize,
        dims: [usize; 3],
        model: impl FnMut(&[f32]) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let padded = [0, 1, 2].map(|a| dims[a].max(self.patch[a]));
        let lo = [0, 1, 2].map(|a| (padded[a] - dims[a]) / 2);
        let (dv, pv) = (
            dims.iter().product::<usize>(),
            padded.iter().product::<usize>(),
        );
        let offset = |z: usize, y: usize, x: usize| {
            ((z + lo[0]) * padded[1] + y + lo[1]) * padded[2] + x + lo[2]
        };
        let mut big = vec![0f32; channels * pv];
        for c in 0..channels {
            for z in 0..dims[0] {
                for y in 0..dims[1] {
                    let src = c * dv + (z * dims[1] + y) * dims[2];
                    let dst = c * pv + offset(z, y, 0);
                    big[dst..dst + dims[2]].copy_from_slice(&input[src..src + dims[2]]);
                }
            }
        }
        let out = self.run(&big, channels, padded, model)?;
        let mut crop = vec![0f32; self.classes * dv];
        for c in 0..self.classes {
            for z in 0..dims[0] {
                for y in 0..dims[1] {
                    let dst = c * dv + (z * dims[1] + y) * dims[2];
                    let src = c * pv + offset(z, y, 0);
                    crop[dst..dst + dims[2]].copy_from_slice(&out[src..src + dims[2]]);
                }
            }
        }
        Ok(crop)
    }
}

/// Label of the largest logit per voxel (logits are classes x voxels).
pub fn argmax(logits: &[f32], classes: usize) -> Vec<u8> {
    let n = logits.len() / classes.max(1);
    (0..n)
        .map(|v| {
            let mut best = 0usize;
            for c in 1..classes {
                if logits[c * n + v] > logits[best * n + v] {
                    best = c;
                }
            }
            best as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_axis_with_the_overlap() {
        assert_eq!(tile_starts(64, 64, 0.5), vec![0]);
        assert_eq!(tile_starts(40, 64, 0.5), vec![0]);
        assert_eq!(tile_starts(128, 64, 0.5), vec![0, 32, 64]);
        assert_eq!(tile_starts(100, 64, 0.5), vec![0, 32, 36]);
        assert_eq!(tile_starts(100, 32, 0.25), vec![0, 24, 48, 68]);
    }

    #[test]
    fn gaussian_peaks_in_the_centre_and_never_zero() {
        let w = gaussian_importance([9, 9, 9]);
        let centre = w[(4 * 9 + 4) * 9 + 4];
        assert!((centre - 1.0).abs() < 1e-6);
        assert!(w.iter().all(|&v| v >= 1e-3 && v <= centre));
        assert!(w[0] < 0.01);
        assert_eq!(gaussian_importance([64, 64, 64])[0], 1e-3);
    }

    /// A voxel-wise "model": class 1 scores the input, class 0 scores 0.5. Whatever
    /// the tiling, padding and flips, the blended result must equal the voxel-wise
    /// answer exactly: every voxel covered, weights normalised, flips undone.
    fn voxelwise(patch: &[f32]) -> Result<Vec<f32>> {
        let mut out = vec![0.5f32; patch.len()];
        out.extend_from_slice(patch);
        Ok(out)
    }

    #[test]
    fn blending_reproduces_a_voxelwise_model_exactly() {
        let dims = [13, 21, 30];
        let n = dims.iter().product::<usize>();
        let input: Vec<f32> = (0..n).map(|i| ((i * 7919) % 101) as f32 / 100.0).collect();
        for mirror in [false, true] {
            let w = Window {
                patch: [8, 16, 16],
                overlap: 0.5,
                classes: 2,
                mirror,
            };
            let logits = w.run(&input, 1, dims, voxelwise).unwrap();
            for v in 0..n {
                assert!((logits[n + v] - input[v]).abs() < 1e-5, "voxel {v}");
                assert!((logits[v] - 0.5).abs() < 1e-5);
            }
            let labels = argmax(&logits, 2);
            assert!(labels
                .iter()
                .zip(&input)
                .all(|(&l, &x)| (l == 1) == (x > 0.5)));
        }
    }

    #[test]
    fn patch_larger_than_the_volume_is_zero_padded() {
        let dims = [4, 5, 6];
        let input = vec![1.0f32; 120];
        let w = Window {
            patch: [8, 8, 8],
            overlap: 0.5,
            classes: 2,
            mirror: true,
        };
        let logits = w.run(&input, 1, dims, voxelwise).unwrap();
        assert!(logits[120..].iter().all(|&x| (x - 1.0).abs() < 1e-6));
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let w = Window {
            patch: [4, 4, 4],
            overlap: 0.5,
            classes: 3,
            mirror: false,
        };
        assert!(w.run(&[0.0; 10], 1, [4, 4, 4], voxelwise).is_err());
        // The model gives 2 classes where 3 were declared.
        assert!(w.run(&[0.0; 64], 1, [4, 4, 4], voxelwise).is_err());
    }
}
