//! Resampling between a series' own grid and the model grid. A grid is an index
//! space placed in patient space (LPS, mm) by an origin, three orthonormal axis
//! directions and a spacing; any two grids can be resampled into each other, so
//! axial, sagittal, coronal and oblique series all reach the same model grid.
//! Images and logits are interpolated trilinearly; labels take the nearest voxel
//! (a label is never interpolated into a class it is not).

use super::Volume;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// voxels along axes 0 (slowest), 1, 2 (fastest)
    pub dims: [usize; 3],
    /// mm along each axis
    pub spacing: [f64; 3],
    /// patient position of voxel (0, 0, 0)
    pub origin: [f64; 3],
    /// unit direction of each axis in patient space
    pub axes: [[f64; 3]; 3],
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

impl Grid {
    pub fn of(v: &Volume) -> Grid {
        // Volume index (slice, row, column): slices along the normal, rows along the
        // column direction cosine, columns along the row direction cosine.
        Grid {
            dims: v.dims,
            spacing: v.spacing,
            origin: v.origin,
            axes: [v.normal, v.col_dir, v.row_dir],
        }
    }

    pub fn voxels(&self) -> usize {
        self.dims.iter().product()
    }

    /// Patient position of a (fractional) index.
    pub fn position(&self, i: [f64; 3]) -> [f64; 3] {
        let mut p = self.origin;
        for (a, ax) in self.axes.iter().enumerate() {
            for (d, pd) in p.iter_mut().enumerate() {
                *pd += ax[d] * i[a] * self.spacing[a];
            }
        }
        p
    }

    /// Fractional index of a patient position (axes are orthonormal).
    pub fn index(&self, p: [f64; 3]) -> [f64; 3] {
        let d = [
            p[0] - self.origin[0],
            p[1] - self.origin[1],
            p[2] - self.origin[2],
        ];
        [0, 1, 2].map(|a| dot(d, self.axes[a]) / self.spacing[a])
    }

