//! Conditional interactions: `If-None-Exist` create, conditional update / patch / delete
//! (`[type]?criteria`), and conditional reads (`If-None-Match`, `If-Modified-Since`).
//!
//! Criteria are scoped exactly like a search (tenant parameter added, ids prefixed) before the
//! upstream sees them, so a condition can only ever match the caller's own resources; fhir-fence
//! then acts on the match by id. Resolution searches bypass the upstream's search cache
//! (`Cache-Control: no-cache`) so a resource created a moment ago is seen.
//! Limit: resolution and write are two upstream calls, so two concurrent conditional creates
//! with the same criteria may both create (the upstream's own conditional create is atomic,
//! but it would assign an id outside the tenant namespace).
use super::params::{conditional_criteria, scope_params};
use super::read::ReadResult;
use super::search::matching;
use super::write::{self, WriteResult};
use super::{Ctx, ScopeError};
use crate::fhir::capabilities::Capabilities;
use crate::outbound::Checked;
use crate::route::{encode_query, parse_query, Params};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;

/// `POST [type]` with `If-None-Exist`: 0 matches → create; 1 → that resource (200); more → 412.
pub async fn create(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    criteria: &str,
    body: Value,
) -> Result<WriteResult, ScopeError> {
    match if_none_exist(ctx, caps, rtype, criteria).await? {
        None => write::create_or_update(ctx, caps, rtype, None, body, None).await,
        Some(existing) => Ok(WriteResult {
            status: StatusCode::OK,
            local_id: id_of(&existing),
            version: existing.pointer("/meta/versionId").and_then(Value::as_str).map(str::to_owned),
            body: Some(existing),
            headers: HeaderMap::new(),
        }),
    }
}

/// What `If-None-Exist` criteria (a single create's header, a transaction entry's field) find
/// among the caller's resources: nothing (create), the one resource (answer it), or more
/// (refused).
pub async fn if_none_exist(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    criteria: &str,
) -> Result<Option<Checked>, ScopeError> {
    let criteria = criteria_params(rtype, criteria)?;
    the_one_match(ctx, caps, rtype, &criteria).await
}

/// What criteria select among the caller's resources, for an interaction that acts on one
/// resource: nothing (`None`: each caller says what none means), the one match, or several,
/// refused alike for every interaction (412, as HAPI answers).
async fn the_one_match(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    criteria: &Params,
) -> Result<Option<Checked>, ScopeError> {
    let mut found = matching(ctx, caps, rtype, criteria).await?;
    if found.len() > 1 {
        return Err(ScopeError::MultipleMatches);
    }
    Ok(found.pop())
}

/// `PUT [type]?criteria`: 0 matches → create (with the body's id, if any); 1 → update it; more → 412.
pub async fn update(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    criteria: &Params,
    body: Value,
    if_match: Option<&HeaderValue>,
) -> Result<WriteResult, ScopeError> {
    let (id, body) = resolve_update(ctx, caps, rtype, criteria, body).await?;
    write::create_or_update(ctx, caps, rtype, id.as_deref(), body, if_match).await
}

/// A conditional update's target (alone or in a transaction): the id it writes to (`None`: a
/// new one is chosen), and the body carrying that id.
pub async fn resolve_update(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    criteria: &Params,
    mut body: Value,
) -> Result<(Option<String>, Value), ScopeError> {
    conditional_criteria(criteria, "update")?;
    let id = update_target(the_one_match(ctx, caps, rtype, criteria).await?.as_ref(), &body)?;
    if let (Some(id), Some(o)) = (&id, body.as_object_mut()) {
        o.insert("id".into(), Value::String(id.clone()));
    }
    Ok((id, body))
}

/// The id a conditional update (`PUT [type]?criteria`, alone or in a transaction) writes to,
/// from the one resource the criteria `found`: its id (a body `id` that differs is an error,
/// as FHIR says), or with no match the body's own `id` (`None`: the body has none, a new one is
/// chosen).
fn update_target(found: Option<&Checked>, body: &Value) -> Result<Option<String>, ScopeError> {
    let body_id = body.get("id").and_then(Value::as_str);
    let Some(existing) = found else {
        return Ok(body_id.map(str::to_owned));
    };
    let id = id_of(existing);
    if body_id.is_some_and(|b| b != id) {
        return Err(ScopeError::Body("the id in the body differs from the resource the criteria match".into()));
    }
    Ok(Some(id))
}

/// `PATCH [type]?criteria`: exactly one match is patched; none → 404; more → 412.
pub async fn patch(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    criteria: &Params,
    patch: Value,
    if_match: Option<&HeaderValue>,
) -> Result<WriteResult, ScopeError> {
    let id = patch_target(ctx, caps, rtype, criteria).await?;
    write::patch(ctx, caps, rtype, &id, patch, if_match).await
}

/// The one resource of the caller's that a conditional patch's criteria match (its local id):
/// none → 404; more → 412.
pub async fn patch_target(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    criteria: &Params,
) -> Result<String, ScopeError> {
    conditional_criteria(criteria, "patch")?;
    match the_one_match(ctx, caps, rtype, criteria).await? {
        Some(existing) => Ok(id_of(&existing)),
        None => Err(ScopeError::NotFound(format!("{rtype}?{}", encode_query(criteria)))),
    }
}

