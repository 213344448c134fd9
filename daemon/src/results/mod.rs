//! Objects the box produces for radiology. So far: the "not processed" notice for
//! a refused series. SEG, TID 1500 SR and the trend picture come with the results issue.

pub mod notice;
