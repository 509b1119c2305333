//! A search of one type scoped by the tenant parameter (`_tag` or `_security` = the tenant
//! coding, as every proxied search is), paged to its end by the upstream's own `next` links.
//! `Cache-Control: no-cache`, so the upstream runs the search now instead of answering from a
//! result it cached (HAPI shares identical searches for 60 s), and `Prefer: handling=strict`.
//! Only `next` links under the upstream's base that page a cached search (`?_getpages=`) are
//! followed; any other link fails the scan rather than being guessed at.
use super::progress::Progress;
use super::{DataError, Job};
use crate::headers::strict_headers;
use crate::upstream::Upstream;
use http::{HeaderValue, Method, StatusCode};
use serde_json::Value;

/// Entries asked for per page.
pub const PAGE: usize = 500;

/// One search, page by page.
pub struct Scan<'j> {
    upstream: &'j Upstream,
    correlation: &'j str,
    /// What is scanned, for errors.
    what: String,
    /// Besides cached-search pages: a `next` link to this path under the base is followed too
    /// (only `_history`: a history feed pages by `_offset` on its own path).
    own_path: Option<String>,
    /// The next request's path relative to the upstream base; `None` once the last page was read.
    next: Option<String>,
    /// `Bundle.total` of the first page, when the upstream gave one.
    pub total: Option<u64>,
}

/// The tenant parameter's query for `rtype`: `Type?_tag=system|code` plus `extra` pairs.
pub fn query(job: &Job, rtype: &str, extra: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair(job.snap.marking.search_param(), &job.snap.marking.search_value(&job.tenant));
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    format!("{rtype}?{}", q.finish())
}

/// The headers of every scan request.
pub fn headers(job: &Job) -> http::HeaderMap {
    request_headers(&job.correlation)
}

fn request_headers(correlation: &str) -> http::HeaderMap {
    let mut h = strict_headers(correlation);
    h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h
}

impl<'j> Scan<'j> {
    pub fn new(job: &'j Job, rtype: &str) -> Scan<'j> {
        let first = query(job, rtype, &[("_count", &PAGE.to_string())]);
        Scan::path(&job.upstream, &job.correlation, &format!("the search of {rtype}"), first)
    }

    /// Any search on `upstream` (`first`: its path relative to the base, `_count` included),
    /// paged the same way; `what` names it in errors. `adopt` reads a legacy server so, a
    /// move reads the history feed so.
    pub fn path(upstream: &'j Upstream, correlation: &'j str, what: &str, first: String) -> Scan<'j> {
        // Only a history feed pages by links to itself; a search's other links could drop its
        // tenant parameter, so they are not followed.
        let own_path = first.split('?').next().filter(|p| *p == "_history").map(str::to_owned);
        Scan { upstream, correlation, what: what.to_owned(), next: Some(first), total: None, own_path }
    }

    /// The resources of the next page as the upstream sent them (`None` after the last page).
    /// Entries without a resource are skipped; the caller judges every resource.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Value>>, DataError> {
        let Some(entries) = self.next_entries().await? else { return Ok(None) };
        Ok(Some(
            entries
                .into_iter()
                .filter_map(|e| match e {
                    Value::Object(mut e) => e.remove("resource"),
                    _ => None,
                })
                .collect(),
        ))
    }

    /// The entries of the next page as the upstream sent them (`None` after the last page).
    pub async fn next_entries(&mut self) -> Result<Option<Vec<Value>>, DataError> {
        let Some(path) = self.next.take() else { return Ok(None) };
        let what = self.what.clone();
        let answer = self.upstream.send(Method::GET, &path, request_headers(self.correlation), None).await?;
        if answer.status != StatusCode::OK {
            return Err(status_error(&what, &answer));
        }
        let Some(Value::Object(mut bundle)) = answer.body else {
            return Err(DataError::Answer(what, "no Bundle".into()));
        };
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(DataError::Answer(what, "not a Bundle".into()));
        }
        if self.total.is_none() {
            self.total = bundle.get("total").and_then(Value::as_u64);
        }
        let next = bundle
            .get("link")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
            .and_then(|l| l.get("url").and_then(Value::as_str));
        if let Some(url) = next {
            let followed = page_path(&self.upstream.base, url)
                .or_else(|| self.own_path.as_deref().and_then(|p| own_page(&self.upstream.base, p, url)));
            self.next = Some(followed.ok_or_else(|| {
                DataError::Answer(what.clone(), format!("a next link fhir-fence does not follow: {url}"))
            })?);
        }
        match bundle.remove("entry") {
            Some(Value::Array(e)) => Ok(Some(e)),
            _ => Ok(Some(Vec::new())),
        }
    }
}

