//! Paging links as sealed tokens bound to the tenant.
//!
//! HAPI's `_getpages=<uuid>` links replay a cached search for anyone who has the uuid
//! (hapi-fhir#7888). fhir-fence never shows them: each `next`/`previous` link becomes
//! `{public_base}?_page=<token>`, where the token is the upstream query sealed (AEAD) together
//! with the tenant and upstream names. Another tenant's, a tampered or an expired token → 404.
use super::{Ctx, ScopeError};
use crate::route::encode_component;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;

const PURPOSE: &str = "fhir-fence/page/v1";

#[derive(Debug, Serialize, Deserialize)]
/// What a sealed page token holds. The one-letter names on the wire keep tokens short.
pub struct PageToken {
    /// Tenant name.
    #[serde(rename = "t")]
    pub tenant: String,
    /// Upstream name.
    #[serde(rename = "u")]
    pub upstream: String,
    /// The upstream path of this page, relative to its base: `""` for `_getpages` links,
    /// `…/_history` for history pages (HAPI pages history by `_offset`).
    #[serde(rename = "p", default)]
    pub path: String,
    /// The upstream's query string for this page (`_getpages=…&_getpagesoffset=…`, or `_count=…&_offset=…`).
    #[serde(rename = "q")]
    pub query: String,
    /// The search could not be scoped upstream (type/system history): `total` is always removed.
    #[serde(rename = "h", default)]
    pub unscoped: bool,
    /// The SMART grant's fingerprint of the caller whose search this is (0: none enforced).
    #[serde(rename = "g", default)]
    pub grant: u64,
}

/// What the upstream's search covered: it decides whether the upstream's `Bundle.total` may be
/// shown, and a page token remembers it for the pages after the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Run with the tenant parameter: its count is of the caller's resources (kept unless an
    /// entry was dropped on the way out).
    Tenant,
    /// Run over the whole server (type and system history, which the upstream cannot scope):
    /// its count is every tenant's, and is always removed.
    Server,
}

impl PageToken {
    pub fn counted(&self) -> Counted {
        if self.unscoped {
            Counted::Server
        } else {
            Counted::Tenant
        }
    }
}

/// Opens a token for `ctx.tenant`; any mismatch is the same 404 as a forged token.
pub fn open(ctx: &Ctx, token: &str) -> Result<PageToken, ScopeError> {
    let page: PageToken = ctx.snap.seals.open(ctx.tenant, PURPOSE, token).map_err(|_| ScopeError::PageToken)?;
    if page.tenant != ctx.tenant.name || page.upstream != ctx.upstream.name || page.grant != ctx.grant {
        return Err(ScopeError::PageToken);
    }
    Ok(page)
}

fn seal(ctx: &Ctx, (path, query): (&str, &str), counted: Counted) -> String {
    let token = PageToken {
        tenant: ctx.tenant.name.clone(),
        upstream: ctx.upstream.name.clone(),
        path: path.to_owned(),
        query: query.to_owned(),
        unscoped: counted == Counted::Server,
        grant: ctx.grant,
    };
    ctx.snap.seals.seal(ctx.tenant, PURPOSE, &token, Duration::from_secs(ctx.snap.page_ttl_secs))
}

/// Rewrites `Bundle.link`: `self` → the client's URL; paging relations → sealed tokens;
/// anything else (or any link fhir-fence cannot read) is dropped. `asked` is the upstream
/// request (`path?query`, relative to its base) the Bundle answers (`""`: none to repeat).
pub fn rewrite_links(
    ctx: &Ctx,
    bundle: &mut Map<String, Value>,
    self_url: &str,
    counted: Counted,
    asked: &str,
) -> Result<(), ScopeError> {
    let links = match bundle.remove("link") {
        None => return Ok(()),
        Some(Value::Array(l)) => l,
        Some(_) => return Err(ScopeError::Unprovable),
    };
    let mut out = Vec::new();
    for link in links {
        let relation = link.get("relation").and_then(Value::as_str).unwrap_or_default();
        let url = link.get("url").and_then(Value::as_str).unwrap_or_default();
        let new_url = match relation {
            "self" => self_url.to_owned(),
            "next" | "previous" | "prev" | "first" | "last" => match upstream_page(ctx, url, asked) {
                Some(q) => format!("{}?_page={}", ctx.snap.public_base, encode_component(&seal(ctx, q, counted))),
                None => continue,
            },
            _ => continue,
        };
        let mut l = Map::new();
        l.insert("relation".into(), Value::String(relation.to_owned()));
        l.insert("url".into(), Value::String(new_url));
        out.push(Value::Object(l));
    }
    if !out.is_empty() {
        bundle.insert("link".into(), Value::Array(out));
    }
    Ok(())
}

