//! Observe mode's pass-through: the client's request sent to the tenant's legacy upstream as a
//! plain proxy would send it — method, path below the FHIR base, query and body unchanged, the
//! headers that change what a FHIR server does — and its answer returned unchanged (status,
//! content headers, body byte for byte). The client's `Authorization` never goes on: the
//! upstream gets fhir-fence's own credentials (`upstreams.NAME.bearer_file`/`oauth2`).
use crate::error::Error;
use crate::headers::{base_headers, set_correlation};
use crate::route::RouteError;
use crate::scope::Ctx;
use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::Full;

/// Request headers passed on (with fhir-fence's own `X-Request-Id`): those that change what a
/// FHIR server does (`replay::format` keeps the same), and the body's encoding.
const FORWARDED: &[&str] = &[
    "accept",
    "content-type",
    "content-encoding",
    "prefer",
    "if-match",
    "if-none-match",
    "if-none-exist",
    "if-modified-since",
];

/// Answer headers passed back: the content's own, and those naming what was written.
const ANSWERED: &[&str] =
    &["content-type", "content-encoding", "content-location", "location", "etag", "last-modified"];

/// Sends the request to the tenant's upstream and answers with what it said. A path outside the
/// FHIR base is not passed on (there is no legacy path for it): refused as enforcement does.
pub async fn forward(ctx: &Ctx<'_>, parts: &http::request::Parts, body: Bytes) -> Result<Response<Full<Bytes>>, Error> {
    let path = parts.uri.path();
    let below = path
        .strip_prefix(ctx.snap.base_path.as_str())
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        .ok_or_else(|| RouteError::NotFhir(path.to_owned()))?;
    let below = below.strip_prefix('/').unwrap_or(below);
    if !plain_path(below) {
        return Err(RouteError::NotFhir(path.to_owned()).into());
    }
    let target = match parts.uri.query() {
        Some(q) => format!("{below}?{q}"),
        None => below.to_owned(),
    };
    let mut headers = base_headers(ctx.correlation);
    copy(&parts.headers, &mut headers, FORWARDED);
    let (answer, bytes) = ctx.upstream.forward(parts.method.clone(), &target, headers, body).await?;
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = answer.status;
    copy(&answer.headers, resp.headers_mut(), ANSWERED);
    set_correlation(resp.headers_mut(), ctx.correlation);
    Ok(resp)
}

/// Whether a path below the base is plain FHIR path segments (`Patient/123/_history/2`,
/// `$everything`, `metadata`): letters, digits, `-`, `.`, `_`, `$`, no `.` or `..` segment, no
/// empty segment, nothing percent-encoded. Anything else could leave the FHIR base on the
/// upstream (`/fhir/../admin`, `%2e%2e`, an encoded `/`, `;` parameters) with fhir-fence's own
/// upstream credentials attached, so it is not forwarded.
fn plain_path(below: &str) -> bool {
    below.is_empty()
        || below.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'$'))
        })
}

fn copy(from: &HeaderMap, to: &mut HeaderMap, names: &[&'static str]) {
    for name in names {
        for v in from.get_all(*name) {
            to.append(*name, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::plain_path;

    #[test]
    fn only_plain_fhir_paths_are_forwarded() {
        for ok in ["", "metadata", "Patient", "Patient/a-1/_history/2", "Patient/1/$everything", "Observation/_search"]
        {
            assert!(plain_path(ok), "{ok}");
        }
        for bad in [
            "..",
            "../admin",
            "Patient/../../x",
            "./Patient",
            "%2e%2e/x",
            "Patient%2F..%2Fx",
            "Patient/x;..;/y",
            "%5c..%5c",
            "Patient/%00",
            "Patient//1",
            "Patient/",
            "Patient/a b",
        ] {
            assert!(!plain_path(bad), "{bad}");
        }
    }
}
