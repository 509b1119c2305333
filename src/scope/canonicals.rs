//! Canonical URLs, which the upstream resolves on the whole server, made tenant-safe.
//!
//! A canonical URL (`http://example.org/Questionnaire/intake|2`) is not a reference into the
//! tenant's namespace: the upstream matches it against the `url` of every definition it holds,
//! whoever wrote it. HAPI follows it for `_include`/`_revinclude` and its validator looks it up
//! for `$validate` (a QuestionnaireResponse is checked against the Questionnaire of that url,
//! and the messages name its items). So a canonical a tenant writes must name either a definition
//! of its own — found by a tenant-scoped search on `url` (and `version`) of the element's target
//! types, or written in the same transaction — or something under a configured shared base
//! (`tenancy.shared_canonical_bases`, e.g. `http://hl7.org/fhir/`); and `$validate` runs only on
//! resources whose canonicals all sit under a shared base, because the validator's look-up by
//! url cannot be scoped (a same-url definition of another tenant may be the one it takes).
//!
//! Left alone: canonicals whose every target is a server-wide type (`meta.profile` →
//! StructureDefinition, bindings → ValueSet: no tenant can write those, they are the operator's
//! shared definitions), relative literals (`Questionnaire/q1`, treated as references by
//! `write::prepare`) and `#contained` ones. A canonical whose element names no target type
//! (`Extension.valueCanonical`, `RelatedArtifact.resource`) cannot be looked up by type: it is
//! stored as written (an `_include` through it can only add entries the outbound check drops,
//! which no longer changes `Bundle.total`) and refused by `$validate` unless shared.
use super::search::matching;
use super::{Ctx, ScopeError};
use crate::fhir::canonical;
use crate::fhir::capabilities::Capabilities;
use crate::fhir::server_wide::is_server_wide;
use crate::fhir::shape::Model;
use serde_json::Value;
use std::collections::HashSet;

/// A canonical in a body that names, by URL, something a tenant could have written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    /// As written: `url` or `url|version`.
    pub canonical: String,
    /// The tenant-writable types it may name (empty: any type).
    pub types: Vec<String>,
}

/// The canonicals of `body` that must be proven safe (see the module comment).
pub fn needed(ctx: &Ctx, body: &Value) -> Vec<Needed> {
    let mut out: Vec<Needed> = Vec::new();
    Model::r4().for_each_canonical(body, &mut |c, targets| add_needed(ctx, c, targets, &mut out));
    out
}

/// Adds `c` to `out` when it names, by URL, something a tenant could have written.
fn add_needed(ctx: &Ctx, c: &str, targets: &[Box<str>], out: &mut Vec<Needed>) {
    let shared = &ctx.snap.loaded.config.tenancy.shared_canonical_bases;
    if c.starts_with('#') || canonical::literal(c).is_some() || shared.iter().any(|b| c.starts_with(b.as_str())) {
        return;
    }
    let types: Vec<String> = targets.iter().filter(|t| !is_server_wide(t)).map(|t| t.to_string()).collect();
    if !targets.is_empty() && types.is_empty() {
        return;
    }
    if !out.iter().any(|n| n.canonical == c) {
        out.push(Needed { canonical: c.to_owned(), types });
    }
}

