//! THE request pipeline: the one function that orders every step a FHIR request goes through.
//!
//! ```text
//! correlation id → metadata (identity first only with credentials) → identity → tenant slots → request hygiene → route → body → rate limit
//!   → dispatch (scope per interaction → upstream → outbound check) → answer   | any error → error.rs
//!                                                         └─ observing tenant (`observe`): judged, passed through unchanged
//! ```
//! Each step's reason for its position is written next to it in `run`; [`handle`] wraps it with
//! what every request gets whatever its outcome (metrics, access log, audit record).
use crate::answer::{boxed, respond, Body};
use crate::audit::Record;
use crate::bundle::bundle;
use crate::config::Enforcement;
use crate::connection::Slot;
use crate::dispatch::{dispatch, Outcome};
use crate::error::Error;
use crate::identity::Caller;
use crate::limits::{Admitted, TenantLimits};
use crate::metadata::metadata;
use crate::request::{
    accepts_fhir_json, accepts_ndjson, check_headers, collect, correlation_id, ensure_no_body, parse_body, parse_form,
    BodyKind, BodyLimits, RequestError,
};
use crate::route::{self, Interaction};
use crate::scope::{Ctx, ScopeError};
use crate::state::Snapshot;
use crate::tenant_runtime::TenantRuntime;
use bytes::Bytes;
use http::header;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

/// Handles one public request. Never panics on client input; every failure becomes an
/// OperationOutcome in `error.rs`. Every request is counted (metrics), logged (access line, debug) and
/// audited here, whatever its outcome.
pub async fn handle(snap: Arc<Snapshot>, req: Request<Incoming>, conn: &Slot) -> Response<Body> {
    let started = Instant::now();
    // Correlation id first: every log line and every error body below can then name it.
    let correlation = correlation_id(req.headers());
    let method = req.method().clone();
    let mut facts = RequestFacts::default();
    // The upstream wait is counted apart, so the audit shows fhir-fence's own share.
    // (Pinned in place: `run`'s future is several KB, and `timed` then moves a reference.)
    let (result, upstream_micros) = {
        let running = std::pin::pin!(run(&snap, req, conn, &correlation, &mut facts));
        crate::upstream::timed(running).await
    };
    let metrics = &snap.metrics;
    let t = facts.tenant.as_deref().map_or("-", |name| metrics.tenant(name));
    let response = match result {
        Ok(response) => response,
        Err(e) => {
            if let Some(reason) = e.refusal_reason() {
                metrics.refused.with_label_values(&[t, reason]).inc();
            }
            if let Some(kind) = e.upstream_failure() {
                metrics.upstream_errors.with_label_values(&[t, kind]).inc();
            }
            boxed(e.into_response(&correlation))
        }
    };
    let status = response.status();
    metrics.requests.with_label_values(&[t, facts.interaction.unwrap_or("-"), status.as_str()]).inc();
    metrics.latency.with_label_values(&[t]).observe(started.elapsed().as_secs_f64());
    if facts.dropped > 0 {
        metrics.entries_dropped.with_label_values(&[t]).inc_by(facts.dropped as u64);
    }
    let micros = started.elapsed().as_micros() as u64;
    // At debug level: the audit record below carries the same facts (and more) and is the
    // per-request line operators keep; this one is for following a request through the log.
    tracing::debug!(
        target: "fhir_fence::access",
        correlation = %correlation,
        tenant = %t,
        interaction = facts.interaction.unwrap_or("-"),
        method = %method,
        status = status.as_u16(),
        dropped = facts.dropped,
        micros,
    );
    let record = Record {
        correlation: correlation.clone(),
        tenant: facts.tenant,
        subject: facts.subject,
        client_id: facts.client_id,
        interaction: facts.interaction,
        method: method.as_str().to_owned(),
        resource_type: facts.rtype,
        id: facts.id,
        dropped: facts.dropped,
        bytes: response.body().size_hint().exact(),
        micros,
        upstream_micros,
        ..Record::new()
    };
    let to = record.tenant.as_deref().filter(|_| snap.audit.writes_fhir()).and_then(|t| snap.audit_destination(t));
    snap.audit.record(record.finish(status.as_u16()), to);
    if method == Method::HEAD {
        let (parts, _) = response.into_parts();
        return boxed(Response::from_parts(parts, Full::new(Bytes::new())));
    }
    response
}

/// What is known about the request so far, filled in as `run` learns it (for metrics, the
/// access log and the audit record, also when the request fails half-way).
#[derive(Default)]
struct RequestFacts {
    tenant: Option<String>,
    subject: Option<String>,
    client_id: Option<String>,
    interaction: Option<&'static str>,
    rtype: Option<String>,
    id: Option<String>,
    dropped: usize,
}

