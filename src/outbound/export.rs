//! The export file lines that are not the tenant's resources: the error file's
//! OperationOutcomes (only their severity and code leave; the upstream's words reach the log)
//! and the deleted file's Bundles (only entries in the caller's id namespace, as local ids).
//! Resource lines pass `resource` or the one-pass [`ExportLines`](super::ExportLines).
use super::Checked;
use crate::fhir::reference;
use crate::tenancy::Tenant;
use serde_json::{json, Value};

/// An error line as the client sees it: severity and code kept, diagnostics withheld.
pub fn error_line(v: &Value, correlation: &str) -> Checked {
    tracing::warn!(correlation, upstream_error = %v, "export error file line (withheld from the client)");
    let issue = v.get("issue").and_then(Value::as_array).and_then(|i| i.first());
    let token = |k: &str, default: &str| -> String {
        issue
            .and_then(|i| i.get(k))
            .and_then(Value::as_str)
            .filter(|s| s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
            .unwrap_or(default)
            .to_owned()
    };
    Checked::tree(json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": token("severity", "error"),
        "code": token("code", "exception"),
        "diagnostics": format!("the upstream reported an export error; details are withheld, correlation id {correlation}")
    }]}))
}

/// A deleted-files Bundle: only entries whose `request.url` is in the caller's namespace, as local ids.
pub fn deleted_line(tenant: &Tenant, v: Value) -> Option<Checked> {
    let entries = v.get("entry")?.as_array()?;
    let mut kept = Vec::new();
    for e in entries {
        let url = e.pointer("/request/url").and_then(Value::as_str)?;
        let method = e.pointer("/request/method").and_then(Value::as_str)?;
        let Some(l) = reference::literal(url) else { continue };
        if let Some(local) = tenant.local_id(l.id) {
            kept.push(json!({"request": {"method": method, "url": l.with_id(local)}}));
        }
    }
    (!kept.is_empty()).then(|| Checked::tree(json!({"resourceType": "Bundle", "type": "transaction", "entry": kept})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::Tenant;
    use serde_json::json;

    #[test]
    fn deleted_entries_only_in_namespace() {
        let t = Tenant::for_tests("acme", "acme");
        let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": "Patient/acme-1"}},
            {"request": {"method": "DELETE", "url": "Patient/glx-2"}}]});
        let kept = deleted_line(&t, b).unwrap().into_tree();
        assert_eq!(kept["entry"], json!([{"request": {"method": "DELETE", "url": "Patient/1"}}]));
        let foreign =
            json!({"resourceType": "Bundle", "entry": [{"request": {"method": "DELETE", "url": "Patient/glx-2"}}]});
        assert!(deleted_line(&t, foreign).is_none());
    }

    #[test]
    fn error_lines_are_sanitised() {
        let v = json!({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "processing", "diagnostics": "Patient/glx-2 failed"}]});
        let s = error_line(&v, "c1").into_tree().to_string();
        assert!(!s.contains("glx") && s.contains("processing") && s.contains("c1"));
    }
}
