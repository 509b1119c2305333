//! Search parameters, scoped: the one place that turns a client's parameters into ones that
//! can only match the caller's resources, for searches and for every other interaction that
//! carries criteria (conditional writes, conditional references, Subscription criteria,
//! export `_typeFilter`s).
//!
//! Every search gets the tenant parameter; `_id` and reference-typed values move into the
//! caller's id namespace; every chain hop and every `_has` gets the tenant parameter too;
//! `_elements` always keeps `meta`. Parameter names and types come from the upstream's
//! CapabilityStatement, modifiers from a per-type allow-list; anything else is refused.
use super::{Ctx, ScopeError};
use crate::fhir::capabilities::{Capabilities, ParamType};
use crate::fhir::reference::{self, is_id, is_resource_type, Target};
use crate::route::Params;
use std::collections::BTreeSet;

/// Parameters that reshape or widen a search and are not (yet) proven safe.
const REFUSED: &[&str] = &[
    "_contained",
    "_containedType",
    "_filter",
    "_query",
    "_format",
    "_list",
    "_page",
    "_getpages",
    "_getpagesoffset",
    "_bundletype",
    "_source",
    "_text",
    "_content",
];
/// How many `:iterate` includes one search may ask for (each can walk the whole graph).
const MAX_ITERATE: usize = 2;
/// How many `_include` / `_revinclude` values one search may carry.
const MAX_INCLUDES: usize = 10;
/// A search of `rtype` carries the tenant scope: the type is served, and searchable by the
/// scope's parameter (`Capabilities::scoped_by`); otherwise refused before anything is sent.
fn searchable(caps: &Capabilities, rtype: &str) -> Result<(), ScopeError> {
    match (caps.has_type(rtype), caps.searchable(rtype)) {
        (false, _) => Err(ScopeError::UnknownType(rtype.to_owned())),
        (true, false) => Err(ScopeError::Unscoped(rtype.to_owned())),
        (true, true) => Ok(()),
    }
}

/// Hops in a chained parameter (`a.b.c` is three).
const MAX_CHAIN: usize = 3;

