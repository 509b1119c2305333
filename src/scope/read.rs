//! Read, vread and instance history. The id prefix confines every id to the caller's
//! namespace before the upstream is asked; the answer is still checked on the way out, and
//! "missing", "deleted" and "another tenant's" all end as the same 404.
use super::paging::Counted;
use super::{Ctx, ScopeError};
use crate::headers::{base_headers, version_headers};
use crate::outbound::{self, Checked};
use crate::route::{encode_query, Params};
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

/// What a read-family interaction returns to the pipeline.
pub struct ReadResult {
    /// In the client's view: a tree, or serialised by a one-pass check (`read_for_client`,
    /// searches through `outbound::fastbundle`).
    pub body: Checked,
    /// Upstream `ETag` / `Last-Modified`, which describe the caller's own version.
    pub headers: HeaderMap,
    pub dropped: usize,
}

fn not_found(rtype: &str, id: &str) -> ScopeError {
    ScopeError::NotFound(format!("{rtype}/{id}"))
}

/// `GET [type]/[id]` and `GET [type]/[id]/_history/[vid]`, as a tree (for fhir-fence's own use).
pub async fn read(ctx: &Ctx<'_>, rtype: &str, id: &str, version: Option<&str>) -> Result<ReadResult, ScopeError> {
    fetch(ctx, rtype, id, version, Form::Tree).await
}

/// The same read answered to the client: serialised by the one-pass check
/// ([`fast_line`](crate::outbound::fast_line)) when it is sure, else through the tree.
pub async fn read_for_client(
    ctx: &Ctx<'_>,
    rtype: &str,
    id: &str,
    version: Option<&str>,
) -> Result<ReadResult, ScopeError> {
    fetch(ctx, rtype, id, version, Form::OnePass).await
}

/// The form a read's body takes: the tree (fhir-fence's own reads look inside it), or the
/// bytes of the one-pass check when it is sure (the client's reads; else the tree).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Tree,
    OnePass,
}

async fn fetch(
    ctx: &Ctx<'_>,
    rtype: &str,
    id: &str,
    version: Option<&str>,
    form: Form,
) -> Result<ReadResult, ScopeError> {
    let upstream_id = ctx.tenant.upstream_id(id).map_err(|_| not_found(rtype, id))?;
    let path = match version {
        Some(v) => format!("{rtype}/{upstream_id}/_history/{v}"),
        None => [rtype, "/", &upstream_id].concat(),
    };
    let raw = ctx.upstream.get_raw(&path, base_headers(ctx.correlation)).await?;
    // A Binary may be answered as its own content (`answer::read_response` needs the tree).
    if form == Form::OnePass && raw.status == StatusCode::OK && rtype != "Binary" {
        if let Some(body) = outbound::resource_bytes(ctx, rtype, &raw.bytes) {
            return Ok(ReadResult { body, headers: version_headers(&raw.headers), dropped: 0 });
        }
    }
    let answer = ctx.upstream.parse(raw)?;
    match answer.status {
        StatusCode::OK => {}
        // The client's read of its own deleted resource is 410, as the server says (an id in
        // its namespace is no other tenant's); fhir-fence's own reads treat it as absent.
        StatusCode::GONE if form == Form::OnePass => return Err(ScopeError::Gone(format!("{rtype}/{id}"))),
        StatusCode::NOT_FOUND | StatusCode::GONE => return Err(not_found(rtype, id)),
        _ => return Err(super::refused(&answer)),
    }
    let headers = version_headers(&answer.headers);
    let body = answer.body.ok_or(ScopeError::Unprovable)?;
    if body.get("resourceType").and_then(Value::as_str) != Some(rtype) {
        return Err(ScopeError::Unprovable);
    }
    // A resource we cannot prove is the caller's is treated as absent (and logged as blocked).
    let body = outbound::resource(ctx, body).map_err(|_| {
        tracing::warn!(correlation = ctx.correlation, tenant = %ctx.tenant.name, "blocked a read answer without the caller's markers");
        not_found(rtype, id)
    })?;
    Ok(ReadResult { body, headers, dropped: 0 })
}

/// `GET [type]/[id]/_history` with `_count`, `_since`, `_at` (checked by `route`).
pub async fn history(
    ctx: &Ctx<'_>,
    rtype: &str,
    id: &str,
    params: &Params,
    self_url: &str,
) -> Result<ReadResult, ScopeError> {
    let upstream_id = ctx.tenant.upstream_id(id).map_err(|_| not_found(rtype, id))?;
    let kept: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "_pretty").cloned().collect();
    let mut path = format!("{rtype}/{upstream_id}/_history");
    if !kept.is_empty() {
        path = format!("{path}?{}", encode_query(&kept));
    }
    let answer = ctx.upstream.send(Method::GET, &path, base_headers(ctx.correlation), None).await?;
    match answer.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND | StatusCode::GONE => return Err(not_found(rtype, id)),
        _ => return Err(super::refused(&answer)),
    }
    let filtered = outbound::bundle(ctx, answer.body.ok_or(ScopeError::Unprovable)?, self_url, Counted::Tenant, &path)?;
    Ok(ReadResult { body: filtered.bundle, headers: HeaderMap::new(), dropped: filtered.dropped })
}
