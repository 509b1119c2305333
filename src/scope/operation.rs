//! Instance-level operations fhir-fence can scope, each enabled per tenant in the config.
//!
//! The instance is proven the caller's before the upstream runs the operation; every answer is
//! then checked like any other (`$everything` entry by entry, `$meta` with the tenant coding
//! removed). `$meta-add` / `$meta-delete` may not touch the tenant coding system.
use super::paging::Counted;
use super::read::ReadResult;
use super::{refcheck, Ctx, ScopeError};
use crate::headers::strict_headers;
use crate::outbound;
use crate::route::{encode_query, Op, Params};
use http::{Method, StatusCode};
use serde_json::Value;

pub async fn run(
    ctx: &Ctx<'_>,
    rtype: &str,
    id: &str,
    op: Op,
    params: &Params,
    body: Option<Value>,
    self_url: &str,
) -> Result<ReadResult, ScopeError> {
    enabled(ctx, op)?;
    let not_found = || ScopeError::NotFound(format!("{rtype}/{id}"));
    let upstream_id = refcheck::owned(ctx, rtype, id).await?;
    let base = format!("{rtype}/{upstream_id}/${}", op.name());
    let kept: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "_pretty").cloned().collect();
    let path = if kept.is_empty() { base } else { format!("{base}?{}", encode_query(&kept)) };
    let headers = strict_headers(ctx.correlation);
    let (method, body) = match op {
        // `$validate` arrives through `validate()`; were it routed here it would be a read.
        Op::Everything | Op::Meta | Op::Validate => (Method::GET, None),
        Op::MetaAdd | Op::MetaDelete => (Method::POST, Some(meta_parameters(ctx, body)?)),
    };
    let answer = ctx.upstream.send(method, &path, headers, body.as_ref()).await?;
    match answer.status {
        StatusCode::OK => {}
        s if unserved(s) => return Err(ScopeError::OperationUnserved(op.name())),
        StatusCode::GONE => return Err(not_found()),
        _ => return Err(super::refused(&answer)),
    }
    let answer_body = answer.body.ok_or(ScopeError::Unprovable)?;
    match op {
        Op::Everything => {
            let filtered = outbound::bundle(ctx, answer_body, self_url, Counted::Tenant, &path)?;
            Ok(ReadResult { body: filtered.bundle, headers: http::HeaderMap::new(), dropped: filtered.dropped })
        }
        Op::Validate => Err(ScopeError::Unprovable),
        Op::Meta | Op::MetaAdd | Op::MetaDelete => Ok(ReadResult {
            body: crate::outbound::parameters::meta(ctx, answer_body)?,
            headers: http::HeaderMap::new(),
            dropped: 0,
        }),
    }
}

/// The upstream's answer to an operation on a resource fhir-fence has just proven the caller's
/// (or on a type it serves): a 404 there says the upstream does not serve the operation
/// (Medplum's router has no `$everything` or `$validate`), not that the resource is missing.
fn unserved(status: StatusCode) -> bool {
    matches!(status, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED)
}

/// Refuses an operation not in `tenants.NAME.operations` (also what observe mode judges).
pub fn enabled(ctx: &Ctx, op: Op) -> Result<(), ScopeError> {
    match ctx.tenant.operations.iter().any(|o| o == op.name()) {
        true => Ok(()),
        false => Err(ScopeError::OperationDisabled(op.name())),
    }
}