/// Validates and rewrites search parameters for a search over `types`; appends the tenant
/// parameter, and one for every chain hop and `_has`.
pub fn scope_params(ctx: &Ctx, caps: &Capabilities, types: &[String], params: &Params) -> Result<Params, ScopeError> {
    for t in types {
        searchable(caps, t)?;
    }
    let scope = Scoper { ctx, caps };
    let marking = &ctx.snap.marking;
    let tenant_param = marking.search_param();
    let mut out = Vec::with_capacity(params.len() + 1);
    let mut hop_scopes = BTreeSet::new();
    let (mut includes, mut iterate) = (0, 0);
    // An include over a canonical reference (resolved by URL, server-wide) in the same search.
    let mut over_canonical: Option<String> = None;
    for (name, value) in params {
        // A chain's hops carry `:Type` modifiers of their own, so chains are recognised first.
        let chained = name.contains('.') && !name.starts_with("_has:");
        let (base, modifier) = match name.split_once(':') {
            _ if chained => (name.as_str(), None),
            Some((b, m)) => (b, Some(m)),
            None => (name.as_str(), None),
        };
        match base {
            "_pretty" => continue,
            "_count" | "_offset" | "_total" | "_sort" if modifier.is_none() => {
                check_result_param(caps, types, name, value)?
            }
            "_summary" if modifier.is_none() => {
                if !matches!(value.as_str(), "true" | "text" | "data" | "count" | "false") {
                    return Err(ScopeError::Param(format!("_summary={value} is not accepted")));
                }
            }
            "_elements" => {
                if modifier.is_some() {
                    return Err(ScopeError::ParamNotSupported(format!("{name} (it could drop meta)")));
                }
                out.push((name.clone(), elements_with_meta(value)?));
                continue;
            }
            "_include" | "_revinclude" => {
                includes += value.split(',').count();
                match modifier {
                    None => {}
                    Some("iterate") | Some("recurse") => iterate += value.split(',').count(),
                    Some(m) => return Err(ScopeError::Param(format!("{base}:{m} is not a known include modifier"))),
                }
                if includes > MAX_INCLUDES || iterate > MAX_ITERATE {
                    return Err(ScopeError::Param(format!(
                        "too costly: at most {MAX_INCLUDES} includes, {MAX_ITERATE} of them :iterate"
                    )));
                }
                for v in value.split(',') {
                    scope.include(base == "_revinclude", modifier.is_some(), types, v)?;
                    let mut parts = v.split(':');
                    if let (Some(source), Some(code)) = (parts.next(), parts.next()) {
                        if crate::fhir::canonical_params::resolves_canonicals(source, code) {
                            over_canonical.get_or_insert_with(|| v.to_owned());
                        }
                    }
                }
                if let (Some(v), true) = (&over_canonical, iterate > 0) {
                    return Err(ScopeError::ParamNotSupported(format!(
                        ":iterate in a search that includes over the canonical reference {v} (the \
                         upstream resolves canonicals by URL across tenants, and would iterate from \
                         what fhir-fence must drop)"
                    )));
                }
            }
            "_has" => {
                let (rewritten, scope_param) = scope.has(name, value)?;
                hop_scopes.insert(scope_param);
                out.push((name.clone(), rewritten));
                continue;
            }
            b if REFUSED.contains(&b) || b == "_type" => {
                return Err(ScopeError::ParamNotSupported(format!("search parameter {name}")))
            }
            _ if chained => {
                let (rewritten, scopes) = scope.chain(types, name, value)?;
                hop_scopes.extend(scopes);
                out.push((name.clone(), rewritten));
                continue;
            }
            _ => {
                let ty = scope.param_type(types, base)?;
                let v = scope.value(base, ty, modifier, value)?;
                out.push((name.clone(), v));
                continue;
            }
        }
        out.push((name.clone(), value.clone()));
    }
    let tenant_value = marking.search_value(ctx.tenant);
    for hop in hop_scopes {
        out.push((format!("{hop}{tenant_param}"), tenant_value.clone()));
    }
    out.push((tenant_param.to_owned(), tenant_value));
    Ok(out)
}

struct Scoper<'a, 'c> {
    ctx: &'a Ctx<'c>,
    caps: &'a Capabilities,
}

impl Scoper<'_, '_> {
    /// The type of `name` on every one of `types` (the same everywhere), or a refusal.
    fn param_type(&self, types: &[String], name: &str) -> Result<ParamType, ScopeError> {
        let mut found = None;
        for t in types {
            let ty = self
                .caps
                .param(t, name)
                .ok_or_else(|| ScopeError::Param(format!("{name} is not a search parameter of {t}")))?;
            if found.is_some_and(|f| f != ty) {
                return Err(ScopeError::Param(format!("{name} has different types across the searched types")));
            }
            found = Some(ty);
        }
        found.ok_or_else(|| ScopeError::Param(format!("{name}: no resource type to search")))
    }

