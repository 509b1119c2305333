//! Building FHIR `OperationOutcome` resources: every refusal fhir-fence makes is one of these.
use serde::Serialize;
use serde_json::Value;

/// An OperationOutcome with one issue, typed so that a refusal serialises it straight to bytes
/// (a flood of refusals pays for no JSON tree).
#[derive(Serialize)]
pub struct OperationOutcome<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    issue: [Issue<'a>; 1],
}

#[derive(Serialize)]
struct Issue<'a> {
    severity: &'static str,
    code: &'a str,
    diagnostics: &'a str,
}

impl<'a> OperationOutcome<'a> {
    fn one(severity: &'static str, code: &'a str, diagnostics: &'a str) -> Self {
        OperationOutcome { resource_type: "OperationOutcome", issue: [Issue { severity, code, diagnostics }] }
    }
}

/// An OperationOutcome with one issue (`severity` error) of the given FHIR issue-type `code`.
pub fn operation_outcome<'a>(code: &'a str, diagnostics: &'a str) -> OperationOutcome<'a> {
    OperationOutcome::one("error", code, diagnostics)
}

/// An informational OperationOutcome (e.g. the body of a successful delete).
pub fn information(diagnostics: &str) -> Value {
    serde_json::to_value(OperationOutcome::one("information", "informational", diagnostics)).expect("serialisable")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes() {
        assert_eq!(
            serde_json::to_value(operation_outcome("forbidden", "no")).unwrap(),
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden", "diagnostics": "no"}]})
        );
        assert_eq!(
            information("done"),
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational", "diagnostics": "done"}]})
        );
    }
}
