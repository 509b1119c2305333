//! Searches, scoped: type, system and compartment searches, and history at type and system level.
//!
//! Their parameters are scoped by `params` (tenant parameter, ids and references in the
//! caller's namespace, allow-lists); `Prefer: handling=strict` makes the upstream refuse what
//! it would silently ignore. Included and matched entries alike pass `outbound` on the way out.
use super::paging::Counted;
use super::params::scope_params;
use super::read::ReadResult;
use super::{paging, refcheck, Ctx, ScopeError};
use crate::fhir::capabilities::Capabilities;
use crate::headers::strict_headers;
use crate::outbound;
use crate::route::{encode_query, Params};
use http::{HeaderValue, Method, StatusCode};

/// `GET [type]?…`, `POST [type]/_search`.
pub async fn search(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    params: &Params,
    self_url: &str,
) -> Result<ReadResult, ScopeError> {
    let path = search_path(ctx, caps, rtype, params)?;
    fetch(ctx, &path, self_url, Counted::Tenant, Asked::Search).await
}

/// The upstream request of [`search`]: every refusal it makes is decided here, before the
/// upstream is called (also what observe mode judges, `observe`).
pub fn search_path(ctx: &Ctx, caps: &Capabilities, rtype: &str, params: &Params) -> Result<String, ScopeError> {
    let scoped = scope_params(ctx, caps, &[rtype.to_owned()], params)?;
    Ok(format!("{rtype}?{}", encode_query(&scoped)))
}

/// `GET [base]?_type=…`, `POST [base]/_search`. Without `_type`, only parameters every type has.
pub async fn system(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    params: &Params,
    self_url: &str,
) -> Result<ReadResult, ScopeError> {
    let path = system_path(ctx, caps, params)?;
    fetch(ctx, &path, self_url, Counted::Tenant, Asked::Search).await
}

/// The upstream request of [`system`], every refusal decided before the upstream is called.
pub fn system_path(ctx: &Ctx, caps: &Capabilities, params: &Params) -> Result<String, ScopeError> {
    if !caps.system_interaction("search-system") {
        return Err(ScopeError::UpstreamUnsupported("system search"));
    }
    let mut types: Vec<String> = Vec::new();
    let mut rest = Vec::new();
    for (k, v) in params {
        if k == "_type" {
            for t in v.split(',') {
                if !caps.has_type(t) {
                    return Err(ScopeError::UnknownType(t.to_owned()));
                }
                types.push(t.to_owned());
            }
        } else {
            rest.push((k.clone(), v.clone()));
        }
    }
    let check_types = if types.is_empty() { caps.types() } else { types.clone() };
    let mut scoped = scope_params(ctx, caps, &check_types, &rest)?;
    if !types.is_empty() {
        scoped.insert(0, ("_type".into(), types.join(",")));
    }
    Ok(format!("?{}", encode_query(&scoped)))
}

/// `GET [ctype]/[id]/[type]?…`: only after the compartment owner is proven the caller's.
pub async fn compartment(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    (ctype, id, rtype): (&str, &str, &str),
    params: &Params,
    self_url: &str,
) -> Result<ReadResult, ScopeError> {
    if !caps.compartment(ctype) {
        return Err(ScopeError::UpstreamUnsupported("this compartment search"));
    }
    let owner = refcheck::owned(ctx, ctype, id).await?;
    let scoped = scope_params(ctx, caps, &[rtype.to_owned()], params)?;
    fetch(ctx, &format!("{ctype}/{owner}/{rtype}?{}", encode_query(&scoped)), self_url, Counted::Tenant, Asked::Search)
        .await
}

/// `GET [type]/_history`, `GET [base]/_history`: the upstream cannot scope these, so every
/// entry is judged on the way out and `total` (a count over all tenants) is always removed.
pub async fn history(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: Option<&str>,
    params: &Params,
    self_url: &str,
) -> Result<ReadResult, ScopeError> {
    let path = history_path(caps, rtype, params)?;
    fetch(ctx, &path, self_url, Counted::Server, Asked::Search).await
}

