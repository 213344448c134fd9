//! Measurements on a label volume on the source grid: connected components,
//! small-component removal, and per-region volume, voxel count and diameters
//! (the largest axial diameter, the longest one perpendicular to it in the same
//! slice, their bidimensional product as RANO uses it, and the through-plane
//! extent). Not wired into the pipeline yet: the segmentation issue produces the
//! labels, the results issue reports these figures.

use serde::Serialize;

/// Voxel grid: dims = [slices, rows, cols], spacing in mm along each.
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    pub dims: [usize; 3],
    pub spacing: [f64; 3],
}

impl Grid {
    fn voxel_ml(&self) -> f64 {
        self.spacing.iter().product::<f64>() / 1000.0
    }
}

/// 6-connected components of `mask`: a label per voxel (0 = background) and the
/// size of each component (index = label - 1).
pub fn components(mask: &[bool], g: Grid) -> (Vec<u32>, Vec<usize>) {
    let [ns, nr, nc] = g.dims;
    let mut label = vec![0u32; mask.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32 + 1;
        label[start] = id;
        stack.push(start);
        let mut size = 0;
        while let Some(i) = stack.pop() {
            size += 1;
            let (s, r, c) = (i / (nr * nc), (i / nc) % nr, i % nc);
            let mut visit = |j: usize| {
                if mask[j] && label[j] == 0 {
                    label[j] = id;
                    stack.push(j);
                }
            };
            if s > 0 {
                visit(i - nr * nc)
            }
            if s + 1 < ns {
                visit(i + nr * nc)
            }
            if r > 0 {
                visit(i - nc)
            }
            if r + 1 < nr {
                visit(i + nc)
            }
            if c > 0 {
                visit(i - 1)
            }
            if c + 1 < nc {
                visit(i + 1)
            }
        }
        sizes.push(size);
    }
    (label, sizes)
}

