//! C-FIND identifiers: which keys we support at which level, attribute matching
//! (PS3.4 C.2.2.2: universal, single value, wildcard, UID list, range), and the
//! values a response returns.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::store::query::{InstanceRow, SeriesRow, StudyRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Study,
    Series,
    Image,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim() {
            "STUDY" => Some(Level::Study),
            "SERIES" => Some(Level::Series),
            "IMAGE" => Some(Level::Image),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }
}

/// How an attribute's values are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Single value or wildcard, case-sensitive (LO, SH, CS).
    Text,
    /// Like Text, but case-insensitive (PS3.4 C.2.2.2.1 lets PN be).
    Name,
    /// UID list matching (values separated by backslashes).
    Uid,
    /// DA: single date or range.
    Date,
    /// TM: single time or range.
    Time,
    /// IS: single value.
    Number,
    /// Returned, never matched (counts).
    ReturnOnly,
}

/// One supported key: its tag, VR, the level it belongs to and how it matches.
struct Key {
    tag: Tag,
    vr: VR,
    level: Level,
    kind: Kind,
}

const fn key(tag: Tag, vr: VR, level: Level, kind: Kind) -> Key {
    Key {
        tag,
        vr,
        level,
        kind,
    }
}

/// The keys of PS3.4 C.6.2.1 (study root) that apply to what we keep.
const KEYS: &[Key] = &[
    key(tags::PATIENT_NAME, VR::PN, Level::Study, Kind::Name),
    key(tags::PATIENT_ID, VR::LO, Level::Study, Kind::Text),
    key(tags::ISSUER_OF_PATIENT_ID, VR::LO, Level::Study, Kind::Text),
    key(tags::PATIENT_BIRTH_DATE, VR::DA, Level::Study, Kind::Date),
    key(tags::PATIENT_SEX, VR::CS, Level::Study, Kind::Text),
    key(tags::STUDY_DATE, VR::DA, Level::Study, Kind::Date),
    key(tags::STUDY_TIME, VR::TM, Level::Study, Kind::Time),
    key(tags::ACCESSION_NUMBER, VR::SH, Level::Study, Kind::Text),
    key(tags::STUDY_ID, VR::SH, Level::Study, Kind::Text),
    key(tags::STUDY_INSTANCE_UID, VR::UI, Level::Study, Kind::Uid),
    key(tags::STUDY_DESCRIPTION, VR::LO, Level::Study, Kind::Text),
    key(
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        Level::Study,
        Kind::Name,
    ),
    key(tags::MODALITIES_IN_STUDY, VR::CS, Level::Study, Kind::Text),
    key(tags::SOP_CLASSES_IN_STUDY, VR::UI, Level::Study, Kind::Uid),
    key(
        tags::NUMBER_OF_STUDY_RELATED_SERIES,
        VR::IS,
        Level::Study,
        Kind::ReturnOnly,
    ),
    key(
        tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
        VR::IS,
        Level::Study,
        Kind::ReturnOnly,
    ),
    key(tags::MODALITY, VR::CS, Level::Series, Kind::Text),
    key(tags::SERIES_NUMBER, VR::IS, Level::Series, Kind::Number),
    key(tags::SERIES_INSTANCE_UID, VR::UI, Level::Series, Kind::Uid),
    key(tags::SERIES_DESCRIPTION, VR::LO, Level::Series, Kind::Text),
    key(tags::SERIES_DATE, VR::DA, Level::Series, Kind::Date),
    key(tags::SERIES_TIME, VR::TM, Level::Series, Kind::Time),
    key(
        tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
        VR::IS,
        Level::Series,
        Kind::ReturnOnly,
    ),
    key(tags::SOP_INSTANCE_UID, VR::UI, Level::Image, Kind::Uid),
    key(tags::SOP_CLASS_UID, VR::UI, Level::Image, Kind::Uid),
    key(tags::INSTANCE_NUMBER, VR::IS, Level::Image, Kind::Number),
    key(tags::CONTENT_DATE, VR::DA, Level::Image, Kind::Date),
    key(tags::CONTENT_TIME, VR::TM, Level::Image, Kind::Time),
];

fn key_of(tag: Tag) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.tag == tag)
}

/// A parsed C-FIND identifier.
#[derive(Debug, Clone)]
pub struct Query {
    pub level: Level,
    /// Supported keys asked for, with their matching value ("" = universal).
    keys: Vec<(Tag, String)>,
    /// Keys asked for that we do not support (answered with Pending Warning).
    pub unsupported: Vec<Tag>,
}

