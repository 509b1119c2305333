//! Request hygiene: what a client's request must look like before its FHIR meaning is
//! considered — headers that change a request's meaning, acceptable media types, bounded and
//! strictly parsed bodies, the correlation id.
use crate::fhir::json::{parse_strict, JsonError};
use crate::fhir::shape::{self, ShapeError};
use crate::headers::{PREFER, X_REQUEST_ID};
use crate::route;
use bytes::Bytes;
use http::header;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

/// Problems with the client's request itself (before any FHIR meaning is considered).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("content type {0:?} is not accepted here")]
    MediaType(String),
    #[error("{0}")]
    PatchFormat(&'static str),
    #[error("a FHIRPath Patch (PATCH with a FHIR JSON body) must be a Parameters resource")]
    NotParameters,
    #[error("compressed or otherwise encoded request bodies are not accepted")]
    Encoded,
    #[error("this server answers only in FHIR JSON (application/fhir+json)")]
    NotAcceptable,
    #[error("the request body is not acceptable JSON: {0}")]
    Json(JsonError),
    /// Valid JSON, but not FHIR R4 JSON as the specification defines it (`fhir::shape`).
    #[error("the request body is not valid FHIR R4 JSON: {0}")]
    Shape(ShapeError),
    #[error("this request must not carry a body")]
    UnexpectedBody,
    #[error("header {0} is not accepted")]
    Header(&'static str),
    #[error("the request body could not be read")]
    Read,
    #[error("the request body arrived too slowly (at least {0} bytes per second are expected)")]
    SlowBody(u64),
    /// A form search's parameters, refused like the same parameters in the URL.
    #[error(transparent)]
    Form(#[from] route::RouteError),
}

/// How much body a request may send, and how fast it must arrive (`server.*` in the config).
#[derive(Clone, Copy)]
pub(crate) struct BodyLimits {
    pub max_bytes: usize,
    pub grace: std::time::Duration,
    pub min_rate: u64,
}

impl BodyLimits {
    pub fn of(server: &crate::config::Server) -> Self {
        BodyLimits {
            max_bytes: server.max_body_bytes,
            grace: std::time::Duration::from_millis(server.body_timeout_ms),
            min_rate: server.min_body_bytes_per_sec.max(1),
        }
    }
}

pub(crate) fn accepts_fhir_json(headers: &HeaderMap) -> bool {
    accepts(headers, &["application/json", "application/fhir+json"])
}

/// True when `Accept` names the FHIR JSON media type itself: how a client asks for a `Binary`
/// as a resource rather than its content (FHIR R4 §Binary; HAPI answers the same way, and
/// gives the content for no `Accept`, wildcards and plain `application/json`).
pub(crate) fn asks_for_fhir_resource(headers: &HeaderMap) -> bool {
    let Some(Ok(accept)) = headers.get(header::ACCEPT).map(|a| a.to_str()) else { return false };
    accept
        .split(',')
        .any(|range| range.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/fhir+json"))
}

/// True when `Accept` is absent, or one of its ranges is a wildcard or one of `types`.
fn accepts(headers: &HeaderMap, types: &[&str]) -> bool {
    let Some(accept) = headers.get(header::ACCEPT) else { return true };
    let Ok(accept) = accept.to_str() else { return false };
    accept.split(',').any(|range| {
        let mime = range.split(';').next().unwrap_or("").trim();
        crate::upstream::media_type_is(mime, &["*/*", "application/*", ""])
            || crate::upstream::media_type_is(mime, types)
    })
}

/// True when the request's `Prefer` header holds `token` (e.g. `return=minimal`, `respond-async`).
pub(crate) fn prefers(headers: &HeaderMap, token: &str) -> bool {
    let prefer = headers.get(PREFER).and_then(|v| v.to_str().ok()).unwrap_or("");
    prefer.split([',', ';']).any(|p| p.trim() == token)
}

/// For export files: NDJSON, or no preference.
pub(crate) fn accepts_ndjson(headers: &HeaderMap) -> bool {
    accepts(headers, &["application/fhir+ndjson", "application/ndjson"])
}

pub(crate) fn ensure_no_body(headers: &HeaderMap) -> Result<(), RequestError> {
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("0");
    if length != "0" || headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(RequestError::UnexpectedBody);
    }
    Ok(())
}

/// What a request body must be.
#[derive(Clone, Copy)]
pub(crate) enum BodyKind<'a> {
    /// A FHIR resource in JSON.
    Resource,
    /// A patch: an RFC 6902 JSON Patch document (`application/json-patch+json`), or a FHIRPath
    /// Patch (`application/fhir+json` or `application/json`: a `Parameters` resource, which
    /// passes the typed gate like any resource body).
    JsonPatch,
    /// The body of a create or update of a `Binary`: the resource in FHIR JSON, or any other
    /// content, which becomes the Binary's `data` with its `Content-Type` as `contentType` (FHIR
    /// R4 §Binary; HAPI does the same), `id` the update's.
    Binary { id: Option<&'a str> },
}

/// The media type of the body (lower case, without parameters), refusing encodings and non-UTF-8 charsets.
fn media_type(headers: &HeaderMap) -> Result<String, RequestError> {
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        if enc.as_bytes() != b"identity" {
            return Err(RequestError::Encoded);
        }
    }
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let charset_ok = parts.all(|p| {
        let p = p.trim().to_ascii_lowercase();
        !p.starts_with("charset=") || p == "charset=utf-8" || p == "charset=\"utf-8\""
    });
    if !charset_ok {
        return Err(RequestError::MediaType(ct.to_owned()));
    }
    Ok(mime)
}

/// Reads a whole body, at most `limits.max_bytes`, arriving no slower than the grace period plus
/// one second per `min_rate` bytes received so far allows (else 408): the deadline moves with
/// the data, so a large body at a decent rate is fine and a trickle is cut off.
pub(crate) async fn collect(body: Incoming, limits: BodyLimits) -> Result<Bytes, RequestError> {
    let started = tokio::time::Instant::now();
    let mut body = Limited::new(body, limits.max_bytes);
    let mut buf = bytes::BytesMut::new();
    loop {
        let allowed = limits.grace + std::time::Duration::from_secs_f64(buf.len() as f64 / limits.min_rate as f64);
        let frame = match tokio::time::timeout_at(started + allowed, body.frame()).await {
            Err(_) => return Err(RequestError::SlowBody(limits.min_rate)),
            Ok(None) => break,
            Ok(Some(frame)) => frame,
        };
        let frame = frame.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                RequestError::TooLarge(limits.max_bytes)
            } else {
                RequestError::Read
            }
        })?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// A request body judged: of the expected media type, parsed strictly, resources through the