/// The phases a FHIR request goes through, in order; each is a function below that says why
/// it sits where it does.
async fn run(
    snap: &Arc<Snapshot>,
    req: Request<Incoming>,
    conn: &Slot,
    correlation: &str,
    facts: &mut RequestFacts,
) -> Result<Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    if is_metadata(snap, &parts) {
        facts.interaction = Some("metadata");
        let caller = identify_if_credentials(snap, &parts, conn, facts).await?;
        return Ok(boxed(metadata(snap, caller.as_ref().map(|c| c.tenant.as_ref())).await?));
    }
    let caller = identify(snap, &parts, conn, facts).await?;
    // Counted from here (the tenant is known) to the end of this request's handling.
    let _in_flight = snap.metrics.in_flight(&caller.tenant.name);
    // The tenant's limiter state and upstream (made on its first request: `tenant_runtime`).
    let runtime = snap.runtime(&caller.tenant.name).ok_or(Error::from(ScopeError::CapabilitiesUnavailable))?;
    let limits = Some(runtime.limits.as_ref());
    let _admitted = admit(snap, &caller, limits, conn)?;
    // Observe mode branches off here, and only here (`observe`): identity and the tenant's
    // slots above hold for every tenant; every step below is enforcement, which an observing
    // tenant's request only computes while it passes through to its legacy upstream. An
    // enforced tenant pays one enum check and never leaves this path; observe mode exists only
    // on a `legacy` upstream, which holds no enforced tenant (`config::load`).
    if caller.tenant.enforcement == Enforcement::Observe {
        return observe(snap, &caller, &runtime, parts, body, correlation, facts).await;
    }
    // Request hygiene: refuse what the proxy cannot inspect or that changes the request's meaning.
    check_headers(&parts.headers)?;
    let (interaction, params) = route_request(snap, &parts, facts)?;
    let limit = BodyLimits::of(&snap.loaded.config.server);
    let (body, params) = read_request_body(&parts, &interaction, params, collect(body, limit)).await?;
    charge(snap, &caller, limits, interaction.name(), body.as_ref()).await?;
    let self_url = self_url(snap, &parts, &interaction, &params);
    let upstream = &runtime.upstream;
    // Export files stream (constant memory, filtered line by line): the one answer not built
    // as a whole, so it is answered here rather than through `dispatch`.
    if let Interaction::ExportFile { file } = &interaction {
        return crate::bulk::download::download(snap.clone(), &caller, upstream.clone(), file, correlation).await;
    }
    // Scope, upstream and the outbound check, per interaction; then the answer.
    let grant = caller.grant.as_deref().map_or(0, crate::smart::Grant::fingerprint);
    let ctx = Ctx { snap, tenant: &caller.tenant, upstream, correlation, grant };
    let outcome = match interaction {
        // A Bundle's entries come back through `dispatch` one by one (batch) or are planned
        // together (transaction).
        Interaction::Bundle => {
            let answer = bundle(&ctx, &caller, body.unwrap_or_default(), &parts.headers).await?;
            Outcome::Other { status: StatusCode::OK, body: answer, headers: HeaderMap::new() }
        }
        _ => dispatch(&ctx, &caller, interaction, &params, body, &parts.headers, &self_url).await?,
    };
    facts.dropped = outcome.dropped();
    Ok(boxed(respond(&ctx, outcome, &parts.headers)?))
}

/// `metadata` is answered before the rest of the pipeline, and without credentials: clients
/// discover the server before they log in (`metadata.rs`: the statement every upstream in use
/// satisfies). A caller with credentials is identified first (`identify_if_credentials`) and
/// gets its own upstream's. Served from the CapabilityStatements read at start-up, so it costs
/// no upstream call; no tenant slot is taken.
fn is_metadata(snap: &Snapshot, parts: &http::request::Parts) -> bool {
    (parts.method == Method::GET || parts.method == Method::HEAD)
        && parts.uri.path().strip_prefix(snap.base_path.as_str()) == Some("/metadata")
}

/// Identity before routing: an unauthenticated client learns nothing about what exists.
/// The client certificate of the connection (TLS) counts with the token (`Verifier::identify`).
async fn identify(
    snap: &Snapshot,
    parts: &http::request::Parts,
    conn: &Slot,
    facts: &mut RequestFacts,
) -> Result<Caller, Error> {
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let caller = snap.verifier.identify(authorization, conn.peer()).await?;
    facts.tenant = Some(caller.tenant.name.clone());
    facts.subject = caller.subject.clone();
    facts.client_id = caller.client_id.clone();
    Ok(caller)
}

