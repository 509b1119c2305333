//! THE request pipeline: the one function that orders every step a FHIR request goes through.
//!
//! ```text
//! correlation id → identity → request hygiene → route → scope (per interaction) → upstream
//!               → outbound check (inside scope::respond) → response   | any error → error.rs
//! ```
//! Each step's reason for its position is written next to it in [`handle`].
use crate::error::Error;
use crate::fhir::json::{parse_strict, JsonError};
use crate::identity::Caller;
use crate::route::{self, Interaction};
use crate::scope::{conditional, read, search, write, Ctx, ScopeError};
use crate::state::Snapshot;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// Problems with the client's request itself (before any FHIR meaning is considered).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the request body exceeds {0} bytes")]
    TooLarge(usize),
    #[error("content type {0:?} is not accepted here")]
    MediaType(String),
    #[error("{0}")]
    PatchFormat(&'static str),
    #[error("compressed or otherwise encoded request bodies are not accepted")]
    Encoded,
    #[error("this server answers only in FHIR JSON (application/fhir+json)")]
    NotAcceptable,
    #[error("the request body is not acceptable JSON: {0}")]
    Json(JsonError),
    #[error("this request must not carry a body")]
    UnexpectedBody,
    #[error("header {0} is not accepted")]
    Header(&'static str),
    #[error("the request body could not be read")]
    Read,
}

/// Headers that would make the upstream (or a middlebox) reinterpret the request.
const REFUSED_HEADERS: &[&str] = &["x-http-method-override", "x-http-method", "x-method-override"];

/// Handles one public request. Never panics on client input; every failure becomes an
/// OperationOutcome in `error.rs`.
pub async fn handle(snap: Arc<Snapshot>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    // Correlation id first: every log line and every error body below can then name it.
    let correlation = correlation_id(req.headers());
    let method = req.method().clone();
    let result = run(&snap, req, &correlation).await;
    let (response, tenant, interaction, dropped) = match result {
        Ok(done) => (done.response, done.tenant, done.interaction, done.dropped),
        Err((e, tenant, interaction)) => (e.into_response(&correlation), tenant, interaction, 0),
    };
    tracing::info!(
        target: "fhir_fence::access",
        correlation = %correlation,
        tenant = tenant.as_deref().unwrap_or("-"),
        interaction = interaction.unwrap_or("-"),
        method = %method,
        status = response.status().as_u16(),
        dropped,
        micros = started.elapsed().as_micros() as u64,
    );
    if method == Method::HEAD {
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Full::new(Bytes::new()));
    }
    response
}

struct Done {
    response: Response<Full<Bytes>>,
    tenant: Option<String>,
    interaction: Option<&'static str>,
    dropped: usize,
}

