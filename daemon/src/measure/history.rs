//! A patient's visits and what a new visit says against them: change from the
//! previous visit and from the nadir (the smallest earlier volume), specific growth
//! rate ln(V2/V1)/dt and doubling time ln 2 / SGR (Mehrara 2007), and the volumetric
//! progression flag (increase >= threshold from nadir; RANO 2.0 uses 40% for
//! volumes). This is decision support: the box never makes a RANO determination.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One visit (one study) of one patient.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Visit {
    pub study_uid: String,
    pub series_uid: String,
    pub job_id: String,
    /// YYYYMMDD and HHMMSS as in the study (empty when the source had none)
    pub study_date: String,
    pub study_time: String,
    /// region key -> mL
    pub volumes_ml: BTreeMap<String, f64>,
    /// "ai" for the box's own segmentation, "edited" for a segmentation a person returned
    pub source: String,
    pub seg_uid: String,
    pub sr_uid: String,
    pub picture_uid: String,
}

impl Visit {
    /// Sort key: date, time, then the study UID so equal dates have a fixed order.
    fn key(&self) -> (&str, &str, &str) {
        (&self.study_date, &self.study_time, &self.study_uid)
    }
}

/// Inserts or replaces (same study) a visit, keeping the list ordered by date
/// whatever order visits arrive in. An AI result never replaces an edited one.
pub fn upsert(visits: &mut Vec<Visit>, v: Visit) {
    if let Some(old) = visits.iter_mut().find(|o| o.study_uid == v.study_uid) {
        if old.source == "edited" && v.source != "edited" {
            return;
        }
        *old = v;
    } else {
        visits.push(v);
    }
    visits.sort_by(|a, b| a.key().cmp(&b.key()));
}

/// The thresholds of the progression flag ([measure] in the config).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// increase from nadir, percent (RANO 2.0 volumetric: 40)
    pub progression_pct: f64,
    /// and at least this many mL (guards tiny volumes against noise)
    pub min_increase_ml: f64,
}

/// A region's volume against one earlier visit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Against {
    pub study_date: String,
    pub volume_ml: f64,
    pub change_ml: f64,
    /// None when the earlier volume is 0
    pub change_pct: Option<f64>,
    pub days: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegionChange {
    pub volume_ml: f64,
    pub previous: Option<Against>,
    pub nadir: Option<Against>,
    /// ln(V/Vprev)/days, per day; None when either volume is 0 or no time passed
    pub growth_rate_per_day: Option<f64>,
    /// ln 2 / growth rate, days; negative means halving; None when the rate is 0 or None
    pub doubling_time_days: Option<f64>,
    /// increase from nadir >= the threshold (and the minimum mL)
    pub progression: bool,
}

/// Days between two YYYYMMDD dates (b - a); None when either is not a date.
pub fn days_between(a: &str, b: &str) -> Option<f64> {
    Some((day_number(b)? - day_number(a)?) as f64)
}

/// Days since 1970-01-01 of a YYYYMMDD date (proleptic Gregorian).
fn day_number(d: &str) -> Option<i64> {
    let d = d.trim();
    if d.len() != 8 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, day) = (
        d[0..4].parse::<i64>().ok()?,
        d[4..6].parse::<i64>().ok()?,
        d[6..8].parse::<i64>().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146097 + doe - 719468)
}

/// The visits of another study dated before `visit`, in date order.
pub fn earlier<'a>(visits: &'a [Visit], visit: &Visit) -> Vec<&'a Visit> {
    visits
        .iter()
        .filter(|v| v.study_uid != visit.study_uid && v.key() < visit.key())
        .collect()
}