/// Why an identifier cannot be answered: a failure status with this comment.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BadIdentifier(pub String);

impl Query {
    pub fn parse(obj: &InMemDicomObject) -> Result<Query, BadIdentifier> {
        let level_text = crate::store::attr_text(obj, tags::QUERY_RETRIEVE_LEVEL)
            .ok_or_else(|| BadIdentifier("QueryRetrieveLevel (0008,0052) is missing".into()))?;
        let level = Level::parse(&level_text).ok_or_else(|| {
            BadIdentifier(format!(
                "QueryRetrieveLevel (0008,0052) {level_text:?} is not STUDY, SERIES or IMAGE \
                 (study root)"
            ))
        })?;
        let mut keys = Vec::new();
        let mut unsupported = Vec::new();
        for e in obj.iter() {
            let tag = e.header().tag;
            if tag == tags::QUERY_RETRIEVE_LEVEL
                || tag == tags::SPECIFIC_CHARACTER_SET
                || tag.group() == 0x0002
            {
                continue;
            }
            let Some(k) = key_of(tag) else {
                unsupported.push(tag);
                continue;
            };
            if k.level > level {
                // A key below the query level has no single value per match.
                unsupported.push(tag);
                continue;
            }
            let value = match e.value() {
                dicom_core::DicomValue::Primitive(p) => p
                    .to_multi_str()
                    .join("\\")
                    .trim_end_matches(['\0', ' '])
                    .trim()
                    .to_string(),
                _ => {
                    return Err(BadIdentifier(format!(
                        "{tag} is a sequence; sequence matching is not supported"
                    )))
                }
            };
            check_pattern(k, &value)?;
            keys.push((tag, value));
        }
        Ok(Query {
            level,
            keys,
            unsupported,
        })
    }

    /// The matching value of `tag` when it constrains the query (not universal).
    pub fn constraint(&self, tag: Tag) -> Option<&str> {
        self.keys
            .iter()
            .find(|(t, v)| *t == tag && !v.is_empty() && v != "*")
            .map(|(_, v)| v.as_str())
    }

    /// UID list of a unique key, when given (not universal, no wildcard).
    pub fn uid_list(&self, tag: Tag) -> Option<Vec<String>> {
        self.constraint(tag)
            .filter(|v| !v.contains(['*', '?']))
            .map(|v| v.split('\\').map(|s| s.trim().to_string()).collect())
    }

    /// Whether a study / series / instance satisfies every key of its level or above.
    pub fn matches(&self, r: &Record) -> bool {
        self.keys.iter().all(|(tag, pattern)| {
            let k = key_of(*tag).expect("parsed keys are supported");
            if pattern.is_empty() || k.kind == Kind::ReturnOnly {
                return true;
            }
            match values(*tag, r) {
                Some(vals) => vals.iter().any(|v| match_one(k.kind, pattern, v)),
                // A key of a level this record lacks: not constrained by it.
                None => true,
            }
        })
    }

    /// The response identifier for one match: every requested supported key with
    /// its value, the level, our AE as Retrieve AE Title.
    pub fn response(&self, r: &Record, retrieve_ae: &str) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        let mut non_ascii = false;
        for (tag, _) in &self.keys {
            let k = key_of(*tag).expect("parsed keys are supported");
            let v = values(*tag, r).map(|v| v.join("\\")).unwrap_or_default();
            non_ascii |= !v.is_ascii();
            obj.put(DataElement::new(*tag, k.vr, PrimitiveValue::from(v)));
        }
        obj.put(DataElement::new(
            tags::QUERY_RETRIEVE_LEVEL,
            VR::CS,
            PrimitiveValue::from(self.level.name()),
        ));
        obj.put(DataElement::new(
            tags::RETRIEVE_AE_TITLE,
            VR::AE,
            PrimitiveValue::from(retrieve_ae),
        ));
        if non_ascii {
            // Our index holds decoded text; UTF-8 says so to the peer.
            obj.put(DataElement::new(
                tags::SPECIFIC_CHARACTER_SET,
                VR::CS,
                PrimitiveValue::from("ISO_IR 192"),
            ));
        }
        obj
    }
}

/// What one match is made of: its study, and its series and instance below the
/// study level.
pub struct Record<'a> {
    pub study: &'a StudyRow,
    pub series: Option<&'a SeriesRow>,
    pub instance: Option<&'a InstanceRow>,
}