type Failed = (Error, Option<String>, Option<&'static str>);

async fn run(snap: &Snapshot, req: Request<Incoming>, correlation: &str) -> Result<Done, Failed> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let fail = |e: Error| (e, None, None);

    // `metadata` is answered before identity: clients discover the server before they log in.
    // It is served from the CapabilityStatement read at start-up, so it costs no upstream call.
    if (parts.method == Method::GET || parts.method == Method::HEAD) && path == format!("{}/metadata", snap.base_path) {
        let response = metadata(snap).await.map_err(fail)?;
        return Ok(Done { response, tenant: None, interaction: Some("metadata"), dropped: 0 });
    }

    // Identity before routing: an unauthenticated client learns nothing about what exists.
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let caller = snap.verifier.verify_header(authorization).map_err(|e| fail(e.into()))?;
    let tenant_name = Some(caller.tenant.name.clone());
    let with_tenant = |e: Error| (e, tenant_name.clone(), None);

    // Request hygiene: refuse what the proxy cannot inspect or that changes the request's meaning.
    for h in REFUSED_HEADERS {
        if parts.headers.contains_key(*h) {
            return Err(with_tenant(RequestError::Header(h).into()));
        }
    }

    // Routing: the allow-list of interactions; everything else ends here with a precise refusal.
    let params = route::parse_query(parts.uri.query()).map_err(|e| with_tenant(e.into()))?;

    let interaction =
        route::classify(&parts.method, &snap.base_path, &path, &params).map_err(|e| with_tenant(e.into()))?;
    let name = interaction.name();
    let with_both = |e: Error| (e, tenant_name.clone(), Some(name));
    // Answers are FHIR JSON; the one exception is a Binary read asking for its own content type.
    let binary_read =
        matches!(&interaction, Interaction::Read { rtype, .. } | Interaction::Vread { rtype, .. } if rtype == "Binary");
    if !accepts_fhir_json(&parts.headers) && !binary_read {
        return Err(with_both(RequestError::NotAcceptable.into()));
    }

    // Bodies are read only where an interaction has one, bounded, of the expected media type,
    // and parsed strictly; other requests must not have one. Form searches merge URL and body
    // parameters here, so everything after sees one parameter list, validated once.
    let limit = snap.loaded.config.server.max_body_bytes;
    let mut params = params;
    let body = match &interaction {
        Interaction::Create { .. }
        | Interaction::Update { .. }
        | Interaction::ConditionalUpdate { .. }
        | Interaction::Bundle => {
            Some(read_body(&parts.headers, body, limit, BodyKind::Resource).await.map_err(with_both)?)
        }
        Interaction::Operation { op: route::Op::MetaAdd | route::Op::MetaDelete, .. } => {
            Some(read_body(&parts.headers, body, limit, BodyKind::Resource).await.map_err(with_both)?)
        }
        Interaction::Patch { .. } | Interaction::ConditionalPatch { .. } => {
            Some(read_body(&parts.headers, body, limit, BodyKind::JsonPatch).await.map_err(with_both)?)
        }
        Interaction::Search { form: true, .. } | Interaction::SystemSearch { form: true } => {
            let form = read_form(&parts.headers, body, limit).await.map_err(with_both)?;
            params.extend(form);
            None
        }
        _ => {
            ensure_no_body(&parts.headers).map_err(with_both)?;
            None
        }
    };

    // Scope, upstream, and the outbound check, per interaction.
    // The client's own URL for this answer; a form search is shown as the equivalent GET.
    let self_url = match (&interaction, parts.uri.query()) {
        (Interaction::Search { rtype, form: true }, _) => {
            format!("{}/{}?{}", snap.public_base, rtype, route::encode_query(&params))
        }
        (Interaction::SystemSearch { form: true }, _) => {
            format!("{}?{}", snap.public_base, route::encode_query(&params))
        }
        (_, Some(q)) => format!("{}{}?{}", public_origin(snap), path, q),
        (_, None) => format!("{}{}", public_origin(snap), path),
    };
    let upstream = snap
        .upstreams
        .get(&caller.tenant.upstream)
        .ok_or_else(|| with_both(ScopeError::CapabilitiesUnavailable.into()))?;
    let ctx = Ctx { snap, tenant: &caller.tenant, upstream, correlation };
    let (response, dropped) =
        dispatch(&ctx, &caller, interaction, &params, body, &parts.headers, &self_url).await.map_err(with_both)?;
    Ok(Done { response, tenant: tenant_name.clone(), interaction: Some(name), dropped })
}

