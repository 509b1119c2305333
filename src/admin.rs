//! The admin listener: `/healthz` (the process answers) and `/readyz` (every upstream in use
//! answers its CapabilityStatement and supports the tenant search parameter). No FHIR data here.
use crate::state::Snapshot;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;

pub async fn handle<B>(snap: Arc<Snapshot>, req: Request<B>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, json!({"status": "ok"})),
        "/readyz" => {
            let used: BTreeSet<&String> = snap.tenants.values().map(|t| &t.upstream).collect();
            let mut problems = serde_json::Map::new();
            for name in used {
                match snap.fetch_capabilities(name).await {
                    Ok(caps) => {
                        if let Some(slot) = snap.capabilities.get(name.as_str()) {
                            slot.store(Some(Arc::new(caps)));
                        }
                    }
                    Err(e) => {
                        problems.insert(name.clone(), e.into());
                    }
                }
            }
            if problems.is_empty() {
                reply(StatusCode::OK, json!({"status": "ready"}))
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "not ready", "upstreams": problems}))
            }
        }
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
