#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| scanside::fuzz_targets::config(data));