    /// The patient-axis-aligned grid (z, y, x increasing: LPS) at `spacing` mm that
    /// covers every voxel centre of `self`: the model grid.
    pub fn aligned_cover(&self, spacing: [f64; 3]) -> Grid {
        let (mut lo, mut hi) = ([f64::MAX; 3], [f64::MIN; 3]);
        for corner in 0..8 {
            let i = [0, 1, 2].map(|a| {
                if corner >> a & 1 == 1 {
                    (self.dims[a] - 1) as f64
                } else {
                    0.0
                }
            });
            let p = self.position(i);
            for d in 0..3 {
                lo[d] = lo[d].min(p[d]);
                hi[d] = hi[d].max(p[d]);
            }
        }
        // Model axis 0 is patient z, 1 is y, 2 is x.
        let pd = [2, 1, 0];
        let dims =
            [0, 1, 2].map(|a| ((hi[pd[a]] - lo[pd[a]]) / spacing[a] + 1e-6).floor() as usize + 1);
        Grid {
            dims,
            spacing,
            origin: lo,
            axes: [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interp {
    Linear,
    Nearest,
}

/// Values of `src` (on grid `from`) at every voxel of grid `to`. Positions outside
/// `from` get `outside`, except within half a voxel of its edge, which take the edge.
pub fn resample(src: &[f32], from: &Grid, to: &Grid, interp: Interp, outside: f32) -> Vec<f32> {
    let mut out = vec![outside; to.voxels()];
    resample_into(src, from, to, interp, &mut out);
    out
}

/// Writes every voxel of `out` (grid `to`) that lies inside `from`; leaves the others.
fn resample_into(src: &[f32], from: &Grid, to: &Grid, interp: Interp, out: &mut [f32]) {
    let [d0, d1, d2] = from.dims;
    // Index in `from` as an affine function of the index in `to`: base + sum_a i_a * step_a.
    let base = from.index(to.origin);
    let step = [0, 1, 2].map(|a| {
        let mut e = [0.0; 3];
        e[a] = 1.0;
        let p = to.position(e);
        let q = from.index(p);
        [q[0] - base[0], q[1] - base[1], q[2] - base[2]]
    });
    let at = |s: usize, r: usize, c: usize| src[(s * d1 + r) * d2 + c];
    let n = [d0 as f64, d1 as f64, d2 as f64];
    let mut o = 0;
    for i in 0..to.dims[0] {
        for j in 0..to.dims[1] {
            let row = [0, 1, 2].map(|d| base[d] + i as f64 * step[0][d] + j as f64 * step[1][d]);
            for k in 0..to.dims[2] {
                let q = [0, 1, 2].map(|d| row[d] + k as f64 * step[2][d]);
                o += 1;
                if (0..3).any(|d| q[d] < -0.5 || q[d] > n[d] - 0.5) {
                    continue;
                }
                let q = [0, 1, 2].map(|d| q[d].clamp(0.0, n[d] - 1.0));
                out[o - 1] = match interp {
                    Interp::Nearest => at(
                        q[0].round() as usize,
                        q[1].round() as usize,
                        q[2].round() as usize,
                    ),
                    Interp::Linear => {
                        let f = q.map(|x| x.floor());
                        let (s0, r0, c0) = (f[0] as usize, f[1] as usize, f[2] as usize);
                        let (s1, r1, c1) = (
                            (s0 + 1).min(d0 - 1),
                            (r0 + 1).min(d1 - 1),
                            (c0 + 1).min(d2 - 1),
                        );
                        let (ts, tr, tc) = (
                            (q[0] - f[0]) as f32,
                            (q[1] - f[1]) as f32,
                            (q[2] - f[2]) as f32,
                        );
                        let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
                        let c00 = lerp(at(s0, r0, c0), at(s0, r0, c1), tc);
                        let c01 = lerp(at(s0, r1, c0), at(s0, r1, c1), tc);
                        let c10 = lerp(at(s1, r0, c0), at(s1, r0, c1), tc);
                        let c11 = lerp(at(s1, r1, c0), at(s1, r1, c1), tc);
                        lerp(lerp(c00, c01, tr), lerp(c10, c11, tr), ts)
                    }
                };
            }
        }
    }
}

/// Smooths `src` (on `g`) along each axis whose voxels are finer than `target` mm,
/// before sampling it on a coarser grid: a Gaussian with sigma = sqrt(f^2 - 1) / 2
/// voxels for a factor f approximates averaging over the coarse voxel, so noise is
/// averaged (as in the model's training data) and edges keep partial values instead
/// of aliasing.
pub fn antialias(src: &[f32], g: &Grid, target: [f64; 3]) -> Vec<f32> {
    let coarsest = target.iter().copied().fold(0.0, f64::max);
    let mut out = src.to_vec();
    let mut line = Vec::new();
    for a in 0..3 {
        let f = coarsest / g.spacing[a];
        if f <= 1.0 || g.dims[a] < 2 {
            continue;
        }
        let sigma = 0.5 * (f * f - 1.0).sqrt();
        let r = (3.0 * sigma).ceil() as isize;
        let k: Vec<f32> = (-r..=r)
            .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
            .collect();
        let ksum: f32 = k.iter().sum();
        let k: Vec<f32> = k.iter().map(|v| v / ksum).collect();
        let stride = match a {
            0 => g.dims[1] * g.dims[2],
            1 => g.dims[2],
            _ => 1,
        };
        let n = g.dims[a] as isize;
        for base in 0..out.len() {
            // visit each line once, from its first voxel
            if (base / stride) % g.dims[a] != 0 {
                continue;
            }
            line.clear();
            line.extend((0..g.dims[a]).map(|i| out[base + i * stride]));
            for i in 0..n {
                let mut acc = 0f32;
                for (t, w) in k.iter().enumerate() {
                    let j = (i + t as isize - r).clamp(0, n - 1);
                    acc += w * line[j as usize];
                }
                out[base + i as usize * stride] = acc;
            }
        }
    }
    out
}

/// Labels (u8) by nearest neighbour; outside `from` is background (0).
pub fn resample_labels(src: &[u8], from: &Grid, to: &Grid) -> Vec<u8> {
    let f: Vec<f32> = src.iter().map(|&v| v as f32).collect();
    resample(&f, from, to, Interp::Nearest, 0.0)
        .into_iter()
        .map(|v| v as u8)
        .collect()
}

/// Per-class logits (classes x voxels of `from`) interpolated onto `to`, then the
/// winning class per voxel: smoother than resampling the labels of a coarse grid.
/// Outside the model grid the background wins.
pub fn resample_argmax(logits: &[f32], classes: usize, from: &Grid, to: &Grid) -> Vec<u8> {
    let nf = from.voxels();
    let mut best = vec![0u8; to.voxels()];
    let mut best_v = vec![f32::MIN; to.voxels()];
    let mut plane = vec![0f32; to.voxels()];
    for c in 0..classes {
        // Background outside the grid; other classes very unlikely there.
        let outside = if c == 0 { 1e9 } else { -1e9 };
        plane.fill(outside);
        resample_into(
            &logits[c * nf..(c + 1) * nf],
            from,
            to,
            Interp::Linear,
            &mut plane,
        );
        for v in 0..plane.len() {
            if plane[v] > best_v[v] {
                best_v[v] = plane[v];
                best[v] = c as u8;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(dims: [usize; 3], spacing: [f64; 3], axes: [[f64; 3]; 3], origin: [f64; 3]) -> Grid {
        Grid {
            dims,
            spacing,
            origin,
            axes,
        }
    }

    const AXIAL: [[f64; 3]; 3] = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]];

    #[test]
    fn same_grid_is_the_identity() {
        let g = grid([3, 4, 5], [1.0, 2.0, 3.0], AXIAL, [1.0, 2.0, 3.0]);
        let v: Vec<f32> = (0..60).map(|i| i as f32).collect();
        assert_eq!(resample(&v, &g, &g, Interp::Linear, -1.0), v);
        assert_eq!(resample(&v, &g, &g, Interp::Nearest, -1.0), v);
    }

    #[test]
    fn a_linear_ramp_stays_linear() {
        // Values = x (mm) along the last axis; a finer grid interpolates them.
        let from = grid([1, 1, 4], [1.0, 1.0, 2.0], AXIAL, [0.0; 3]);
        let to = grid([1, 1, 7], [1.0, 1.0, 1.0], AXIAL, [0.0; 3]);
        let v = vec![0.0f32, 2.0, 4.0, 6.0];
        let up = resample(&v, &from, &to, Interp::Linear, -1.0);
        for (k, u) in up.iter().enumerate() {
            assert!((u - k as f32).abs() < 1e-5, "{up:?}");
        }
    }

    #[test]
    fn a_sagittal_grid_lands_on_the_same_patient_positions() {
        // Sagittal: slices along x, rows down (-z), columns posterior (+y).
        let sag = grid(
            [4, 5, 6],
            [1.0; 3],
            [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
            [10.0, 20.0, 30.0],
        );
        let n = sag.voxels();
        // value = x + 10 y + 100 z at each voxel centre
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let p = sag.position([(i / 30) as f64, (i / 6 % 5) as f64, (i % 6) as f64]);
                (p[0] + 10.0 * p[1] + 100.0 * p[2]) as f32
            })
            .collect();
        let model = sag.aligned_cover([1.0; 3]);
        assert_eq!(model.dims, [5, 6, 4]);
        let m = resample(&v, &sag, &model, Interp::Linear, f32::NAN);
        for (i, val) in m.iter().enumerate() {
            let p = model.position([(i / 24) as f64, (i / 4 % 6) as f64, (i % 4) as f64]);
            assert!((val - (p[0] + 10.0 * p[1] + 100.0 * p[2]) as f32).abs() < 1e-3);
        }
        // and back
        let back = resample(&m, &model, &sag, Interp::Nearest, f32::NAN);
        assert_eq!(back, v);
    }

    /// A 1 mm grid tilted by `deg` about patient x (an oblique axial acquisition).
    fn oblique(deg: f64, n: usize) -> Grid {
        let (c, s) = (deg.to_radians().cos(), deg.to_radians().sin());
        let row = [1.0, 0.0, 0.0];
        let col = [0.0, c, s];
        let normal = [0.0, -s, c];
        grid(
            [n, n, n],
            [1.0; 3],
            [normal, col, row],
            [-40.0, -40.0, -40.0],
        )
    }

    /// A ball of `r` mm around the grid's centre, as labels 0/1.
    fn ball(g: &Grid, r: f64) -> Vec<u8> {
        // Off the voxel lattice, as a real lesion is: a lattice-aligned sphere ties
        // at every boundary voxel.
        let c =
            g.position([0, 1, 2].map(|a| (g.dims[a] - 1) as f64 / 2.0 + 0.31 * (a as f64 + 1.0)));
        let mut v = Vec::with_capacity(g.voxels());
        for i in 0..g.dims[0] {
            for j in 0..g.dims[1] {
                for k in 0..g.dims[2] {
                    let p = g.position([i as f64, j as f64, k as f64]);
                    let d = ((p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2) + (p[2] - c[2]).powi(2))
                        .sqrt();
                    v.push((d <= r) as u8);
                }
            }
        }
        v
    }

    fn count(v: &[u8]) -> f64 {
        v.iter().filter(|&&l| l > 0).count() as f64
    }

    #[test]
    fn a_labels_volume_survives_the_model_grid_round_trip_within_1_percent() {
        // The daemon's path: series grid -> 2 mm model grid (trilinear) -> logits back
        // (trilinear) -> argmax, for axial, sagittal, coronal and oblique grids.
        let axial = grid([80; 3], [1.0; 3], AXIAL, [-40.0; 3]);
        let sagittal = grid(
            [80; 3],
            [1.0; 3],
            [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
            [-40.0, -40.0, 40.0],
        );
        let coronal = grid(
            [80; 3],
            [1.0; 3],
            [[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]],
            [-40.0, -40.0, 40.0],
        );
        for (name, g) in [
            ("axial", axial),
            ("sagittal", sagittal),
            ("coronal", coronal),
            ("oblique", oblique(20.0, 80)),
        ] {
            let labels = ball(&g, 22.0);
            let model = g.aligned_cover([2.0; 3]);
            let fg: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
            let fg = antialias(&fg, &g, model.spacing);
            let bg: Vec<f32> = fg.iter().map(|v| 1.0 - v).collect();
            let mut logits = resample(&bg, &g, &model, Interp::Linear, 1.0);
            logits.extend(resample(&fg, &g, &model, Interp::Linear, 0.0));
            let back = resample_argmax(&logits, 2, &model, &g);
            let (a, b) = (count(&labels), count(&back));
            assert!((a - b).abs() / a < 0.01, "{name}: {a} -> {b}");
            // and the ball stays where it was
            let overlap = labels
                .iter()
                .zip(&back)
                .filter(|(x, y)| **x == 1 && **y == 1)
                .count() as f64;
            assert!(overlap / a > 0.97, "{name}: overlap {}", overlap / a);
        }
    }

    #[test]
    fn nearest_round_trip_between_orientations_keeps_labels() {
        // Same spacing, another orientation: nearest neighbour moves labels without loss.
        let g = oblique(0.0, 40);
        let sag = grid(
            [40; 3],
            [1.0; 3],
            [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
            [-40.0, -40.0, -1.0],
        );
        let labels = ball(&g, 15.0);
        let there = resample_labels(&labels, &g, &sag);
        let back = resample_labels(&there, &sag, &g);
        assert_eq!(count(&labels), count(&back));
    }
}
