//! Recorded traffic (the NDJSON traffic format) and HAR import: never panic.
#![no_main]
use fhir_fence::replay::{format, har};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = format::read(data);
    let _ = har::import(data, "http://127.0.0.1:8080/fhir");
});
