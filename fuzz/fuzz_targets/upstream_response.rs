#![no_main]
// See fuzz/README.md; the property checks live in src/fuzzing.rs.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fulcrum::fuzzing::upstream_response(data));
