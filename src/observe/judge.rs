//! The request stage of observe mode: what enforcement would refuse in [`dispatch`] and the
//! scope modules before the upstream is called, computed with their own functions (the route,
//! header and body steps are `pipeline`'s, run before this). Nothing here calls the upstream:
//! refusals that depend on what the upstream holds (references and canonicals that must exist
//! in the tenant, conditional matches, ownership of a compartment or an operation's target, a
//! patch's result) are left to the response stage, where untagged legacy data shows anyway.
use crate::dispatch;
use crate::error::Error;
use crate::identity::Caller;
use crate::route::{Interaction, Op, Params};
use crate::scope::{operation, paging, search, write, Ctx, ScopeError};
use http::{HeaderMap, Method};
use serde_json::Value;

/// The first refusal enforcement would give this routed request before calling the upstream.
pub async fn judge(
    ctx: &Ctx<'_>,
    caller: &Caller,
    interaction: &Interaction,
    params: &Params,
    body: Option<&Value>,
    headers: &HeaderMap,
) -> Result<(), Error> {
    // A grant only for the launch patient is narrowed by `confine`, which reads the upstream:
    // only the grant's own refusal is judged.
    dispatch::permit(caller, interaction, params, body, headers)?;
    dispatch::preflight(ctx, interaction, headers)?;
    let caps = ctx.snap.capabilities(&ctx.tenant.upstream).await.ok_or(ScopeError::CapabilitiesUnavailable)?;
    let owned = |rtype: &str, id: &str| {
        ctx.tenant.upstream_id(id).map(drop).map_err(|_| Error::from(ScopeError::NotFound(format!("{rtype}/{id}"))))
    };
    let written = |rtype: &str, id: Option<&str>| -> Result<(), Error> {
        let planned = write::plan(ctx, &caps, rtype, id, body.cloned().unwrap_or_default())?;
        write::provable_once_stored(ctx, &planned.prepared.body)?;
        Ok(())
    };
    match interaction {
        Interaction::Read { rtype, id }
        | Interaction::Vread { rtype, id, .. }
        | Interaction::InstanceHistory { rtype, id }
        | Interaction::Delete { rtype, id }
        | Interaction::Patch { rtype, id } => owned(rtype, id),
        Interaction::Search { rtype, .. } => Ok(search::search_path(ctx, &caps, rtype, params).map(drop)?),
        Interaction::SystemSearch { .. } => Ok(search::system_path(ctx, &caps, params).map(drop)?),
        Interaction::History { rtype } => Ok(search::history_path(&caps, rtype.as_deref(), params).map(drop)?),
        Interaction::Page { token } => Ok(paging::open(ctx, token).map(drop)?),
        Interaction::Create { rtype } => written(rtype, None),
        Interaction::Update { rtype, id } => written(rtype, Some(id)),
        Interaction::Operation { rtype, id, op } => {
            operation::enabled(ctx, *op)?;
            owned(rtype, id)
        }
        Interaction::Validate { .. } => Ok(operation::enabled(ctx, Op::Validate)?),
        Interaction::Bundle => crate::bundle::entries(ctx, body.unwrap_or(&Value::Null)).map(drop),
        // Judged by the route and body steps only: their other refusals need the upstream.
        Interaction::Compartment { .. }
        | Interaction::ConditionalUpdate { .. }
        | Interaction::ConditionalPatch { .. }
        | Interaction::ConditionalDelete { .. }
        | Interaction::Export { .. }
        | Interaction::ExportStatus { .. }
        | Interaction::ExportCancel { .. }
        | Interaction::ExportFile { .. }
        | Interaction::Metadata => Ok(()),
    }
}

/// A `read-only` tenant's freeze holds in observe mode too (it is lifecycle — the tenant's data
/// being copied or adopted —, not enforcement). Fail closed: a request that changes data, or
/// that cannot be routed and is not a `GET`/`HEAD`, or a Bundle with any entry that changes
/// data or cannot be routed, is refused (`Error::ReadOnly`).
pub fn frozen(ctx: &Ctx<'_>, method: &Method, routed: Option<&Interaction>, body: Option<&Value>) -> Result<(), Error> {
    let changes = match routed {
        None => method != Method::GET && method != Method::HEAD,
        // A Bundle whose body was refused is judged as one that changes data.
        Some(Interaction::Bundle) if body.is_none() => true,
        Some(Interaction::Bundle) => {
            let entries = body.and_then(|b| b.get("entry")).and_then(Value::as_array);
            entries.into_iter().flatten().any(|e| {
                crate::route::entry_request(e, &ctx.snap.public_base, &ctx.snap.base_path)
                    .map_or(true, |r| r.interaction.changes().is_some())
            })
        }
        Some(i) => i.changes().is_some(),
    };
    if changes {
        dispatch::frozen(ctx)?;
    }
    Ok(())
}
