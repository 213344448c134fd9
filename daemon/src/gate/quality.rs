//! Stage 3: image quality without a neural network (clinical.md 1(c), MRIQC's
//! definitions where they need no tissue segmentation).
//!
//! - head: Otsu foreground, its largest 6-connected component, head-sized extents.
//! - zero-filled / skull-stripped input: many voxels exactly zero, or FBER's
//!   "background median below 1e-3" case.
//! - SNR (Dietrich): 0.6551364 * median(head) / MAD(air), falling back to std(air).
//! - FBER: median(head^2) / median(air^2).
//! - EFC: MRIQC's entropy focus criterion over the whole volume.
//! - CNR and CJV over the two most populous of three k-means intensity classes
//!   inside the head: an approximation of MRIQC's WM/GM (which needs FSL FAST).
//!   Their roles are symmetric, so the measure does not depend on the contrast.
//! - against this scanner's own history (Welford running mean/variance in the
//!   store): a metric more than `scanner_outlier_z` standard deviations off, after
//!   `scanner_min_history` series, is a warning (not a refusal).

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Reason, StageResult};
use crate::config::GateConfig;
use crate::volume::Volume;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Metrics {
    pub snr: f64,
    pub cnr: f64,
    pub cjv: f64,
    pub efc: f64,
    pub fber: f64,
    pub zero_fraction: f64,
}

impl Metrics {
    pub const NAMES: [&'static str; 5] = ["snr", "cnr", "cjv", "efc", "fber"];

    pub fn values(&self) -> [f64; 5] {
        [self.snr, self.cnr, self.cjv, self.efc, self.fber]
    }
}

/// Running statistics of one scanner (Manufacturer + model + station), per metric.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScannerHistory {
    pub n: u64,
    pub mean: [f64; 5],
    pub m2: [f64; 5],
}

impl ScannerHistory {
    pub fn add(&mut self, m: &Metrics) {
        self.n += 1;
        for (k, v) in m.values().into_iter().enumerate() {
            let d = v - self.mean[k];
            self.mean[k] += d / self.n as f64;
            self.m2[k] += d * (v - self.mean[k]);
        }
    }

    pub fn std(&self, k: usize) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            (self.m2[k] / (self.n - 1) as f64).sqrt()
        }
    }
}

fn median(v: &mut [f32]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
    v[mid] as f64
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
    (m, var.sqrt())
}

/// Otsu's threshold over a 256-bin histogram between min and max.
fn otsu(data: &[f32]) -> f32 {
    let (lo, hi) = data
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    if hi <= lo {
        return hi;
    }
    let mut hist = [0u64; 256];
    let w = (hi - lo) / 255.0;
    for &x in data {
        hist[((x - lo) / w) as usize] += 1;
    }
    let total = data.len() as f64;
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &h)| i as f64 * h as f64)
        .sum();
    let (mut w_b, mut sum_b, mut best, mut best_t) = (0.0, 0.0, 0.0, 0usize);
    for (t, &h) in hist.iter().enumerate() {
        w_b += h as f64;
        if w_b == 0.0 || w_b == total {
            continue;
        }
        sum_b += t as f64 * h as f64;
        let m_b = sum_b / w_b;
        let m_f = (sum_all - sum_b) / (total - w_b);
        let between = w_b * (total - w_b) * (m_b - m_f).powi(2);
        if between > best {
            best = between;
            best_t = t;
        }
    }
    lo + (best_t as f32 + 0.5) * w
}

/// Largest 6-connected component of `mask`; returns (component mask, size, bbox).
fn largest_component(v: &Volume, mask: &[bool]) -> (Vec<bool>, usize, [[usize; 2]; 3]) {
    let [_, nr, nc] = v.dims;
    let grid = crate::measure::Grid {
        dims: v.dims,
        spacing: v.spacing,
    };
    let (label, sizes) = crate::measure::components(mask, grid);
    let (best, best_size) = sizes
        .iter()
        .enumerate()
        .max_by_key(|(_, &n)| n)
        .map(|(i, &n)| (i as u32 + 1, n))
        .unwrap_or((0, 0));
    let mut bbox = [[usize::MAX, 0]; 3];
    let comp: Vec<bool> = label.iter().map(|&l| l == best && best != 0).collect();
    for (i, _) in comp.iter().enumerate().filter(|(_, &b)| b) {
        let p = [i / (nr * nc), (i / nc) % nr, i % nc];
        for k in 0..3 {
            bbox[k][0] = bbox[k][0].min(p[k]);
            bbox[k][1] = bbox[k][1].max(p[k]);
        }
    }
    (comp, best_size, bbox)
}