    /// Checks the modifier against the parameter type and moves ids into the tenant namespace.
    fn value(&self, name: &str, ty: ParamType, modifier: Option<&str>, value: &str) -> Result<String, ScopeError> {
        let allowed = match (ty, modifier) {
            (_, None) | (_, Some("missing")) => true,
            (ParamType::String, Some(m)) => matches!(m, "exact" | "contains"),
            (ParamType::Token, Some(m)) => matches!(m, "not" | "text" | "of-type"),
            (ParamType::Uri, Some(m)) => matches!(m, "above" | "below"),
            (ParamType::Reference, Some(m)) => m == "identifier" || (is_resource_type(m) && self.caps.has_type(m)),
            _ => false,
        };
        if !allowed {
            return Err(ScopeError::ParamNotSupported(format!("modifier :{} on {name}", modifier.unwrap_or(""))));
        }
        if modifier == Some("missing") {
            return match value {
                "true" | "false" => Ok(value.to_owned()),
                _ => Err(ScopeError::Param(format!("{name}:missing takes true or false"))),
            };
        }
        let marking = &self.ctx.snap.marking;
        if name == "_id" {
            return map_list(value, |v| self.prefixed(name, v));
        }
        if name == "_tag" || name == "_security" {
            // Servers trim search values (the Helios FHIR Server trims Unicode whitespace): a
            // value is judged as the upstream will read it, and one with whitespace around it
            // is refused rather than guessed at.
            if value.split(',').any(|v| v.trim() != v) {
                return Err(ScopeError::Param(format!("{name}: a value with whitespace around it")));
            }
            if value.split(',').any(|v| v.starts_with(&format!("{}|", marking.system))) {
                return Err(ScopeError::Param(format!("{name}: the tenant coding system is reserved to fhir-fence")));
            }
            return Ok(value.to_owned());
        }
        match (ty, modifier) {
            (ParamType::Reference, Some("identifier")) => Ok(value.to_owned()),
            (ParamType::Reference, Some(target)) => map_list(value, |v| match reference::literal(v) {
                Some(l) if l.rtype == target && l.version.is_none() => Ok(l.with_id(&self.prefixed(name, l.id)?)),
                _ => self.prefixed(name, v),
            }),
            (ParamType::Reference, None) => map_list(value, |v| self.reference_value(name, v)),
            _ => Ok(value.to_owned()),
        }
    }

    fn prefixed(&self, name: &str, id: &str) -> Result<String, ScopeError> {
        self.ctx.tenant.upstream_id(id).map_err(|e| ScopeError::Param(format!("{name}: {e}")))
    }

    /// A reference value (`Type/id`, a bare `id`, or a URL under the public base) in upstream form.
    fn reference_value(&self, name: &str, v: &str) -> Result<String, ScopeError> {
        match reference::parse(v) {
            Target::Relative(l) if l.version.is_none() => Ok(l.with_id(&self.prefixed(name, l.id)?)),
            Target::Absolute { base, literal } if base == self.ctx.snap.public_base && literal.version.is_none() => {
                Ok(literal.with_id(&self.prefixed(name, literal.id)?))
            }
            _ if is_id(v) => self.prefixed(name, v),
            _ => Err(ScopeError::Param(format!(
                "{name}={v}: only Type/id, id, or a URL under this server's base are accepted"
            ))),
        }
    }

    /// `_include=Source:param[:Target]` / `_revinclude=…`: no wildcards; the parameter must be
    /// a reference of Source. Included entries are checked like matches on the way out.
    fn include(&self, rev: bool, iterate: bool, types: &[String], v: &str) -> Result<(), ScopeError> {
        let bad = |why: &str| ScopeError::Param(format!("include {v:?}: {why}"));
        let parts: Vec<&str> = v.split(':').collect();
        let (source, param, target) = match parts.as_slice() {
            [s, p] => (*s, *p, None),
            [s, p, t] => (*s, *p, Some(*t)),
            _ => return Err(bad("expected Source:param[:Target]")),
        };
        if source == "*" || param == "*" || target == Some("*") {
            return Err(bad("wildcards are refused"));
        }
        if !self.caps.has_type(source) || target.is_some_and(|t| !self.caps.has_type(t)) {
            return Err(bad("unknown resource type"));
        }
        if self.caps.param(source, param) != Some(ParamType::Reference) {
            return Err(bad("not a reference parameter of its source type"));
        }
        if !rev && !iterate && !types.iter().any(|t| t == source) {
            return Err(bad("the source type is not the searched type"));
        }
        Ok(())
    }

