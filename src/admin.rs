//! The admin listener: `/healthz` (the process answers), `/readyz` (every upstream in use
//! answers its CapabilityStatement and supports the tenant search parameter) and `/metrics`
//! (Prometheus text format) and `POST /reload` (reload the configuration now); with
//! `lifecycle.admin_token_file`, the tenant lifecycle API under `/tenants`
//! (`lifecycle::admin_api`). No FHIR data here; the admin listener belongs on a private interface.
use crate::live::Live;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;
use std::sync::Arc;

pub async fn handle<B>(live: Arc<Live>, req: Request<B>) -> Response<Full<Bytes>>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let snap = live.snapshot();
    match req.uri().path() {
        p if crate::lifecycle::admin_api::owns(p) => crate::lifecycle::admin_api::handle(live, req).await,
        "/reload" if req.method() == http::Method::POST => match live.reload("admin endpoint").await {
            Ok(generation) => reply(StatusCode::OK, json!({"status": "reloaded", "generation": generation})),
            Err(e) => reply(StatusCode::UNPROCESSABLE_ENTITY, json!({"status": "refused", "error": e.to_string()})),
        },
        "/reload" => reply(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "POST /reload"})),
        "/healthz" => reply(StatusCode::OK, json!({"status": "ok"})),
        "/readyz" => {
            let mut problems = serde_json::Map::new();
            for name in &snap.upstreams_in_use {
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
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(snap.metrics.render())));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            resp
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