async fn dispatch(
    ctx: &Ctx<'_>,
    caller: &Caller,
    interaction: Interaction,
    params: &route::Params,
    body: Option<Value>,
    headers: &HeaderMap,
    self_url: &str,
) -> Result<(Response<Full<Bytes>>, usize), Error> {
    let caps = || async {
        ctx.snap.capabilities(&caller.tenant.upstream).await.ok_or(Error::from(ScopeError::CapabilitiesUnavailable))
    };
    let result = match interaction {
        Interaction::Read { rtype, id } => {
            let result = read::read(ctx, &rtype, &id, None).await?;
            return Ok((read_response(ctx, result, headers)?, 0));
        }
        Interaction::Vread { rtype, id, version } => {
            let result = read::read(ctx, &rtype, &id, Some(&version)).await?;
            return Ok((read_response(ctx, result, headers)?, 0));
        }
        Interaction::InstanceHistory { rtype, id } => read::history(ctx, &rtype, &id, params, self_url).await?,
        Interaction::Search { rtype, .. } => search::search(ctx, &*caps().await?, &rtype, params, self_url).await?,
        Interaction::SystemSearch { .. } => search::system(ctx, &*caps().await?, params, self_url).await?,
        Interaction::Compartment { ctype, id, rtype } => {
            search::compartment(ctx, &*caps().await?, (&ctype, &id, &rtype), params, self_url).await?
        }
        Interaction::History { rtype } => {
            search::history(ctx, &*caps().await?, rtype.as_deref(), params, self_url).await?
        }
        Interaction::Page { token } => search::page(ctx, &token, self_url).await?,
        Interaction::Create { rtype } => {
            let caps = caps().await?;
            let body = body.unwrap_or_default();
            let done = match headers.get("if-none-exist").map(|v| v.to_str()) {
                Some(Ok(criteria)) => conditional::create(ctx, &caps, &rtype, criteria, body).await?,
                Some(Err(_)) => return Err(RequestError::Header("if-none-exist").into()),
                None => write::create_or_update(ctx, &caps, &rtype, None, body, None).await?,
            };
            return Ok((written(ctx, &rtype, done, headers), 0));
        }
        Interaction::ConditionalUpdate { rtype } => {
            let done = conditional::update(ctx, &*caps().await?, &rtype, params, body.unwrap_or_default()).await?;
            return Ok((written(ctx, &rtype, done, headers), 0));
        }
        Interaction::ConditionalPatch { rtype } => {
            let if_match = headers.get(header::IF_MATCH);
            let done =
                conditional::patch(ctx, &*caps().await?, &rtype, params, body.unwrap_or_default(), if_match).await?;
            return Ok((written(ctx, &rtype, done, headers), 0));
        }
        Interaction::ConditionalDelete { rtype } => {
            let status = conditional::delete(ctx, &*caps().await?, &rtype, params).await?;
            let outcome = crate::fhir::outcome::information(&format!("conditional delete on {rtype} done"));
            return Ok((json_response(status, &outcome, HeaderMap::new(), ctx.correlation), 0));
        }
        Interaction::Update { rtype, id } => {
            let if_match = headers.get(header::IF_MATCH);
            let done =
                write::create_or_update(ctx, &*caps().await?, &rtype, Some(&id), body.unwrap_or_default(), if_match)
                    .await?;
            return Ok((written(ctx, &rtype, done, headers), 0));
        }
        Interaction::Patch { rtype, id } => {
            let if_match = headers.get(header::IF_MATCH);
            let done = write::patch(ctx, &*caps().await?, &rtype, &id, body.unwrap_or_default(), if_match).await?;
            return Ok((written(ctx, &rtype, done, headers), 0));
        }
        Interaction::Delete { rtype, id } => {
            let done = write::delete(ctx, &rtype, &id).await?;
            let outcome = crate::fhir::outcome::information(&format!("deleted {rtype}/{}", done.local_id));
            return Ok((json_response(StatusCode::OK, &outcome, done.headers, ctx.correlation), 0));
        }
        Interaction::Operation { rtype, id, op } => {
            crate::scope::operation::run(ctx, &rtype, &id, op, params, body, self_url).await?
        }
        Interaction::Bundle => {
            let answer = bundle(ctx, caller, body.unwrap_or_default()).await?;
            return Ok((json_response(StatusCode::OK, &answer, HeaderMap::new(), ctx.correlation), 0));
        }
        Interaction::Metadata => unreachable!("answered before identity"),
    };
    Ok((json_response(StatusCode::OK, &result.body, result.headers, ctx.correlation), result.dropped))
}

