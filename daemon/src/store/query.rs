//! The query/retrieve index: one row per study, per series and per instance over
//! what the box keeps (received sources, produced results), so a C-FIND touches
//! only the rows of the level asked for. Rows are derived from the files and can
//! be rebuilt from them.

use std::collections::BTreeSet;

use dicom_dictionary_std::tags;
use serde::{Deserialize, Serialize};

/// The attributes a C-FIND can match or return, read from an instance's header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryAttrs {
    pub specific_character_set: String,
    pub patient_name: String,
    pub patient_id: String,
    pub issuer_of_patient_id: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_date: String,
    pub study_time: String,
    pub accession_number: String,
    pub study_id: String,
    pub study_description: String,
    pub referring_physician_name: String,
    pub series_number: Option<i64>,
    pub series_date: String,
    pub series_time: String,
    pub content_date: String,
    pub content_time: String,
}

impl QueryAttrs {
    pub fn from_object(obj: &dicom_object::InMemDicomObject) -> Self {
        let t = |tag| super::attr_text(obj, tag).unwrap_or_default();
        QueryAttrs {
            specific_character_set: t(tags::SPECIFIC_CHARACTER_SET),
            patient_name: t(tags::PATIENT_NAME),
            patient_id: t(tags::PATIENT_ID),
            issuer_of_patient_id: t(tags::ISSUER_OF_PATIENT_ID),
            patient_birth_date: t(tags::PATIENT_BIRTH_DATE),
            patient_sex: t(tags::PATIENT_SEX),
            study_date: t(tags::STUDY_DATE),
            study_time: t(tags::STUDY_TIME),
            accession_number: t(tags::ACCESSION_NUMBER),
            study_id: t(tags::STUDY_ID),
            study_description: t(tags::STUDY_DESCRIPTION),
            referring_physician_name: t(tags::REFERRING_PHYSICIAN_NAME),
            series_number: t(tags::SERIES_NUMBER).trim().parse().ok(),
            series_date: t(tags::SERIES_DATE),
            series_time: t(tags::SERIES_TIME),
            content_date: t(tags::CONTENT_DATE),
            content_time: t(tags::CONTENT_TIME),
        }
    }
}

/// Where an indexed instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Received over C-STORE (a scanner's series or a viewer's edit).
    Source,
    /// Produced by the box (SEG, SR, trend picture, notice).
    Result,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRow {
    pub study_uid: String,
    pub attrs: QueryAttrs,
    pub series_count: u64,
    pub instance_count: u64,
    pub modalities: BTreeSet<String>,
    pub sop_classes: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesRow {
    pub study_uid: String,
    pub series_uid: String,
    pub modality: String,
    pub series_number: Option<i64>,
    pub series_description: String,
    pub series_date: String,
    pub series_time: String,
    pub instance_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRow {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub instance_number: Option<i64>,
    pub content_date: String,
    pub content_time: String,
    pub transfer_syntax: String,
    /// Relative to the data dir
    pub path: String,
    pub size: u64,
    pub origin: Origin,
}

/// One instance to index, with everything the three levels need.
#[derive(Debug, Clone)]
pub struct QrEntry {
    pub instance: InstanceRow,
    pub modality: String,
    pub series_description: String,
    pub attrs: QueryAttrs,
}

impl QrEntry {
    pub fn new(h: &super::InstanceHeader, path: String, size: u64, origin: Origin) -> Self {
        QrEntry {
            instance: InstanceRow {
                study_uid: h.study_uid.clone(),
                series_uid: h.series_uid.clone(),
                sop_instance_uid: h.sop_instance_uid.clone(),
                sop_class_uid: h.sop_class_uid.clone(),
                instance_number: h.instance_number,
                content_date: h.query.content_date.clone(),
                content_time: h.query.content_time.clone(),
                transfer_syntax: h.transfer_syntax.clone(),
                path,
                size,
                origin,
            },
            modality: h.modality.clone(),
            series_description: h.series_description.clone(),
            attrs: h.query.clone(),
        }
    }

    pub fn study_row(&self) -> StudyRow {
        StudyRow {
            study_uid: self.instance.study_uid.clone(),
            attrs: self.attrs.clone(),
            series_count: 0,
            instance_count: 0,
            modalities: BTreeSet::new(),
            sop_classes: BTreeSet::new(),
        }
    }

    pub fn series_row(&self) -> SeriesRow {
        SeriesRow {
            study_uid: self.instance.study_uid.clone(),
            series_uid: self.instance.series_uid.clone(),
            modality: self.modality.clone(),
            series_number: self.attrs.series_number,
            series_description: self.series_description.clone(),
            series_date: self.attrs.series_date.clone(),
            series_time: self.attrs.series_time.clone(),
            instance_count: 0,
        }
    }
}

pub fn series_key(study: &str, series: &str) -> Vec<u8> {
    format!("{study}\0{series}").into_bytes()
}

pub fn instance_key(study: &str, series: &str, sop: &str) -> Vec<u8> {
    format!("{study}\0{series}\0{sop}").into_bytes()
}
