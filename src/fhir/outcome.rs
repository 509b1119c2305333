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

/// Code systems whose codes only say what happened to the request (HAPI's storage response
/// codes: `SUCCESSFUL_DELETE`, `SUCCESSFUL_DELETE_ALREADY_DELETED`…): an answer may keep them.
const STATUS_CODE_SYSTEMS: &[&str] = &["https://hapifhir.io/fhir/CodeSystem/hapi-fhir-storage-response-code"];

/// An informational OperationOutcome with fhir-fence's own `diagnostics` and the coded
/// `details` of the upstream's first issue, where every coding is a status code of a known
/// system (an upper-case code; its `display`, the server's fixed words for that code, kept when
/// it is a short line of text). Free text from the upstream (`diagnostics`) is never kept: it can
/// name another tenant's resources.
pub fn information_with_details(diagnostics: &str, upstream: Option<&Value>) -> Value {
    let mut outcome = information(diagnostics);
    let codings = upstream
        .and_then(|o| o.get("issue"))
        .and_then(|i| i.get(0))
        .and_then(|i| i.get("details"))
        .and_then(|d| d.get("coding"))
        .and_then(Value::as_array);
    let kept: Option<Vec<Value>> = codings.filter(|c| !c.is_empty()).and_then(|codings| {
        codings
            .iter()
            .map(|c| {
                let system = c.get("system").and_then(Value::as_str).filter(|s| STATUS_CODE_SYSTEMS.contains(s))?;
                let code = c.get("code").and_then(Value::as_str).filter(|code| {
                    (1..=64).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                })?;
                let mut kept = serde_json::json!({"system": system, "code": code});
                let display = c.get("display").and_then(Value::as_str);
                if let Some(d) = display.filter(|d| d.len() <= 200 && !d.chars().any(char::is_control)) {
                    kept["display"] = d.into();
                }
                Some(kept)
            })
            .collect()
    });
    if let Some(kept) = kept {
        outcome["issue"][0]["details"] = serde_json::json!({"coding": kept});
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_known_status_codes_are_kept_from_an_upstream_outcome() {
        let hapi = "https://hapifhir.io/fhir/CodeSystem/hapi-fhir-storage-response-code";
        let upstream = |codings: Value| {
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational",
                "details": {"coding": codings}, "diagnostics": "Not deleted, resource Patient/b-1 was already deleted."}]})
        };
        let kept = information_with_details(
            "deleted",
            Some(&upstream(json!([{"system": hapi, "code": "SUCCESSFUL_DELETE", "display": "x"}]))),
        );
        assert_eq!(
            kept["issue"][0]["details"],
            json!({"coding": [{"system": hapi, "code": "SUCCESSFUL_DELETE", "display": "x"}]})
        );
        assert_eq!(kept["issue"][0]["diagnostics"], "deleted");
        for codings in [
            json!([{"system": "http://other", "code": "SUCCESSFUL_DELETE"}]),
            json!([{"system": hapi, "code": "Patient/b-1"}]),
            json!([{"system": hapi, "code": "SUCCESSFUL_DELETE"}, {"system": "http://other", "code": "X"}]),
            json!([]),
        ] {
            let out = information_with_details("deleted", Some(&upstream(codings.clone())));
            assert_eq!(out["issue"][0].get("details"), None, "{codings}");
        }
        assert_eq!(information_with_details("deleted", None), information("deleted"));
    }

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
