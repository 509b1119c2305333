//! Strict JSON: never panics; whatever it accepts has no duplicate key at any depth and
//! serde_json (last one wins) reads the same value.
#![no_main]
use fhir_fence::fhir::json::parse_strict;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = parse_strict(data) {
        let lenient: serde_json::Value = serde_json::from_slice(data).expect("strict accepted what serde_json refuses");
        assert_eq!(v, lenient, "strict and lenient parses differ");
    }
});
