//! Stage 2: geometry (clinical.md 1(b), G1-G9), from headers only: one orientation,
//! slices along the normal, uniform spacing, no missing slice, enough coverage.

use serde_json::json;

use super::slice::{FrameGeometry, SliceHeader};
use super::{Reason, StageResult};
use crate::config::GateConfig;

struct Slice {
    g: FrameGeometry,
    rows: u32,
    columns: u32,
    echo: Option<i64>,
    temporal: Option<i64>,
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn slices(all: &[SliceHeader]) -> Result<Vec<Slice>, Reason> {
    let missing = |what: &str| {
        Reason::new(
            "geometry_missing",
            &format!("{what} is missing, so the slices cannot be placed in space."),
            json!({ "missing": what }),
        )
    };
    let mut out = Vec::new();
    for h in all {
        if h.number_of_frames > 1 || !h.frames.is_empty() {
            // Enhanced MR: geometry lives in the functional groups (G8).
            if h.frames.len() != h.number_of_frames as usize {
                return Err(missing(
                    "Plane position/orientation or pixel measures per frame",
                ));
            }
            out.extend(h.frames.iter().map(|g| Slice {
                g: *g,
                rows: h.rows,
                columns: h.columns,
                echo: None,
                temporal: None,
            }));
            continue;
        }
        let iop = h
            .iop
            .ok_or_else(|| missing("Image Orientation (Patient)"))?;
        let ipp = h.ipp.ok_or_else(|| missing("Image Position (Patient)"))?;
        let ps = h.pixel_spacing.ok_or_else(|| missing("Pixel Spacing"))?;
        out.push(Slice {
            g: FrameGeometry {
                iop,
                ipp,
                pixel_spacing: ps,
                slice_thickness: h.slice_thickness,
            },
            rows: h.rows,
            columns: h.columns,
            echo: h.echo_number,
            temporal: h.temporal_position,
        });
    }
    Ok(out)
}

/// Axial, coronal or sagittal from the dominant component of the slice normal.
fn plane(n: [f64; 3]) -> &'static str {
    let a = n.map(f64::abs);
    if a[2] >= a[0] && a[2] >= a[1] {
        "axial"
    } else if a[1] >= a[0] {
        "coronal"
    } else {
        "sagittal"
    }
}