/// Sets to 0 every connected piece of the whole tumour (labels > 0) smaller than
/// `min_ml`; returns how many pieces were removed.
pub fn remove_small_components(labels: &mut [u8], g: Grid, min_ml: f64) -> usize {
    let mask: Vec<bool> = labels.iter().map(|&l| l > 0).collect();
    let (comp, sizes) = components(&mask, g);
    let small: Vec<bool> = sizes
        .iter()
        .map(|&n| (n as f64) * g.voxel_ml() < min_ml)
        .collect();
    for (l, &c) in labels.iter_mut().zip(&comp) {
        if c > 0 && small[c as usize - 1] {
            *l = 0;
        }
    }
    small.iter().filter(|&&s| s).count()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RegionStats {
    pub voxels: usize,
    pub volume_ml: f64,
    /// Largest in-slice diameter, mm.
    pub max_axial_diameter_mm: f64,
    /// Longest diameter perpendicular to it in the same slice, mm.
    pub perpendicular_diameter_mm: f64,
    /// Their product (RANO bidimensional product), mm^2, on the slice where it is largest.
    pub bidimensional_product_mm2: f64,
    /// Extent across slices, mm.
    pub through_plane_extent_mm: f64,
    pub spacing_mm: [f64; 3],
}

/// Statistics of the voxels whose label is in `region` (e.g. [1, 2, 3] for the
/// whole tumour, [3] for the enhancing part).
pub fn region_stats(labels: &[u8], g: Grid, region: &[u8]) -> RegionStats {
    let [ns, nr, nc] = g.dims;
    let inside = |l: u8| region.contains(&l);
    let voxels = labels.iter().filter(|&&l| inside(l)).count();
    let (mut best_d1, mut best_d2, mut best_product) = (0.0f64, 0.0f64, 0.0f64);
    let (mut s_min, mut s_max) = (usize::MAX, 0usize);
    for s in 0..ns {
        // Points of this slice in mm (row, col); the region's outline suffices.
        let mut pts = Vec::new();
        for r in 0..nr {
            for c in 0..nc {
                let i = (s * nr + r) * nc + c;
                if !inside(labels[i]) {
                    continue;
                }
                let edge = r == 0
                    || c == 0
                    || r + 1 == nr
                    || c + 1 == nc
                    || !inside(labels[i - 1])
                    || !inside(labels[i + 1])
                    || !inside(labels[i - nc])
                    || !inside(labels[i + nc]);
                if edge {
                    pts.push((r as f64 * g.spacing[1], c as f64 * g.spacing[2]));
                }
            }
        }
        if pts.is_empty() {
            continue;
        }
        s_min = s_min.min(s);
        s_max = s_max.max(s);
        // Longest pairwise distance (voxel centres; a single voxel spans one voxel).
        let (mut d1, mut dir) = (0.0f64, (1.0f64, 0.0f64));
        for (a, p) in pts.iter().enumerate() {
            for q in &pts[a + 1..] {
                let d = ((p.0 - q.0).powi(2) + (p.1 - q.1).powi(2)).sqrt();
                if d > d1 {
                    d1 = d;
                    dir = ((q.0 - p.0) / d, (q.1 - p.1) / d);
                }
            }
        }
        // Perpendicular: the region's width across that direction.
        let perp = (-dir.1, dir.0);
        let proj: Vec<f64> = pts.iter().map(|p| p.0 * perp.0 + p.1 * perp.1).collect();
        let d2 = proj.iter().cloned().fold(f64::MIN, f64::max)
            - proj.iter().cloned().fold(f64::MAX, f64::min);
        // Centre-to-centre distances plus one voxel: a 1-voxel region is one voxel wide.
        let (d1, d2) = (
            d1 + g.spacing[2].min(g.spacing[1]),
            d2 + g.spacing[2].min(g.spacing[1]),
        );
        best_d1 = best_d1.max(d1);
        if d1 * d2 > best_product {
            best_product = d1 * d2;
            best_d2 = d2;
        }
    }
    RegionStats {
        voxels,
        volume_ml: voxels as f64 * g.voxel_ml(),
        max_axial_diameter_mm: best_d1,
        perpendicular_diameter_mm: best_d2,
        bidimensional_product_mm2: best_product,
        through_plane_extent_mm: if s_min == usize::MAX {
            0.0
        } else {
            (s_max - s_min + 1) as f64 * g.spacing[0]
        },
        spacing_mm: g.spacing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box of `size` voxels (slices, rows, cols) at `at` inside a 20x40x40 grid.
    fn boxed(labels: &mut [u8], at: [usize; 3], size: [usize; 3], value: u8) {
        for s in at[0]..at[0] + size[0] {
            for r in at[1]..at[1] + size[1] {
                for c in at[2]..at[2] + size[2] {
                    labels[(s * 40 + r) * 40 + c] = value;
                }
            }
        }
    }

    const G: Grid = Grid {
        dims: [20, 40, 40],
        spacing: [2.0, 0.5, 0.5],
    };

    #[test]
    fn volume_and_diameters_of_a_box() {
        let mut l = vec![0u8; 20 * 40 * 40];
        boxed(&mut l, [2, 5, 5], [5, 20, 12], 3);
        let st = region_stats(&l, G, &[3]);
        assert_eq!(st.voxels, 5 * 20 * 12);
        assert!((st.volume_ml - 1200.0 * 0.5 / 1000.0).abs() < 1e-9);
        assert!((st.through_plane_extent_mm - 10.0).abs() < 1e-9);
        // 10 mm x 6 mm rectangle: diagonal ~11.66 mm (voxel centres 9.5 x 5.5 + one voxel).
        let diag = (9.5f64.powi(2) + 5.5f64.powi(2)).sqrt() + 0.5;
        assert!((st.max_axial_diameter_mm - diag).abs() < 1e-6, "{st:?}");
        assert!(
            st.perpendicular_diameter_mm > 0.0
                && st.perpendicular_diameter_mm < st.max_axial_diameter_mm
        );
        assert!(
            (st.bidimensional_product_mm2
                - st.max_axial_diameter_mm * st.perpendicular_diameter_mm)
                .abs()
                < 1e-6
        );
        assert_eq!(region_stats(&l, G, &[1]).voxels, 0);
    }

    #[test]
    fn small_components_are_removed_large_kept() {
        let mut l = vec![0u8; 20 * 40 * 40];
        boxed(&mut l, [2, 5, 5], [5, 20, 12], 2); // 0.6 mL
        boxed(&mut l, [15, 30, 30], [1, 2, 2], 1); // 4 voxels = 0.002 mL
        let (_, sizes) = components(&l.iter().map(|&x| x > 0).collect::<Vec<_>>(), G);
        assert_eq!(sizes.len(), 2);
        assert_eq!(remove_small_components(&mut l, G, 0.1), 1);
        assert_eq!(l.iter().filter(|&&x| x == 1).count(), 0);
        assert_eq!(l.iter().filter(|&&x| x == 2).count(), 1200);
    }

    #[test]
    fn a_single_voxel_is_one_voxel_wide() {
        let mut l = vec![0u8; 20 * 40 * 40];
        boxed(&mut l, [3, 3, 3], [1, 1, 1], 1);
        let st = region_stats(&l, G, &[1]);
        assert_eq!(st.voxels, 1);
        assert!((st.max_axial_diameter_mm - 0.5).abs() < 1e-9);
        assert!((st.through_plane_extent_mm - 2.0).abs() < 1e-9);
    }
}