/// `DELETE [type]?criteria`: forwarded with the criteria scoped, so the upstream's own (atomic)
/// conditional delete can only see the caller's resources. Several matches → 412 from the upstream.
pub async fn delete(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    criteria: &Params,
) -> Result<StatusCode, ScopeError> {
    conditional_criteria(criteria, "delete")?;
    let scoped = scope_params(ctx, caps, &[rtype.to_owned()], criteria)?;
    let headers = crate::headers::strict_headers(ctx.correlation);
    let answer =
        ctx.upstream.send(Method::DELETE, &format!("{rtype}?{}", encode_query(&scoped)), headers, None).await?;
    match answer.status {
        StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::ACCEPTED => {
            ctx.snap.ref_cache.invalidate_all();
            Ok(StatusCode::OK)
        }
        StatusCode::PRECONDITION_FAILED => Err(ScopeError::MultipleMatches),
        StatusCode::NOT_FOUND => Ok(StatusCode::OK),
        _ => Err(super::refused(&answer)),
    }
}

/// The (local) id of a matched resource.
pub fn id_of(resource: &Checked) -> String {
    resource.get("id").and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// The conditional references (`Type?criteria`) in a transaction entry's `body`, resolved here
/// rather than by the upstream: each distinct one is searched among the caller's resources
/// (scoped like any criteria) and replaced by the literal reference of its one match; none → 404,
/// several → 412, as HAPI answers. The upstream then sees only literal references, checked like
/// any other — not every server resolves conditional references (Medplum's router stores the
/// criteria as the reference). Limit: as with `ifNoneExist`, resolution and write are two
/// upstream calls, and a reference cannot name a resource the same transaction creates (use its
/// `fullUrl`).
pub async fn resolve_references(ctx: &Ctx<'_>, caps: &Capabilities, body: &mut Value) -> Result<(), ScopeError> {
    use crate::fhir::reference::{self, Target};
    let mut wanted: Vec<String> = Vec::new();
    reference::for_each_mut(body, &mut |r: &mut String| {
        if reference::parse(r) == Target::Conditional {
            wanted.push(r.clone());
        }
        Ok::<_, ScopeError>(())
    })?;
    wanted.sort();
    wanted.dedup();
    let mut resolved = std::collections::HashMap::new();
    for r in wanted {
        let form = |why| ScopeError::ReferenceForm(r.clone(), why);
        let (rtype, query) = r.split_once('?').ok_or_else(|| form("not a conditional reference"))?;
        let criteria = parse_query(Some(query)).map_err(|_| form("malformed criteria"))?;
        conditional_criteria(&criteria, "reference")
            .map_err(|_| form("conditional references need criteria that select resources"))?;
        let literal = match the_one_match(ctx, caps, rtype, &criteria).await? {
            Some(only) => format!("{rtype}/{}", id_of(&only)),
            None => return Err(ScopeError::NotFound(r)),
        };
        resolved.insert(r, literal);
    }
    reference::for_each_mut(body, &mut |r: &mut String| {
        if let Some(literal) = resolved.get(r.as_str()) {
            *r = literal.clone();
        }
        Ok::<_, ScopeError>(())
    })
}

/// The criteria of `If-None-Exist` (`a=b&c=d`, optionally as `?a=b` or `Type?a=b`).
fn criteria_params(rtype: &str, header: &str) -> Result<Params, ScopeError> {
    let q = header.strip_prefix(rtype).unwrap_or(header);
    let q = q.strip_prefix('?').unwrap_or(q);
    let params = parse_query(Some(q)).map_err(|e| ScopeError::Param(format!("If-None-Exist: {e}")))?;
    conditional_criteria(&params, "create (If-None-Exist)")?;
    Ok(params)
}

/// Answers a conditional read with 304 when the caller's own resource is unchanged. Runs only
/// after ownership is proven, so it says nothing about resources of other tenants.
pub fn not_modified(request: &HeaderMap, result: &ReadResult) -> bool {
    let etag = result.headers.get(http::header::ETAG).and_then(|v| v.to_str().ok());
    if let (Some(inm), Some(etag)) = (request.get(http::header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()), etag) {
        let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        return inm.split(',').any(|t| t.trim() == "*" || strip(t) == strip(etag));
    }
    let Some(since) = request
        .get(http::header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    let modified = result
        .headers
        .get(http::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    modified.is_some_and(|m| m <= since)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(etag: &str, modified: &str) -> ReadResult {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ETAG, etag.parse().unwrap());
        headers.insert(http::header::LAST_MODIFIED, modified.parse().unwrap());
        ReadResult { body: Checked::authored(Value::Null), headers, dropped: 0 }
    }

    #[test]
    fn conditional_reads() {
        let r = result("W/\"2\"", "Thu, 26 Nov 2026 10:00:00 GMT");
        let mut h = HeaderMap::new();
        h.insert(http::header::IF_NONE_MATCH, "W/\"2\"".parse().unwrap());
        assert!(not_modified(&h, &r));
        h.insert(http::header::IF_NONE_MATCH, "W/\"1\"".parse().unwrap());
        assert!(!not_modified(&h, &r));
        let mut h = HeaderMap::new();
        h.insert(http::header::IF_MODIFIED_SINCE, "Thu, 26 Nov 2026 11:00:00 GMT".parse().unwrap());
        assert!(not_modified(&h, &r));
        h.insert(http::header::IF_MODIFIED_SINCE, "Thu, 26 Nov 2026 09:00:00 GMT".parse().unwrap());
        assert!(!not_modified(&h, &r));
        assert!(!not_modified(&HeaderMap::new(), &r));
    }

    #[test]
    fn if_none_exist_forms() {
        assert_eq!(criteria_params("Patient", "identifier=a|b").unwrap(), vec![("identifier".into(), "a|b".into())]);
        assert_eq!(criteria_params("Patient", "Patient?identifier=x").unwrap().len(), 1);
        assert_eq!(criteria_params("Patient", "?identifier=x").unwrap().len(), 1);
        assert!(criteria_params("Patient", "").is_err());
    }
}
