//! Bounded JSON Patch: never panics, never lets the document grow past the limit.
#![no_main]
use fhir_fence::fhir::patch::{apply, size};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(ops) = serde_json::from_slice::<json_patch::Patch>(data) else { return };
    let mut doc = serde_json::json!({"resourceType": "Patient", "id": "p", "name": [{"given": ["a", "b"]}], "meta": {}});
    if apply(&mut doc, &ops, LIMIT).is_ok() {
        assert!(size(&doc) <= LIMIT, "patched document of {} bytes", size(&doc));
    }
});
