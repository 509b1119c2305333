//! `POST [base]` with a Bundle. Transactions go to `scope::transaction` (every entry scoped,
//! one atomic upstream transaction); each batch entry is routed and run through
//! [`pipeline::dispatch`](crate::pipeline) exactly like a single request.
use crate::error::Error;
use crate::identity::Caller;
use crate::pipeline::dispatch;
use crate::route::{self, Interaction};
use crate::scope::{Ctx, ScopeError};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use serde_json::Value;

/// `POST [base]` with a Bundle: transactions go to `scope::transaction` (one atomic upstream
/// transaction); each batch entry runs through [`dispatch`] exactly like a single request.
pub(crate) async fn bundle(ctx: &Ctx<'_>, caller: &Caller, body: Value) -> Result<Value, Error> {
    let kind = body.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    if body.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ScopeError::Body("POST to the base takes a transaction or batch Bundle".into()).into());
    }
    let entries = match body.get("entry") {
        None => vec![],
        Some(Value::Array(e)) => e.clone(),
        Some(_) => return Err(ScopeError::Body("Bundle.entry must be a list".into()).into()),
    };
    let max = ctx.snap.loaded.config.server.max_bundle_entries;
    if entries.len() > max {
        return Err(ScopeError::Body(format!("at most {max} entries per Bundle")).into());
    }
    let caps = ctx.snap.capabilities(&caller.tenant.upstream).await.ok_or(ScopeError::CapabilitiesUnavailable)?;
    match kind.as_str() {
        "transaction" => crate::scope::transaction::run(ctx, &caps, entries).await,
        "batch" => {
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                out.push(batch_entry(ctx, caller, entry).await);
            }
            Ok(serde_json::json!({"resourceType": "Bundle", "id": uuid::Uuid::new_v4().to_string(),
                "type": "batch-response", "entry": out}))
        }
        other => {
            Err(ScopeError::Body(format!("Bundle.type {other:?} cannot be posted; use transaction or batch")).into())
        }
    }
}

/// One batch entry as a request of its own: routed, scoped and checked like any other; its
/// answer (or its OperationOutcome) becomes the entry's response.
async fn batch_entry(ctx: &Ctx<'_>, caller: &Caller, entry: Value) -> Value {
    let result = async {
        let request =
            entry.get("request").ok_or_else(|| Error::from(ScopeError::Body("entry without request".into())))?;
        let method: Method = request
            .get("method")
            .and_then(Value::as_str)
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| Error::from(ScopeError::Body("entry without a valid request.method".into())))?;
        let url = request.get("url").and_then(Value::as_str).unwrap_or_default();
        let url = url.strip_prefix(&format!("{}/", ctx.snap.public_base)).unwrap_or(url);
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (format!("{}/{p}", ctx.snap.base_path), Some(q)),
            None => (format!("{}/{url}", ctx.snap.base_path), None),
        };
        let params = route::parse_query(query)?;
        let interaction = route::classify(&method, &ctx.snap.base_path, &path, &params)?;
        if matches!(interaction, Interaction::Bundle | Interaction::Page { .. } | Interaction::Metadata) {
            return Err(ScopeError::Body("this request cannot be a batch entry".into()).into());
        }
        let mut headers = HeaderMap::new();
        for (field, name) in [
            ("ifMatch", header::IF_MATCH),
            ("ifNoneMatch", header::IF_NONE_MATCH),
            ("ifModifiedSince", header::IF_MODIFIED_SINCE),
            ("ifNoneExist", header::HeaderName::from_static("if-none-exist")),
        ] {
            if let Some(v) = request.get(field).and_then(Value::as_str).and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        }
        let self_url = format!("{}/{url}", ctx.snap.public_base);
        let body = entry.get("resource").cloned();
        Box::pin(dispatch(ctx, caller, interaction, &params, body, &headers, &self_url)).await
    }
    .await;
    let response = match result {
        Ok((r, _)) => r,
        Err(e) => e.into_response(ctx.correlation),
    };
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut resp = serde_json::Map::new();
    let reason = parts.status.canonical_reason().unwrap_or("");
    resp.insert("status".into(), format!("{} {reason}", parts.status.as_u16()).trim().to_owned().into());
    for (name, field) in [(header::LOCATION, "location"), (header::ETAG, "etag")] {
        if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            resp.insert(field.into(), v.into());
        }
    }
    let mut out = serde_json::Map::new();
    if parts.status.is_success() && !value.is_null() {
        out.insert("resource".into(), value);
    } else if !value.is_null() {
        resp.insert("outcome".into(), value);
    }
    out.insert("response".into(), Value::Object(resp));
    Value::Object(out)
}