/// `POST [base]` with a Bundle: transactions go to `scope::transaction` (one atomic upstream
/// transaction); each batch entry runs through [`dispatch`] exactly like a single request.
async fn bundle(ctx: &Ctx<'_>, caller: &Caller, body: Value) -> Result<Value, Error> {
    let kind = body.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    if body.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ScopeError::Body("POST to the base takes a transaction or batch Bundle".into()).into());
    }
    let entries = match body.get("entry") {
        None => vec![],
        Some(Value::Array(e)) => e.clone(),
        Some(_) => return Err(ScopeError::Body("Bundle.entry must be a list".into()).into()),
    };
    let max = ctx.snap.loaded.config.server.max_bundle_entries;
    if entries.len() > max {
        return Err(ScopeError::Body(format!("at most {max} entries per Bundle")).into());
    }
    let caps = ctx.snap.capabilities(&caller.tenant.upstream).await.ok_or(ScopeError::CapabilitiesUnavailable)?;
    match kind.as_str() {
        "transaction" => crate::scope::transaction::run(ctx, &caps, entries).await,
        "batch" => {
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                out.push(batch_entry(ctx, caller, entry).await);
            }
            Ok(serde_json::json!({"resourceType": "Bundle", "id": uuid::Uuid::new_v4().to_string(),
                "type": "batch-response", "entry": out}))
        }
        other => {
            Err(ScopeError::Body(format!("Bundle.type {other:?} cannot be posted; use transaction or batch")).into())
        }
    }
}

/// One batch entry as a request of its own: routed, scoped and checked like any other; its
/// answer (or its OperationOutcome) becomes the entry's response.
async fn batch_entry(ctx: &Ctx<'_>, caller: &Caller, entry: Value) -> Value {
    let result = async {
        let request =
            entry.get("request").ok_or_else(|| Error::from(ScopeError::Body("entry without request".into())))?;
        let method: Method = request
            .get("method")
            .and_then(Value::as_str)
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| Error::from(ScopeError::Body("entry without a valid request.method".into())))?;
        let url = request.get("url").and_then(Value::as_str).unwrap_or_default();
        let url = url.strip_prefix(&format!("{}/", ctx.snap.public_base)).unwrap_or(url);
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (format!("{}/{p}", ctx.snap.base_path), Some(q)),
            None => (format!("{}/{url}", ctx.snap.base_path), None),
        };
        let params = route::parse_query(query)?;
        let interaction = route::classify(&method, &ctx.snap.base_path, &path, &params)?;
        if matches!(interaction, Interaction::Bundle | Interaction::Page { .. } | Interaction::Metadata) {
            return Err(ScopeError::Body("this request cannot be a batch entry".into()).into());
        }
        let mut headers = HeaderMap::new();
        for (field, name) in [
            ("ifMatch", header::IF_MATCH),
            ("ifNoneMatch", header::IF_NONE_MATCH),
            ("ifModifiedSince", header::IF_MODIFIED_SINCE),
            ("ifNoneExist", header::HeaderName::from_static("if-none-exist")),
        ] {
            if let Some(v) = request.get(field).and_then(Value::as_str).and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        }
        let self_url = format!("{}/{url}", ctx.snap.public_base);
        let body = entry.get("resource").cloned();
        Box::pin(dispatch(ctx, caller, interaction, &params, body, &headers, &self_url)).await
    }
    .await;
    let response = match result {
        Ok((r, _)) => r,
        Err(e) => e.into_response(ctx.correlation),
    };
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut resp = serde_json::Map::new();
    let reason = parts.status.canonical_reason().unwrap_or("");
    resp.insert("status".into(), format!("{} {reason}", parts.status.as_u16()).trim().to_owned().into());
    for (name, field) in [(header::LOCATION, "location"), (header::ETAG, "etag")] {
        if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            resp.insert(field.into(), v.into());
        }
    }
    let mut out = serde_json::Map::new();
    if parts.status.is_success() && !value.is_null() {
        out.insert("resource".into(), value);
    } else if !value.is_null() {
        resp.insert("outcome".into(), value);
    }
    out.insert("response".into(), Value::Object(resp));
    Value::Object(out)
}