/// The upstream request of [`history`], every refusal decided before the upstream is called.
pub fn history_path(caps: &Capabilities, rtype: Option<&str>, params: &Params) -> Result<String, ScopeError> {
    let needed = if rtype.is_some() { "history-type" } else { "history-system" };
    let declared = match rtype {
        Some(t) => caps.type_interaction(t, needed),
        None => caps.system_interaction(needed),
    };
    if !declared {
        return Err(ScopeError::UpstreamUnsupported(if rtype.is_some() { "type history" } else { "system history" }));
    }
    let kept: Vec<(String, String)> = params.iter().filter(|(k, _)| k != "_pretty").cloned().collect();
    let path = match rtype {
        Some(t) => format!("{t}/_history"),
        None => "_history".to_owned(),
    };
    Ok(if kept.is_empty() { path } else { format!("{path}?{}", encode_query(&kept)) })
}

/// The caller's resources of `rtype` matching `criteria` (client view), for conditional
/// interactions: at most two are fetched (enough to tell "one" from "several"), and the
/// upstream's search cache is bypassed so just-written resources count.
pub async fn matching(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    criteria: &Params,
) -> Result<Vec<crate::outbound::Checked>, ScopeError> {
    if criteria.is_empty() {
        return Err(ScopeError::Param("conditional interactions need criteria".into()));
    }
    if let Some((k, _)) = criteria.iter().find(|(k, _)| {
        let base = k.split(':').next().unwrap_or(k);
        matches!(
            base,
            "_include" | "_revinclude" | "_summary" | "_elements" | "_sort" | "_count" | "_offset" | "_total"
        )
    }) {
        return Err(ScopeError::Param(format!("{k} has no meaning in conditional criteria")));
    }
    let mut criteria = criteria.clone();
    criteria.push(("_count".into(), "2".into()));
    let scoped = scope_params(ctx, caps, &[rtype.to_owned()], &criteria)?;
    let mut headers = strict_headers(ctx.correlation);
    headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let answer = ctx.upstream.send(Method::GET, &format!("{rtype}?{}", encode_query(&scoped)), headers, None).await?;
    if answer.status != StatusCode::OK {
        return Err(super::refused(&answer));
    }
    let filtered = outbound::bundle(ctx, answer.body.ok_or(ScopeError::Unprovable)?, "", Counted::Tenant, "")?;
    if filtered.dropped > 0 {
        // A match fhir-fence cannot prove is the caller's makes the decision unsafe either way.
        return Err(ScopeError::Unprovable);
    }
    Ok(filtered.bundle.into_matches())
}

/// `GET [base]?_page=token`: a later page of a search this tenant made.
pub async fn page(ctx: &Ctx<'_>, token: &str, self_url: &str) -> Result<ReadResult, ScopeError> {
    let page = paging::open(ctx, token)?;
    fetch(ctx, &format!("{}?{}", page.path, page.query), self_url, page.counted(), Asked::Page).await
}

/// What a fetch asks the upstream for: a search's first page, or a later one (whose upstream
/// page may have expired: that is as gone as a forged token).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asked {
    Search,
    Page,
}

async fn fetch(
    ctx: &Ctx<'_>,
    path: &str,
    self_url: &str,
    counted: Counted,
    asked: Asked,
) -> Result<ReadResult, ScopeError> {
    let headers = strict_headers(ctx.correlation);
    let raw = ctx.upstream.get_raw(path, headers).await?;
    if raw.status == StatusCode::OK {
        // The one-pass check first; whatever it is unsure of takes the tree below.
        if let Some(bytes) = crate::outbound::fastbundle::searchset(ctx, &raw.bytes, self_url, counted, path) {
            return Ok(ReadResult { body: bytes, headers: http::HeaderMap::new(), dropped: 0 });
        }
    }
    let answer = ctx.upstream.parse(raw)?;
    match answer.status {
        StatusCode::OK => {}
        // An expired upstream page is as gone as a forged token.
        StatusCode::NOT_FOUND | StatusCode::GONE if asked == Asked::Page => return Err(ScopeError::PageToken),
        _ => return Err(super::refused(&answer)),
    }
    let filtered = outbound::bundle(ctx, answer.body.ok_or(ScopeError::Unprovable)?, self_url, counted, path)?;
    Ok(ReadResult { body: filtered.bundle, headers: http::HeaderMap::new(), dropped: filtered.dropped })
}
