//! Transaction Bundles: every entry scoped like the single request it stands for, all checks
//! done before anything reaches the upstream, then one upstream transaction (atomic there).
//!
//! - `POST` entries get fhir-fence-assigned ids and become `PUT`s (ids never come from the
//!   upstream's shared sequence); `urn:uuid` / absolute `fullUrl`s and the references that
//!   point at them are resolved here to prefixed ids.
//! - `ifNoneExist` and conditional `PUT [type]?criteria` are resolved first with scoped searches
//!   (same limit as single conditional writes: not atomic with the write).
//! - conditional `DELETE [type]?criteria` and conditional references are forwarded with the
//!   criteria scoped, so the upstream resolves them inside the tenant.
//! - `GET` entries are scoped reads and searches; every response entry passes `outbound`.
use super::refcheck;
use super::search::{matching, scope_params};
use super::write::{prepare, InBundle, Prepared};
use super::{Ctx, ScopeError};
use crate::fhir::capabilities::Capabilities;
use crate::fhir::reference::{self, is_id, is_resource_type};
use crate::headers::base_headers;
use crate::outbound::{self, Checked, Composed};
use crate::route::{encode_query, parse_query, Params};
use http::{HeaderValue, Method, StatusCode};
use serde_json::{json, Map, Value};

/// What the client gets back for one entry.
enum Step {
    /// Sent upstream; its response entry is rewritten. `local` names the resource written.
    Upstream { rtype: String, local: Option<String> },
    /// An `ifNoneExist` that matched: answered by fhir-fence with the existing resource.
    Matched { rtype: String, resource: Checked },
}

struct Planned {
    step: Step,
    /// The upstream entry, for `Step::Upstream`.
    entry: Option<Map<String, Value>>,
    /// The client's resource still to be prepared (rtype, local id, body).
    write: Option<(String, String, Value)>,
}

/// Runs a transaction Bundle for the caller and answers a transaction-response Bundle.
pub async fn run(ctx: &Ctx<'_>, caps: &Capabilities, entries: Vec<Value>) -> Result<Checked, ScopeError> {
    let mut in_bundle = InBundle { conditional_refs: Some(caps), ..Default::default() };
    let mut plan = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        plan.push(plan_entry(ctx, caps, i, entry, &mut in_bundle).await?);
    }
    // Bodies are prepared once every fullUrl is known, so references between entries resolve.
    let mut targets = Vec::new();
    let defined = super::canonicals::defined_in(plan.iter().filter_map(|p| p.write.as_ref().map(|(_, _, body)| body)));
    let mut needed = Vec::new();
    for p in &mut plan {
        if let Some((rtype, local, body)) = p.write.take() {
            let Prepared { body: prepared, targets: refs, canonicals } = prepare(ctx, caps, body, &local, &in_bundle)?;
            if prepared.get("resourceType").and_then(Value::as_str) != Some(rtype.as_str()) {
                return Err(ScopeError::Body(format!("an entry's resourceType must be {rtype}")));
            }
            super::write::provable_once_stored(ctx, &prepared)?;
            targets.extend(refs);
            needed.extend(canonicals);
            p.entry.as_mut().expect("writes go upstream").insert("resource".into(), prepared);
        }
    }
    targets.sort_by(|a, b| a.path.cmp(&b.path));
    targets.dedup();
    refcheck::check_all(ctx, &targets).await?;
    super::canonicals::check_written(ctx, caps, &needed, &defined).await?;

    let upstream_entries: Vec<Value> = plan.iter().filter_map(|p| p.entry.clone().map(Value::Object)).collect();
    let answers = if upstream_entries.is_empty() {
        vec![]
    } else {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": upstream_entries});
        let mut headers = base_headers(ctx.correlation);
        headers.insert(crate::headers::PREFER, HeaderValue::from_static("return=representation"));
        let answer = ctx.upstream.send(Method::POST, "", headers, Some(&bundle)).await?;
        if answer.status != StatusCode::OK {
            return Err(super::refused(&answer));
        }
        let body = answer.body.ok_or(ScopeError::Unprovable)?;
        if body.get("type").and_then(Value::as_str) != Some("transaction-response") {
            return Err(ScopeError::Unprovable);
        }
        let answers = body.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
        if answers.len() != upstream_entries.len() {
            return Err(ScopeError::Unprovable);
        }
        answers
    };
    ctx.snap.ref_cache.invalidate_all();

    let mut answers = answers.into_iter();
    let mut out = Composed::new("transaction-response");
    for p in plan {
        match p.step {
            Step::Upstream { rtype, local } => {
                let (fields, resource) =
                    response_entry(ctx, &rtype, local.as_deref(), answers.next().unwrap_or_default());
                out.entry(fields, resource);
            }
            Step::Matched { rtype, resource } => {
                let local = super::conditional::id_of(&resource);
                let version = resource.pointer("/meta/versionId").and_then(Value::as_str).unwrap_or("1").to_owned();
                let url = outbound::public_url(ctx, &rtype, &local);
                let fields = json!({"fullUrl": url, "response": {"status": "200 OK", "location": format!("{url}/_history/{version}")}});
                out.entry(fields.as_object().cloned().unwrap_or_default(), Some(resource));
            }
        }
    }
    Ok(out.finish())
}

