//! Index rows. JSON in sled: readable with any tool when something goes wrong.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::files::InstanceHeader;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredInstance {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub transfer_syntax: String,
    pub instance_number: Option<i64>,
    /// Spool path relative to the data directory.
    pub path: String,
    pub size: u64,
    pub calling_ae: String,
    pub received_at_ms: u64,
    /// Expected number of instances in the series, when the header says so.
    pub expected_in_series: Option<u64>,
    pub modality: String,
    pub series_description: String,
}

impl StoredInstance {
    pub fn new(h: &InstanceHeader, path: String, size: u64, calling_ae: &str, at: u64) -> Self {
        StoredInstance {
            sop_instance_uid: h.sop_instance_uid.clone(),
            sop_class_uid: h.sop_class_uid.clone(),
            study_uid: h.study_uid.clone(),
            series_uid: h.series_uid.clone(),
            transfer_syntax: h.transfer_syntax.clone(),
            instance_number: h.instance_number,
            path,
            size,
            calling_ae: calling_ae.to_string(),
            received_at_ms: at,
            expected_in_series: h.expected_in_series,
            modality: h.modality.clone(),
            series_description: h.series_description.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SeriesState {
    Open,
    Complete,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeriesRecord {
    pub series_uid: String,
    pub study_uid: String,
    pub modality: String,
    pub series_description: String,
    pub instance_count: u64,
    pub expected_count: Option<u64>,
    pub state: SeriesState,
    pub first_received_ms: u64,
    pub last_received_ms: u64,
    /// When the association that last added to this series was released.
    pub released_at_ms: Option<u64>,
    pub completed_at_ms: Option<u64>,
    /// expected_count | association_released | idle_timeout
    pub completion_reason: Option<String>,
    /// How often instances arrived after the series was complete.
    pub reopened: u32,
}

impl SeriesRecord {
    pub fn new(first: &StoredInstance) -> Self {
        SeriesRecord {
            series_uid: first.series_uid.clone(),
            study_uid: first.study_uid.clone(),
            modality: first.modality.clone(),
            series_description: first.series_description.clone(),
            instance_count: 0,
            expected_count: None,
            state: SeriesState::Open,
            first_received_ms: first.received_at_ms,
            last_received_ms: first.received_at_ms,
            released_at_ms: None,
            completed_at_ms: None,
            completion_reason: None,
            reopened: 0,
        }
    }

    /// Counts a new instance; returns true when this reopened a complete series.
    pub fn add_instance(&mut self, i: &StoredInstance) -> bool {
        self.instance_count += 1;
        self.last_received_ms = self.last_received_ms.max(i.received_at_ms);
        self.released_at_ms = None;
        if let Some(e) = i.expected_in_series {
            self.expected_count = Some(self.expected_count.map_or(e, |old| old.max(e)));
        }
        if self.state == SeriesState::Complete {
            self.state = SeriesState::Open;
            self.reopened += 1;
            self.completed_at_ms = None;
            self.completion_reason = None;
            return true;
        }
        false
    }

    pub fn complete(&mut self, reason: &str, at: u64) {
        self.state = SeriesState::Complete;
        self.completed_at_ms = Some(at);
        self.completion_reason = Some(reason.to_string());
    }

    pub fn expected_reached(&self) -> bool {
        self.expected_count
            .is_some_and(|e| self.instance_count >= e)
    }
}

/// The job states of DESIGN.md section 1. This issue reaches `complete`; later
/// stages add their transitions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Received,
    Complete,
    Gated,
    Inferred,
    Measured,
    Written,
    Queued,
    Delivered,
    Rejected,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateChange {
    pub state: JobState,
    pub at_ms: u64,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub state: JobState,
    pub instance_count: u64,
    pub completion_reason: String,
    pub reopened: u32,
    pub created_at_ms: u64,
    pub history: Vec<StateChange>,
    /// The gate's decision (stages, codes, values), once gated or rejected.
    #[serde(default)]
    pub gate: Option<serde_json::Value>,
    /// The "not processed" notice written for a refused series.
    #[serde(default)]
    pub notice_sop_instance_uid: Option<String>,
    /// How many instances the gate saw (a series that grew since is gated again).
    #[serde(default)]
    pub gate_instances: u64,
    /// What inference produced, once inferred.
    #[serde(default)]
    pub inference: Option<InferenceRecord>,
    /// The job took longer than [budget] seconds from series completion.
    #[serde(default)]
    pub over_budget: bool,
    /// What the measure stage found and decided, once measured.
    #[serde(default)]
    pub measurement: Option<MeasurementRecord>,
    /// SOP Instance UIDs of the result objects written (SEG, SR, picture).
    #[serde(default)]
    pub results: Vec<String>,
    /// Segmentations a person returned for this series, oldest first.
    #[serde(default)]
    pub edits: Vec<EditRecord>,
    /// When retention removed the job's files (its row and history stay).
    #[serde(default)]
    pub evicted_at_ms: Option<u64>,
}

/// The measure stage's output. Everything the result objects show is here, fixed
/// when the job was measured, so writing them again writes the same objects.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeasurementRecord {
    /// Hash of (issuer of patient id, patient id): the history key, never PHI.
    pub patient_key: String,
    pub study_date: String,
    pub regions: Vec<crate::measure::RegionMeasurement>,
    /// Tracking UID per region (stable across the patient's visits)
    pub tracking_uids: Vec<String>,
    /// region key -> change against earlier visits
    pub changes: std::collections::BTreeMap<String, crate::measure::history::RegionChange>,
    /// The patient's visits dated before this one, when measured
    pub earlier: Vec<crate::measure::history::Visit>,
    pub progression_pct: f64,
    pub min_increase_ml: f64,
    pub uids: ResultUids,
    /// When the results were made (their creation date and time)
    pub created_ms: u64,
}

/// The UIDs of a job's result objects, derived before first use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultUids {
    pub seg_series: String,
    pub seg: String,
    pub sr_series: String,
    pub sr: String,
    pub picture_series: String,
    pub picture: String,
}

/// A segmentation returned by a person (an edited SEG) and what it changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EditRecord {
    /// The returned SEG
    pub seg_sop_instance_uid: String,
    pub received_at_ms: u64,
    /// The SEG's Content Creator (the verifying observer of the new SR)
    pub observer: String,
    /// region key -> mL, from the edited segmentation
    pub volumes_ml: std::collections::BTreeMap<String, f64>,
    /// region key -> Dice between the AI's and the edited segmentation
    pub dice: std::collections::BTreeMap<String, f64>,
    pub regions: Vec<crate::measure::RegionMeasurement>,
    pub changes: std::collections::BTreeMap<String, crate::measure::history::RegionChange>,
    /// The verified SR and the new trend picture written for it
    pub sr_sop_instance_uid: String,
    pub sr_series_uid: String,
    pub picture_sop_instance_uid: String,
}

/// The segmentation of one series: where the labels are and what they count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InferenceRecord {
    /// name and version from the manifest
    pub model: String,
    pub model_sha256: String,
    pub backend: String,
    /// NIfTI label volume on the series grid, relative to the data dir
    pub labels_path: String,
    /// voxels per label value (index = label)
    pub voxel_counts: Vec<u64>,
    /// mL per region: whole_tumour, tumour_core, enhancing, and each label's name
    pub volumes_ml: std::collections::BTreeMap<String, f64>,
    pub removed_components: usize,
    /// decode, gate, resample, infer, post (ms)
    pub stage_ms: std::collections::BTreeMap<String, u64>,
    pub model_grid: [usize; 3],
    pub patches: usize,
    /// The model's labels (value, name), background included
    #[serde(default)]
    pub label_names: Vec<(u8, String)>,
    /// name and version separately, as result objects name them
    #[serde(default)]
    pub model_name: String,
    #[serde(default)]
    pub model_version: String,
}