/// `$validate`: the type form treats the body as a write (stamped, ids prefixed, every reference
/// checked in-tenant, nothing stored); the instance form is a read of the caller's own resource.
/// The upstream's OperationOutcome is the answer; it describes only the caller's content, so its
/// text is passed on with the caller's id prefix removed.
pub async fn validate(
    ctx: &Ctx<'_>,
    rtype: &str,
    id: Option<&str>,
    body: Option<Value>,
) -> Result<(StatusCode, crate::outbound::Checked), ScopeError> {
    enabled(ctx, Op::Validate)?;
    let answer = match id {
        None => {
            let mut resource =
                body.ok_or_else(|| ScopeError::Body("$validate needs the resource to validate".into()))?;
            if resource.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
                resource = resource
                    .get("parameter")
                    .and_then(Value::as_array)
                    .and_then(|p| p.iter().find(|p| p.get("name").and_then(Value::as_str) == Some("resource")))
                    .and_then(|p| p.get("resource").cloned())
                    .ok_or_else(|| ScopeError::Body("a Parameters body needs a resource parameter".into()))?;
            }
            if resource.get("resourceType").and_then(Value::as_str) != Some(rtype) {
                return Err(ScopeError::Body(format!("resourceType must be {rtype}")));
            }
            let local = resource.get("id").and_then(Value::as_str).unwrap_or("validate").to_owned();
            let caps = ctx.snap.capabilities(&ctx.upstream.name).await.ok_or(ScopeError::CapabilitiesUnavailable)?;
            let super::write::Prepared { body: prepared, targets, canonicals } =
                super::write::prepare(ctx, &caps, resource, &local, &Default::default())?;
            refcheck::check_all(ctx, &targets).await?;
            super::canonicals::check_validatable(canonicals)?;
            ctx.upstream
                .send(Method::POST, &format!("{rtype}/$validate"), strict_headers(ctx.correlation), Some(&prepared))
                .await?
        }
        Some(id) => {
            // The stored resource is read (proving it the caller's) for the canonicals the
            // validator would follow.
            let stored = super::read::read(ctx, rtype, id, None).await?;
            super::canonicals::check_validatable(super::canonicals::needed(
                ctx,
                stored.body.as_tree().ok_or(ScopeError::Unprovable)?,
            ))?;
            let upstream_id = ctx.tenant.upstream_id(id).map_err(ScopeError::from)?;
            ctx.upstream
                .send(Method::GET, &format!("{rtype}/{upstream_id}/$validate"), strict_headers(ctx.correlation), None)
                .await?
        }
    };
    let status = answer.status;
    if unserved(status) {
        return Err(ScopeError::OperationUnserved(Op::Validate.name()));
    }
    if !matches!(status.as_u16(), 200 | 412 | 422) {
        return Err(super::refused(&answer));
    }
    crate::outbound::parameters::validation(ctx, answer.body.ok_or(ScopeError::Unprovable)?).map(|o| (status, o))
}

/// The `Parameters` body of `$meta-add` / `$meta-delete`: one `meta` parameter, no tenant codings.
fn meta_parameters(ctx: &Ctx, body: Option<Value>) -> Result<Value, ScopeError> {
    let body = body.ok_or_else(|| ScopeError::Body("a Parameters body with a meta parameter is needed".into()))?;
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ScopeError::Body("the body must be a Parameters resource".into()));
    }
    let params =
        body.get("parameter").and_then(Value::as_array).ok_or_else(|| ScopeError::Body("no parameter".into()))?;
    let [p] = params.as_slice() else { return Err(ScopeError::Body("exactly one meta parameter is expected".into())) };
    if p.get("name").and_then(Value::as_str) != Some("meta") || p.as_object().is_some_and(|o| o.len() != 2) {
        return Err(ScopeError::Body("exactly one meta parameter (name + valueMeta) is expected".into()));
    }
    let meta =
        p.get("valueMeta").and_then(Value::as_object).ok_or_else(|| ScopeError::Body("valueMeta is missing".into()))?;
    for (k, v) in meta {
        match k.as_str() {
            "tag" | "security" | "profile" => {}
            _ => return Err(ScopeError::Body(format!("meta.{k} cannot be changed this way"))),
        }
        if k != "profile" && has_tenant_coding(ctx, v) {
            return Err(ScopeError::ForeignMarker);
        }
    }
    Ok(body)
}

fn has_tenant_coding(ctx: &Ctx, codings: &Value) -> bool {
    codings
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c.get("system").and_then(Value::as_str) == Some(ctx.snap.marking.system.as_str()))
}