pub fn check(all: &[SliceHeader], cfg: &GateConfig) -> StageResult {
    let mut r = StageResult::new("geometry");
    let s = match slices(all) {
        Ok(s) => s,
        Err(reason) => {
            r.refuse(reason);
            return r;
        }
    };
    r.facts["slices"] = json!(s.len());
    if s.len() < cfg.min_slices {
        r.refuse(Reason::new(
            "too_few_slices",
            &format!(
                "{} slice(s); a brain volume needs at least {}.",
                s.len(),
                cfg.min_slices
            ),
            json!({ "slices": s.len(), "minimum": cfg.min_slices }),
        ));
        if s.len() < 2 {
            return r;
        }
    }
    // G1: one orientation, unit and orthogonal cosines.
    let iop0 = s[0].g.iop;
    if let Some(other) = s
        .iter()
        .find(|x| x.g.iop.iter().zip(iop0).any(|(a, b)| (a - b).abs() > 1e-3))
    {
        r.refuse(Reason::new(
            "multiple_orientations",
            "The images of this series have different orientations (a localizer or several stacks in one series).",
            json!({ "first": iop0, "other": other.g.iop }),
        ));
        return r;
    }
    let row = [iop0[0], iop0[1], iop0[2]];
    let col = [iop0[3], iop0[4], iop0[5]];
    if (norm(row) - 1.0).abs() > 1e-3
        || (norm(col) - 1.0).abs() > 1e-3
        || dot(row, col).abs() > 1e-3
    {
        r.refuse(Reason::new(
            "bad_orientation",
            "Image Orientation (Patient) is not two orthogonal unit vectors.",
            json!({ "image_orientation_patient": iop0 }),
        ));
        return r;
    }
    let normal = cross(row, col);
    r.facts["plane"] = json!(plane(normal));
    // G2: one matrix and pixel spacing.
    let (rows, cols, ps) = (s[0].rows, s[0].columns, s[0].g.pixel_spacing);
    if s.iter()
        .any(|x| x.rows != rows || x.columns != cols || x.g.pixel_spacing != ps)
    {
        r.refuse(Reason::new(
            "inconsistent_matrix",
            "Rows, Columns or Pixel Spacing differ between images of the series.",
            json!({}),
        ));
        return r;
    }
    if ps[0] <= 0.0 || ps[1] <= 0.0 {
        r.refuse(Reason::new(
            "bad_pixel_spacing",
            "Pixel Spacing is not positive.",
            json!({ "pixel_spacing": ps }),
        ));
        return r;
    }
    if rows.min(cols) < cfg.min_matrix {
        r.refuse(Reason::new(
            "matrix_too_small",
            &format!(
                "The image matrix {rows}x{cols} is below {0}x{0}.",
                cfg.min_matrix
            ),
            json!({ "rows": rows, "columns": cols, "minimum": cfg.min_matrix }),
        ));
    }
    // Positions along the normal, sorted.
    let mut d: Vec<(f64, usize)> = s
        .iter()
        .enumerate()
        .map(|(i, x)| (dot(x.g.ipp, normal), i))
        .collect();
    d.sort_by(|a, b| a.0.total_cmp(&b.0));
    let steps: Vec<f64> = d.windows(2).map(|w| w[1].0 - w[0].0).collect();
    if steps.iter().any(|&st| st.abs() < 0.01) {
        let several = s
            .iter()
            .any(|x| x.echo != s[0].echo || x.temporal != s[0].temporal);
        r.refuse(Reason::new(
            if several { "multiple_echoes_or_phases" } else { "duplicate_positions" },
            if several {
                "Several images share one position (several echoes or time points in one series); send one echo/phase per series."
            } else {
                "Several images share one position."
            },
            json!({ "duplicates": steps.iter().filter(|&&st| st.abs() < 0.01).count() }),
        ));
        return r;
    }
    let med = median(&steps);
    r.facts["slice_spacing_mm"] = json!(med);
    // G4: the stack runs along the normal (no gantry tilt, no shear).
    let first = s[d[0].1].g.ipp;
    let last = s[d[d.len() - 1].1].g.ipp;
    let dir = [last[0] - first[0], last[1] - first[1], last[2] - first[2]];
    let len = norm(dir);
    if len < 1e-6 || norm(cross(dir.map(|v| v / len), normal)) > 0.05 {
        r.refuse(Reason::new(
            "slices_not_along_normal",
            "The slice positions do not run along the slice normal (gantry tilt or a sheared stack).",
            json!({ "direction": dir, "normal": normal }),
        ));
        return r;
    }
    // G3: uniform spacing; a step of k >= 2 medians is a missing slice.
    // 1e-6 mm absorbs float noise in positions, so a step exactly at tolerance passes.
    let tol = cfg
        .spacing_tolerance_mm
        .max(cfg.spacing_tolerance_fraction * med)
        + 1e-6;
    for (i, &st) in steps.iter().enumerate() {
        if (st - med).abs() <= tol {
            continue;
        }
        let k = (st / med).round();
        if k >= 2.0 && (st - k * med).abs() <= tol {
            r.refuse(Reason::new(
                "missing_slice",
                &format!(
                    "About {} slice(s) are missing after slice {} of {} (a step of {st:.2} mm where the others are {med:.2} mm).",
                    k as i64 - 1,
                    i + 1,
                    d.len()
                ),
                json!({ "after_slice": i + 1, "step_mm": st, "median_step_mm": med, "missing": k as i64 - 1 }),
            ));
        } else {
            r.refuse(Reason::new(
                "nonuniform_spacing",
                &format!("Slice spacing varies: a step of {st:.2} mm where the median is {med:.2} mm (tolerance {tol:.2} mm)."),
                json!({ "after_slice": i + 1, "step_mm": st, "median_step_mm": med, "tolerance_mm": tol }),
            ));
        }
        break;
    }
    // G6: coverage and field of view.
    let coverage = (d[d.len() - 1].0 - d[0].0) + med;
    let fov = (rows as f64 * ps[0]).min(cols as f64 * ps[1]);
    r.facts["coverage_mm"] = json!(coverage);
    r.facts["inplane_fov_mm"] = json!(fov);
    if coverage < cfg.min_coverage_mm {
        r.refuse(Reason::new(
            "insufficient_coverage",
            &format!(
                "The slices cover {coverage:.0} mm; a brain needs at least {:.0} mm.",
                cfg.min_coverage_mm
            ),
            json!({ "coverage_mm": coverage, "minimum_mm": cfg.min_coverage_mm }),
        ));
    }
    if fov < cfg.min_inplane_fov_mm {
        r.refuse(Reason::new(
            "insufficient_fov",
            &format!(
                "The in-plane field of view is {fov:.0} mm; at least {:.0} mm is needed.",
                cfg.min_inplane_fov_mm
            ),
            json!({ "fov_mm": fov, "minimum_mm": cfg.min_inplane_fov_mm }),
        ));
    }
    // G7: resolution limits.
    let inplane = ps[0].max(ps[1]);
    if inplane > cfg.max_pixel_spacing_mm {
        r.refuse(Reason::new(
            "inplane_resolution_too_coarse",
            &format!(
                "Pixel spacing {inplane:.2} mm is coarser than {:.2} mm.",
                cfg.max_pixel_spacing_mm
            ),
            json!({ "pixel_spacing_mm": inplane, "maximum_mm": cfg.max_pixel_spacing_mm }),
        ));
    }
    let three_d = all.first().is_some_and(|h| h.mr_acquisition_type == "3D");
    let max_step = if three_d {
        cfg.max_slice_spacing_3d_mm
    } else {
        cfg.max_slice_spacing_2d_mm
    };
    if med > max_step + 1e-6 {
        r.refuse(Reason::new(
            "slices_too_thick",
            &format!(
                "Slices are {med:.2} mm apart; at most {max_step:.2} mm for a {} acquisition.",
                if three_d { "3D" } else { "2D" }
            ),
            json!({ "slice_spacing_mm": med, "maximum_mm": max_step, "acquisition": if three_d { "3D" } else { "2D" } }),
        ));
    }
    if let Some(th) = s[0].g.slice_thickness {
        let gap = med - th;
        if !three_d && gap > cfg.max_slice_gap_mm + 1e-6 {
            r.refuse(Reason::new(
                "slice_gap",
                &format!("There is a {gap:.2} mm gap between {th:.2} mm slices; at most {:.2} mm is allowed.", cfg.max_slice_gap_mm),
                json!({ "gap_mm": gap, "slice_thickness_mm": th, "maximum_mm": cfg.max_slice_gap_mm }),
            ));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(n: usize, step: f64) -> Vec<SliceHeader> {
        (0..n)
            .map(|i| SliceHeader {
                rows: 256,
                columns: 256,
                number_of_frames: 1,
                iop: Some([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
                ipp: Some([-128.0, -128.0, i as f64 * step]),
                pixel_spacing: Some([1.0, 1.0]),
                slice_thickness: Some(step),
                mr_acquisition_type: "3D".into(),
                ..Default::default()
            })
            .collect()
    }

    fn codes(s: &[SliceHeader]) -> Vec<&'static str> {
        check(s, &GateConfig::default())
            .reasons
            .iter()
            .map(|r| r.code)
            .collect()
    }

    #[test]
    fn regular_axial_stack_passes() {
        let r = check(&stack(150, 1.0), &GateConfig::default());
        assert!(r.passed, "{:?}", r.reasons);
        assert_eq!(r.facts["plane"], "axial");
        assert_eq!(r.facts["coverage_mm"], 150.0);
    }

    #[test]
    fn spacing_at_tolerance_passes_just_over_fails() {
        // median 1.0 mm: tolerance max(0.2, 0.05) = 0.2 mm.
        let mut s = stack(150, 1.0);
        for (i, h) in s.iter_mut().enumerate().skip(76) {
            h.ipp = Some([-128.0, -128.0, i as f64 + 0.2]);
        }
        assert!(codes(&s).is_empty(), "{:?}", codes(&s));
        for (i, h) in s.iter_mut().enumerate().skip(76) {
            h.ipp = Some([-128.0, -128.0, i as f64 + 0.21]);
        }
        assert_eq!(codes(&s), ["nonuniform_spacing"]);
    }

    #[test]
    fn a_missing_slice_is_named() {
        let mut s = stack(151, 1.0);
        s.remove(80);
        let r = check(&s, &GateConfig::default());
        assert_eq!(r.reasons[0].code, "missing_slice");
        assert_eq!(r.reasons[0].values["missing"], 1);
    }

    #[test]
    fn one_slice_short_of_the_minimum() {
        let cfg = GateConfig::default();
        let s = stack(cfg.min_slices - 1, 5.0);
        assert!(codes(&s).contains(&"too_few_slices"));
        assert!(!codes(&stack(cfg.min_slices, 1.0)).contains(&"too_few_slices"));
    }

    #[test]
    fn mixed_orientations_and_missing_geometry() {
        let mut s = stack(150, 1.0);
        s[3].iop = Some([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]);
        assert_eq!(codes(&s), ["multiple_orientations"]);
        let mut s = stack(150, 1.0);
        s[0].pixel_spacing = None;
        assert_eq!(codes(&s), ["geometry_missing"]);
        let enhanced = vec![SliceHeader {
            number_of_frames: 176,
            ..Default::default()
        }];
        assert_eq!(codes(&enhanced), ["geometry_missing"]);
    }

    #[test]
    fn thick_2d_slices_and_gaps() {
        let mut s = stack(30, 6.0);
        for h in &mut s {
            h.mr_acquisition_type = "2D".into();
        }
        assert!(codes(&s).contains(&"slices_too_thick"));
        let mut s = stack(40, 5.0);
        for h in &mut s {
            h.mr_acquisition_type = "2D".into();
            h.slice_thickness = Some(4.0);
        }
        assert_eq!(codes(&s), ["slice_gap"]);
        // 3D at exactly the 1.5 mm limit passes.
        assert!(codes(&stack(100, 1.5)).is_empty());
        assert_eq!(codes(&stack(100, 1.6)), ["slices_too_thick"]);
    }

    #[test]
    fn echoes_sharing_positions() {
        let mut s = stack(150, 1.0);
        let mut second = stack(150, 1.0);
        for h in &mut second {
            h.echo_number = Some(2);
        }
        s.extend(second);
        assert_eq!(codes(&s), ["multiple_echoes_or_phases"]);
    }
}
