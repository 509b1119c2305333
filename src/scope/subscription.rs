//! R4 rest-hook Subscriptions, scoped. An unmodified server evaluates `criteria` over every
//! tenant's data and delivers wherever `channel.endpoint` points, so on every write:
//! - `criteria` is scoped like a search (tenant parameter added, ids prefixed) before the upstream
//!   sees it; the client's own criteria ride along in an extension of fhir-fence's and are shown
//!   again when the Subscription is read back;
//! - `channel.type` must be `rest-hook`, and `channel.endpoint` one of the tenant's allowed
//!   destinations (`tenants.X.subscription_destinations`; none by default);
//! - extensions are refused (HAPI's payload-search-criteria extension runs an unscoped search),
//!   and topic-based (backport) subscriptions are refused until a relay exists.
use super::params::scope_params;
use super::{Ctx, ScopeError};
use crate::fhir::capabilities::Capabilities;
use crate::fhir::reference::is_resource_type;
use crate::outbound::subscription::ORIGINAL_CRITERIA;
use crate::route::{encode_query, parse_query};
use crate::tenancy::Tenant;
use serde_json::{json, Map, Value};

/// Checks a Subscription about to be written and scopes its criteria.
pub fn inbound(ctx: &Ctx, caps: &Capabilities, resource: &mut Map<String, Value>) -> Result<(), ScopeError> {
    let refuse = |why: &str| ScopeError::Subscription(why.to_owned());
    let has_extensions = |v: Option<&Value>| {
        v.and_then(Value::as_object).is_some_and(|o| o.contains_key("extension") || o.contains_key("modifierExtension"))
    };
    if resource.contains_key("extension")
        || resource.contains_key("modifierExtension")
        || has_extensions(resource.get("channel"))
    {
        return Err(refuse("extensions on Subscription are refused (HAPI's payload-search-criteria extension would run an unscoped search)"));
    }
    let profiles =
        resource.get("meta").and_then(|m| m.get("profile")).and_then(Value::as_array).cloned().unwrap_or_default();
    if profiles.iter().any(|p| p.as_str().is_some_and(|p| p.contains("backport"))) {
        return Err(refuse("topic-based (backport) subscriptions are refused until fhir-fence relays notifications"));
    }
    let channel = resource.get("channel").and_then(Value::as_object).ok_or_else(|| refuse("channel is required"))?;
    if channel.get("type").and_then(Value::as_str) != Some("rest-hook") {
        return Err(refuse("only rest-hook channels are supported"));
    }
    let endpoint =
        channel.get("endpoint").and_then(Value::as_str).ok_or_else(|| refuse("channel.endpoint is required"))?;
    if !destination_allowed(ctx.tenant, endpoint) {
        return Err(refuse("channel.endpoint is not among this tenant's allowed destinations"));
    }
    let criteria =
        resource.get("criteria").and_then(Value::as_str).ok_or_else(|| refuse("criteria is required"))?.to_owned();
    let (rtype, query) = criteria.split_once('?').unwrap_or((criteria.as_str(), ""));
    if !is_resource_type(rtype) {
        return Err(refuse("criteria must be [type]?[query] (topic URLs are refused until a relay exists)"));
    }
    let params = parse_query(Some(query)).map_err(|e| refuse(&format!("criteria: {e}")))?;
    let scoped = scope_params(ctx, caps, &[rtype.to_owned()], &params)?;
    resource.insert("criteria".into(), Value::String(format!("{rtype}?{}", encode_query(&scoped))));
    resource.insert("extension".into(), json!([{"url": ORIGINAL_CRITERIA, "valueString": criteria}]));
    Ok(())
}

/// `endpoint` matches a rule: a prefix rule (ending in `/`) or an exact origin. The endpoint must
/// be written in its canonical form (what the WHATWG parser makes of it, byte for byte): the
/// string stored upstream is the string checked here, so the upstream's own HTTP client cannot
/// read another host into it (`http://0x7f.0.0.1/`, `http://127.1/`, a default port written
/// out, upper-case scheme or host, userinfo).
fn destination_allowed(tenant: &Tenant, endpoint: &str) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else { return false };
    if !matches!(url.scheme(), "http" | "https") || url.username() != "" || url.password().is_some() {
        return false;
    }
    if url.as_str() != endpoint {
        return false;
    }
    let normalized = url.as_str();
    tenant.destinations.iter().any(|rule| {
        if rule.ends_with('/') {
            normalized.starts_with(rule.as_str())
        } else {
            url::Url::parse(rule).is_ok_and(|r| r.origin() == url.origin())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TenantStatus;

    fn tenant(rules: &[&str]) -> Tenant {
        Tenant {
            name: "a".into(),
            prefix: "a".into(),
            upstream: "u".into(),
            status: TenantStatus::Active,
            operations: vec![],
            destinations: rules.iter().map(|r| r.to_string()).collect(),
            key_generation: 0,
            enforcement: crate::config::Enforcement::Enforce,
        }
    }

    #[test]
    fn destinations() {
        let t = tenant(&["http://127.0.0.1:9099/", "https://hooks.example.org"]);
        assert!(destination_allowed(&t, "http://127.0.0.1:9099/acme/hook"));
        assert!(!destination_allowed(&t, "http://127.0.0.1:9098/acme/hook"));
        assert!(!destination_allowed(&t, "http://127.0.0.1:9099.evil.example/x"));
        assert!(destination_allowed(&t, "https://hooks.example.org/any/path"));
        assert!(!destination_allowed(&t, "https://hooks.example.org.evil/x"));
        assert!(!destination_allowed(&t, "http://user:pw@127.0.0.1:9099/x"));
        assert!(!destination_allowed(&tenant(&[]), "http://127.0.0.1:9099/x"));
        // Only the canonical spelling: what is stored is what was checked.
        for other_spelling in [
            "http://0x7f.0.0.1:9099/acme/hook",
            "http://127.1:9099/acme/hook",
            "http://2130706433:9099/acme/hook",
            "HTTP://127.0.0.1:9099/acme/hook",
            "http://127.0.0.1:9099/acme/./hook",
            " http://127.0.0.1:9099/acme/hook",
            "https://hooks.example.org:443/any/path",
            "https://HOOKS.example.org/any/path",
            "https://hooks.example.org",
        ] {
            assert!(!destination_allowed(&t, other_spelling), "{other_spelling}");
        }
    }
}
