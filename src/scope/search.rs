//! Type-level search, scoped: the tenant parameter is added, `_id` and reference-typed values
//! are moved into the caller's id namespace, and everything not yet proven safe is refused.
//!
//! Parameter names and types come from the upstream's CapabilityStatement; an unknown name is
//! refused (and `Prefer: handling=strict` makes the upstream refuse what it would ignore).
use super::read::{base_headers, ReadResult};
use super::{paging, respond, Ctx, ScopeError};
use crate::fhir::capabilities::{Capabilities, ParamType};
use crate::fhir::reference::{self, is_id, Target};
use crate::route::{encode_query, Params};
use http::{HeaderValue, Method, StatusCode};

/// Result parameters fhir-fence passes on as they are (after validation).
const RESULT_PARAMS: &[&str] = &["_count", "_sort", "_total"];
/// Parameters that join, reshape or widen a search; the next issue opens them one by one.
const NOT_YET: &[&str] = &[
    "_has",
    "_include",
    "_revinclude",
    "_elements",
    "_summary",
    "_contained",
    "_containedType",
    "_filter",
    "_query",
    "_format",
    "_list",
    "_type",
    "_page",
    "_getpages",
    "_getpagesoffset",
    "_bundletype",
];

/// `GET [type]?…`
pub async fn search(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    params: &Params,
    self_url: &str,
) -> Result<ReadResult, crate::error::Error> {
    let scoped = scope_params(ctx, caps, rtype, params)?;
    fetch(ctx, &format!("{rtype}?{}", encode_query(&scoped)), self_url).await
}

/// `GET [base]?_page=token`: a later page of a search this tenant made.
pub async fn page(ctx: &Ctx<'_>, token: &str, self_url: &str) -> Result<ReadResult, crate::error::Error> {
    let page = paging::open(ctx, token)?;
    fetch(ctx, &format!("?{}", page.q), self_url).await
}

async fn fetch(ctx: &Ctx<'_>, path: &str, self_url: &str) -> Result<ReadResult, crate::error::Error> {
    let mut headers = base_headers(ctx);
    headers.insert("prefer", HeaderValue::from_static("handling=strict"));
    let answer = ctx.upstream.send(Method::GET, path, headers, None).await?;
    match answer.status {
        StatusCode::OK => {}
        // An expired upstream page is as gone as a forged token.
        StatusCode::NOT_FOUND | StatusCode::GONE if path.starts_with('?') => return Err(ScopeError::PageToken.into()),
        other => return Err(ScopeError::Refused(other.as_u16()).into()),
    }
    let filtered = respond::bundle(ctx, answer.body.ok_or(ScopeError::Unprovable)?, self_url)?;
    Ok(ReadResult { body: filtered.bundle, headers: http::HeaderMap::new(), dropped: filtered.dropped })
}

/// Validates and rewrites search parameters; appends the tenant parameter.
pub fn scope_params(ctx: &Ctx, caps: &Capabilities, rtype: &str, params: &Params) -> Result<Params, ScopeError> {
    if !caps.has_type(rtype) {
        return Err(ScopeError::UnknownType(rtype.to_owned()));
    }
    let marking = &ctx.snap.marking;
    let mut out = Vec::with_capacity(params.len() + 1);
    for (name, value) in params {
        if name == "_pretty" {
            continue;
        }
        if NOT_YET.contains(&name.as_str()) {
            return Err(ScopeError::ParamNotSupported(format!("search parameter {name}")));
        }
        if name.contains('.') {
            return Err(ScopeError::ParamNotSupported(format!("chained parameter {name}")));
        }
        if name.contains(':') {
            return Err(ScopeError::ParamNotSupported(format!("modifier in {name}")));
        }
        if RESULT_PARAMS.contains(&name.as_str()) {
            check_result_param(caps, rtype, name, value)?;
            out.push((name.clone(), value.clone()));
            continue;
        }
        let ty = caps
            .param(rtype, name)
            .ok_or_else(|| ScopeError::Param(format!("{name} is not a search parameter of {rtype}")))?;
        let value = if name == "_id" {
            map_list(value, |v| ctx.tenant.upstream_id(v).map_err(|e| ScopeError::Param(format!("_id: {e}"))))?
        } else if name == "_tag" || name == "_security" {
            if value.split(',').any(|v| v.starts_with(&format!("{}|", marking.system))) {
                return Err(ScopeError::Param(format!("{name}: the tenant coding system is reserved to fhir-fence")));
            }
            value.clone()
        } else if ty == ParamType::Reference {
            map_list(value, |v| reference_value(ctx, name, v))?
        } else {
            value.clone()
        };
        out.push((name.clone(), value));
    }
    out.push((marking.search_param().to_owned(), marking.search_value(ctx.tenant)));
    Ok(out)
}

fn map_list(value: &str, f: impl Fn(&str) -> Result<String, ScopeError>) -> Result<String, ScopeError> {
    Ok(value.split(',').map(f).collect::<Result<Vec<_>, _>>()?.join(","))
}

/// A reference search value (`Type/id`, a bare `id`, or a URL under the public base) in upstream form.
fn reference_value(ctx: &Ctx, name: &str, v: &str) -> Result<String, ScopeError> {
    let bad = |why: &str| ScopeError::Param(format!("{name}={v}: {why}"));
    let prefix = |id: &str| ctx.tenant.upstream_id(id).map_err(|e| bad(&e.to_string()));
    match reference::parse(v) {
        Target::Relative(l) if l.version.is_none() => Ok(l.with_id(&prefix(l.id)?)),
        Target::Absolute { base, literal } if base == ctx.snap.public_base && literal.version.is_none() => {
            Ok(literal.with_id(&prefix(literal.id)?))
        }
        _ if is_id(v) => prefix(v),
        _ => Err(bad("only Type/id, id, or a URL under this server's base are accepted")),
    }
}

fn check_result_param(caps: &Capabilities, rtype: &str, name: &str, value: &str) -> Result<(), ScopeError> {
    let ok = match name {
        "_count" => value.parse::<u32>().is_ok_and(|n| n <= 1000),
        "_total" => matches!(value, "none" | "estimate" | "accurate"),
        "_sort" => value.split(',').all(|k| {
            let k = k.strip_prefix('-').unwrap_or(k);
            k == "_id" || k == "_lastUpdated" || caps.param(rtype, k).is_some()
        }),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ScopeError::Param(format!("{name}={value} is not accepted")))
    }
}