/// The values of `tag` for a record; None when the record has no such level.
fn values(tag: Tag, r: &Record) -> Option<Vec<String>> {
    let a = &r.study.attrs;
    let one = |s: &str| Some(vec![s.to_string()]);
    let num = |n: Option<i64>| Some(vec![n.map(|n| n.to_string()).unwrap_or_default()]);
    match tag {
        tags::PATIENT_NAME => one(&a.patient_name),
        tags::PATIENT_ID => one(&a.patient_id),
        tags::ISSUER_OF_PATIENT_ID => one(&a.issuer_of_patient_id),
        tags::PATIENT_BIRTH_DATE => one(&a.patient_birth_date),
        tags::PATIENT_SEX => one(&a.patient_sex),
        tags::STUDY_DATE => one(&a.study_date),
        tags::STUDY_TIME => one(&a.study_time),
        tags::ACCESSION_NUMBER => one(&a.accession_number),
        tags::STUDY_ID => one(&a.study_id),
        tags::STUDY_INSTANCE_UID => one(&r.study.study_uid),
        tags::STUDY_DESCRIPTION => one(&a.study_description),
        tags::REFERRING_PHYSICIAN_NAME => one(&a.referring_physician_name),
        tags::MODALITIES_IN_STUDY => Some(r.study.modalities.iter().cloned().collect()),
        tags::SOP_CLASSES_IN_STUDY => Some(r.study.sop_classes.iter().cloned().collect()),
        tags::NUMBER_OF_STUDY_RELATED_SERIES => num(Some(r.study.series_count as i64)),
        tags::NUMBER_OF_STUDY_RELATED_INSTANCES => num(Some(r.study.instance_count as i64)),
        _ => {
            let s = r.series?;
            match tag {
                tags::MODALITY => one(&s.modality),
                tags::SERIES_NUMBER => num(s.series_number),
                tags::SERIES_INSTANCE_UID => one(&s.series_uid),
                tags::SERIES_DESCRIPTION => one(&s.series_description),
                tags::SERIES_DATE => one(&s.series_date),
                tags::SERIES_TIME => one(&s.series_time),
                tags::NUMBER_OF_SERIES_RELATED_INSTANCES => num(Some(s.instance_count as i64)),
                _ => {
                    let i = r.instance?;
                    match tag {
                        tags::SOP_INSTANCE_UID => one(&i.sop_instance_uid),
                        tags::SOP_CLASS_UID => one(&i.sop_class_uid),
                        tags::INSTANCE_NUMBER => num(i.instance_number),
                        tags::CONTENT_DATE => one(&i.content_date),
                        tags::CONTENT_TIME => one(&i.content_time),
                        _ => None,
                    }
                }
            }
        }
    }
}

/// Refuses matching values that cannot mean anything (a bad date, a bad number).
fn check_pattern(k: &Key, v: &str) -> Result<(), BadIdentifier> {
    if v.is_empty() {
        return Ok(());
    }
    let bad = |what: &str| {
        Err(BadIdentifier(format!(
            "{} value {v:?} is not {what}",
            k.tag
        )))
    };
    match k.kind {
        Kind::Date => {
            let ok =
                |d: &str| d.is_empty() || (d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()));
            let (a, b) = v.split_once('-').unwrap_or((v, v));
            if !(ok(a) && ok(b)) || (a.is_empty() && b.is_empty()) {
                return bad("a date YYYYMMDD or a range YYYYMMDD-YYYYMMDD");
            }
        }
        Kind::Time => {
            let ok = |t: &str| {
                t.is_empty()
                    || (t.len() >= 2
                        && t.split('.').next().is_some_and(|h| {
                            h.len() <= 6
                                && h.len() % 2 == 0
                                && h.bytes().all(|b| b.is_ascii_digit())
                        }))
            };
            let (a, b) = v.split_once('-').unwrap_or((v, v));
            if !(ok(a) && ok(b)) || (a.is_empty() && b.is_empty()) {
                return bad("a time HHMMSS or a range HHMMSS-HHMMSS");
            }
        }
        Kind::Number => {
            if v.trim().parse::<i64>().is_err() {
                return bad("an integer");
            }
        }
        Kind::Uid => {
            if !v.contains(['*', '?']) && !v.split('\\').all(|u| crate::store::valid_uid(u.trim()))
            {
                return bad("a UID or a list of UIDs");
            }
        }
        Kind::Text | Kind::Name | Kind::ReturnOnly => {}
    }
    Ok(())
}

