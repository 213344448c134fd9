//! Process-wide counters, gauges and histograms, rendered as Prometheus text.
//! Hand-rolled: a handful of series does not justify a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds (seconds) of the C-STORE latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    /// (metric name, label set) -> value
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    gauges: Mutex<BTreeMap<(&'static str, String), f64>>,
    store_latency: Mutex<Histogram>,
    /// (name, labels) -> (count, sum)
    summaries: Mutex<BTreeMap<(&'static str, String), (u64, f64)>>,
}

const HELP: &[(&str, &str, &str)] = &[
    (
        "scanside_associations_accepted_total",
        "counter",
        "DICOM associations accepted",
    ),
    (
        "scanside_associations_rejected_total",
        "counter",
        "DICOM associations rejected, by reason",
    ),
    (
        "scanside_associations_aborted_total",
        "counter",
        "DICOM associations aborted, by reason",
    ),
    (
        "scanside_associations_active",
        "gauge",
        "DICOM associations open now",
    ),
    (
        "scanside_instances_stored_total",
        "counter",
        "Instances durably stored",
    ),
    (
        "scanside_instances_duplicate_total",
        "counter",
        "Instances received again and discarded",
    ),
    (
        "scanside_instances_refused_total",
        "counter",
        "C-STORE requests refused, by status",
    ),
    (
        "scanside_bytes_stored_total",
        "counter",
        "Bytes of instance files durably stored",
    ),
    (
        "scanside_series_completed_total",
        "counter",
        "Series completed, by reason",
    ),
    (
        "scanside_series_reopened_total",
        "counter",
        "Complete series reopened by late instances",
    ),
    (
        "scanside_gate_passed_total",
        "counter",
        "Series that passed the gate",
    ),
    (
        "scanside_gate_refusals_total",
        "counter",
        "Gate refusals, by code",
    ),
    (
        "scanside_notices_written_total",
        "counter",
        "Not-processed notices (Basic Text SR) written",
    ),
    (
        "scanside_jobs_failed_total",
        "counter",
        "Jobs failed by an internal error, by stage",
    ),
    (
        "scanside_jobs_inferred_total",
        "counter",
        "Jobs segmented (state inferred)",
    ),
    (
        "scanside_jobs_written_total",
        "counter",
        "Jobs whose results (SEG, SR, trend picture) are committed (state written)",
    ),
    (
        "scanside_edits_received_total",
        "counter",
        "Edited segmentations returned by a person and measured again",
    ),
    (
        "scanside_edit_dice",
        "summary",
        "Dice between the AI's and a person's edited segmentation, by region (model monitoring)",
    ),
    (
        "scanside_outbox_delivered_total",
        "counter",
        "Result objects delivered upstream, by destination",
    ),
    (
        "scanside_qr_requests_total",
        "counter",
        "Query/retrieve requests, by operation (find, get, move) and outcome (answered, refused)",
    ),
    (
        "scanside_qr_suboperations_total",
        "counter",
        "C-GET and C-MOVE C-STORE sub-operations, by operation and outcome (completed, failed)",
    ),
    (
        "scanside_config_reloads_total",
        "counter",
        "SIGHUP configuration reloads, by outcome (applied, refused: the running one kept)",
    ),
    (
        "scanside_ota_pulls_total",
        "counter",
        "Pulls of [ota] update_url, by outcome (installed, refused, refused_before, up_to_date, download_failed, unreachable)",
    ),
    (
        "scanside_retention_removed_files_total",
        "counter",
        "Files of delivered jobs removed by [storage].retention",
    ),
    (
        "scanside_retention_removed_bytes_total",
        "counter",
        "Bytes of delivered jobs removed by [storage].retention",
    ),
    (
        "scanside_disk_refusing",
        "gauge",
        "1 while free space is below [storage].min_free_bytes and new data is refused (A700)",
    ),
    (
        "scanside_outbox_retries_total",
        "counter",
        "Failed forwarding attempts retried (link down, or an object refused), by destination",
    ),
    (
        "scanside_outbox_dead_letters_total",
        "counter",
        "Objects dead-lettered after max_tries refusals, by destination",
    ),
    (
        "scanside_http_token_failures_total",
        "counter",
        "HTTP requests refused for a missing or wrong bearer token",
    ),
    (
        "scanside_outbox_pending",
        "gauge",
        "Objects waiting to be delivered, by destination",
    ),
    (
        "scanside_outbox_oldest_pending_seconds",
        "gauge",
        "Age of the oldest undelivered object, by destination",
    ),
    (
        "scanside_outbox_dead_letters",
        "gauge",
        "Dead-lettered objects kept for replay, by destination",
    ),
    (
        "scanside_upstream_up",
        "gauge",
        "1 while the last association to the destination succeeded",
    ),
    (
        "scanside_jobs_over_budget_total",
        "counter",
        "Jobs that took longer than [budget] seconds from series completion",
    ),
    (
        "scanside_stage_seconds",
        "summary",
        "Time per job stage (decode, gate, resample, infer, post, measure, write; total from series complete to results committed), by stage",
    ),
    (
        "scanside_model_loaded",
        "gauge",
        "1 when a segmentation model is loaded and ready",
    ),
    (
        "scanside_disk_free_bytes",
        "gauge",
        "Free bytes on the data file system",
    ),
    (
        "scanside_c_store_seconds",
        "histogram",
        "C-STORE request to response, seconds",
    ),
];

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: &str) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &'static str, labels: &str, v: u64) {
        if let Ok(mut m) = self.counters.lock() {
            *m.entry((name, labels.to_string())).or_default() += v;
        }
    }

    pub fn set_gauge(&self, name: &'static str, labels: &str, v: f64) {
        if let Ok(mut m) = self.gauges.lock() {
            m.insert((name, labels.to_string()), v);
        }
    }

    pub fn counter(&self, name: &'static str, labels: &str) -> u64 {
        self.counters
            .lock()
            .map(|m| m.get(&(name, labels.to_string())).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn observe_store_latency(&self, seconds: f64) {
        if let Ok(mut h) = self.store_latency.lock() {
            for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
    }

    pub fn observe(&self, name: &'static str, labels: &str, v: f64) {
        if let Ok(mut m) = self.summaries.lock() {
            let e = m.entry((name, labels.to_string())).or_default();
            e.0 += 1;
            e.1 += v;
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().map(|m| m.clone()).unwrap_or_default();
        let gauges = self.gauges.lock().map(|m| m.clone()).unwrap_or_default();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let mut any = false;
            for ((n, labels), v) in counters.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{n}{} {v}", braces(labels));
                any = true;
            }
            for ((n, labels), v) in gauges.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{n}{} {v}", braces(labels));
                any = true;
            }
            // Unlabelled counters are shown at 0 so dashboards see them from the start.
            if *kind == "counter" && !any && !help.contains(", by") {
                let _ = writeln!(out, "{name} 0");
            }
            if *kind == "summary" {
                if let Ok(m) = self.summaries.lock() {
                    for ((n, labels), (count, sum)) in m.iter().filter(|((n, _), _)| n == name) {
                        let _ = writeln!(out, "{n}_sum{} {sum}", braces(labels));
                        let _ = writeln!(out, "{n}_count{} {count}", braces(labels));
                    }
                }
            }
            if *kind == "histogram" {
                if let Ok(h) = self.store_latency.lock() {
                    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", h.counts[i]);
                    }
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
                    let _ = writeln!(out, "{name}_sum {}", h.sum);
                    let _ = writeln!(out, "{name}_count {}", h.count);
                }
            }
        }
        out
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histogram() {
        let m = Metrics::default();
        m.inc(
            "scanside_associations_rejected_total",
            "reason=\"calling_ae\"",
        );
        m.inc(
            "scanside_associations_rejected_total",
            "reason=\"calling_ae\"",
        );
        m.add("scanside_bytes_stored_total", "", 1234);
        m.set_gauge("scanside_disk_free_bytes", "", 5e9);
        m.observe_store_latency(0.003);
        m.observe_store_latency(0.2);
        let t = m.render();
        assert!(
            t.contains("scanside_associations_rejected_total{reason=\"calling_ae\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("scanside_bytes_stored_total 1234\n"));
        assert!(t.contains("scanside_instances_stored_total 0\n"));
        assert!(t.contains("scanside_disk_free_bytes 5000000000\n"));
        assert!(t.contains("scanside_c_store_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(t.contains("scanside_c_store_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(t.contains("scanside_c_store_seconds_count 2\n"));
    }
}
