//! The outbound check on a searchset or history Bundle (the tree form): entries are checked
//! one by one ([`resource`](super::resource::resource)) and dropped when they cannot be proven
//! the caller's; a dropped match removes `Bundle.total`; links are rewritten to sealed pages.
use super::resource::{public_url, tree};
use super::Checked;
use crate::fhir::reference;
use crate::scope::paging::{self, Counted};
use crate::scope::{Ctx, ScopeError};
use serde_json::{Map, Value};

/// The outcome of filtering a Bundle.
pub struct Filtered {
    pub bundle: Checked,
    /// Entries removed because they could not be proven the caller's (each one a blocked leak).
    pub dropped: usize,
}

/// Filters a searchset or history Bundle for the caller. `self_url` is the client's own URL
/// for this page (it replaces the upstream's `self` link, which shows the injected tenant filter).
/// `counted` says what the upstream's search covered (and so whether its `total` may stay);
/// paging tokens remember it.
pub fn bundle(ctx: &Ctx, value: Value, self_url: &str, counted: Counted, asked: &str) -> Result<Filtered, ScopeError> {
    let Value::Object(mut b) = value else { return Err(ScopeError::Unprovable) };
    if b.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ScopeError::Unprovable);
    }
    let history = match b.get("type").and_then(Value::as_str) {
        Some("searchset") => false,
        Some("history") => true,
        _ => return Err(ScopeError::Unprovable),
    };
    let mut dropped = 0;
    let entries = match b.remove("entry") {
        None => vec![],
        Some(Value::Array(e)) => e,
        Some(_) => return Err(ScopeError::Unprovable),
    };
    let mut kept = Vec::with_capacity(entries.len());
    let mut dropped_matches = 0;
    for entry in entries {
        let matched = counts_in_total(&entry);
        match bundle_entry(ctx, entry, history) {
            Some(e) => kept.push(e),
            None => {
                dropped += 1;
                dropped_matches += usize::from(matched);
            }
        }
    }
    if !kept.is_empty() {
        b.insert("entry".into(), Value::Array(kept));
    }
    // `total` counts matches only: a dropped match makes it wrong, a dropped `_include`d entry
    // does not — and removing it then would tell the caller that something foreign was included
    // (an existence oracle on canonical URLs the upstream resolves server-wide).
    // An answer the upstream could not scope (type/system history) counts other tenants too.
    if dropped_matches > 0 || counted == Counted::Server {
        b.remove("total");
    }
    if dropped > 0 {
        tracing::warn!(
            correlation = ctx.correlation,
            tenant = %ctx.tenant.name,
            dropped,
            "blocked Bundle entries that could not be proven the caller's"
        );
    }
    // The upstream's Bundle id names its cached search; never show it.
    b.insert("id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
    paging::rewrite_links(ctx, &mut b, self_url, counted, asked)?;
    Ok(Filtered { bundle: Checked::tree(Value::Object(b)), dropped })
}

/// Whether an entry is one of the matches `Bundle.total` counts: anything but an entry the
/// upstream marks as included (`search.mode = include`) or as an `outcome` (fail closed: an
/// entry without a mode counts).
fn counts_in_total(entry: &Value) -> bool {
    !matches!(entry.pointer("/search/mode").and_then(Value::as_str), Some("include" | "outcome"))
}

fn bundle_entry(ctx: &Ctx, entry: Value, history: bool) -> Option<Value> {
    let Value::Object(mut e) = entry else { return None };
    let mut out = Map::new();
    // History entries carry the request that made the version; for deletes it is the only
    // evidence of ownership (there is no resource body). A version with its resource is proven
    // by the resource, request or not (Medplum's router gives none).
    let request = match e.remove("request") {
        Some(Value::Object(req)) if history => Some(history_request(ctx, req)?),
        Some(_) => return None,
        None => None,
    };
    let (rtype, local) = match e.remove("resource") {
        Some(res) => {
            let res = tree(ctx, res).ok()?;
            let rtype = res.get("resourceType")?.as_str()?.to_owned();
            let local = res.get("id")?.as_str()?.to_owned();
            out.insert("resource".into(), res);
            (rtype, local)
        }
        None if history => {
            let url = request.as_ref()?.get("url")?.as_str()?;
            let l = reference::literal(url)?;
            (l.rtype.to_owned(), l.id.to_owned())
        }
        None => return None,
    };
    // A create's request names a type: the resource's own.
    if request
        .as_ref()
        .and_then(|r| r.get("url"))
        .and_then(Value::as_str)
        .is_some_and(|u| !u.contains('/') && u != rtype)
    {
        return None;
    }
    out.insert("fullUrl".into(), Value::String(public_url(ctx, &rtype, &local)));
    if let Some(search) = e.remove("search") {
        out.insert("search".into(), search);
    }
    if let Some(req) = request {
        out.insert("request".into(), Value::Object(req));
    }
    if let Some(Value::Object(mut resp)) = e.remove("response") {
        // Keep only fields that describe this version; `location` and `outcome` are rebuilt or dropped.
        resp.retain(|k, _| matches!(k.as_str(), "status" | "etag" | "lastModified"));
        out.insert("response".into(), Value::Object(resp));
    }
    Some(Value::Object(out))
}

/// A history entry's `request`: its `url` must address the caller's namespace; it is rewritten to local ids.
/// A version written as a create names only its type (`POST Type`: the Helios FHIR Server records
/// a create so, whatever the client sent); `bundle_entry` then requires the entry's resource, of
/// that type, proven the caller's.
fn history_request(ctx: &Ctx, mut req: Map<String, Value>) -> Option<Map<String, Value>> {
    let url = req.get("url")?.as_str()?;
    let new_url = if req.get("method").and_then(Value::as_str) == Some("POST") && reference::is_resource_type(url) {
        url.to_owned()
    } else {
        let l = reference::literal(url)?;
        l.with_id(ctx.tenant.local_id(l.id)?)
    };
    req.retain(|k, _| matches!(k.as_str(), "method" | "url"));
    req.insert("url".into(), Value::String(new_url));
    Some(req)
}