fn match_one(kind: Kind, pattern: &str, value: &str) -> bool {
    match kind {
        Kind::ReturnOnly => true,
        Kind::Uid if !pattern.contains(['*', '?']) => {
            pattern.split('\\').any(|u| u.trim() == value)
        }
        Kind::Date => in_range(pattern, value, |s, _| s.to_string()),
        Kind::Time => in_range(pattern, value, pad_time),
        Kind::Number => pattern.trim().parse::<i64>().ok() == value.trim().parse().ok(),
        Kind::Name => wildcard(&pattern.to_uppercase(), &value.to_uppercase()),
        Kind::Text | Kind::Uid => wildcard(pattern, value),
    }
}

/// Range matching (PS3.4 C.2.2.2.5) over values that compare as strings once
/// normalised; a value that is empty never matches a range.
fn in_range(pattern: &str, value: &str, norm: impl Fn(&str, bool) -> String) -> bool {
    if value.is_empty() {
        return false;
    }
    let v = norm(value, false);
    match pattern.split_once('-') {
        None => norm(pattern, false) == v || pattern == value,
        Some((a, b)) => {
            (a.is_empty() || norm(a, false) <= v) && (b.is_empty() || v <= norm(b, true))
        }
    }
}

/// HHMMSS.FFFFFF with the missing parts filled: zeros for a value or a lower
/// bound, nines for an upper bound (so "0930" includes 09:30:59).
fn pad_time(t: &str, upper: bool) -> String {
    let fill = if upper { '9' } else { '0' };
    let (hms, frac) = t.split_once('.').unwrap_or((t, ""));
    let mut s: String = hms.chars().filter(|c| c.is_ascii_digit()).collect();
    while s.len() < 6 {
        s.push(fill);
    }
    s.push('.');
    let mut f: String = frac.chars().filter(|c| c.is_ascii_digit()).collect();
    while f.len() < 6 {
        f.push(fill);
    }
    s + &f
}

/// `*` matches any run of characters, `?` any one character.
pub fn wildcard(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("DOE*", "DOE^JOHN"));
        assert!(wildcard("*JOHN", "DOE^JOHN"));
        assert!(wildcard("D?E*", "DOE^JOHN"));
        assert!(wildcard("*", ""));
        assert!(!wildcard("DOE", "DOE^JOHN"));
        assert!(!wildcard("?", ""));
        assert!(wildcard("a*b*c", "aXXbYYc"));
        assert!(!wildcard("a*b*c", "aXXbYY"));
    }

    #[test]
    fn names_match_without_case() {
        assert!(match_one(Kind::Name, "doe*", "DOE^JOHN"));
        assert!(!match_one(Kind::Text, "doe*", "DOE^JOHN"));
    }

    #[test]
    fn date_and_time_ranges() {
        assert!(match_one(Kind::Date, "20240101-20241231", "20240615"));
        assert!(!match_one(Kind::Date, "20240101-20241231", "20250101"));
        assert!(match_one(Kind::Date, "-20240101", "20231231"));
        assert!(match_one(Kind::Date, "20240101-", "20240101"));
        assert!(match_one(Kind::Date, "20240101", "20240101"));
        assert!(!match_one(Kind::Date, "20240101-", ""));
        assert!(match_one(Kind::Time, "0900-0930", "093015"));
        assert!(!match_one(Kind::Time, "0900-0930", "093100"));
        assert!(match_one(Kind::Time, "1200-", "120000.5"));
    }

    #[test]
    fn uid_lists() {
        assert!(match_one(Kind::Uid, "1.2.3\\1.2.4", "1.2.4"));
        assert!(!match_one(Kind::Uid, "1.2.3\\1.2.4", "1.2.5"));
        assert!(match_one(Kind::Uid, "1.2.*", "1.2.5"));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_key() {
        let date = key_of(tags::STUDY_DATE).unwrap();
        let e = check_pattern(date, "2024-13").unwrap_err();
        assert!(e.0.contains("(0008,0020)"), "{e}");
        assert!(check_pattern(date, "20240101-").is_ok());
        assert!(check_pattern(date, "-").is_err());
        let n = key_of(tags::SERIES_NUMBER).unwrap();
        assert!(check_pattern(n, "x").is_err());
        let u = key_of(tags::STUDY_INSTANCE_UID).unwrap();
        assert!(check_pattern(u, "1.2.3\\../x").is_err());
        let t = key_of(tags::STUDY_TIME).unwrap();
        assert!(check_pattern(t, "0930-1000").is_ok());
        assert!(check_pattern(t, "9:30").is_err());
    }
}