    /// `_has:Type:ref:param=value` → the value rewritten, plus `_has:Type:ref:` to scope.
    fn has(&self, name: &str, value: &str) -> Result<(String, String), ScopeError> {
        let parts: Vec<&str> = name.split(':').collect();
        let (rtype, refp, param, modifier) = match parts.as_slice() {
            ["_has", t, r, p] => (*t, *r, *p, None::<&str>),
            ["_has", _, _, p, _] if *p != "_has" => {
                return Err(ScopeError::ParamNotSupported(format!("{name} (modifiers inside _has)")))
            }
            _ => return Err(ScopeError::ParamNotSupported(format!("{name} (only one level of _has)"))),
        };
        if !self.caps.has_type(rtype) || self.caps.param(rtype, refp) != Some(ParamType::Reference) {
            return Err(ScopeError::Param(format!("{name}: {refp} is not a reference parameter of {rtype}")));
        }
        if REFUSED.contains(&param)
            || param.starts_with('_') && !matches!(param, "_id" | "_lastUpdated" | "_tag" | "_security" | "_profile")
        {
            return Err(ScopeError::ParamNotSupported(name.to_string()));
        }
        let ty = self.param_type(&[rtype.to_owned()], param)?;
        Ok((self.value(param, ty, modifier, value)?, format!("_has:{rtype}:{refp}:")))
    }

    /// `ref[:Type].….param[:mod]=value` → the value rewritten, plus every hop prefix to scope
    /// (`ref[:Type].`), so each resource the chain passes through must be the caller's too.
    fn chain(&self, types: &[String], name: &str, value: &str) -> Result<(String, Vec<String>), ScopeError> {
        let hops: Vec<&str> = name.split('.').collect();
        if hops.len() > MAX_CHAIN {
            return Err(ScopeError::Param(format!("{name}: at most {MAX_CHAIN} hops")));
        }
        let mut current: Vec<String> = types.to_vec();
        let mut scopes = Vec::new();
        let mut prefix = String::new();
        for hop in &hops[..hops.len() - 1] {
            let (refp, target) = match hop.split_once(':') {
                Some((r, t)) => (r, Some(t)),
                None => (*hop, None),
            };
            if self.param_type(&current, refp)? != ParamType::Reference {
                return Err(ScopeError::Param(format!("{name}: {refp} is not a reference parameter")));
            }
            current = match target {
                Some(t) => {
                    searchable(self.caps, t)?;
                    vec![t.to_owned()]
                }
                None => vec![],
            };
            prefix.push_str(hop);
            prefix.push('.');
            scopes.push(prefix.clone());
        }
        let last = hops[hops.len() - 1];
        let (param, modifier) = match last.split_once(':') {
            Some((p, m)) => (p, Some(m)),
            None => (last, None),
        };
        if REFUSED.contains(&param) || param.starts_with("_has") {
            return Err(ScopeError::ParamNotSupported(name.to_owned()));
        }
        let ty = if current.is_empty() {
            // No :Type on the last hop: the parameter must mean the same on every type that has it.
            self.caps
                .param_anywhere(param)
                .ok_or_else(|| ScopeError::Param(format!("{name}: unknown parameter {param}")))?
        } else {
            self.param_type(&current, param)?
        };
        Ok((self.value(param, ty, modifier, value)?, scopes))
    }
}

fn map_list(value: &str, f: impl Fn(&str) -> Result<String, ScopeError>) -> Result<String, ScopeError> {
    Ok(value.split(',').map(f).collect::<Result<Vec<_>, _>>()?.join(","))
}

/// `_elements` with `meta` always among them (the outbound check needs the tenant coding).
pub(crate) fn elements_with_meta(value: &str) -> Result<String, ScopeError> {
    let mut names: Vec<&str> = value.split(',').collect();
    if names.iter().any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')) {
        return Err(ScopeError::Param(format!("_elements={value} is not a list of element names")));
    }
    if !names.contains(&"meta") {
        names.push("meta");
    }
    Ok(names.join(","))
}