/// For `metadata`: the caller when the request carries credentials (a token, or a client
/// certificate that identifies a tenant alone), judged as anywhere (a bad token is a 401);
/// `None` for an anonymous request.
async fn identify_if_credentials(
    snap: &Snapshot,
    parts: &http::request::Parts,
    conn: &Slot,
    facts: &mut RequestFacts,
) -> Result<Option<Caller>, Error> {
    let token = parts.headers.contains_key(header::AUTHORIZATION);
    if !token && conn.peer().is_empty() {
        return Ok(None);
    }
    match identify(snap, parts, conn, facts).await {
        Ok(caller) => Ok(Some(caller)),
        // A certificate that does not identify a tenant by itself, and no token: anonymous.
        Err(Error::Auth(crate::identity::AuthError::Missing)) if !token => Ok(None),
        Err(e) => Err(e),
    }
}

/// The tenant's connection and in-flight caps as soon as the tenant is known, before any body
/// is read: a tenant sending slow bodies spends its own slots, never another tenant's. The
/// in-flight slot is held until this request is answered.
fn admit(
    snap: &Snapshot,
    caller: &Caller,
    limits: Option<&TenantLimits>,
    conn: &Slot,
) -> Result<Option<Admitted>, Error> {
    conn.bind(&caller.tenant.name, limits.and_then(|l| l.connections()))?;
    Ok(limits.map(|l| l.enter(&caller.tenant.name, &snap.metrics)).transpose()?)
}

/// Routing: the allow-list of interactions; everything else ends here with a precise refusal.
/// Answers are FHIR JSON; the exceptions are a Binary read asking for its own content type and
/// export files (NDJSON).
fn route_request(
    snap: &Snapshot,
    parts: &http::request::Parts,
    facts: &mut RequestFacts,
) -> Result<(Interaction, route::Params), Error> {
    let params = route::parse_query(parts.uri.query())?;
    let interaction = route::classify(&parts.method, &snap.base_path, parts.uri.path(), &params)?;
    facts.interaction = Some(interaction.name());
    let (rtype, id) = interaction.target();
    (facts.rtype, facts.id) = (rtype.map(str::to_owned), id.map(str::to_owned));
    let binary_read =
        matches!(&interaction, Interaction::Read { rtype, .. } | Interaction::Vread { rtype, .. } if rtype == "Binary");
    let acceptable = match &interaction {
        Interaction::ExportFile { .. } => accepts_ndjson(&parts.headers),
        _ => accepts_fhir_json(&parts.headers) || binary_read,
    };
    if !acceptable {
        return Err(RequestError::NotAcceptable.into());
    }
    Ok((interaction, params))
}

/// Bodies are read only where an interaction has one, bounded, of the expected media type, and
/// parsed strictly (resources also pass the typed gate); other requests must not have one.
/// Form searches merge URL and body parameters here, so everything after sees one parameter
/// list, validated once.
/// `bytes` yields the body (read bounded, at a minimum rate, `request::collect`), awaited only
/// where the interaction has one and its headers are acceptable.
async fn read_request_body(
    parts: &http::request::Parts,
    interaction: &Interaction,
    mut params: route::Params,
    bytes: impl std::future::Future<Output = Result<Bytes, RequestError>>,
) -> Result<(Option<Value>, route::Params), Error> {
    let body = match interaction {
        // A Binary's content may come as itself (a PDF, an image), not as FHIR JSON.
        Interaction::Create { rtype } if rtype == "Binary" => {
            Some(parse_body(&parts.headers, bytes, BodyKind::Binary { id: None }).await?)
        }
        Interaction::Update { rtype, id } if rtype == "Binary" => {
            Some(parse_body(&parts.headers, bytes, BodyKind::Binary { id: Some(id) }).await?)
        }
        Interaction::Create { .. }
        | Interaction::Update { .. }
        | Interaction::ConditionalUpdate { .. }
        | Interaction::Bundle
        | Interaction::Export { form: true, .. }
        | Interaction::Validate { id: None, .. }
        | Interaction::Operation { op: route::Op::MetaAdd | route::Op::MetaDelete, .. } => {
            Some(parse_body(&parts.headers, bytes, BodyKind::Resource).await?)
        }
        Interaction::Patch { .. } | Interaction::ConditionalPatch { .. } => {
            Some(parse_body(&parts.headers, bytes, BodyKind::JsonPatch).await?)
        }
        Interaction::Search { form: true, .. } | Interaction::SystemSearch { form: true } => {
            params.extend(parse_form(&parts.headers, bytes).await?);
            None
        }
        _ => {
            ensure_no_body(&parts.headers)?;
            None
        }
    };
    Ok((body, params))
}