/// The change of each region of `visit` against the visits dated before it.
pub fn changes(visits: &[Visit], visit: &Visit, t: Thresholds) -> BTreeMap<String, RegionChange> {
    let earlier = earlier(visits, visit);
    let mut out = BTreeMap::new();
    for (region, &v) in &visit.volumes_ml {
        let against = |e: &Visit| {
            e.volumes_ml.get(region).map(|&ev| Against {
                study_date: e.study_date.clone(),
                volume_ml: ev,
                change_ml: v - ev,
                change_pct: (ev > 0.0).then(|| 100.0 * (v - ev) / ev),
                days: days_between(&e.study_date, &visit.study_date).unwrap_or(0.0),
            })
        };
        let previous = earlier.iter().rev().find_map(|e| against(e));
        let nadir = earlier
            .iter()
            .filter_map(|e| against(e))
            .min_by(|a, b| a.volume_ml.total_cmp(&b.volume_ml));
        let growth = previous
            .as_ref()
            .filter(|p| p.volume_ml > 0.0 && v > 0.0 && p.days > 0.0)
            .map(|p| (v / p.volume_ml).ln() / p.days);
        let doubling = growth
            .filter(|g| *g != 0.0)
            .map(|g| std::f64::consts::LN_2 / g);
        let progression = nadir.as_ref().is_some_and(|n| {
            let increase = v - n.volume_ml;
            // A tolerance so that exactly +40% counts despite rounding (1.4 - 1.0 < 0.4).
            let relative = n.volume_ml == 0.0
                || increase >= n.volume_ml * t.progression_pct / 100.0 - 1e-9 * n.volume_ml;
            relative && increase >= t.min_increase_ml - 1e-12
        });
        out.insert(
            region.clone(),
            RegionChange {
                volume_ml: v,
                previous,
                nadir,
                growth_rate_per_day: growth,
                doubling_time_days: doubling,
                progression,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit(study: &str, date: &str, wt: f64) -> Visit {
        Visit {
            study_uid: study.into(),
            series_uid: format!("{study}.1"),
            job_id: study.into(),
            study_date: date.into(),
            study_time: String::new(),
            volumes_ml: [("whole_tumour".to_string(), wt)].into(),
            source: "ai".into(),
            seg_uid: String::new(),
            sr_uid: String::new(),
            picture_uid: String::new(),
        }
    }

    const T: Thresholds = Thresholds {
        progression_pct: 40.0,
        min_increase_ml: 0.1,
    };

    #[test]
    fn day_numbers_match_the_calendar() {
        assert_eq!(day_number("19700101"), Some(0));
        assert_eq!(days_between("20240228", "20240301"), Some(2.0)); // leap year
        assert_eq!(days_between("20230228", "20230301"), Some(1.0));
        assert_eq!(days_between("20251231", "20260101"), Some(1.0));
        assert_eq!(day_number("2026-01-01"), None);
        assert_eq!(day_number("20261301"), None);
    }

    #[test]
    fn growth_rate_and_doubling_time_by_hand() {
        let mut h = Vec::new();
        upsert(&mut h, visit("1.1", "20260101", 10.0));
        let v = visit("1.2", "20260131", 20.0);
        upsert(&mut h, v.clone());
        let c = &changes(&h, &v, T)["whole_tumour"];
        // Doubled in 30 days: SGR = ln 2 / 30 per day, doubling time 30 days.
        assert!((c.growth_rate_per_day.unwrap() - std::f64::consts::LN_2 / 30.0).abs() < 1e-12);
        assert!((c.doubling_time_days.unwrap() - 30.0).abs() < 1e-9);
        let p = c.previous.as_ref().unwrap();
        assert_eq!(
            (p.change_ml, p.change_pct, p.days),
            (10.0, Some(100.0), 30.0)
        );
        assert!(c.progression);
        // Shrinking 12 -> 9 mL in 61 days: ln(0.75)/61, a negative (halving) time.
        let v3 = visit("1.3", "20260402", 9.0);
        upsert(&mut h, v3.clone());
        let c3 = &changes(&h, &v3, T)["whole_tumour"];
        let sgr = (9.0f64 / 20.0).ln() / 61.0;
        assert!((c3.growth_rate_per_day.unwrap() - sgr).abs() < 1e-12);
        assert!((c3.doubling_time_days.unwrap() - 2f64.ln() / sgr).abs() < 1e-9);
        assert_eq!(c3.nadir.as_ref().unwrap().volume_ml, 10.0);
        assert!(!c3.progression);
        // No change: no doubling time.
        let v4 = visit("1.4", "20260502", 9.0);
        upsert(&mut h, v4.clone());
        let c4 = &changes(&h, &v4, T)["whole_tumour"];
        assert_eq!(c4.growth_rate_per_day, Some(0.0));
        assert_eq!(c4.doubling_time_days, None);
    }

    #[test]
    fn visits_arriving_out_of_order_stay_ordered_by_date() {
        let mut h = Vec::new();
        for (s, d, v) in [
            ("1.3", "20260301", 14.0),
            ("1.1", "20260101", 10.0),
            ("1.4", "20260401", 7.0),
            ("1.2", "20260201", 12.0),
        ] {
            upsert(&mut h, visit(s, d, v));
        }
        let dates: Vec<&str> = h.iter().map(|v| v.study_date.as_str()).collect();
        assert_eq!(dates, ["20260101", "20260201", "20260301", "20260401"]);
        // The late-arriving February visit compares with January only.
        let c = &changes(&h, &h[1], T)["whole_tumour"];
        assert_eq!(c.previous.as_ref().unwrap().study_date, "20260101");
        // April compares with March (previous) and January (nadir).
        let c = &changes(&h, &h[3], T)["whole_tumour"];
        assert_eq!(c.previous.as_ref().unwrap().volume_ml, 14.0);
        assert_eq!(c.nadir.as_ref().unwrap().volume_ml, 10.0);
        // The same study again replaces its visit, it does not add one.
        upsert(&mut h, visit("1.2", "20260201", 11.0));
        assert_eq!(h.len(), 4);
        assert_eq!(h[1].volumes_ml["whole_tumour"], 11.0);
        // An AI result never replaces a person's edit.
        let mut edited = visit("1.3", "20260301", 13.0);
        edited.source = "edited".into();
        upsert(&mut h, edited);
        upsert(&mut h, visit("1.3", "20260301", 14.0));
        assert_eq!(h[2].volumes_ml["whole_tumour"], 13.0);
    }

    #[test]
    fn progression_flag_at_the_threshold_boundary() {
        let flag = |nadir: f64, now: f64| {
            let h = vec![
                visit("1.1", "20260101", nadir),
                visit("1.2", "20260201", now),
            ];
            changes(&h, &h[1], T)["whole_tumour"].progression
        };
        assert!(flag(1.0, 1.4), "exactly +40% is progression");
        assert!(!flag(1.0, 1.3999));
        assert!(flag(10.0, 14.0));
        assert!(!flag(10.0, 13.99));
        // +40% but under the minimum absolute increase: not flagged.
        assert!(!flag(0.1, 0.14));
        // From an undetectable nadir, a new volume above the minimum is flagged.
        assert!(flag(0.0, 0.5));
        assert!(!flag(0.0, 0.05));
        // The nadir, not the previous visit, is the reference.
        let h = vec![
            visit("1.1", "20260101", 10.0),
            visit("1.2", "20260201", 5.0),
            visit("1.3", "20260301", 7.0),
        ];
        assert!(changes(&h, &h[2], T)["whole_tumour"].progression);
        // The first visit has nothing to compare with.
        let c = &changes(&h, &h[0], T)["whole_tumour"];
        assert!(c.previous.is_none() && c.nadir.is_none() && !c.progression);
    }
}