/// The answer to a read or vread: 304 for an unchanged resource the caller already has; a
/// Binary's own bytes when the client does not accept FHIR JSON (checked as JSON first).
fn read_response(
    ctx: &Ctx,
    result: read::ReadResult,
    request_headers: &HeaderMap,
) -> Result<Response<Full<Bytes>>, Error> {
    if conditional::not_modified(request_headers, &result) {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        resp.headers_mut().extend(result.headers);
        set_correlation(resp.headers_mut(), ctx.correlation);
        return Ok(resp);
    }
    if result.body.get("resourceType").and_then(Value::as_str) == Some("Binary") && !accepts_fhir_json(request_headers)
    {
        return binary_content(ctx, result);
    }
    Ok(json_response(StatusCode::OK, &result.body, result.headers, ctx.correlation))
}

/// The raw content of a Binary the caller owns, with its own content type.
fn binary_content(ctx: &Ctx, result: read::ReadResult) -> Result<Response<Full<Bytes>>, Error> {
    use base64::Engine;
    let content_type = result.body.get("contentType").and_then(Value::as_str).unwrap_or("application/octet-stream");
    let content_type = HeaderValue::from_str(content_type).map_err(|_| ScopeError::Unprovable)?;
    let data = result.body.get("data").and_then(Value::as_str).unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD.decode(data).map_err(|_| ScopeError::Unprovable)?;
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    resp.headers_mut().extend(result.headers);
    resp.headers_mut().insert(header::CONTENT_TYPE, content_type);
    set_correlation(resp.headers_mut(), ctx.correlation);
    Ok(resp)
}

/// The answer to a create or update, honouring `Prefer: return=…`.
fn written(ctx: &Ctx, rtype: &str, done: write::WriteResult, request_headers: &HeaderMap) -> Response<Full<Bytes>> {
    let mut headers = done.headers;
    let location = match &done.version {
        Some(v) => format!("{}/{}/{}/_history/{}", ctx.snap.public_base, rtype, done.local_id, v),
        None => format!("{}/{}/{}", ctx.snap.public_base, rtype, done.local_id),
    };
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v.clone());
        headers.insert(header::CONTENT_LOCATION, v);
    }
    let prefer = request_headers.get("prefer").and_then(|v| v.to_str().ok()).unwrap_or("");
    if prefer.split([',', ';']).any(|p| p.trim() == "return=minimal") {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = done.status;
        resp.headers_mut().extend(headers);
        set_correlation(resp.headers_mut(), ctx.correlation);
        return resp;
    }
    json_response(done.status, done.body.as_ref().unwrap_or(&Value::Null), headers, ctx.correlation)
}

/// `GET metadata`: the upstream's CapabilityStatement, reduced to what fhir-fence lets through.
async fn metadata(snap: &Snapshot) -> Result<Response<Full<Bytes>>, Error> {
    let first = snap.loaded.config.upstreams.keys().next().cloned().unwrap_or_default();
    let caps = snap.capabilities(&first).await.ok_or(ScopeError::CapabilitiesUnavailable)?;
    let mut cs = caps.statement.clone();
    const OFFERED: &[&str] =
        &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];
    const OFFERED_SYSTEM: &[&str] = &["history-system", "search-system"];
    if let Some(Value::Object(imp)) = cs.get_mut("implementation") {
        imp.insert("url".into(), Value::String(snap.public_base.clone()));
        imp.insert("description".into(), Value::String("FHIR server behind fhir-fence (tenant-isolated)".into()));
    }
    for rest in cs.get_mut("rest").and_then(Value::as_array_mut).into_iter().flatten() {
        let Some(rest) = rest.as_object_mut() else { continue };
        rest.remove("operation");
        if let Some(Value::Array(i)) = rest.get_mut("interaction") {
            i.retain(|x| x.get("code").and_then(Value::as_str).is_some_and(|c| OFFERED_SYSTEM.contains(&c)));
        }
        for res in rest.get_mut("resource").and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(res) = res.as_object_mut() else { continue };
            res.remove("operation");
            res.remove("searchInclude");
            res.remove("searchRevInclude");
            res.remove("conditionalCreate");
            res.remove("conditionalUpdate");
            res.remove("conditionalDelete");
            if let Some(Value::Array(i)) = res.get_mut("interaction") {
                i.retain(|x| x.get("code").and_then(Value::as_str).is_some_and(|c| OFFERED.contains(&c)));
            }
        }
    }
    Ok(json_response(StatusCode::OK, &cs, HeaderMap::new(), ""))
}

