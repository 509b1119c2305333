//! Turning scope results into HTTP responses: FHIR JSON with the headers fhir-fence chooses,
//! `Prefer: return=minimal`, 304 for conditional reads, and a Binary's own bytes.
use crate::dispatch::Outcome;
use crate::headers::set_correlation;
use crate::outbound::Checked;
use crate::request::{asks_for_fhir_resource, prefers};
use crate::scope::{conditional, read, write, Ctx, ScopeError};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// Errors a streamed response body can end with (the connection is then aborted).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every public response's body: a whole buffer, or a stream (export files).
pub type Body = BoxBody<Bytes, BoxError>;

/// A buffered response as a [`Body`] response.
pub(crate) fn boxed(resp: Response<Full<Bytes>>) -> Response<Body> {
    resp.map(|b| b.map_err(|never| match never {}).boxed())
}

/// A single request's answer to what its interaction produced.
pub(crate) fn respond(
    ctx: &Ctx,
    outcome: Outcome,
    request_headers: &HeaderMap,
) -> Result<Response<Full<Bytes>>, ScopeError> {
    Ok(match outcome {
        Outcome::Read(result) => read_response(ctx, result, request_headers)?,
        Outcome::Found(result) => ok_response(result, ctx.correlation),
        Outcome::Written { rtype, done } => written(ctx, &rtype, done, request_headers),
        Outcome::Other { status, body, headers } => checked_response(status, body, headers, ctx.correlation),
    })
}

/// The answer to a read or vread: 304 for an unchanged resource the caller already has; a
/// Binary's own bytes unless the client asks for the resource (checked as JSON first).
pub(crate) fn read_response(
    ctx: &Ctx,
    result: read::ReadResult,
    request_headers: &HeaderMap,
) -> Result<Response<Full<Bytes>>, ScopeError> {
    if conditional::not_modified(request_headers, &result) {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        resp.headers_mut().extend(result.headers);
        set_correlation(resp.headers_mut(), ctx.correlation);
        return Ok(resp);
    }
    if result.body.get("resourceType").and_then(Value::as_str) == Some("Binary")
        && !asks_for_fhir_resource(request_headers)
    {
        return binary_content(ctx, StatusCode::OK, &result.body, result.headers);
    }
    Ok(ok_response(result, ctx.correlation))
}

/// 200 with a read-family result.
pub(crate) fn ok_response(result: read::ReadResult, correlation: &str) -> Response<Full<Bytes>> {
    checked_response(StatusCode::OK, result.body, result.headers, correlation)
}

/// The raw content of a Binary the caller owns (checked by the outbound gate), with its own
/// content type.
fn binary_content(
    ctx: &Ctx,
    status: StatusCode,
    body: &Checked,
    headers: HeaderMap,
) -> Result<Response<Full<Bytes>>, ScopeError> {
    use base64::Engine;
    let content_type = body.get("contentType").and_then(Value::as_str).unwrap_or("application/octet-stream");
    let content_type = HeaderValue::from_str(content_type).map_err(|_| ScopeError::Unprovable)?;
    let data = body.get("data").and_then(Value::as_str).unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD.decode(data).map_err(|_| ScopeError::Unprovable)?;
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().extend(headers);
    resp.headers_mut().insert(header::CONTENT_TYPE, content_type);
    // A tenant's content served from the API's origin: never sniffed into something else, and
    // never run as a page of that origin (an HTML or SVG Binary).
    resp.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    set_correlation(resp.headers_mut(), ctx.correlation);
    Ok(resp)
}

/// The answer to a create or update, honouring `Prefer: return=…`.
pub(crate) fn written(
    ctx: &Ctx,
    rtype: &str,
    done: write::WriteResult,
    request_headers: &HeaderMap,
) -> Response<Full<Bytes>> {
    let location = done.location(&ctx.snap.public_base, rtype);
    let mut headers = done.headers;
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v.clone());
        headers.insert(header::CONTENT_LOCATION, v);
    }
    if prefers(request_headers, "return=minimal") {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = done.status;
        resp.headers_mut().extend(headers);
        set_correlation(resp.headers_mut(), ctx.correlation);
        return resp;
    }
    match done.body {
        // A Binary written is answered as its content, as a read of it is (and as HAPI answers
        // a client that does not ask for the resource).
        Some(body) if rtype == "Binary" && body.as_tree().is_some() && !asks_for_fhir_resource(request_headers) => {
            binary_content(ctx, done.status, &body, headers.clone())
                .unwrap_or_else(|_| checked_response(done.status, body, headers, ctx.correlation))
        }
        Some(body) => checked_response(done.status, body, headers, ctx.correlation),
        None => bytes_response(done.status, Bytes::from_static(b"null"), headers, ctx.correlation),
    }
}

/// A FHIR JSON response with a body the outbound gate made (the only kind there is).
pub(crate) fn checked_response(
    status: StatusCode,
    body: Checked,
    extra: HeaderMap,
    correlation: &str,
) -> Response<Full<Bytes>> {
    bytes_response(status, body.into_bytes(), extra, correlation)
}

/// A FHIR JSON response whose body is already serialised (from a [`Checked`]).
fn bytes_response(status: StatusCode, bytes: Bytes, extra: HeaderMap, correlation: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = status;
    *resp.headers_mut() = extra;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json; charset=utf-8"));
    set_correlation(h, correlation);
    resp
}