/// The (path, query) of an upstream paging link, if it is one fhir-fence knows how to replay:
/// `{base}?_getpages=…` (search results cached upstream, HAPI), `{base}/…/_history?_count=…&_offset=…`
/// or `&_cursor=…` (history pages), or the search fhir-fence `asked` for again with only its
/// paging state (`_cursor`, `_offset`) changed or removed (the Helios FHIR Server's keyset and
/// offset links, and its `first` link).
fn upstream_page<'u>(ctx: &Ctx, url: &'u str, asked: &str) -> Option<(&'u str, &'u str)> {
    let rest = url.strip_prefix(ctx.upstream.base.as_str())?;
    let (path, query) = rest.split_once('?')?;
    let path = path.strip_prefix('/').unwrap_or(path);
    let keys = || query.split('&').map(|p| p.split('=').next().unwrap_or(""));
    if path.is_empty() {
        return keys().any(|k| k == "_getpages").then_some((path, query));
    }
    if continues(path, query, asked) {
        return Some((path, query));
    }
    let history_path = path == "_history" || path.ends_with("/_history");
    let safe_segments = path
        .split('/')
        .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'));
    let paging_keys = keys().all(|k| matches!(k, "_count" | "_offset" | "_since" | "_at" | "_cursor"));
    (history_path && safe_segments && paging_keys && !path.contains("..")).then_some((path, query))
}

/// Whether a link (`path?query`) asks for the search fhir-fence `asked` for: the same path and
/// the same decoded parameters, in any order, but the paging state (`_cursor`, `_offset`). So a
/// later page carries the tenant's scope exactly as the first did, whatever the upstream writes
/// into its links.
fn continues(path: &str, query: &str, asked: &str) -> bool {
    let (asked_path, asked_query) = asked.split_once('?').unwrap_or((asked, ""));
    let searched = |q: &str| {
        crate::route::parse_query(Some(q)).ok().map(|mut p| {
            p.retain(|(k, _)| k != "_cursor" && k != "_offset");
            p.sort();
            p
        })
    };
    !path.is_empty()
        && path == asked_path.trim_start_matches('/')
        && searched(query).is_some_and(|link| searched(asked_query) == Some(link))
}

#[cfg(test)]
mod tests {
    use super::continues;

    #[test]
    fn a_cursor_link_must_repeat_the_search_it_continues() {
        let asked = "Observation?subject=Patient%2Fa-p1&_tag=https%3A%2F%2Ft%7Ca&_count=2";
        // The same parameters, re-encoded and reordered, with a cursor: a later page of it.
        assert!(continues("Observation", "_count=2&_tag=https://t%7Ca&subject=Patient/a-p1&_cursor=eyJ9", asked));
        // A page of a page: the old cursor in `asked`, a new one in the link.
        assert!(continues(
            "Observation",
            "_count=2&_tag=https://t|a&subject=Patient/a-p1&_cursor=b",
            &format!("{asked}&_cursor=a")
        ));
        // The tenant's scope dropped, changed or doubled; another type; another parameter.
        assert!(!continues("Observation", "_count=2&subject=Patient/a-p1&_cursor=b", asked));
        assert!(!continues("Observation", "_count=2&_tag=https://t|b&subject=Patient/a-p1&_cursor=b", asked));
        assert!(!continues(
            "Observation",
            "_count=2&_tag=https://t|a&_tag=https://t|b&subject=Patient/a-p1&_cursor=b",
            asked
        ));
        assert!(!continues("Patient", "_count=2&_tag=https://t|a&subject=Patient/a-p1&_cursor=b", asked));
        assert!(!continues(
            "Observation",
            "_count=2&_tag=https://t|a&subject=Patient/a-p1&_cursor=b&_elements=id",
            asked
        ));
        // Offset paging (several sort keys), and the `first` link: the search itself.
        assert!(continues("Observation", "_count=2&_tag=https://t|a&subject=Patient/a-p1&_offset=2", asked));
        assert!(continues("Observation", "_count=2&_tag=https://t|a&subject=Patient/a-p1", asked));
        // Nothing asked (a Bundle inside a transaction answer): no link is replayed.
        assert!(!continues("Observation", "_cursor=b", ""));
        assert!(!continues("", "_cursor=b", ""));
    }
}
