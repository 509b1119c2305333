//! Building FHIR `OperationOutcome` resources: every refusal fhir-fence makes is one of these.
use serde_json::{json, Value};

/// An OperationOutcome with one issue (`severity` error) of the given FHIR issue-type `code`.
pub fn operation_outcome(code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": code,
            "diagnostics": diagnostics,
        }]
    })
}

/// An informational OperationOutcome (e.g. the body of a successful delete).
pub fn information(diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "information",
            "code": "informational",
            "diagnostics": diagnostics,
        }]
    })
}
