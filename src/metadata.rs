//! `GET metadata`: the upstream's CapabilityStatement, trimmed to what fhir-fence lets through.
//! Public (clients discover the server before they log in) and served from the statement read
//! at start-up, so it costs no upstream call.
use crate::answer::checked_response;
use crate::error::Error;
use crate::outbound::Checked;
use crate::scope::ScopeError;
use crate::state::Snapshot;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

/// `GET metadata`: the upstream's CapabilityStatement, reduced to what fhir-fence lets through.
pub(crate) async fn metadata(snap: &Snapshot) -> Result<Response<Full<Bytes>>, Error> {
    let first = snap.loaded.config.upstreams.keys().next().cloned().unwrap_or_default();
    let caps = snap.capabilities(&first).await.ok_or(ScopeError::CapabilitiesUnavailable)?;
    let mut cs = caps.statement.clone();
    const OFFERED: &[&str] =
        &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];
    const OFFERED_SYSTEM: &[&str] = &["history-system", "search-system"];
    if let Some(Value::Object(imp)) = cs.get_mut("implementation") {
        imp.insert("url".into(), Value::String(snap.public_base.clone()));
        imp.insert("description".into(), Value::String("FHIR server behind fhir-fence (tenant-isolated)".into()));
    }
    for rest in cs.get_mut("rest").and_then(Value::as_array_mut).into_iter().flatten() {
        let Some(rest) = rest.as_object_mut() else { continue };
        rest.remove("operation");
        if let Some(Value::Array(i)) = rest.get_mut("interaction") {
            i.retain(|x| x.get("code").and_then(Value::as_str).is_some_and(|c| OFFERED_SYSTEM.contains(&c)));
        }
        for res in rest.get_mut("resource").and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(res) = res.as_object_mut() else { continue };
            res.remove("operation");
            res.remove("searchInclude");
            res.remove("searchRevInclude");
            res.remove("conditionalCreate");
            res.remove("conditionalUpdate");
            res.remove("conditionalDelete");
            if let Some(Value::Array(i)) = res.get_mut("interaction") {
                i.retain(|x| x.get("code").and_then(Value::as_str).is_some_and(|c| OFFERED.contains(&c)));
            }
        }
    }
    Ok(checked_response(StatusCode::OK, Checked::authored(cs), HeaderMap::new(), ""))
}
