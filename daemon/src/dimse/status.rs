//! DIMSE status codes used by scanside (PS3.4 Annex B, PS3.7 Annex C).
//! docs/CONFORMANCE.md lists when each is sent.

pub const SUCCESS: u16 = 0x0000;
/// C-STORE: refused, out of resources (disk below [storage].min_free_bytes).
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// C-STORE: data set does not match SOP class.
pub const DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
/// C-STORE: cannot understand (the data set does not parse).
pub const CANNOT_UNDERSTAND: u16 = 0xC000;
/// C-STORE: cannot understand, identifying UIDs are invalid or disagree with the command.
pub const UID_MISMATCH: u16 = 0xC001;
/// C-STORE: processing failure on our side (write failed); nothing was stored.
pub const PROCESSING_FAILURE: u16 = 0x0110;
/// No such SOP class (the command names a class not negotiated on this context).
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Unrecognized operation.
pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
/// Duplicate SOP instance stored earlier: reported as success (PS3.4 B.2.3 allows a
/// warning; DCMTK and most scanners treat warnings as errors, so we answer 0000).
pub const DUPLICATE_AS_SUCCESS: u16 = SUCCESS;
