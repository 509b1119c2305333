//! Every literal reference in a write must point at a resource that exists in the caller's
//! tenant. Missing and foreign targets get the same 422. Positive answers are cached briefly
//! (moka, TTL from `tenancy.reference_cache_ttl_secs`): a target deleted within that window
//! may still be referenced, which is no cross-tenant risk (the id is in the caller's namespace).
use super::{Ctx, ScopeError};
use crate::headers::base_headers;
use crate::upstream::UpstreamError;
use http::{Method, StatusCode};
use serde_json::Value;

/// A reference target in upstream form: `Type/{prefix}-{id}[/_history/v]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub path: String,
    pub rtype: String,
    /// What the client wrote, for the error message.
    pub original: String,
}

/// Checks each target exists and carries the caller's markers.
pub async fn check_all(ctx: &Ctx<'_>, targets: &[Target]) -> Result<(), ScopeError> {
    for t in targets {
        let key = (ctx.tenant.name.clone(), t.path.clone());
        if ctx.snap.ref_cache.get(&key).await.is_some() {
            continue;
        }
        let answer = ctx.upstream.send(Method::GET, &t.path, base_headers(ctx.correlation), None).await?;
        let owned = match answer.status {
            StatusCode::OK => answer.body.as_ref().and_then(Value::as_object).is_some_and(|r| {
                r.get("resourceType").and_then(Value::as_str) == Some(t.rtype.as_str())
                    && ctx.snap.marking.owns(r, ctx.tenant)
            }),
            StatusCode::NOT_FOUND | StatusCode::GONE | StatusCode::BAD_REQUEST => false,
            other => return Err(UpstreamError::Request(format!("reference look-up answered {other}")).into()),
        };
        if !owned {
            return Err(ScopeError::Reference(t.original.clone()));
        }
        ctx.snap.ref_cache.insert(key, ()).await;
    }
    Ok(())
}

/// Proves `rtype/id` is the caller's; returns its upstream id (404 otherwise).
pub async fn owned(ctx: &Ctx<'_>, rtype: &str, id: &str) -> Result<String, ScopeError> {
    let not_found = || ScopeError::NotFound(format!("{rtype}/{id}"));
    let upstream_id = ctx.tenant.upstream_id(id).map_err(|_| not_found())?;
    let target = Target { path: format!("{rtype}/{upstream_id}"), rtype: rtype.to_owned(), original: String::new() };
    check_all(ctx, &[target]).await.map_err(|e| match e {
        ScopeError::Reference(_) => not_found(),
        other => other,
    })?;
    Ok(upstream_id)
}
