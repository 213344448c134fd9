//! Resampling between the source grid and a model grid with the same axes and
//! extent: trilinear for images, nearest neighbour for labels (a label is never
//! interpolated into a class it is not).

/// Grid size that covers `dims` voxels of `spacing` mm with voxels of `target` mm.
pub fn target_dims(dims: [usize; 3], spacing: [f64; 3], target: [f64; 3]) -> [usize; 3] {
    [0, 1, 2].map(|a| ((dims[a] as f64 * spacing[a] / target[a]).round() as usize).max(1))
}

/// Source coordinate (in voxels) of the centre of voxel `i` of an axis of `n_to`
/// voxels spanning the same extent as `n_from` voxels (voxel centres aligned at the
/// grid edges' half-voxel, as in scipy's zoom with grid_mode).
fn src_coord(i: usize, n_from: usize, n_to: usize) -> f64 {
    ((i as f64 + 0.5) * n_from as f64 / n_to as f64 - 0.5).clamp(0.0, (n_from - 1) as f64)
}

pub fn trilinear(src: &[f32], from: [usize; 3], to: [usize; 3]) -> Vec<f32> {
    let at = |s: usize, r: usize, c: usize| src[(s * from[1] + r) * from[2] + c];
    let mut out = Vec::with_capacity(to.iter().product());
    for i in 0..to[0] {
        let z = src_coord(i, from[0], to[0]);
        let (z0, fz) = (z.floor() as usize, (z - z.floor()) as f32);
        let z1 = (z0 + 1).min(from[0] - 1);
        for j in 0..to[1] {
            let y = src_coord(j, from[1], to[1]);
            let (y0, fy) = (y.floor() as usize, (y - y.floor()) as f32);
            let y1 = (y0 + 1).min(from[1] - 1);
            for k in 0..to[2] {
                let x = src_coord(k, from[2], to[2]);
                let (x0, fx) = (x.floor() as usize, (x - x.floor()) as f32);
                let x1 = (x0 + 1).min(from[2] - 1);
                let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
                let c00 = lerp(at(z0, y0, x0), at(z0, y0, x1), fx);
                let c01 = lerp(at(z0, y1, x0), at(z0, y1, x1), fx);
                let c10 = lerp(at(z1, y0, x0), at(z1, y0, x1), fx);
                let c11 = lerp(at(z1, y1, x0), at(z1, y1, x1), fx);
                out.push(lerp(lerp(c00, c01, fy), lerp(c10, c11, fy), fz));
            }
        }
    }
    out
}

pub fn nearest<T: Copy>(src: &[T], from: [usize; 3], to: [usize; 3]) -> Vec<T> {
    let idx = |i: usize, a: usize| src_coord(i, from[a], to[a]).round() as usize;
    let mut out = Vec::with_capacity(to.iter().product());
    for i in 0..to[0] {
        let z = idx(i, 0);
        for j in 0..to[1] {
            let y = idx(j, 1);
            for k in 0..to[2] {
                out.push(src[(z * from[1] + y) * from[2] + idx(k, 2)]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_grid_is_the_identity() {
        let d = [3, 4, 5];
        let v: Vec<f32> = (0..60).map(|i| i as f32).collect();
        assert_eq!(trilinear(&v, d, d), v);
        assert_eq!(nearest(&v, d, d), v);
    }

    #[test]
    fn a_linear_ramp_stays_linear() {
        // Values = x along the last axis; halving the voxel size interpolates.
        let from = [1, 1, 4];
        let v = vec![0.0f32, 1.0, 2.0, 3.0];
        let up = trilinear(&v, from, [1, 1, 8]);
        let expect = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0];
        for (a, b) in up.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{up:?}");
        }
    }

    #[test]
    fn labels_round_trip_through_a_finer_grid() {
        let from = [2, 3, 4];
        let labels: Vec<u8> = (0..24).map(|i| (i % 4) as u8).collect();
        let fine = nearest(&labels, from, [4, 6, 8]);
        assert!(fine.iter().all(|l| *l < 4));
        assert_eq!(nearest(&fine, [4, 6, 8], from), labels);
    }

    #[test]
    fn target_dims_keep_the_extent() {
        assert_eq!(
            target_dims([176, 256, 256], [1.0, 0.9375, 0.9375], [1.0, 1.0, 1.0]),
            [176, 240, 240]
        );
        assert_eq!(
            target_dims([30, 256, 256], [5.0, 1.0, 1.0], [1.0, 2.0, 2.0]),
            [150, 128, 128]
        );
    }
}
