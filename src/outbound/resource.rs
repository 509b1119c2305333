//! The outbound check on one parsed resource (the tree form). Every resource that leaves
//! fhir-fence for a client passes [`resource`] or its one-pass twin (`fastline`): it must carry
//! the caller's marker coding *and* id prefix, and every reference in it must stay inside the
//! tenant; then the markers are stripped and references turned back into local ids.
use super::fastline::fast_line;
use super::Checked;
use crate::fhir::canonical;
use crate::fhir::reference::{self, Target};
use crate::scope::{Ctx, ScopeError};
use serde_json::Value;

/// Checks one resource and converts it to the client's view, or refuses it.
pub fn resource(ctx: &Ctx, value: Value) -> Result<Checked, ScopeError> {
    tree(ctx, value).map(Checked::tree)
}

/// The one-pass form for a resource the upstream sent as `bytes` (a read): the client's view
/// when the byte check is sure of it, else `None` (the caller parses and takes [`resource`]).
pub fn resource_bytes(ctx: &Ctx, rtype: &str, bytes: &[u8]) -> Option<Checked> {
    let mut out = Vec::with_capacity(bytes.len());
    fast_line(ctx.snap, ctx.tenant, ctx.upstream, Some(rtype)).accept(bytes, &mut out).ok()?;
    Some(Checked::bytes(out))
}

/// [`resource`] as the tree it checked, for the checks that embed it (Bundle entries).
pub(super) fn tree(ctx: &Ctx, value: Value) -> Result<Value, ScopeError> {
    let Value::Object(mut map) = value else { return Err(ScopeError::Unprovable) };
    if !ctx.snap.marking.owns(&map, ctx.tenant) {
        return Err(ScopeError::Unprovable);
    }
    ctx.snap.marking.strip(&mut map, ctx.tenant);
    if map.get("resourceType").and_then(Value::as_str) == Some("Subscription") {
        super::subscription::restore(&mut map);
    }
    let mut value = Value::Object(map);
    reference::for_each_mut(&mut value, &mut |r: &mut String| outbound_reference(ctx, r))?;
    canonical::for_each_mut(&mut value, &mut |c: &mut String| outbound_canonical(ctx, c))?;
    // Attachment URLs were stored in the client's form; one naming the upstream is never shown.
    reference::for_each_attachment_url_mut(&mut value, &mut |u: &mut String| {
        if u.starts_with(&ctx.upstream.base) {
            Err(ScopeError::Unprovable)
        } else {
            Ok(())
        }
    })?;
    Ok(value)
}

/// Rewrites one reference for the client, or fails when it points outside the tenant.
fn outbound_reference(ctx: &Ctx, r: &mut String) -> Result<(), ScopeError> {
    let rewritten = match reference::parse(r) {
        Target::Contained => return Ok(()),
        Target::Relative(l) => l.with_id(ctx.tenant.local_id(l.id).ok_or(ScopeError::Unprovable)?),
        Target::Absolute { base, literal } if base == ctx.upstream.base => {
            literal.with_id(ctx.tenant.local_id(literal.id).ok_or(ScopeError::Unprovable)?)
        }
        Target::Absolute { base, .. } if ctx.snap.external_bases.iter().any(|b| b == base) => return Ok(()),
        _ => return Err(ScopeError::Unprovable),
    };
    *r = rewritten;
    Ok(())
}

/// A canonical written as a relative literal was moved into the tenant's namespace on the way in
/// (`write::prepare`); it must still be there. One naming a server-wide type is shared.
fn outbound_canonical(ctx: &Ctx, c: &mut String) -> Result<(), ScopeError> {
    let Some((literal, rest)) = canonical::tenant_literal(c) else { return Ok(()) };
    let local = ctx.tenant.local_id(literal.id).ok_or(ScopeError::Unprovable)?;
    *c = format!("{}{rest}", literal.with_id(local));
    Ok(())
}

/// The public URL of a resource: `{public_base}/{type}/{local id}`.
pub fn public_url(ctx: &Ctx, rtype: &str, local: &str) -> String {
    format!("{}/{}/{}", ctx.snap.public_base, rtype, local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::testing::{ctx, marked, SYSTEM};
    use serde_json::json;

    fn stored(tenant: &str, id: &str, extra: Value) -> Value {
        let mut r = json!({"resourceType": "Observation", "id": id, "meta": marked(tenant), "status": "final"});
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        r
    }

    #[test]
    fn the_callers_own_resource_leaves_in_its_local_form() {
        let r = stored(
            "acme",
            "acme-o1",
            json!({"subject": {"reference": "Patient/acme-p1"},
            "performer": [{"reference": "http://127.0.0.1:9/fhir/Practitioner/acme-d1"}, {"reference": "#c"}]}),
        );
        let out = resource(&ctx("acme"), r).unwrap().into_tree();
        assert_eq!(out["id"], "o1");
        assert_eq!(out["subject"]["reference"], "Patient/p1");
        assert_eq!(out["performer"][0]["reference"], "Practitioner/d1");
        assert_eq!(out["performer"][1]["reference"], "#c");
        assert!(!out.to_string().contains(SYSTEM), "the tenant coding is stripped: {out}");
    }

    #[test]
    fn what_cannot_be_proven_the_callers_does_not_leave() {
        let acme = ctx("acme");
        let cases = [
            ("another tenant's", stored("globex", "globex-o1", json!({}))),
            ("marker and prefix disagree", stored("acme", "globex-o1", json!({}))),
            ("no marker", json!({"resourceType": "Observation", "id": "acme-o1"})),
            (
                "a reference into another tenant",
                stored("acme", "acme-o1", json!({"subject": {"reference": "Patient/globex-p1"}})),
            ),
            ("an unprefixed reference", stored("acme", "acme-o1", json!({"subject": {"reference": "Patient/p1"}}))),
            (
                "a reference to a foreign server",
                stored("acme", "acme-o1", json!({"subject": {"reference": "http://evil/fhir/Patient/acme-p1"}})),
            ),
            (
                "an attachment naming the upstream",
                stored(
                    "acme",
                    "acme-o1",
                    json!({"content": [{"attachment": {"contentType": "text/plain", "url": "http://127.0.0.1:9/fhir/Binary/acme-b"}}]}),
                ),
            ),
            ("not an object", json!(["acme-o1"])),
        ];
        for (why, r) in cases {
            assert!(matches!(resource(&acme, r), Err(ScopeError::Unprovable)), "{why}");
        }
    }

    #[test]
    fn the_byte_path_agrees_or_declines() {
        let acme = ctx("acme");
        let own = stored("acme", "acme-o1", json!({"subject": {"reference": "Patient/acme-p1"}}));
        let bytes = serde_json::to_vec(&own).unwrap();
        if let Some(fast) = resource_bytes(&acme, "Observation", &bytes) {
            assert_eq!(fast.into_tree(), resource(&acme, own).unwrap().into_tree());
        }
        // Found by the fastline_diff fuzz target: serde_json reads `meta` with its private
        // raw-value key as the number 0, the one-pass check read the real object; it now declines.
        let line = br#"{"resourceType":"Observation","id":"acme-o2","meta":{"$serde_json::private::RawValue":"0","tag":[{"system":"https://fhir-fence.dev/CodeSystem/tenant","code":"acme"}]}}"#;
        assert!(resource_bytes(&acme, "Observation", line).is_none());
        let foreign = serde_json::to_vec(&stored("globex", "globex-o1", json!({}))).unwrap();
        assert!(resource_bytes(&acme, "Observation", &foreign).is_none());
    }
}