/// 1-D k-means with three classes; returns (mean, std, count) per class.
fn three_classes(v: &[f32]) -> [(f64, f64, usize); 3] {
    if v.is_empty() {
        return [(0.0, 0.0, 0); 3];
    }
    let mut s: Vec<f32> = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| s[((s.len() - 1) as f64 * p) as usize] as f64;
    let mut c = [q(0.2), q(0.5), q(0.8)];
    let assign = |c: &[f64; 3]| {
        let mut acc = [(0.0f64, 0.0f64, 0usize); 3];
        for &x in &s {
            let x = x as f64;
            let k = (0..3)
                .min_by(|&a, &b| (x - c[a]).abs().total_cmp(&(x - c[b]).abs()))
                .unwrap_or(0);
            acc[k].0 += x;
            acc[k].1 += x * x;
            acc[k].2 += 1;
        }
        acc
    };
    for _ in 0..12 {
        let acc = assign(&c);
        for k in 0..3 {
            if acc[k].2 > 0 {
                c[k] = acc[k].0 / acc[k].2 as f64;
            }
        }
    }
    let acc = assign(&c);
    let mut out = [(0.0, 0.0, 0); 3];
    for k in 0..3 {
        let n = acc[k].2.max(1) as f64;
        let m = acc[k].0 / n;
        out[k] = (m, (acc[k].1 / n - m * m).max(0.0).sqrt(), acc[k].2);
    }
    out
}

/// Computes the metrics; returns them and the head component's extents in mm.
pub fn measure(v: &Volume) -> (Metrics, [f64; 3], f64) {
    let data = &v.data;
    let n = data.len().max(1);
    let zero_fraction = data.iter().filter(|&&x| x == 0.0).count() as f64 / n as f64;
    let t = otsu(data);
    let fg: Vec<bool> = data.iter().map(|&x| x > t).collect();
    let fg_count = fg.iter().filter(|&&b| b).count().max(1);
    let (head, head_size, bbox) = largest_component(v, &fg);
    let extents = [0, 1, 2].map(|k| {
        if bbox[k][0] == usize::MAX {
            0.0
        } else {
            (bbox[k][1] - bbox[k][0] + 1) as f64 * v.spacing[k]
        }
    });
    let head_fraction = head_size as f64 / fg_count as f64;
    let head_vals: Vec<f32> = data
        .iter()
        .zip(&head)
        .filter(|(_, &h)| h)
        .map(|(&x, _)| x)
        .collect();
    // Air: below the threshold and outside the head's bounding box (MRIQC keeps
    // clear of the head, where ghosts and partial volume live).
    let [_, nr, nc] = v.dims;
    let mut air: Vec<f32> = Vec::new();
    for (i, &x) in data.iter().enumerate() {
        let p = [i / (nr * nc), (i / nc) % nr, i % nc];
        let inside = (0..3).all(|k| p[k] >= bbox[k][0] && p[k] <= bbox[k][1]);
        if !fg[i] && (!inside || bbox[0][0] == usize::MAX) {
            air.push(x);
        }
    }
    if air.len() < 1000 {
        air = data
            .iter()
            .zip(&fg)
            .filter(|(_, &f)| !f)
            .map(|(&x, _)| x)
            .collect();
    }
    let (_, air_std) = mean_std(&air);
    let air_med = median(&mut air.clone());
    let mut dev: Vec<f32> = air
        .iter()
        .map(|&x| (x as f64 - air_med).abs() as f32)
        .collect();
    let air_mad = median(&mut dev) * 1.4826;
    let head_med = median(&mut head_vals.clone());
    let sigma = if air_mad > 1e-6 { air_mad } else { air_std };
    let snr = if sigma > 1e-9 {
        0.6551364 * head_med / sigma
    } else {
        f64::INFINITY
    };
    let mut head_sq: Vec<f32> = head_vals.iter().map(|&x| x * x).collect();
    let mut air_sq: Vec<f32> = air.iter().map(|&x| x * x).collect();
    let (fg_mu, bg_mu) = (median(&mut head_sq), median(&mut air_sq));
    let fber = if bg_mu < 1e-3 { -1.0 } else { fg_mu / bg_mu };
    // EFC (MRIQC): entropy of the normalised intensities, over its maximum.
    let b_max = data
        .iter()
        .map(|&x| (x as f64).powi(2))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    let nv = n as f64;
    let efc_max = nv * (1.0 / nv.sqrt()) * (1.0 / nv.sqrt()).ln();
    let e: f64 = data
        .iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| (x as f64 / b_max) * ((x as f64 + 1e-16) / b_max).ln())
        .sum();
    let efc = e / efc_max;
    // Tissue contrast from the two largest intensity classes in the head.
    let mut cls = three_classes(&head_vals);
    cls.sort_by(|a, b| b.2.cmp(&a.2));
    let (a, b) = (cls[0], cls[1]);
    let diff = (a.0 - b.0).abs().max(1e-9);
    let cjv = (a.1 + b.1) / diff;
    let cnr = diff
        / (air_std.powi(2) + a.1.powi(2) + b.1.powi(2))
            .sqrt()
            .max(1e-9);
    (
        Metrics {
            snr,
            cnr,
            cjv,
            efc,
            fber,
            zero_fraction,
        },
        extents,
        head_fraction,
    )
}