/// typed gate. `bytes` yields the body ([`collect`]) and is awaited only once the headers are
/// found acceptable, so a refused request's body is never read; observe mode (`observe`) gives
/// it the bytes it already holds, so it judges a body exactly as enforcement would.
pub(crate) async fn parse_body(
    headers: &HeaderMap,
    bytes: impl std::future::Future<Output = Result<Bytes, RequestError>>,
    kind: BodyKind<'_>,
) -> Result<Value, RequestError> {
    if let BodyKind::Binary { id } = kind {
        if let Some(content_type) = raw_content_type(headers)? {
            let bytes = bytes.await?;
            let value = binary(content_type, id, &bytes);
            shape::check(&value).map_err(RequestError::Shape)?;
            return Ok(value);
        }
    }
    let mime = media_type(headers)?;
    match (kind, mime.as_str()) {
        (BodyKind::Resource | BodyKind::Binary { .. }, "application/fhir+json" | "application/json") => {}
        (BodyKind::JsonPatch, "application/json-patch+json") => {
            let bytes = bytes.await?;
            return parse_strict(&bytes).map_err(RequestError::Json);
        }
        (BodyKind::JsonPatch, "application/fhir+json" | "application/json") => {}
        (BodyKind::JsonPatch, _) => {
            return Err(RequestError::PatchFormat(
                "only JSON Patch (application/json-patch+json) and FHIRPath Patch (a Parameters resource as \
                 application/fhir+json) are accepted; XML Patch and other formats are not",
            ))
        }
        _ => return Err(RequestError::MediaType(mime)),
    }
    let bytes = bytes.await?;
    let value = parse_strict(&bytes).map_err(RequestError::Json)?;
    // The typed inbound gate: every resource body a client sends (single writes, Bundles with
    // all their entries, Parameters with their resources) has the R4 shape before any scope
    // module walks it, so no shape the upstream's lenient parser reads can hide from the walkers.
    // A FHIRPath Patch is a Parameters resource and nothing else.
    if let BodyKind::JsonPatch = kind {
        if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(RequestError::NotParameters);
        }
    }
    shape::check(&value).map_err(RequestError::Shape)?;
    Ok(value)
}

