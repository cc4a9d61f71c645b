//! Fuzz target: `sessiongate::fuzzing::cookie` (see src/fuzzing.rs for the invariant).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessiongate::fuzzing::cookie(data));
