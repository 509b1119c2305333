//! Bounded FHIRPath Patch: the Parameters parser and the FHIRPath subset never panic, and a
//! patch `Patch::apply` accepts never leaves the document past the limit.
#![no_main]
use fhir_fence::fhir::fhirpath_patch::Patch;
use fhir_fence::fhir::patch::size;
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if !body.is_object() {
        return;
    }
    let Ok(patch) = Patch::parse(body) else { return };
    let mut doc = serde_json::json!({"resourceType": "Patient", "id": "p", "meta": {"versionId": "1"},
        "identifier": [{"system": "s", "value": "1"}, {"system": "t", "value": "2"}],
        "name": [{"family": "f", "given": ["a", "b"]}], "multipleBirthInteger": 2,
        "contact": [{"name": {"family": "c"}}], "contained": [{"resourceType": "Organization", "id": "o", "name": "x"}]});
    if patch.apply(&mut doc, LIMIT).is_ok() {
        assert!(size(&doc) <= LIMIT, "patched document of {} bytes", size(&doc));
    }
});