fn json_response(status: StatusCode, body: &Value, extra: HeaderMap, correlation: &str) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("serialisable");
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.extend(extra);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json; charset=utf-8"));
    set_correlation(h, correlation);
    resp
}

fn set_correlation(h: &mut HeaderMap, correlation: &str) {
    if let Ok(v) = HeaderValue::from_str(correlation) {
        if !correlation.is_empty() {
            h.insert("x-request-id", v);
        }
    }
}

/// The scheme://host:port of the public base (request paths already carry the base path).
fn public_origin(snap: &Snapshot) -> String {
    let url = &snap.loaded.public_base;
    url.origin().ascii_serialization()
}

/// A client-supplied `X-Request-Id` if it is a short plain token, else a fresh UUID.
fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn accepts_fhir_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT) else { return true };
    let Ok(accept) = accept.to_str() else { return false };
    accept.split(',').any(|range| {
        let mime = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        matches!(mime.as_str(), "*/*" | "application/*" | "application/json" | "application/fhir+json" | "")
    })
}

fn ensure_no_body(headers: &HeaderMap) -> Result<(), Error> {
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("0");
    if length != "0" || headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(RequestError::UnexpectedBody.into());
    }
    Ok(())
}

/// What a request body must be.
#[derive(Clone, Copy)]
enum BodyKind {
    /// A FHIR resource in JSON.
    Resource,
    /// An RFC 6902 JSON Patch document.
    JsonPatch,
}

/// The media type of the body (lower case, without parameters), refusing encodings and non-UTF-8 charsets.
fn media_type(headers: &HeaderMap) -> Result<String, Error> {
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        if enc.as_bytes() != b"identity" {
            return Err(RequestError::Encoded.into());
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
        return Err(RequestError::MediaType(ct.to_owned()).into());
    }
    Ok(mime)
}

async fn collect(body: Incoming, limit: usize) -> Result<Bytes, Error> {
    let collected = Limited::new(body, limit).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            Error::from(RequestError::TooLarge(limit))
        } else {
            Error::from(RequestError::Read)
        }
    })?;
    Ok(collected.to_bytes())
}

async fn read_body(headers: &HeaderMap, body: Incoming, limit: usize, kind: BodyKind) -> Result<Value, Error> {
    let mime = media_type(headers)?;
    match (kind, mime.as_str()) {
        (BodyKind::Resource, "application/fhir+json" | "application/json") => {}
        (BodyKind::JsonPatch, "application/json-patch+json") => {}
        (BodyKind::JsonPatch, "application/fhir+json" | "application/json") => return Err(RequestError::PatchFormat(
            "FHIRPath Patch (a Parameters body) is not supported yet; send JSON Patch as application/json-patch+json",
        )
        .into()),
        (BodyKind::JsonPatch, _) => {
            return Err(RequestError::PatchFormat(
                "only JSON Patch (application/json-patch+json) is accepted; XML Patch and other formats are not",
            )
            .into())
        }
        _ => return Err(RequestError::MediaType(mime).into()),
    }
    let bytes = collect(body, limit).await?;
    parse_strict(&bytes).map_err(|e| RequestError::Json(e).into())
}

/// A form-encoded search body (`POST …/_search`), decoded as strictly as a query string.
async fn read_form(headers: &HeaderMap, body: Incoming, limit: usize) -> Result<route::Params, Error> {
    let mime = media_type(headers)?;
    if mime != "application/x-www-form-urlencoded" {
        return Err(RequestError::MediaType(mime).into());
    }
    let bytes = collect(body, limit).await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| RequestError::MediaType("non-UTF-8 form".into()))?;
    Ok(route::parse_query(Some(text.trim_end_matches(['\r', '\n'])))?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
