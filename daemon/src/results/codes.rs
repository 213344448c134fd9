//! The coded concepts our SEG and SR use (DICOM PS3.16, SNOMED CT, NCIt, LOINC,
//! UCUM) and a private scheme for the longitudinal figures TID 1500 has no row for.

use super::{c, Code};

pub const MORPHOLOGICALLY_ABNORMAL: Code =
    c("49755003", "SCT", "Morphologically Abnormal Structure");
pub const BRAIN: Code = c("12738006", "SCT", "Brain");
pub const NEOPLASM: Code = c("108369006", "SCT", "Neoplasm");
pub const LESION: Code = c("52988006", "SCT", "Lesion");
pub const AI: Code = c("123110", "DCM", "Artificial Intelligence");
pub const SEGMENTATION: Code = c("113076", "DCM", "Segmentation");
pub const SOURCE_FOR_PROCESSING: Code = c(
    "121322",
    "DCM",
    "Source image for image processing operation",
);
pub const CM3: Code = c("cm3", "UCUM", "cubic centimeter");
pub const PERCENT: Code = c("%", "UCUM", "percent");
pub const DAYS: Code = c("d", "UCUM", "day");
pub const PER_DAY: Code = c("/d", "UCUM", "per day");
pub const YES: Code = c("373066001", "SCT", "Yes");
pub const NO: Code = c("373067005", "SCT", "No");

/// Our private coding scheme, declared in each SR's Coding Scheme Identification.
pub const PRIVATE_SCHEME: &str = "99SCANSIDE";
pub const VISIT_VOLUME: Code = c("LONG02", PRIVATE_SCHEME, "Volume at visit");
pub const CHANGE_PREVIOUS_ML: Code = c(
    "LONG03",
    PRIVATE_SCHEME,
    "Volume change from previous visit",
);
pub const CHANGE_PREVIOUS_PCT: Code = c(
    "LONG04",
    PRIVATE_SCHEME,
    "Percent volume change from previous visit",
);
pub const NADIR_VOLUME: Code = c("LONG05", PRIVATE_SCHEME, "Nadir volume");
pub const CHANGE_NADIR_PCT: Code = c("LONG06", PRIVATE_SCHEME, "Percent volume change from nadir");
pub const GROWTH_RATE: Code = c("LONG07", PRIVATE_SCHEME, "Specific growth rate");
pub const DOUBLING_TIME: Code = c("LONG08", PRIVATE_SCHEME, "Volume doubling time");
pub const PROGRESSION: Code = c(
    "LONG09",
    PRIVATE_SCHEME,
    "Volumetric progression from nadir",
);
pub const THRESHOLD_PCT: Code = c("LONG10", PRIVATE_SCHEME, "Volumetric progression threshold");

/// Segmented property type and a display colour (CIELab, DICOM-scaled) for a
/// region, by the model's label name. Unknown names are "Lesion".
pub fn region_type(key: &str) -> (Code, [u16; 3]) {
    match key {
        "whole_tumour" => (NEOPLASM, [41_000, 38_000, 46_000]),
        "necrotic_core" => (c("6574001", "SCT", "Necrosis"), [21_000, 34_000, 23_000]),
        "oedema" | "edema" => (c("79654002", "SCT", "Edema"), [55_000, 30_000, 50_000]),
        "enhancing_tumour" | "enhancing_tumor" | "enhancing" => (
            c("C113842", "NCIt", "Enhancing Lesion"),
            [45_000, 55_000, 40_000],
        ),
        "non_enhancing_tumour" | "non_enhancing_tumor" => (
            c("C81175", "NCIt", "Non-Enhancing Lesion"),
            [50_000, 40_000, 30_000],
        ),
        _ => (LESION, [40_000, 32_768, 32_768]),
    }
}

/// The region key whose type code is `code_value`: how a returned SEG's segments
/// are matched to ours.
pub fn region_of_type(code_value: &str, keys: &[String]) -> Option<String> {
    keys.iter()
        .find(|k| region_type(k).0.value == code_value)
        .cloned()
}