async fn plan_entry(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    index: usize,
    entry: Value,
    in_bundle: &mut InBundle<'_>,
) -> Result<Planned, ScopeError> {
    let bad = |why: String| ScopeError::Body(format!("entry {index}: {why}"));
    let Value::Object(mut entry) = entry else { return Err(bad("not an object".into())) };
    let request =
        entry.remove("request").and_then(|r| r.as_object().cloned()).ok_or_else(|| bad("no request".into()))?;
    let method = request.get("method").and_then(Value::as_str).ok_or_else(|| bad("no request.method".into()))?;
    let url = request.get("url").and_then(Value::as_str).ok_or_else(|| bad("no request.url".into()))?;
    let url = url.strip_prefix(&format!("{}/", ctx.snap.public_base)).unwrap_or(url);
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let params: Params = parse_query(query).map_err(|e| bad(e.to_string()))?;
    let segments: Vec<&str> = path.split('/').collect();
    for s in &segments {
        if s.is_empty() || s.contains(['%', ';', '$']) {
            return Err(bad(format!("unsupported request.url {url:?}")));
        }
    }
    if method != "GET" {
        super::write::writable(ctx, segments[0])?;
    }
    let full_url = entry.get("fullUrl").and_then(Value::as_str).map(str::to_owned);
    let resource = entry.remove("resource");
    let if_match = request.get("ifMatch").and_then(Value::as_str);
    let mut up = Map::new();
    let mut req = Map::new();
    if let Some(m) = if_match {
        req.insert("ifMatch".into(), m.into());
    }
    let prefixed = |id: &str| ctx.tenant.upstream_id(id).map_err(|e| bad(e.to_string()));
    let known = |t: &str| -> Result<String, ScopeError> {
        if is_resource_type(t) && caps.has_type(t) {
            Ok(t.to_owned())
        } else {
            Err(ScopeError::UnknownType(t.to_owned()))
        }
    };
    let register = |rtype: &str, local: &str, in_bundle: &mut InBundle| -> Result<String, ScopeError> {
        let upstream = format!("{rtype}/{}", ctx.tenant.upstream_id(local)?);
        if let Some(f) = &full_url {
            in_bundle.full_urls.insert(f.clone(), upstream.clone());
        }
        in_bundle.written.insert(upstream.clone());
        Ok(upstream)
    };
    let step = match (method, segments.as_slice(), params.is_empty()) {
        ("POST", [t], true) => {
            let rtype = known(t)?;
            let body = resource.ok_or_else(|| bad("a POST entry needs a resource".into()))?;
            if let Some(criteria) = request.get("ifNoneExist").and_then(Value::as_str) {
                let criteria = parse_query(Some(criteria.trim_start_matches('?'))).map_err(|e| bad(e.to_string()))?;
                match matching(ctx, caps, &rtype, &criteria).await?.as_slice() {
                    [] => {}
                    [existing] => {
                        register(&rtype, &super::conditional::id_of(existing), in_bundle)?;
                        return Ok(Planned {
                            step: Step::Matched { rtype, resource: existing.clone() },
                            entry: None,
                            write: None,
                        });
                    }
                    _ => return Err(ScopeError::MultipleMatches),
                }
            }
            let local = uuid::Uuid::new_v4().to_string();
            let url = register(&rtype, &local, in_bundle)?;
            return Ok(planned_put(req, url, rtype, local, body));
        }
        ("PUT", [t, id], true) if is_id(id) => {
            let rtype = known(t)?;
            let body = resource.ok_or_else(|| bad("a PUT entry needs a resource".into()))?;
            if body.get("id").and_then(Value::as_str) != Some(*id) {
                return Err(bad("the resource id must equal the id in request.url".into()));
            }
            let url = register(&rtype, id, in_bundle)?;
            return Ok(planned_put(req, url, rtype, id.to_string(), body));
        }
        ("PUT", [t], false) => {
            let rtype = known(t)?;
            let mut body = resource.ok_or_else(|| bad("a PUT entry needs a resource".into()))?;
            let found = matching(ctx, caps, &rtype, &params).await?;
            let local = super::conditional::update_target(&found, &body)
                .map_err(|e| if let ScopeError::Body(why) = e { bad(why) } else { e })?
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            if let Some(o) = body.as_object_mut() {
                o.insert("id".into(), Value::String(local.clone()));
            }
            let url = register(&rtype, &local, in_bundle)?;
            return Ok(planned_put(req, url, rtype, local, body));
        }
        ("DELETE", [t, id], true) if is_id(id) => {
            req.insert("url".into(), format!("{}/{}", known(t)?, prefixed(id)?).into());
            Step::Upstream { rtype: t.to_string(), local: Some(id.to_string()) }
        }
        ("DELETE", [t], false) => {
            let scoped = scope_params(ctx, caps, &[known(t)?], &params)?;
            req.insert("url".into(), format!("{t}?{}", encode_query(&scoped)).into());
            Step::Upstream { rtype: t.to_string(), local: None }
        }
        ("GET", [t, id], true) if is_id(id) => {
            req.insert("url".into(), format!("{}/{}", known(t)?, prefixed(id)?).into());
            Step::Upstream { rtype: t.to_string(), local: Some(id.to_string()) }
        }
        ("GET", [t, id, "_history", v], true) if is_id(id) && is_id(v) => {
            req.insert("url".into(), format!("{}/{}/_history/{v}", known(t)?, prefixed(id)?).into());
            Step::Upstream { rtype: t.to_string(), local: Some(id.to_string()) }
        }
        ("GET", [t], _) => {
            let scoped = scope_params(ctx, caps, &[known(t)?], &params)?;
            req.insert("url".into(), format!("{t}?{}", encode_query(&scoped)).into());
            Step::Upstream { rtype: t.to_string(), local: None }
        }
        _ => return Err(bad(format!("{method} {url} is not supported inside a transaction"))),
    };
    if resource.is_some() {
        return Err(bad(format!("a {method} entry must not carry a resource")));
    }
    req.insert("method".into(), method.into());
    up.insert("request".into(), Value::Object(req));
    Ok(Planned { step, entry: Some(up), write: None })
}

