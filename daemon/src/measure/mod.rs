//! Measurements on a label volume on the source grid: connected components,
//! small-component removal, and per-region volume, voxel count and the three
//! orthogonal diameters (the largest axial diameter, the longest one perpendicular
//! to it in the same axial slice, and the craniocaudal extent) with the largest
//! axial bidimensional product as RANO uses it. Volumes are counted on the source
//! grid; diameters on axial planes of the patient (a sagittal or oblique series is
//! resampled, nearest neighbour, to a patient-aligned grid first). `history`
//! sets a visit against the patient's earlier ones.

pub mod history;

use serde::{Deserialize, Serialize};

use crate::volume::resample;

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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegionStats {
    /// Largest in-slice diameter, mm.
    pub max_axial_diameter_mm: f64,
    /// Longest diameter perpendicular to it in the same slice, mm.
    pub perpendicular_diameter_mm: f64,
    /// The largest product of an axial slice's longest diameter and its
    /// perpendicular (RANO bidimensional product), mm^2.
    pub bidimensional_product_mm2: f64,
    /// Extent across axial slices (craniocaudal), mm.
    pub craniocaudal_extent_mm: f64,
    /// Spacing of the grid the diameters were measured on (z, y, x), mm.
    pub spacing_mm: [f64; 3],
}

/// Statistics of the voxels whose label is in `region` (e.g. [1, 2, 3] for the
/// whole tumour, [3] for the enhancing part).
pub fn region_stats(labels: &[u8], g: Grid, region: &[u8]) -> RegionStats {
    let [ns, nr, nc] = g.dims;
    let inside = |l: u8| region.contains(&l);
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
        if d1 > best_d1 {
            best_d1 = d1;
            best_d2 = d2;
        }
        best_product = best_product.max(d1 * d2);
    }
    RegionStats {
        max_axial_diameter_mm: best_d1,
        perpendicular_diameter_mm: best_d2,
        bidimensional_product_mm2: best_product,
        craniocaudal_extent_mm: if s_min == usize::MAX {
            0.0
        } else {
            (s_max - s_min + 1) as f64 * g.spacing[0]
        },
        spacing_mm: g.spacing,
    }
}

/// A region reported on: the whole tumour (every non-zero label) or one label.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Region {
    /// whole_tumour, or the label's name with '_' for ' ' (e.g. enhancing_tumour)
    pub key: String,
    /// The label's name as the manifest says it (e.g. "enhancing tumour").
    pub name: String,
    /// Label values inside the region.
    pub values: Vec<u8>,
}