fn check_result_param(caps: &Capabilities, types: &[String], name: &str, value: &str) -> Result<(), ScopeError> {
    let ok = match name {
        "_count" => value.parse::<u32>().is_ok_and(|n| n <= 1000),
        // Paging by position (HAPI and Medplum's router serve it; the router gives no links).
        "_offset" => value.bytes().all(|b| b.is_ascii_digit()) && value.parse::<u32>().is_ok_and(|n| n <= MAX_OFFSET),
        "_total" => matches!(value, "none" | "estimate" | "accurate"),
        "_sort" => value.split(',').all(|k| {
            let k = k.strip_prefix('-').unwrap_or(k);
            k == "_id" || k == "_lastUpdated" || types.iter().all(|t| caps.param(t, k).is_some())
        }),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ScopeError::Param(format!("{name}={value} is not accepted")))
    }
}

/// The largest `_offset` a search may ask for (the upstream skips that many matches).
const MAX_OFFSET: u32 = 100_000;

/// Parameters that shape a result rather than select resources.
const SHAPING: &[&str] = &[
    "_pretty",
    "_count",
    "_offset",
    "_sort",
    "_summary",
    "_elements",
    "_total",
    "_include",
    "_revinclude",
    "_format",
    "_contained",
    "_containedType",
];

/// The criteria of a conditional interaction (update, patch, delete, `If-None-Exist`, a
/// conditional reference) must select resources the way the upstream reads them when it
/// resolves them itself: at least one parameter that selects (`DELETE Flag?_count=1` would
/// delete whatever Flag the tenant has), no empty value (the upstream ignores it there, while a
/// search matches nothing), and no modifier on `_id` (the upstream drops it there:
/// `_id:not=x` would select x). `what` names the interaction in the refusal.
pub fn conditional_criteria(criteria: &Params, what: &str) -> Result<(), ScopeError> {
    if let Some((k, _)) = criteria.iter().find(|(k, _)| k.starts_with("_id:") || k.starts_with("_offset")) {
        return Err(ScopeError::Param(format!("{k} is refused in the criteria of a conditional {what}")));
    }
    if let Some((k, _)) = criteria.iter().find(|(k, v)| v.is_empty() && k != "_pretty") {
        return Err(ScopeError::Param(format!("{k} has no value in the criteria of a conditional {what}")));
    }
    let selects = |k: &str| !SHAPING.contains(&k.split([':', '.']).next().unwrap_or(k));
    if !criteria.iter().any(|(k, _)| selects(k)) {
        return Err(ScopeError::Param(format!("a conditional {what} needs criteria that select resources")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_criteria_must_select() {
        let q = |s: &str| crate::route::parse_query(Some(s)).unwrap();
        for ok in ["identifier=a%7Cb", "name=x&_count=1", "_id=p1", "subject.name=x", "_tag=urn:x%7Cy"] {
            assert!(conditional_criteria(&q(ok), "delete").is_ok(), "{ok}");
        }
        // Found by the attacker run on issue 16: each of these deleted the tenant's only Flag.
        for refused in [
            "",
            "_pretty=true",
            "_count=1",
            "_sort=_id",
            "_summary=count",
            "_elements=id",
            "_total=accurate",
            "_include=Flag:subject",
            "_revinclude:iterate=Provenance:target",
            "identifier=",
            "identifier=a&date=",
            "_id:not=keepme",
            "_id:missing=false",
            "name=x&_offset=1",
        ] {
            assert!(conditional_criteria(&q(refused), "delete").is_err(), "{refused}");
        }
    }

    #[test]
    fn elements_always_keep_meta() {
        assert_eq!(elements_with_meta("name,birthDate").unwrap(), "name,birthDate,meta");
        assert_eq!(elements_with_meta("meta,name").unwrap(), "meta,name");
        assert!(elements_with_meta("name,").is_err());
        assert!(elements_with_meta("*.meta").is_err());
    }
}