/// A write entry: always a `PUT` to the id fhir-fence chose or resolved; the body is prepared
/// once every `fullUrl` in the Bundle is known.
fn planned_put(mut req: Map<String, Value>, url: String, rtype: String, local: String, body: Value) -> Planned {
    req.insert("method".into(), "PUT".into());
    req.insert("url".into(), url.into());
    let mut entry = Map::new();
    entry.insert("request".into(), Value::Object(req));
    Planned {
        step: Step::Upstream { rtype: rtype.clone(), local: Some(local.clone()) },
        entry: Some(entry),
        write: Some((rtype, local, body)),
    }
}

/// One upstream response entry in the client's view: its own fields and the checked resource.
/// Resources that cannot be proven the caller's are left out (and logged); `outcome` never
/// passes (it carries upstream text).
fn response_entry(ctx: &Ctx, rtype: &str, local: Option<&str>, answer: Value) -> (Map<String, Value>, Option<Checked>) {
    let mut out = Map::new();
    let response = answer.get("response").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut resp = Map::new();
    for k in ["status", "etag", "lastModified"] {
        if let Some(v) = response.get(k) {
            resp.insert(k.into(), v.clone());
        }
    }
    if let Some(loc) = response.get("location").and_then(Value::as_str) {
        let rel = loc.strip_prefix(&format!("{}/", ctx.upstream.base)).unwrap_or(loc);
        if let Some(l) = reference::literal(rel) {
            if let Some(id) = ctx.tenant.local_id(l.id) {
                resp.insert("location".into(), format!("{}/{}", ctx.snap.public_base, l.with_id(id)).into());
            }
        }
    }
    let mut resource = None;
    if let Some(res) = answer.get("resource").cloned() {
        let checked = if res.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
            outbound::bundle(ctx, res, &format!("{}/{rtype}", ctx.snap.public_base), false).map(|f| f.bundle)
        } else {
            outbound::resource(ctx, res)
        };
        match checked {
            Ok(r) => resource = Some(r),
            Err(_) => tracing::warn!(correlation = ctx.correlation, "blocked a transaction response resource"),
        }
    }
    if let Some(local) = local {
        out.insert("fullUrl".into(), outbound::public_url(ctx, rtype, local).into());
    }
    out.insert("response".into(), Value::Object(resp));
    (out, resource)
}