/// The regions of a model: the whole tumour first, then each label but background.
pub fn regions(label_names: &[(u8, String)]) -> Vec<Region> {
    let mut out = vec![Region {
        key: "whole_tumour".into(),
        name: "whole tumour".into(),
        values: label_names
            .iter()
            .map(|(v, _)| *v)
            .filter(|&v| v > 0)
            .collect(),
    }];
    for (v, n) in label_names.iter().filter(|(v, _)| *v > 0) {
        out.push(Region {
            key: n.replace(' ', "_"),
            name: n.clone(),
            values: vec![*v],
        });
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegionMeasurement {
    pub region: Region,
    /// Voxel count and volume on the source grid (the series' own spacing).
    pub voxels: usize,
    pub volume_ml: f64,
    pub source_spacing_mm: [f64; 3],
    pub stats: RegionStats,
    /// The region reaches the edge of the series' field of view: it may extend
    /// beyond it, so the volume is a lower bound (the SR says PARTIAL).
    pub touches_edge: bool,
}

/// Measures every region of `labels` (on the source grid `g`).
pub fn measure(labels: &[u8], g: &resample::Grid, regions: &[Region]) -> Vec<RegionMeasurement> {
    let (axial, ag) = axial_labels(labels, g);
    let voxel_ml = g.spacing.iter().product::<f64>() / 1000.0;
    regions
        .iter()
        .map(|r| {
            let voxels = labels.iter().filter(|l| r.values.contains(l)).count();
            let [ns, nr, nc] = g.dims;
            let touches_edge = labels.iter().enumerate().any(|(i, l)| {
                let (s, row, col) = (i / (nr * nc), (i / nc) % nr, i % nc);
                r.values.contains(l)
                    && (s == 0
                        || row == 0
                        || col == 0
                        || s + 1 == ns
                        || row + 1 == nr
                        || col + 1 == nc)
            });
            RegionMeasurement {
                touches_edge,
                region: r.clone(),
                voxels,
                volume_ml: voxels as f64 * voxel_ml,
                source_spacing_mm: g.spacing,
                stats: region_stats(&axial, ag, &r.values),
            }
        })
        .collect()
}

/// The patient-aligned grid to measure on axial planes, or None when the source
/// grid's axes are already the patient's (up to sign). Its spacing per axis is
/// that of the source axis closest to it.
pub fn axial_grid(g: &resample::Grid) -> Option<resample::Grid> {
    // Grid axes are (slice, row, col); aligned means slice ~ z, row ~ y, col ~ x.
    if (0..3).all(|a| g.axes[a][2 - a].abs() > 0.999) {
        return None;
    }
    let spacing = [2usize, 1, 0].map(|d| {
        let a = (0..3)
            .max_by(|&a, &b| g.axes[a][d].abs().total_cmp(&g.axes[b][d].abs()))
            .expect("three axes");
        g.spacing[a]
    });
    Some(g.aligned_cover(spacing))
}

/// The labels on axial planes (see `axial_grid`).
fn axial_labels<'a>(labels: &'a [u8], g: &resample::Grid) -> (std::borrow::Cow<'a, [u8]>, Grid) {
    match axial_grid(g) {
        None => (
            std::borrow::Cow::Borrowed(labels),
            Grid {
                dims: g.dims,
                spacing: g.spacing,
            },
        ),
        Some(to) => (
            std::borrow::Cow::Owned(resample::resample_labels(labels, g, &to)),
            Grid {
                dims: to.dims,
                spacing: to.spacing,
            },
        ),
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
        let rg = resample::Grid {
            dims: G.dims,
            spacing: G.spacing,
            origin: [0.0; 3],
            axes: AXIAL,
        };
        let m = measure(&l, &rg, &regions(&[(1, "a".into()), (3, "b".into())]));
        assert_eq!((m[0].voxels, m[1].voxels, m[2].voxels), (1200, 0, 1200));
        assert!((m[2].volume_ml - 1200.0 * 0.5 / 1000.0).abs() < 1e-9);
        assert_eq!(m[1].stats.max_axial_diameter_mm, 0.0);
        let st = &m[2].stats;
        assert_eq!(st, &region_stats(&l, G, &[3]));
        assert!((st.craniocaudal_extent_mm - 10.0).abs() < 1e-9);
        // 10 mm x 6 mm rectangle: diagonal ~11.66 mm (voxel centres 9.5 x 5.5 + one voxel).
        let diag = (9.5f64.powi(2) + 5.5f64.powi(2)).sqrt() + 0.5;
        assert!((st.max_axial_diameter_mm - diag).abs() < 1e-6, "{st:?}");
        assert!(
            st.perpendicular_diameter_mm > 0.0
                && st.perpendicular_diameter_mm < st.max_axial_diameter_mm
        );
        // A box: every slice alike, so the largest product is on the longest slice.
        assert!(
            (st.bidimensional_product_mm2
                - st.max_axial_diameter_mm * st.perpendicular_diameter_mm)
                .abs()
                < 1e-6
        );
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
        assert!((st.perpendicular_diameter_mm - 0.5).abs() < 1e-9);
        assert!((st.max_axial_diameter_mm - 0.5).abs() < 1e-9);
        assert!((st.craniocaudal_extent_mm - 2.0).abs() < 1e-9);
    }

    /// An ellipsoid with semi-axes (z, y, x) mm, rasterised at voxel centres on a
    /// grid of `spacing` mm, centred off-grid.
    fn ellipsoid(
        semi: [f64; 3],
        spacing: [f64; 3],
        axes: [[f64; 3]; 3],
    ) -> (Vec<u8>, resample::Grid) {
        let dims = [0, 1, 2]
            .map(|a| (2.0 * semi.iter().cloned().fold(0.0, f64::max) / spacing[a] + 8.0) as usize);
        let g = resample::Grid {
            dims,
            spacing,
            origin: [0.0; 3],
            axes,
        };
        let centre = g.position([0, 1, 2].map(|a| dims[a] as f64 / 2.0 + 0.3));
        let mut l = vec![0u8; g.voxels()];
        for s in 0..dims[0] {
            for r in 0..dims[1] {
                for c in 0..dims[2] {
                    let p = g.position([s as f64, r as f64, c as f64]);
                    // Patient z, y, x against the semi-axes.
                    let q = [2, 1, 0].map(|d| p[d] - centre[d]);
                    if (0..3).map(|a| (q[a] / semi[a]).powi(2)).sum::<f64>() <= 1.0 {
                        l[(s * dims[1] + r) * dims[2] + c] = 3;
                    }
                }
            }
        }
        (l, g)
    }

    const AXIAL: [[f64; 3]; 3] = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]];

    #[test]
    fn spheres_and_ellipsoids_of_known_size() {
        let reg = regions(&[(1, "necrotic core".into()), (3, "enhancing tumour".into())]);
        assert_eq!(reg[0].key, "whole_tumour");
        assert_eq!(reg[2].key, "enhancing_tumour");
        for (semi, spacing) in [
            ([10.0, 10.0, 10.0], [1.0, 1.0, 1.0]),
            ([6.0, 6.0, 6.0], [1.0, 0.5, 0.5]),
            ([8.0, 15.0, 11.0], [1.0, 1.0, 1.0]),
            ([12.0, 9.0, 9.0], [2.0, 0.9, 0.9]),
        ] {
            let (l, g) = ellipsoid(semi, spacing, AXIAL);
            let m = measure(&l, &g, &reg);
            let truth = 4.0 / 3.0 * std::f64::consts::PI * semi.iter().product::<f64>() / 1000.0;
            let err = (m[0].volume_ml - truth).abs() / truth;
            assert!(
                err < 0.02,
                "{semi:?} at {spacing:?}: {} vs {truth} mL",
                m[0].volume_ml
            );
            assert_eq!(m[0].voxels, m[2].voxels);
            assert_eq!(m[1].voxels, 0);
            let st = &m[0].stats;
            let voxel = spacing[1];
            let long = 2.0 * semi[1].max(semi[2]);
            let short = 2.0 * semi[1].min(semi[2]);
            assert!(
                (st.max_axial_diameter_mm - long).abs() <= voxel,
                "{semi:?}: {st:?}"
            );
            assert!(
                (st.perpendicular_diameter_mm - short).abs() <= voxel,
                "{semi:?}: {st:?}"
            );
            assert!(
                (st.craniocaudal_extent_mm - 2.0 * semi[0]).abs() <= spacing[0],
                "{semi:?}: {st:?}"
            );
            assert!(
                (st.bidimensional_product_mm2 - long * short).abs()
                    <= voxel * (long + short) + voxel * voxel
            );
        }
    }

    #[test]
    fn a_sagittal_series_is_measured_on_axial_planes() {
        // Sagittal: slices along x, rows along -z, columns along y.
        let sag = [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]];
        let semi = [14.0, 10.0, 6.0];
        let (la, ga) = ellipsoid(semi, [1.0, 1.0, 1.0], AXIAL);
        let (ls, gs) = ellipsoid(semi, [1.0, 1.0, 1.0], sag);
        let reg = regions(&[(3, "enhancing tumour".into())]);
        let (a, s) = (&measure(&la, &ga, &reg)[0], &measure(&ls, &gs, &reg)[0]);
        assert!((a.volume_ml - s.volume_ml).abs() / a.volume_ml < 0.02);
        assert!(
            (s.stats.craniocaudal_extent_mm - 28.0).abs() <= 1.0,
            "{:?}",
            s.stats
        );
        assert!(
            (s.stats.max_axial_diameter_mm - 20.0).abs() <= 1.0,
            "{:?}",
            s.stats
        );
        assert!(
            (s.stats.perpendicular_diameter_mm - 12.0).abs() <= 1.0,
            "{:?}",
            s.stats
        );
    }
}
