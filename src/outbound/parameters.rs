//! Answers that are not resources of the caller but about them: `$meta`'s `Parameters` and
//! `$validate`'s `OperationOutcome`. Each is proven to say nothing of another tenant before it
//! leaves.
use super::Checked;
use crate::scope::{Ctx, ScopeError};
use serde_json::Value;

/// The `Parameters` answer of `$meta`, `$meta-add`, `$meta-delete`: every `valueMeta` without
/// the tenant coding (and refused when it carries another tenant's).
pub fn meta(ctx: &Ctx, mut body: Value) -> Result<Checked, ScopeError> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ScopeError::Unprovable);
    }
    let system = ctx.snap.marking.system.as_str();
    for p in body.get_mut("parameter").and_then(Value::as_array_mut).into_iter().flatten() {
        let Some(meta) = p.get_mut("valueMeta").and_then(Value::as_object_mut) else {
            return Err(ScopeError::Unprovable);
        };
        for field in ["tag", "security"] {
            if let Some(Value::Array(codings)) = meta.get_mut(field) {
                let foreign = codings.iter().any(|c| {
                    c.get("system").and_then(Value::as_str) == Some(system)
                        && c.get("code").and_then(Value::as_str) != Some(ctx.tenant.name.as_str())
                });
                if foreign {
                    return Err(ScopeError::Unprovable);
                }
                codings.retain(|c| c.get("system").and_then(Value::as_str) != Some(system));
                if codings.is_empty() {
                    meta.remove(field);
                }
            }
        }
    }
    Ok(Checked::tree(body))
}

/// `$validate`'s OperationOutcome. It describes only the caller's content (the body was scoped
/// like a write, every canonical it names is shared): passed on with the caller's id prefix
/// removed from its text.
pub fn validation(ctx: &Ctx, outcome: Value) -> Result<Checked, ScopeError> {
    if outcome.get("resourceType").and_then(Value::as_str) != Some("OperationOutcome") {
        return Err(ScopeError::Unprovable);
    }
    let text = outcome.to_string().replace(&format!("{}-", ctx.tenant.prefix), "");
    serde_json::from_str(&text).map(Checked::tree).map_err(|_| ScopeError::Unprovable)
}
