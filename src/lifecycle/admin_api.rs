//! The lifecycle's admin API, on the admin listener and only when `lifecycle.admin_token_file`
//! is set (otherwise its paths answer 404 like any unknown one):
//!
//! `GET /tenants`, `GET /tenants/NAME`, `PUT /tenants/NAME` (create; a JSON body with the
//! tenant table's keys), `POST /tenants/NAME/{suspend,resume,read-only,delete,undelete}`.
//!
//! The data commands run as jobs in the server (`tenant_data::jobs`):
//! `POST /tenants/NAME/{move,export,restore,verify,purge,adopt}` with a JSON body of their arguments
//! (`{"to": "dedicated"}`, `{"dir": "exports/x"}`, `{"moved_from": "main", "expunge": true}`…)
//! answers 202 with the job's id and `Location: /jobs/ID`; `GET /jobs/ID` says how it goes.
//!
//! Every request needs `Authorization: Bearer <admin token>`, compared in constant time (the
//! SHA-256 of both, so not even the length shows); a tenant's token never works here. A change
//! goes through [`change::apply`] like the CLI's, then the configuration is reloaded before
//! the answer, so what the answer says is what the server does when it returns.
use super::change::{self, LifecycleError, Operation};
use crate::config::Tenant;
use crate::live::Live;
use crate::tenant_data::jobs::{self, Ask, JobError};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};
use std::sync::Arc;

/// The largest create body read.
const MAX_BODY: usize = 64 * 1024;

/// Whether `path` is one of this API's.
pub fn owns(path: &str) -> bool {
    path == "/tenants" || path.starts_with("/tenants/") || path.starts_with("/jobs/")
}

/// Answers a request for one of this API's paths ([`owns`]).
pub async fn handle<B>(live: Arc<Live>, req: Request<B>) -> Response<Full<Bytes>>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let snap = live.snapshot();
    let Some(token) = snap.admin_token.clone() else {
        return reply(StatusCode::NOT_FOUND, json!({"error": "not found"}));
    };
    if !authorized(req.headers().get(header::AUTHORIZATION), &token) {
        let mut r = reply(StatusCode::UNAUTHORIZED, json!({"error": "the admin token is required"}));
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let config = live.config_path().to_path_buf();
    let op = match (&method, parts.as_slice()) {
        (&Method::GET, ["tenants"]) => {
            return blocking(move || change::list(&config).map(|v| json!({ "tenants": v }))).await;
        }
        (&Method::GET, ["tenants", name]) => {
            let name = (*name).to_owned();
            return blocking(move || change::show(&config, &name).map(|v| json!(v))).await;
        }
        (&Method::PUT, ["tenants", _]) => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(too_large) => return too_large,
            };
            match serde_json::from_slice::<Tenant>(&body) {
                Ok(t) => Operation::Create(Box::new(t)),
                Err(e) => return reply(StatusCode::BAD_REQUEST, json!({"error": format!("not a tenant table: {e}")})),
            }
        }
        (&Method::GET, ["jobs", id]) => {
            return match jobs::status(id) {
                Some(v) => reply(StatusCode::OK, v),
                None => reply(StatusCode::NOT_FOUND, json!({"error": "no such job"})),
            };
        }
        (&Method::POST, ["tenants", name, op]) if jobs::OPERATIONS.contains(op) => {
            let (name, op) = ((*name).to_owned(), (*op).to_owned());
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(too_large) => return too_large,
            };
            let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
            let ask = match serde_json::from_slice::<Ask>(body) {
                Ok(a) => a,
                Err(e) => {
                    return reply(StatusCode::BAD_REQUEST, json!({"error": format!("not the arguments of {op}: {e}")}))
                }
            };
            return match jobs::start(live, &name, &op, ask) {
                Ok(id) => {
                    let mut r = reply(StatusCode::ACCEPTED, json!({"job": id, "status": format!("/jobs/{id}")}));
                    if let Ok(v) = HeaderValue::from_str(&format!("/jobs/{id}")) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    r
                }
                Err(e @ JobError::Busy(..)) => reply(StatusCode::CONFLICT, json!({"error": e.to_string()})),
                Err(e @ JobError::Bad(_)) => reply(StatusCode::UNPROCESSABLE_ENTITY, json!({"error": e.to_string()})),
                Err(e @ JobError::NoStateDir) => reply(StatusCode::CONFLICT, json!({"error": e.to_string()})),
            };
        }
        (&Method::POST, ["tenants", _, op]) => match Operation::parse(op) {
            Some(op) => op,
            None => return reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
        },
        (_, ["tenants"] | ["tenants", _] | ["tenants", _, _]) => {
            return reply(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "method not allowed"}))
        }
        _ => return reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    };
    let name = parts[1].to_owned();
    let done = match tokio::task::spawn_blocking(move || change::apply(&config, &name, op, "admin-api")).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return refused(&e),
        Err(_) => return reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "the change did not finish"})),
    };
    if done.changed() {
        // Answered once requests under the old configuration have finished too, so a caller
        // that froze a tenant knows no write is still on its way.
        if let Err(e) = live.reload_and_drain("admin api", live.drain_bound()).await {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": format!("the change was written, but the reload failed: {e}"), "change": done}),
            );
        }
    }
    let status = if done.changed() && done.from.is_none() { StatusCode::CREATED } else { StatusCode::OK };
    reply(status, json!(done))
}

/// The request's body, at most `MAX_BODY` bytes (else the 413 answer).
async fn read_body<B>(req: Request<B>) -> Result<Bytes, Response<Full<Bytes>>>
where
    B: http_body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(reply(StatusCode::PAYLOAD_TOO_LARGE, json!({"error": "the body is too large"}))),
    }
}

/// `Authorization: Bearer <token>` with the admin token, compared in constant time.
fn authorized(header: Option<&HeaderValue>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let digest = |s: &str| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    aws_lc_rs::constant_time::verify_slices_are_equal(digest(given).as_ref(), digest(token).as_ref()).is_ok()
}

async fn blocking(f: impl FnOnce() -> Result<Value, LifecycleError> + Send + 'static) -> Response<Full<Bytes>> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => reply(StatusCode::OK, v),
        Ok(Err(e)) => refused(&e),
        Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "the request did not finish"})),
    }
}

fn refused(e: &LifecycleError) -> Response<Full<Bytes>> {
    let status = match e {
        LifecycleError::UnknownTenant(_) => StatusCode::NOT_FOUND,
        LifecycleError::Inline(_)
        | LifecycleError::Exists(_)
        | LifecycleError::Retired { .. }
        | LifecycleError::NotFrom { .. } => StatusCode::CONFLICT,
        LifecycleError::BadName(_) | LifecycleError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        LifecycleError::NotConfigured | LifecycleError::Config(_) | LifecycleError::Io(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    reply(status, json!({"error": e.to_string()}))
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_admin_token_is_let_in() {
        let token = "0123456789abcdef-admin";
        let h = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(authorized(Some(&h("Bearer 0123456789abcdef-admin")), token));
        assert!(!authorized(Some(&h("Bearer 0123456789abcdef-admi")), token));
        assert!(!authorized(Some(&h("bearer0123456789abcdef-admin")), token));
        assert!(!authorized(Some(&h("Basic 0123456789abcdef-admin")), token));
        assert!(!authorized(None, token));
    }
}
