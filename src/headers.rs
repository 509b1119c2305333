//! Header names fhir-fence sets or reads itself, and the header sets every upstream request
//! starts from. A leaf: anything that talks to the upstream or answers a client may use it.
use http::{HeaderMap, HeaderName, HeaderValue};

/// The correlation id, taken from the client (or made) and passed upstream and back.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `Prefer` (`return=…`, `handling=…`, `respond-async`).
pub const PREFER: HeaderName = HeaderName::from_static("prefer");

/// Headers every upstream request carries: the correlation id.
pub fn base_headers(correlation: &str) -> HeaderMap {
    // Room for what `upstream` and the scope modules add (Accept, Prefer, Content-Type).
    let mut h = HeaderMap::with_capacity(4);
    if let Ok(v) = correlation.parse() {
        h.insert(X_REQUEST_ID, v);
    }
    h
}

/// Headers for every upstream search-like request: the correlation id and `Prefer:
/// handling=strict`, so the upstream refuses a parameter it would otherwise silently ignore.
pub fn strict_headers(correlation: &str) -> HeaderMap {
    let mut h = base_headers(correlation);
    h.insert(PREFER, HeaderValue::from_static("handling=strict"));
    h
}

/// `ETag` and `Last-Modified` from an upstream answer: they describe the caller's own version.
pub fn version_headers(upstream: &HeaderMap) -> HeaderMap {
    // Room for what `answer` adds (Content-Type, X-Request-Id).
    let mut h = HeaderMap::with_capacity(4);
    for name in [http::header::ETAG, http::header::LAST_MODIFIED] {
        if let Some(v) = upstream.get(&name) {
            h.insert(name, v.clone());
        }
    }
    h
}

/// The answer's `X-Request-Id`: the request's correlation id (none when it is empty).
pub fn set_correlation(h: &mut HeaderMap, correlation: &str) {
    if correlation.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(correlation) {
        h.insert(X_REQUEST_ID, v);
    }
}