pub fn check(
    v: &Volume,
    cfg: &GateConfig,
    history: Option<&ScannerHistory>,
) -> (StageResult, Metrics) {
    let mut r = StageResult::new("quality");
    let (m, extents, head_fraction) = measure(v);
    r.facts = json!({
        "snr": m.snr, "cnr": m.cnr, "cjv": m.cjv, "efc": m.efc, "fber": m.fber,
        "zero_fraction": m.zero_fraction, "head_extent_mm": extents, "head_fraction": head_fraction,
        "warnings": [],
    });
    if m.zero_fraction > cfg.max_zero_fraction || m.fber < 0.0 {
        r.refuse(Reason::new(
            "skull_stripped_or_zero_filled",
            "Most of the image outside the head is exactly zero: a skull-stripped, masked or zero-filled image, not a raw acquisition.",
            json!({ "zero_fraction": m.zero_fraction, "maximum": cfg.max_zero_fraction }),
        ));
        return (r, m);
    }
    let max_in_plane = extents[1].max(extents[2]);
    if max_in_plane < cfg.min_head_extent_mm || head_fraction < 0.5 {
        r.refuse(Reason::new(
            "no_head_shaped_foreground",
            &format!(
                "No head-shaped object found: the largest bright object spans {max_in_plane:.0} mm in-plane (at least {:.0} mm expected) and holds {:.0}% of the bright voxels.",
                cfg.min_head_extent_mm,
                head_fraction * 100.0
            ),
            json!({ "head_extent_mm": extents, "head_fraction": head_fraction, "minimum_mm": cfg.min_head_extent_mm }),
        ));
    }
    let mut limit = |code: &'static str, what: &str, v: f64, bound: f64, low_is_bad: bool| {
        let bad = if low_is_bad { v < bound } else { v > bound };
        if bad {
            r.refuse(Reason::new(
                code,
                &format!(
                    "{what} is {v:.2}, {} the {bound} the gate accepts.",
                    if low_is_bad { "below" } else { "above" }
                ),
                json!({ "value": v, "limit": bound }),
            ));
        }
    };
    limit(
        "low_snr",
        "The signal-to-noise ratio",
        m.snr,
        cfg.min_snr,
        true,
    );
    limit(
        "low_cnr",
        "The tissue contrast-to-noise ratio",
        m.cnr,
        cfg.min_cnr,
        true,
    );
    limit(
        "high_cjv",
        "The coefficient of joint variation of tissue intensities",
        m.cjv,
        cfg.max_cjv,
        false,
    );
    limit(
        "high_efc",
        "The entropy focus criterion (ghosting/blur)",
        m.efc,
        cfg.max_efc,
        false,
    );
    limit(
        "low_fber",
        "The foreground-to-background energy ratio",
        m.fber,
        cfg.min_fber,
        true,
    );
    if let Some(h) = history.filter(|h| h.n >= cfg.scanner_min_history) {
        let mut warnings = Vec::new();
        for (k, v) in m.values().into_iter().enumerate() {
            let sd = h.std(k);
            if sd > 0.0 && ((v - h.mean[k]) / sd).abs() > cfg.scanner_outlier_z {
                warnings.push(json!({
                    "code": "scanner_outlier",
                    "metric": Metrics::NAMES[k],
                    "value": v, "scanner_mean": h.mean[k], "scanner_std": sd, "series_seen": h.n,
                    "message": format!("{} is {:.1} standard deviations from this scanner's last {} series.", Metrics::NAMES[k], (v - h.mean[k]) / sd, h.n),
                }));
            }
        }
        r.facts["warnings"] = json!(warnings);
    }
    (r, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A noisy ball (the "head") in a noisy box, with two tissue intensities.
    fn phantom(noise: f32, zero_outside: bool) -> Volume {
        let (ns, nr, nc) = (40usize, 64usize, 64usize);
        let mut data = Vec::with_capacity(ns * nr * nc);
        let mut seed = 12345u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for s in 0..ns {
            for r in 0..nr {
                for c in 0..nc {
                    let d = (((s as f32 - 20.0) / 18.0).powi(2)
                        + ((r as f32 - 32.0) / 28.0).powi(2)
                        + ((c as f32 - 32.0) / 28.0).powi(2))
                    .sqrt();
                    let base = if d < 0.6 {
                        1000.0
                    } else if d < 1.0 {
                        600.0
                    } else {
                        0.0
                    };
                    let v = if base == 0.0 && zero_outside {
                        0.0
                    } else {
                        (base + noise * rnd()).abs()
                    };
                    data.push(v);
                }
            }
        }
        Volume {
            data,
            dims: [ns, nr, nc],
            spacing: [4.0, 4.0, 4.0],
            origin: [0.0; 3],
            row_dir: [1.0, 0.0, 0.0],
            col_dir: [0.0, 1.0, 0.0],
            normal: [0.0, 0.0, 1.0],
            slices: Vec::new(),
        }
    }

    #[test]
    fn clean_phantom_passes_and_noise_lowers_snr() {
        let cfg = GateConfig::default();
        let (r, good) = check(&phantom(40.0, false), &cfg, None);
        assert!(r.passed, "{:?} {:?}", r.reasons, r.facts);
        let (r, bad) = check(&phantom(900.0, false), &cfg, None);
        assert!(bad.snr < good.snr / 5.0, "{} vs {}", bad.snr, good.snr);
        assert!(
            r.reasons.iter().any(|x| x.code == "low_snr"),
            "{:?}",
            r.reasons
        );
    }

    #[test]
    fn zero_filled_background_is_refused() {
        let (r, _) = check(&phantom(40.0, true), &GateConfig::default(), None);
        assert_eq!(r.reasons[0].code, "skull_stripped_or_zero_filled");
    }

    #[test]
    fn scanner_history_flags_an_outlier() {
        let cfg = GateConfig::default();
        let (_, m) = check(&phantom(40.0, false), &cfg, None);
        let mut h = ScannerHistory::default();
        for i in 0..20 {
            let mut x = m;
            x.snr *= 1.0 + 0.01 * (i % 3) as f64;
            h.add(&x);
        }
        let (r, _) = check(&phantom(40.0, false), &cfg, Some(&h));
        assert!(r.facts["warnings"].as_array().unwrap().is_empty());
        let (r, _) = check(&phantom(400.0, false), &cfg, Some(&h));
        let w = r.facts["warnings"].as_array().unwrap();
        assert!(w.iter().any(|w| w["metric"] == "snr"), "{w:?}");
    }

    #[test]
    fn all_zero_volume_is_refused_not_a_panic() {
        let mut v = phantom(0.0, true);
        v.data.iter_mut().for_each(|x| *x = 0.0);
        let (r, m) = check(&v, &GateConfig::default(), None);
        assert_eq!(m.zero_fraction, 1.0);
        assert_eq!(r.reasons[0].code, "skull_stripped_or_zero_filled");
    }

    #[test]
    fn otsu_splits_two_levels() {
        let v: Vec<f32> = (0..1000)
            .map(|i| if i % 2 == 0 { 10.0 } else { 200.0 })
            .collect();
        let t = otsu(&v);
        assert!(t > 10.0 && t < 200.0);
    }
}