/// The media type of a Binary's raw content: `Some` for anything but FHIR JSON (which is the
/// Binary resource itself). A `Content-Type` must be there and be a valid `type/subtype`
/// (parameters kept, as the client sent them); content encodings are refused as for any body.
fn raw_content_type(headers: &HeaderMap) -> Result<Option<String>, RequestError> {
    if headers.get(header::CONTENT_ENCODING).is_some_and(|e| e.as_bytes() != b"identity") {
        return Err(RequestError::Encoded);
    }
    let sent = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::trim).unwrap_or("");
    let mime = sent.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if matches!(mime.as_str(), "application/fhir+json" | "application/json") {
        return Ok(None);
    }
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    match mime.split_once('/') {
        Some((kind, sub)) if token(kind) && token(sub) => Ok(Some(sent.to_owned())),
        _ => Err(RequestError::MediaType(sent.to_owned())),
    }
}

/// A `Binary` holding `bytes` as its `data`.
fn binary(content_type: String, id: Option<&str>, bytes: &[u8]) -> Value {
    use base64::Engine;
    let mut binary = serde_json::Map::new();
    binary.insert("resourceType".into(), "Binary".into());
    if let Some(id) = id {
        binary.insert("id".into(), id.into());
    }
    binary.insert("contentType".into(), content_type.into());
    if !bytes.is_empty() {
        binary.insert("data".into(), base64::engine::general_purpose::STANDARD.encode(bytes).into());
    }
    Value::Object(binary)
}

/// A form-encoded search body (`POST …/_search`), decoded as strictly as a query string;
/// `bytes` as for [`parse_body`].
pub(crate) async fn parse_form(
    headers: &HeaderMap,
    bytes: impl std::future::Future<Output = Result<Bytes, RequestError>>,
) -> Result<route::Params, RequestError> {
    let mime = media_type(headers)?;
    if mime != "application/x-www-form-urlencoded" {
        return Err(RequestError::MediaType(mime));
    }
    let bytes = bytes.await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| RequestError::MediaType("non-UTF-8 form".into()))?;
    Ok(route::parse_query(Some(text.trim_end_matches(['\r', '\n'])))?)
}

/// Headers that would make the upstream (or a middlebox) reinterpret the request.
const REFUSED_HEADERS: &[&str] = &["x-http-method-override", "x-http-method", "x-method-override"];

/// Refuses headers that would make the upstream (or a middlebox) reinterpret the request.
pub(crate) fn check_headers(headers: &HeaderMap) -> Result<(), RequestError> {
    // One pass over the request's few header names (a look-up per refused name hashes each).
    for name in headers.keys() {
        if let Some(h) = REFUSED_HEADERS.iter().find(|h| **h == name.as_str()) {
            return Err(RequestError::Header(h));
        }
    }
    Ok(())
}

/// A client-supplied `X-Request-Id` if it is a short plain token, else a fresh UUID.
pub(crate) fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn accept_header() {
        let mut h = HeaderMap::new();
        assert!(accepts_fhir_json(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/fhir+xml"));
        assert!(!accepts_fhir_json(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/fhir+xml, application/fhir+json;q=0.5"));
        assert!(accepts_fhir_json(&h));
    }

    #[test]
    fn correlation_ids() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(correlation_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("bad value with spaces"));
        assert_ne!(correlation_id(&h), "bad value with spaces");
    }
}
