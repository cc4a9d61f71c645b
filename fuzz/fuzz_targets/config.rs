//! Fuzz target: `sessiongate::fuzzing::config` (see src/fuzzing.rs for the invariant).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sessiongate::fuzzing::config(data));
