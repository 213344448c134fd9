//! The series gate: only brain MR of usable quality goes on to segmentation, and
//! every refusal says why (a stable code, a sentence for the technician, and the
//! values that decided).
//!
//! Stages run in order and stop at the first that refuses: `header` (what the
//! series is), `geometry` (whether it forms a usable volume), `quality` (whether
//! the decoded volume is a head of usable quality). Header and geometry need only
//! the headers; quality needs the volume, which the caller loads in between.

pub mod geometry;
pub mod header;
pub mod quality;
pub mod slice;

use serde::Serialize;
use serde_json::json;

use crate::config::GateConfig;
pub use slice::SliceHeader;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reason {
    pub code: &'static str,
    pub message: String,
    pub values: serde_json::Value,
}

impl Reason {
    pub fn new(code: &'static str, message: &str, values: serde_json::Value) -> Self {
        Reason {
            code,
            message: message.to_string(),
            values,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageResult {
    pub stage: &'static str,
    pub passed: bool,
    pub reasons: Vec<Reason>,
    /// What the stage measured or derived, refused or not (sequence class, spacing, ...).
    pub facts: serde_json::Value,
}

impl StageResult {
    pub fn new(stage: &'static str) -> Self {
        StageResult {
            stage,
            passed: true,
            reasons: Vec::new(),
            facts: json!({}),
        }
    }

    pub fn refuse(&mut self, r: Reason) {
        self.passed = false;
        self.reasons.push(r);
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decision {
    pub passed: bool,
    pub stages: Vec<StageResult>,
}

impl Decision {
    pub fn codes(&self) -> Vec<&'static str> {
        self.stages
            .iter()
            .flat_map(|s| s.reasons.iter().map(|r| r.code))
            .collect()
    }
}

/// Runs the quality stage on the volume of a series that passed the first two.
pub fn evaluate_quality(
    d: &mut Decision,
    v: &crate::volume::Volume,
    cfg: &GateConfig,
    history: Option<&quality::ScannerHistory>,
) -> quality::Metrics {
    let (stage, metrics) = quality::check(v, cfg, history);
    d.passed &= stage.passed;
    d.stages.push(stage);
    metrics
}

/// Runs the header stages over a series' headers (instance order does not matter).
pub fn evaluate(series: &[SliceHeader], cfg: &GateConfig) -> Decision {
    let mut stages = Vec::new();
    let Some(first) = series.first() else {
        let mut r = StageResult::new("header");
        r.refuse(Reason::new(
            "empty_series",
            "The series has no readable instance.",
            json!({}),
        ));
        return Decision {
            passed: false,
            stages: vec![r],
        };
    };
    let header = header::check(first, series, cfg);
    let ok = header.passed;
    stages.push(header);
    if ok {
        stages.push(geometry::check(series, cfg));
    }
    Decision {
        passed: stages.iter().all(|s| s.passed),
        stages,
    }
}

/// The whole gate over one series' files: headers, then (when they pass) the
/// decoded volume. `history` gives the scanner's running statistics for the first
/// header. Returns the decision, and the quality metrics when that stage ran.
pub fn run_series(
    files: &[std::path::PathBuf],
    cfg: &GateConfig,
    history: impl FnOnce(&SliceHeader) -> anyhow::Result<Option<quality::ScannerHistory>>,
) -> anyhow::Result<GateOutcome> {
    let headers = files
        .iter()
        .map(|p| SliceHeader::read(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut decision = evaluate(&headers, cfg);
    if !decision.passed {
        return Ok(GateOutcome {
            decision,
            metrics: None,
            volume: None,
            decode_ms: 0,
        });
    }
    let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let t = std::time::Instant::now();
    let volume = crate::volume::load(&refs, &headers)?;
    let decode_ms = t.elapsed().as_millis() as u64;
    let h = history(&headers[0])?;
    let m = evaluate_quality(&mut decision, &volume, cfg, h.as_ref());
    Ok(GateOutcome {
        decision,
        metrics: Some(m),
        volume: Some(volume),
        decode_ms,
    })
}

/// What the gate decided, and the decoded volume when it got that far (the
/// segmentation uses it rather than decoding the series twice).
pub struct GateOutcome {
    pub decision: Decision,
    pub metrics: Option<quality::Metrics>,
    pub volume: Option<crate::volume::Volume>,
    pub decode_ms: u64,
}

/// The key of a scanner's history: hashed, so no station name sits in the index.
pub fn scanner_key(h: &SliceHeader) -> String {
    crate::store::hash_ref(&format!("{}|{}|{}", h.manufacturer, h.model, h.station))
}