/// An object the box produced (notice, and later SEG, SR, trend picture).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultRecord {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub job_id: String,
    /// not_processed_notice | seg | sr | trend_picture | verified_sr
    pub kind: String,
    pub path: String,
    pub created_at_ms: u64,
}

impl JobRecord {
    /// Job ids are derived from the series UID so a resumed or repeated step
    /// lands on the same job (DESIGN.md section 1: idempotent, keyed by UIDs).
    pub fn id_for(series_uid: &str) -> String {
        let h = Sha256::digest(series_uid.as_bytes());
        h[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn new(s: &SeriesRecord, now: u64) -> Self {
        JobRecord {
            id: Self::id_for(&s.series_uid),
            study_instance_uid: s.study_uid.clone(),
            series_instance_uid: s.series_uid.clone(),
            state: JobState::Complete,
            instance_count: s.instance_count,
            completion_reason: s.completion_reason.clone().unwrap_or_default(),
            reopened: s.reopened,
            created_at_ms: now,
            history: vec![
                StateChange {
                    state: JobState::Received,
                    at_ms: s.first_received_ms,
                    note: None,
                },
                StateChange {
                    state: JobState::Complete,
                    at_ms: now,
                    note: s.completion_reason.clone(),
                },
            ],
            gate: None,
            notice_sop_instance_uid: None,
            gate_instances: 0,
            inference: None,
            over_budget: false,
            measurement: None,
            results: Vec::new(),
            edits: Vec::new(),
            evicted_at_ms: None,
        }
    }

    /// The series was reopened by late instances and completed again: the job
    /// goes back to `complete` so later stages run over the full series.
    pub fn series_completed_again(&mut self, s: &SeriesRecord, now: u64) {
        self.state = JobState::Complete;
        self.gate = None;
        self.notice_sop_instance_uid = None;
        self.instance_count = s.instance_count;
        self.completion_reason = s.completion_reason.clone().unwrap_or_default();
        self.reopened = s.reopened;
        self.history.push(StateChange {
            state: JobState::Complete,
            at_ms: now,
            note: Some(format!(
                "reopened by late instances, complete again ({})",
                self.completion_reason
            )),
        });
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    Pending,
    /// Stored at a destination with storage commitment, waiting for its
    /// N-EVENT-REPORT: not delivered yet.
    Committing,
    Delivered,
    /// Refused by the destination max_tries times: kept, not retried, listed.
    Dead,
}

/// One object to send to one destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutboxEntry {
    pub destination: String,
    /// Commit order (per store, increasing)
    pub seq: u64,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    /// The data set is sent in the syntax it is stored in.
    #[serde(default = "explicit_vr_le")]
    pub transfer_syntax: String,
    /// A result kind (seg, sr, ...) or "source" for a received instance.
    pub kind: String,
    pub job_id: String,
    /// Relative to the data dir
    pub path: String,
    pub created_ms: u64,
    pub state: OutboxState,
    /// Tries the destination refused (permanent errors)
    pub tries: u32,
    pub next_try_ms: u64,
    pub last_error: Option<String>,
    pub delivered_ms: Option<u64>,
    /// Transaction UID of the storage commitment request (state committing).
    #[serde(default)]
    pub commitment_uid: Option<String>,
    #[serde(default)]
    pub committing_since_ms: Option<u64>,
}

impl OutboxEntry {
    pub fn new(dest: &str, seq: u64, r: &ResultRecord) -> Self {
        let mut e = Self::pending(dest, seq, &r.sop_instance_uid, &r.sop_class_uid, &r.path);
        e.kind = r.kind.clone();
        e.job_id = r.job_id.clone();
        e.created_ms = r.created_at_ms;
        e
    }

    /// A received instance queued for a destination with forward_sources.
    pub fn source(dest: &str, seq: u64, i: &StoredInstance) -> Self {
        let mut e = Self::pending(dest, seq, &i.sop_instance_uid, &i.sop_class_uid, &i.path);
        e.transfer_syntax = i.transfer_syntax.clone();
        e.kind = "source".into();
        e.job_id = JobRecord::id_for(&i.series_uid);
        e.created_ms = i.received_at_ms;
        e
    }

    fn pending(dest: &str, seq: u64, sop: &str, class: &str, path: &str) -> Self {
        OutboxEntry {
            destination: dest.to_string(),
            seq,
            sop_instance_uid: sop.to_string(),
            sop_class_uid: class.to_string(),
            transfer_syntax: explicit_vr_le(),
            kind: String::new(),
            job_id: String::new(),
            path: path.to_string(),
            created_ms: 0,
            state: OutboxState::Pending,
            tries: 0,
            next_try_ms: 0,
            last_error: None,
            delivered_ms: None,
            commitment_uid: None,
            committing_since_ms: None,
        }
    }

    pub fn key(&self) -> Vec<u8> {
        format!("{}\0{:020}", self.destination, self.seq).into_bytes()
    }
}

fn explicit_vr_le() -> String {
    "1.2.840.10008.1.2.1".into()
}