/// Refuses canonicals of forms servers resolve in ways of their own (`fhir::canonical::form_problem`),
/// canonicals and a definition's own `url` naming the upstream server itself (it would take them
/// for local links, whoever owns the target), and a definition whose `url` sits under a shared
/// base: shared definitions are the operator's, and a tenant's definition there would be the one
/// another tenant's `$validate` finds. Called by `write::prepare` for every body written or
/// validated; in the same walk it collects what [`needed`] would, but for the canonicals `prepare`
/// rewrites into literals: relative literals, and a transaction's `fullUrl`s (`in_bundle`).
pub fn check_forms(
    ctx: &Ctx,
    body: &Value,
    in_bundle: &std::collections::HashMap<String, String>,
) -> Result<Vec<Needed>, ScopeError> {
    let upstream = format!("{}/", ctx.upstream.base);
    let mut problem = None;
    let mut needed = Vec::new();
    Model::r4().for_each_canonical(body, &mut |c, targets| {
        if problem.is_some() {
            return;
        }
        if let Some(why) = canonical::form_problem(c, targets) {
            problem = Some((c.to_owned(), why));
        } else if c.starts_with(&upstream) {
            problem = Some((c.to_owned(), "a canonical may not name the upstream server itself"));
        } else if !in_bundle.contains_key(c) {
            add_needed(ctx, c, targets, &mut needed);
        }
    });
    if let Some((c, why)) = problem {
        return Err(ScopeError::Canonical(c, why));
    }
    if let Some(url) = body.get("url").and_then(Value::as_str) {
        let shared = &ctx.snap.loaded.config.tenancy.shared_canonical_bases;
        let why = if canonical::form_problem(url, &[]).is_some()
            || url.starts_with('#')
            || canonical::literal(url).is_some()
        {
            Some("a definition's url must be an absolute URL or a urn:")
        } else if url.starts_with(&upstream) {
            Some("a definition's url may not name the upstream server itself")
        } else if shared.iter().any(|b| url.starts_with(b.as_str())) {
            Some("urls under tenancy.shared_canonical_bases belong to the shared definitions, which tenants cannot write")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(ScopeError::Canonical(url.to_owned(), why));
        }
    }
    Ok(needed)
}

/// The `url`s of the definitions a transaction writes (its canonicals may name them).
pub fn defined_in<'a>(bodies: impl IntoIterator<Item = &'a Value>) -> HashSet<String> {
    bodies.into_iter().filter_map(|b| b.get("url").and_then(Value::as_str)).map(str::to_owned).collect()
}

/// Proves every canonical of a write names a definition of the caller's (or one the same
/// transaction writes, `defined`); 422 otherwise — the same answer for "missing" and "another
/// tenant's". Positive answers are cached like reference look-ups.
pub async fn check_written(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    needed: &[Needed],
    defined: &HashSet<String>,
) -> Result<(), ScopeError> {
    for n in needed.iter().filter(|n| !n.types.is_empty()) {
        let (url, version) = match n.canonical.split_once('|') {
            Some((u, v)) => (u, Some(v)),
            None => (n.canonical.as_str(), None),
        };
        if defined.contains(url) {
            continue;
        }
        let key = (ctx.tenant.name.clone(), format!("canonical {}", n.canonical));
        if ctx.snap.ref_cache.get(&key).await.is_some() {
            continue;
        }
        let mut found = false;
        for t in n.types.iter().filter(|t| caps.param(t, "url").is_some()) {
            let mut criteria = vec![("url".to_owned(), url.to_owned())];
            if let Some(v) = version.filter(|_| caps.param(t, "version").is_some()) {
                criteria.push(("version".to_owned(), v.to_owned()));
            }
            if !matching(ctx, caps, t, &criteria).await?.is_empty() {
                found = true;
                break;
            }
        }
        if !found {
            return Err(ScopeError::Canonical(
                n.canonical.clone(),
                "a canonical URL must name a definition of this tenant or sit under tenancy.shared_canonical_bases",
            ));
        }
        ctx.snap.ref_cache.insert(key, ()).await;
    }
    Ok(())
}

/// Refuses `$validate` on a resource with a canonical the validator would look up by URL on the
/// whole server (anything not under a shared base): `needed` as [`needed`] or [`check_forms`]
/// found them.
pub fn check_validatable(needed: Vec<Needed>) -> Result<(), ScopeError> {
    match needed.into_iter().next() {
        Some(n) => Err(ScopeError::Canonical(
            n.canonical,
            "the upstream's validator looks canonical URLs up on the whole server; only resources whose canonicals sit under tenancy.shared_canonical_bases (or are relative Type/id) can be validated",
        )),
        None => Ok(()),
    }
}