/// The rate limit once the request is known whole: a Bundle costs what its entries cost, and
/// everything refused before cost the upstream nothing.
async fn charge(
    snap: &Snapshot,
    caller: &Caller,
    limits: Option<&TenantLimits>,
    interaction: &'static str,
    body: Option<&Value>,
) -> Result<(), Error> {
    if let Some(l) = limits {
        l.charge(&caller.tenant.name, l.cost(interaction, body), &snap.metrics).await?;
    }
    Ok(())
}

/// An observing tenant's request (`observe`), after identity and its slots: the enforcing
/// judgement computed by the steps `run` takes below the branch (hygiene, route, body, then
/// `observe::judge::judge`), counted and logged but not acted on; the request passed through
/// unchanged to the tenant's legacy upstream and its answer returned unchanged; what the
/// outbound gate would drop from it judged after it has gone. What is not enforcement holds
/// here too: the body's bounds, a `read-only` tenant's freeze, the tenant's rate.
async fn observe(
    snap: &Arc<Snapshot>,
    caller: &Caller,
    runtime: &TenantRuntime,
    parts: http::request::Parts,
    body: Incoming,
    correlation: &str,
    facts: &mut RequestFacts,
) -> Result<Response<Body>, Error> {
    use crate::observe::{self, answer, forward, judge, Stage};
    observe::observed(snap, &caller.tenant.name);
    // Read whole first (bounded as for every tenant): it is both judged and passed on.
    let bytes = collect(body, BodyLimits::of(&snap.loaded.config.server)).await?;
    let (limits, upstream) = (Some(runtime.limits.as_ref()), &runtime.upstream);
    let ctx = Ctx { snap, tenant: &caller.tenant, upstream, correlation, grant: 0 };
    let (routed, parsed, judged) = judge_observed(&ctx, caller, &parts, &bytes, facts).await;
    judge::frozen(&ctx, &parts.method, routed.as_ref(), parsed.as_ref())?;
    // Priced like the request it is; one that cannot be routed, as a read.
    charge(snap, caller, limits, routed.as_ref().map_or("read", Interaction::name), parsed.as_ref()).await?;
    let (method, path) = (parts.method.as_str(), parts.uri.path());
    if let Err(e) = &judged {
        observe::differ(snap, &caller.tenant.name, Stage::Request, e.kind(), 1, (method, path, correlation));
    }
    let answer = forward::forward(&ctx, &parts, bytes).await?;
    let self_url = match parts.uri.query() {
        Some(q) => format!("{}{path}?{q}", snap.public_origin),
        None => format!("{}{path}", snap.public_origin),
    };
    let judged = answer::Judged {
        snap: snap.clone(),
        tenant: caller.tenant.clone(),
        upstream: upstream.clone(),
        correlation: correlation.to_owned(),
        method: method.to_owned(),
        path: path.to_owned(),
        self_url,
    };
    answer::judge_later(
        judged,
        answer.status(),
        answer.headers(),
        answer.body().clone().into_inner().unwrap_or_default(),
    );
    Ok(boxed(answer))
}

/// The enforcing judgement of an observing tenant's request, step by step as `run` takes them:
/// what it routed to, its parsed body, and the first refusal (if any).
async fn judge_observed(
    ctx: &Ctx<'_>,
    caller: &Caller,
    parts: &http::request::Parts,
    bytes: &Bytes,
    facts: &mut RequestFacts,
) -> (Option<Interaction>, Option<Value>, Result<(), Error>) {
    if let Err(e) = check_headers(&parts.headers) {
        return (None, None, Err(e.into()));
    }
    let (interaction, params) = match route_request(ctx.snap, parts, facts) {
        Ok(routed) => routed,
        Err(e) => return (None, None, Err(e)),
    };
    let (body, params) =
        match read_request_body(parts, &interaction, params, std::future::ready(Ok(bytes.clone()))).await {
            Ok(read) => read,
            Err(e) => return (Some(interaction), None, Err(e)),
        };
    let judged = crate::observe::judge::judge(ctx, caller, &interaction, &params, body.as_ref(), &parts.headers).await;
    (Some(interaction), body, judged)
}

/// The client's own URL for this answer; a form search is shown as the equivalent GET.
fn self_url(
    snap: &Snapshot,
    parts: &http::request::Parts,
    interaction: &Interaction,
    params: &route::Params,
) -> String {
    let path = parts.uri.path();
    match (interaction, parts.uri.query()) {
        (Interaction::Search { rtype, form: true }, _) => {
            format!("{}/{}?{}", snap.public_base, rtype, route::encode_query(params))
        }
        (Interaction::SystemSearch { form: true }, _) => {
            format!("{}?{}", snap.public_base, route::encode_query(params))
        }
        (_, Some(q)) => [snap.public_origin.as_str(), path, "?", q].concat(),
        (_, None) => [snap.public_origin.as_str(), path].concat(),
    }
}