/// The path (relative to the base) of an upstream `next` link, if it pages a cached search on
/// this upstream: `{base}?_getpages=…`.
fn page_path(base: &str, url: &str) -> Option<String> {
    let query = url.strip_prefix(base)?.strip_prefix('?')?;
    query.split('&').any(|p| p.split('=').next() == Some("_getpages")).then(|| format!("?{query}"))
}

/// The path (relative to the base) of a `next` link to `path` itself under the base, e.g.
/// `{base}/_history?_since=…&_offset=50`.
fn own_page(base: &str, path: &str, url: &str) -> Option<String> {
    let rest = url.strip_prefix(base)?.strip_prefix('/')?;
    let (p, query) = rest.split_once('?')?;
    (p == path).then(|| format!("{p}?{query}"))
}

/// Count searches in flight at once.
const CONCURRENT_COUNTS: usize = 8;

/// How many resources the tenant holds of each of `types` (`_summary=count`, run now, several
/// at a time), in the order of `types`.
pub async fn counts(
    job: &Job,
    types: &[String],
    progress: &Progress,
    phase: &str,
) -> Result<Vec<(String, u64)>, DataError> {
    let mut out: Vec<(String, u64)> = Vec::with_capacity(types.len());
    let mut running = tokio::task::JoinSet::new();
    let mut pending = types.iter();
    loop {
        while running.len() < CONCURRENT_COUNTS {
            let Some(rtype) = pending.next() else { break };
            let (upstream, path, headers) =
                (job.upstream.clone(), query(job, rtype, &[("_summary", "count")]), headers(job));
            let rtype = rtype.clone();
            running.spawn(async move {
                let answer = upstream.send(Method::GET, &path, headers, None).await;
                (rtype, answer)
            });
        }
        let Some(done) = running.join_next().await else { break };
        let (rtype, answer) = done.map_err(|e| DataError::Refused(format!("a count search failed: {e}")))?;
        let answer = answer?;
        let what = format!("the count of {rtype}");
        if answer.status != StatusCode::OK {
            return Err(status_error(&what, &answer));
        }
        let n = answer.body.as_ref().and_then(|b| b.get("total")).and_then(Value::as_u64);
        out.push((rtype, n.ok_or_else(|| DataError::Answer(what, "no total".into()))?));
        progress.update(phase, None, out.len() as u64, Some(types.len() as u64));
    }
    out.sort_by_key(|(t, _)| types.iter().position(|x| x == t));
    Ok(out)
}

/// The searchable types in which the tenant holds at least one resource, with their counts.
pub async fn held(job: &Job, progress: &Progress, phase: &str) -> Result<Vec<(String, u64)>, DataError> {
    let mut c = counts(job, &job.searchable_types(), progress, phase).await?;
    c.retain(|(_, n)| *n > 0);
    Ok(c)
}

/// An upstream answer with an unexpected status, with its first diagnostics (operator output).
pub fn status_error(what: &str, answer: &crate::upstream::Answer) -> DataError {
    DataError::Status {
        what: what.to_owned(),
        status: answer.status.as_u16(),
        detail: diagnostics(answer.body.as_ref()),
    }
}

/// The first `issue.diagnostics` of an OperationOutcome, or a placeholder.
pub fn diagnostics(body: Option<&Value>) -> String {
    body.and_then(|b| b.pointer("/issue/0/diagnostics"))
        .and_then(Value::as_str)
        .unwrap_or("(no diagnostics)")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paging_links_on_the_upstream_are_followed() {
        let base = "http://h:8090/fhir";
        assert_eq!(
            page_path(base, "http://h:8090/fhir?_getpages=abc&_getpagesoffset=500&_count=500").as_deref(),
            Some("?_getpages=abc&_getpagesoffset=500&_count=500")
        );
        for refused in [
            "http://evil/fhir?_getpages=abc",
            "http://h:8090/fhir/Patient?_tag=x",
            "http://h:8090/fhirx?_getpages=abc",
            "http://h:8090/fhir?_getpagesx=abc",
        ] {
            assert_eq!(page_path(base, refused), None, "{refused}");
        }
        assert_eq!(
            own_page(base, "_history", "http://h:8090/fhir/_history?_count=50&_offset=50").as_deref(),
            Some("_history?_count=50&_offset=50")
        );
        for refused in [
            "http://evil/fhir/_history?_offset=5",
            "http://h:8090/fhir/Patient?_offset=5",
            "http://h:8090/fhir/_history",
        ] {
            assert_eq!(own_page(base, "_history", refused), None, "{refused}");
        }
    }
}
