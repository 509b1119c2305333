//! Read, vread and instance history. The id prefix confines every id to the caller's
//! namespace before the upstream is asked; the answer is still checked on the way out, and
//! "missing", "deleted" and "another tenant's" all end as the same 404.
use super::{respond, Ctx, ScopeError};
use crate::route::{encode_query, Params};
use crate::upstream::Answer;
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

/// What a read-family interaction returns to the pipeline.
pub struct ReadResult {
    pub body: Value,
    /// The body already serialised (a search Bundle checked by `fastbundle`); `body` is then `Null`.
    pub serialized: Option<bytes::Bytes>,
    /// Upstream `ETag` / `Last-Modified`, which describe the caller's own version.
    pub headers: HeaderMap,
    pub dropped: usize,
}

fn not_found(rtype: &str, id: &str) -> ScopeError {
    ScopeError::NotFound(format!("{rtype}/{id}"))
}

/// `GET [type]/[id]` and `GET [type]/[id]/_history/[vid]`.
pub async fn read(
    ctx: &Ctx<'_>,
    rtype: &str,
    id: &str,
    version: Option<&str>,
) -> Result<ReadResult, crate::error::Error> {
    let upstream_id = ctx.tenant.upstream_id(id).map_err(|_| not_found(rtype, id))?;
    let path = match version {
        Some(v) => format!("{rtype}/{upstream_id}/_history/{v}"),
        None => format!("{rtype}/{upstream_id}"),
    };
    let answer = ctx.upstream.send(Method::GET, &path, base_headers(ctx), None).await?;
    match answer.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND | StatusCode::GONE => return Err(not_found(rtype, id).into()),
        _ => return Err(super::refused(&answer).into()),
    }
    let headers = version_headers(&answer);
    let body = answer.body.ok_or(ScopeError::Unprovable)?;
    if body.get("resourceType").and_then(Value::as_str) != Some(rtype) {
        return Err(ScopeError::Unprovable.into());
    }
    // A resource we cannot prove is the caller's is treated as absent (and logged as blocked).
    let body = respond::resource(ctx, body).map_err(|_| {
        tracing::warn!(correlation = ctx.correlation, tenant = %ctx.tenant.name, "blocked a read answer without the caller's markers");
        not_found(rtype, id)
    })?;
    Ok(ReadResult { body, serialized: None, headers, dropped: 0 })
}

/// `GET [type]/[id]/_history` with `_count`, `_since`, `_at` (checked by `route`).
pub async fn history(
    ctx: &Ctx<'_>,
    rtype: &str,
    id: &str,
    params: &Params,
    self_url: &str,
) -> Result<ReadResult, crate::error::Error> {
    let upstream_id = ctx.tenant.upstream_id(id).map_err(|_| not_found(rtype, id))?;
    let kept: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "_pretty").cloned().collect();
    let mut path = format!("{rtype}/{upstream_id}/_history");
    if !kept.is_empty() {
        path = format!("{path}?{}", encode_query(&kept));
    }
    let answer = ctx.upstream.send(Method::GET, &path, base_headers(ctx), None).await?;
    match answer.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND | StatusCode::GONE => return Err(not_found(rtype, id).into()),
        _ => return Err(super::refused(&answer).into()),
    }
    let filtered = respond::bundle(ctx, answer.body.ok_or(ScopeError::Unprovable)?, self_url, false)?;
    Ok(ReadResult { body: filtered.bundle, serialized: None, headers: HeaderMap::new(), dropped: filtered.dropped })
}

/// Headers every upstream request carries: the correlation id.
pub fn base_headers(ctx: &Ctx) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = ctx.correlation.parse() {
        h.insert("x-request-id", v);
    }
    h
}

/// Headers for every upstream search-like request: the correlation id and `Prefer:
/// handling=strict`, so the upstream refuses a parameter it would otherwise silently ignore.
pub fn strict_headers(ctx: &Ctx) -> HeaderMap {
    let mut h = base_headers(ctx);
    h.insert("prefer", http::HeaderValue::from_static("handling=strict"));
    h
}

/// `ETag` and `Last-Modified` from an upstream answer.
pub fn version_headers(answer: &Answer) -> HeaderMap {
    let mut h = HeaderMap::new();
    for name in [http::header::ETAG, http::header::LAST_MODIFIED] {
        if let Some(v) = answer.headers.get(&name) {
            h.insert(name, v.clone());
        }
    }
    h
}
