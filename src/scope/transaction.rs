//! Transaction Bundles: every entry scoped like the single request it stands for, all checks
//! done before anything reaches the upstream, then one upstream transaction (atomic there).
//!
//! - `POST` entries get fhir-fence-assigned ids and become `PUT`s (ids never come from the
//!   upstream's shared sequence); `urn:uuid` / absolute `fullUrl`s and the references that
//!   point at them are resolved here to prefixed ids.
//! - `ifNoneExist` and conditional `PUT [type]?criteria` are resolved first with scoped searches
//!   (same limit as single conditional writes: not atomic with the write).
//! - conditional `DELETE [type]?criteria` is forwarded with the criteria scoped, so the upstream
//!   resolves it inside the tenant; conditional references are resolved here
//!   (`conditional::resolve_references`) and sent as literal references.
//! - `PATCH` entries (JSON Patch in a `Binary`, FHIRPath Patch as `Parameters`) are applied
//!   here to the caller's resource as read, like a single patch, and sent as `PUT`s with
//!   `ifMatch` on the version read: the upstream transaction fails if it changed meanwhile.
//!   A resource patched by one entry must not be written by another.
//! - `GET` entries are scoped reads and searches; every response entry passes `outbound`.
use super::paging::Counted;
use super::params::{conditional_criteria, scope_params};
use super::refcheck;
use super::write::{prepare, InBundle, Prepared};
use super::{Ctx, ScopeError};
use crate::fhir::capabilities::Capabilities;
use crate::fhir::reference;
use crate::headers::base_headers;
use crate::outbound::{self, Checked, Composed};
use crate::route::{self, encode_query, EntryRequest, Interaction};
use http::{HeaderValue, Method, StatusCode};
use serde_json::{json, Map, Value};

/// What an upstream response entry's resource is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A resource (written or read): `outbound::resource`, whatever its type.
    Resource,
    /// A search's searchset Bundle: `outbound::bundle`.
    Search,
}

/// What an entry asked for, as far as its response entry goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The client's create (`POST`), sent as a PUT to the id fhir-fence chose.
    Created,
    /// The client's patch (conditional or not), applied here and sent as a PUT pinned to the
    /// version patched.
    Patched { conditional: bool },
    /// An update or delete (conditional or not).
    Written,
    /// A read, vread or search: its response entry always holds what it read.
    Read,
}

/// Whether the response entries of writes hold the resource written (`Prefer:
/// return=representation`), or only their `response` (the default, as HAPI answers).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Shown,
    Omitted,
}

/// What the client gets back for one entry.
enum Step {
    /// Sent upstream; its response entry is rewritten. `local` names the resource written.
    Upstream { rtype: String, local: Option<String>, answer: Answer, kind: Kind },
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
pub async fn run(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    entries: Vec<Value>,
    written: Written,
) -> Result<Checked, ScopeError> {
    let mut in_bundle = InBundle::default();
    let mut plan = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        plan.push(plan_entry(ctx, caps, i, entry, &mut in_bundle).await?);
    }
    patched_once(&plan)?;
    for p in &mut plan {
        if let Some((_, _, body)) = p.write.as_mut() {
            super::conditional::resolve_references(ctx, caps, body).await?;
        }
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
    let mut out = Composed::new("transaction-response", &ctx.snap.public_base);
    for p in plan {
        match p.step {
            Step::Upstream { rtype, local, answer, kind } => {
                let (mut fields, mut resource) =
                    response_entry(ctx, &rtype, local.as_deref(), answer, answers.next().unwrap_or_default());
                match kind {
                    Kind::Created => renamed(&mut fields, CREATED),
                    Kind::Patched { conditional: false } => renamed(&mut fields, PATCHED),
                    Kind::Patched { conditional: true } => renamed(&mut fields, PATCHED_CONDITIONALLY),
                    Kind::Written | Kind::Read => {}
                }
                if kind != Kind::Read && written == Written::Omitted {
                    resource = None;
                }
                out.entry(fields, resource);
            }
            Step::Matched { rtype, resource } => {
                let local = super::conditional::id_of(&resource);
                let version = resource.pointer("/meta/versionId").and_then(Value::as_str).unwrap_or("1").to_owned();
                let url = outbound::public_url(ctx, &rtype, &local);
                let fields = json!({"fullUrl": url, "response": {"status": "200 OK", "location": format!("{url}/_history/{version}")}});
                let resource = Some(resource).filter(|_| written == Written::Shown);
                out.entry(fields.as_object().cloned().unwrap_or_default(), resource);
            }
        }
    }
    Ok(out.finish())
}

/// Plans one entry: routed by [`route::entry_request`] exactly like a single request (the same
/// allow-list), then scoped by the functions single requests use (`conditional`, `search`,
/// `write`). Only the interactions a transaction can hold atomically are accepted.
async fn plan_entry(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    index: usize,
    entry: Value,
    in_bundle: &mut InBundle,
) -> Result<Planned, ScopeError> {
    let bad = |why: String| ScopeError::Body(format!("entry {index}: {why}"));
    let request =
        route::entry_request(&entry, &ctx.snap.public_base, &ctx.snap.base_path).map_err(|e| bad(e.to_string()))?;
    let Value::Object(mut entry) = entry else { return Err(bad("not an object".into())) };
    let EntryRequest { method, interaction, params, headers, url } = request;
    if let Some(rtype) = interaction.changes() {
        super::write::writable(ctx, rtype)?;
    }
    let full_url = entry.get("fullUrl").and_then(Value::as_str).map(str::to_owned);
    let mut resource = entry.remove("resource");
    // A condition is honoured where the upstream transaction (or fhir-fence) applies it, and
    // refused elsewhere: never dropped.
    let allowed: &[&str] = match interaction {
        Interaction::Create { .. } => &["if-none-exist"],
        Interaction::Update { .. }
        | Interaction::ConditionalUpdate { .. }
        | Interaction::Patch { .. }
        | Interaction::ConditionalPatch { .. } => &["if-match"],
        _ => &[],
    };
    if let Some(name) = headers.keys().find(|h| !allowed.contains(&h.as_str())) {
        return Err(bad(format!(
            "the condition {name} is not supported on a {} entry of a transaction",
            interaction.name()
        )));
    }
    let condition = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut req = Map::new();
    if let Some(m) = super::write::if_match(headers.get(http::header::IF_MATCH)).map_err(|e| bad(e.to_string()))? {
        req.insert("ifMatch".into(), m.to_str().unwrap_or_default().into());
    }
    let prefixed = |id: &str| ctx.tenant.upstream_id(id).map_err(|e| bad(e.to_string()));
    let known = |t: &str| -> Result<String, ScopeError> {
        match caps.has_type(t) {
            true => Ok(t.to_owned()),
            false => Err(ScopeError::UnknownType(t.to_owned())),
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
    let mut needs = |what: &str| resource.take().ok_or_else(|| bad(format!("a {what} entry needs a resource")));
    let step = match interaction {
        Interaction::Create { rtype } => {
            let rtype = known(&rtype)?;
            let body = needs("POST")?;
            if let Some(criteria) = condition("if-none-exist") {
                let found =
                    super::conditional::if_none_exist(ctx, caps, &rtype, criteria).await.map_err(|e| match e {
                        ScopeError::Param(why) => bad(why),
                        other => other,
                    })?;
                if let Some(existing) = found {
                    register(&rtype, &super::conditional::id_of(&existing), in_bundle)?;
                    let step = Step::Matched { rtype, resource: existing };
                    return Ok(Planned { step, entry: None, write: None });
                }
            }
            let local = uuid::Uuid::new_v4().to_string();
            let url = register(&rtype, &local, in_bundle)?;
            let mut planned = planned_put(req, url, rtype, local, body);
            if let Step::Upstream { kind, .. } = &mut planned.step {
                *kind = Kind::Created;
            }
            return Ok(planned);
        }
        Interaction::Update { rtype, id } => {
            let rtype = known(&rtype)?;
            let body = needs("PUT")?;
            if body.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                return Err(bad("the resource id must equal the id in request.url".into()));
            }
            let url = register(&rtype, &id, in_bundle)?;
            return Ok(planned_put(req, url, rtype, id, body));
        }
        Interaction::ConditionalUpdate { rtype } => {
            let rtype = known(&rtype)?;
            let (id, mut body) = super::conditional::resolve_update(ctx, caps, &rtype, &params, needs("PUT")?)
                .await
                .map_err(|e| if let ScopeError::Body(why) = e { bad(why) } else { e })?;
            let local = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            if let Some(o) = body.as_object_mut() {
                o.insert("id".into(), Value::String(local.clone()));
            }
            let url = register(&rtype, &local, in_bundle)?;
            return Ok(planned_put(req, url, rtype, local, body));
        }
        Interaction::Patch { rtype, id } => {
            let rtype = known(&rtype)?;
            let patch = crate::fhir::patch::entry_body(needs("PATCH")?).map_err(|e| bad(e.to_string()))?;
            let (body, pinned) = patch_entry(ctx, in_bundle, &rtype, &id, patch, &headers).await?;
            let url = register(&rtype, &id, in_bundle)?;
            return Ok(planned_patch(req, url, rtype, id, body, pinned, false));
        }
        Interaction::ConditionalPatch { rtype } => {
            let rtype = known(&rtype)?;
            let patch = crate::fhir::patch::entry_body(needs("PATCH")?).map_err(|e| bad(e.to_string()))?;
            let id = super::conditional::patch_target(ctx, caps, &rtype, &params).await.map_err(|e| match e {
                ScopeError::Param(why) => bad(why),
                other => other,
            })?;
            let (body, pinned) = patch_entry(ctx, in_bundle, &rtype, &id, patch, &headers).await?;
            let url = register(&rtype, &id, in_bundle)?;
            return Ok(planned_patch(req, url, rtype, id, body, pinned, true));
        }
        Interaction::Delete { rtype, id } => {
            req.insert("url".into(), format!("{}/{}", known(&rtype)?, prefixed(&id)?).into());
            Step::Upstream { rtype, local: Some(id), answer: Answer::Resource, kind: Kind::Written }
        }
        Interaction::ConditionalDelete { rtype } => {
            conditional_criteria(&params, "delete").map_err(|e| bad(e.to_string()))?;
            let scoped = scope_params(ctx, caps, &[known(&rtype)?], &params)?;
            req.insert("url".into(), format!("{rtype}?{}", encode_query(&scoped)).into());
            Step::Upstream { rtype, local: None, answer: Answer::Resource, kind: Kind::Written }
        }
        Interaction::Read { rtype, id } if method == Method::GET => {
            req.insert("url".into(), format!("{}/{}", known(&rtype)?, prefixed(&id)?).into());
            Step::Upstream { rtype, local: Some(id), answer: Answer::Resource, kind: Kind::Read }
        }
        Interaction::Vread { rtype, id, version } if method == Method::GET => {
            req.insert("url".into(), format!("{}/{}/_history/{version}", known(&rtype)?, prefixed(&id)?).into());
            Step::Upstream { rtype, local: Some(id), answer: Answer::Resource, kind: Kind::Read }
        }
        Interaction::Search { rtype, form: false } if method == Method::GET => {
            let scoped = scope_params(ctx, caps, &[known(&rtype)?], &params)?;
            req.insert("url".into(), format!("{rtype}?{}", encode_query(&scoped)).into());
            Step::Upstream { rtype, local: None, answer: Answer::Search, kind: Kind::Read }
        }
        other => return Err(bad(format!("{method} {url} ({}) is not supported inside a transaction", other.name()))),
    };
    if resource.is_some() {
        return Err(bad(format!("a {method} entry must not carry a resource")));
    }
    req.insert("method".into(), method.as_str().into());
    let mut up = Map::new();
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
        step: Step::Upstream {
            rtype: rtype.clone(),
            local: Some(local.clone()),
            answer: Answer::Resource,
            kind: Kind::Written,
        },
        entry: Some(entry),
        write: Some((rtype, local, body)),
    }
}

/// Applies a PATCH entry's `patch` to the caller's `rtype/id` (`write::patched`), refused
/// before any work when an earlier entry writes the same resource, and when the resources the
/// Bundle's patches produce together exceed one body (`InBundle::patched_bytes`).
async fn patch_entry(
    ctx: &Ctx<'_>,
    in_bundle: &mut InBundle,
    rtype: &str,
    id: &str,
    patch: Value,
    headers: &http::HeaderMap,
) -> Result<(Value, Option<HeaderValue>), ScopeError> {
    let upstream = format!("{rtype}/{}", ctx.tenant.upstream_id(id)?);
    if in_bundle.written.contains(&upstream) {
        return Err(ScopeError::Body(format!(
            "{rtype}/{id} is patched by one entry of the transaction and written by another; send them in two transactions"
        )));
    }
    let (body, pinned) = super::write::patched(ctx, rtype, id, patch, headers.get(http::header::IF_MATCH)).await?;
    let limit = ctx.snap.loaded.config.server.max_body_bytes;
    in_bundle.patched_bytes = in_bundle.patched_bytes.saturating_add(crate::fhir::patch::size(&body));
    if in_bundle.patched_bytes > limit {
        return Err(ScopeError::PatchTooLarge(limit));
    }
    Ok((body, pinned))
}

/// A patch entry: the patched resource written as a `PUT` pinned (`ifMatch`) to the version
/// patched, so the transaction fails rather than overwrite a change made since the read.
fn planned_patch(
    mut req: Map<String, Value>,
    url: String,
    rtype: String,
    local: String,
    body: Value,
    pinned: Option<HeaderValue>,
    conditional: bool,
) -> Planned {
    if let Some(v) = pinned.as_ref().and_then(|v| v.to_str().ok()) {
        req.insert("ifMatch".into(), v.into());
    }
    let mut planned = planned_put(req, url, rtype, local, body);
    if let Step::Upstream { kind, .. } = &mut planned.step {
        *kind = Kind::Patched { conditional };
    }
    planned
}

/// A resource patched by one entry and written by another: the patch was applied to what the
/// resource held before the transaction, so the two cannot both hold (HAPI keeps one and
/// drops the other). Refused before anything is sent.
fn patched_once(plan: &[Planned]) -> Result<(), ScopeError> {
    let url = |p: &Planned| {
        p.entry
            .as_ref()
            .and_then(|e| e.get("request"))
            .and_then(|r| r.get("url"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let writes = |p: &&Planned| {
        matches!(p.step, Step::Upstream { kind: Kind::Created | Kind::Written | Kind::Patched { .. }, .. })
    };
    for patched in plan.iter().filter(|p| matches!(p.step, Step::Upstream { kind: Kind::Patched { .. }, .. })) {
        let target = url(patched);
        if plan.iter().filter(writes).filter(|p| url(p) == target).count() > 1 {
            let Step::Upstream { rtype, local, .. } = &patched.step else { continue };
            return Err(ScopeError::Body(format!(
                "{rtype}/{} is patched by one entry of the transaction and written by another; send them in two transactions",
                local.as_deref().unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// HAPI's storage response codes for a write sent as a PUT, as the client's interaction names
/// them: fhir-fence sends creates and patches as PUTs, which HAPI reports as updates.
type Renames = &'static [(&'static str, &'static str, &'static str)];
const CREATED: Renames = &[("SUCCESSFUL_UPDATE_AS_CREATE", "SUCCESSFUL_CREATE", "Create succeeded.")];
const PATCHED: Renames = &[
    ("SUCCESSFUL_UPDATE", "SUCCESSFUL_PATCH", "Patch succeeded."),
    (
        "SUCCESSFUL_UPDATE_NO_CHANGE",
        "SUCCESSFUL_PATCH_NO_CHANGE",
        "Patch succeeded: No changes were detected so no action was taken.",
    ),
];
const PATCHED_CONDITIONALLY: Renames = &[
    ("SUCCESSFUL_UPDATE", "SUCCESSFUL_CONDITIONAL_PATCH", "Conditional patch succeeded."),
    (
        "SUCCESSFUL_UPDATE_NO_CHANGE",
        "SUCCESSFUL_CONDITIONAL_PATCH_NO_CHANGE",
        "Conditional patch succeeded: No changes were detected so no action was taken.",
    ),
];

/// Renames the response entry's outcome codes by `renames` (code, new code, new display).
fn renamed(fields: &mut Map<String, Value>, renames: Renames) {
    let coding = fields.get_mut("response").and_then(|r| r.pointer_mut("/outcome/issue/0/details/coding"));
    for c in coding.and_then(Value::as_array_mut).into_iter().flatten() {
        let code = c.get("code").and_then(Value::as_str);
        if let Some((_, to, display)) = renames.iter().find(|(from, _, _)| Some(*from) == code) {
            c["code"] = (*to).into();
            if c.get("display").is_some() {
                c["display"] = (*display).into();
            }
        }
    }
}

/// One upstream response entry in the client's view: its own fields and the checked resource.
/// Resources that cannot be proven the caller's are left out (and logged); an `outcome` keeps
/// only its coded `details` from a known status-code system (its text can name upstream ids).
/// A GET entry's 410 stays 410: the entry read an id in the caller's namespace, as a single
/// read does.
fn response_entry(
    ctx: &Ctx,
    rtype: &str,
    local: Option<&str>,
    kind: Answer,
    answer: Value,
) -> (Map<String, Value>, Option<Checked>) {
    let mut out = Map::new();
    let response = answer.get("response").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut resp = Map::new();
    for k in ["status", "etag", "lastModified"] {
        if let Some(v) = response.get(k) {
            resp.insert(k.into(), v.clone());
        }
    }
    if let Some(outcome) = response.get("outcome") {
        let text =
            format!("{} (the server's text is withheld)", resp.get("status").and_then(Value::as_str).unwrap_or("done"));
        resp.insert("outcome".into(), crate::fhir::outcome::information_with_details(&text, Some(outcome)));
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
        let checked = if kind == Answer::Search {
            outbound::bundle(ctx, res, &format!("{}/{rtype}", ctx.snap.public_base), Counted::Tenant, "")
                .map(|f| f.bundle)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::testing::{capabilities, ctx, marked};

    async fn plan(entry: Value) -> Result<(Planned, InBundle), ScopeError> {
        let caps = Box::leak(Box::new(capabilities()));
        let mut in_bundle = InBundle::default();
        let planned = plan_entry(&ctx("acme"), caps, 0, entry, &mut in_bundle).await?;
        Ok((planned, in_bundle))
    }

    fn upstream_request(p: &Planned) -> &Value {
        &p.entry.as_ref().expect("goes upstream")["request"]
    }

    #[tokio::test]
    async fn entries_are_routed_by_the_same_allow_list_as_requests() {
        // Each is refused before anything is sent: the upstream of this context refuses
        // connections, so reaching it would be a different error.
        let refused = [
            json!({"request": {"method": "GET", "url": "Patient/p1/$everything"}}),
            json!({"request": {"method": "GET", "url": "Patient/$everything"}}),
            json!({"request": {"method": "GET", "url": "Patient/a%2Fb"}}),
            json!({"request": {"method": "HEAD", "url": "Patient/p1"}}),
            json!({"request": {"method": "GET", "url": "Patient/p1/_history"}}),
            json!({"request": {"method": "POST", "url": "Patient/_search"}}),
            json!({"request": {"method": "PATCH", "url": "Patient/p1"}, "resource": {"resourceType": "Binary"}}),
            json!({"request": {"method": "DELETE", "url": "Patient"}}),
            json!({"request": {"method": "DELETE", "url": "Patient/p1?_cascade=delete"}}),
            json!({"request": {"method": "POST", "url": "Patient"}}),
            json!({"request": {"method": "DELETE", "url": "Patient/p1"}, "resource": {"resourceType": "Patient"}}),
            json!({"request": {"method": "PUT", "url": "Patient/p1"}, "resource": {"resourceType": "Patient", "id": "p2"}}),
            json!({"request": {"method": "POST", "url": "Patient", "ifNoneExist": 7}, "resource": {"resourceType": "Patient"}}),
            json!({"request": {"method": "GET"}}),
            json!({"fullUrl": "urn:uuid:x"}),
            // Found by the attacker run on issue 16: criteria that select nothing, conditions dropped.
            json!({"request": {"method": "DELETE", "url": "Flag?_pretty=true"}}),
            json!({"request": {"method": "DELETE", "url": "Patient?_count=1"}}),
            json!({"request": {"method": "DELETE", "url": "Patient?identifier="}}),
            json!({"request": {"method": "DELETE", "url": "Patient?_id:not=p1"}}),
            json!({"request": {"method": "GET", "url": "Patient/p1", "ifNoneMatch": "W/\"1\""}}),
            json!({"request": {"method": "GET", "url": "Patient/p1", "ifModifiedSince": "Thu, 26 Nov 2026 10:00:00 GMT"}}),
            json!({"request": {"method": "DELETE", "url": "Patient/p1", "ifMatch": "W/\"1\""}}),
            json!({"request": {"method": "PUT", "url": "Patient/p1", "ifMatch": "garbage"}, "resource": {"resourceType": "Patient", "id": "p1"}}),
            json!({"request": {"method": "PUT", "url": "Patient/p1", "ifNoneExist": "name=x"}, "resource": {"resourceType": "Patient", "id": "p1"}}),
            json!({"request": {"method": "POST", "url": "Patient", "ifNoneExist": "_pretty=true"}, "resource": {"resourceType": "Patient"}}),
        ];
        for entry in refused {
            let result = plan(entry.clone()).await;
            assert!(matches!(result, Err(ScopeError::Body(_))), "{entry}: {:?}", result.err());
        }
        let server_wide = json!({"request": {"method": "PUT", "url": "SearchParameter/s"},
            "resource": {"resourceType": "SearchParameter", "id": "s"}});
        assert!(matches!(plan(server_wide).await, Err(ScopeError::NotWritable(..))));
        let unknown = json!({"request": {"method": "DELETE", "url": "Encounter/e1"}});
        assert!(matches!(plan(unknown).await, Err(ScopeError::UnknownType(_))));
    }

    #[tokio::test]
    async fn a_create_becomes_a_put_to_an_id_in_the_tenant() {
        let entry = json!({"fullUrl": "urn:uuid:1", "request": {"method": "POST", "url": "Patient"},
            "resource": {"resourceType": "Patient"}});
        let (p, in_bundle) = plan(entry).await.unwrap();
        let request = upstream_request(&p);
        assert_eq!(request["method"], "PUT");
        let url = request["url"].as_str().unwrap();
        assert!(url.starts_with("Patient/acme-"), "{url}");
        assert_eq!(in_bundle.full_urls["urn:uuid:1"], url);
        assert!(in_bundle.written.contains(url));
        assert!(p.write.is_some(), "the body is prepared once every fullUrl is known");
    }

    #[tokio::test]
    async fn reads_searches_and_deletes_are_scoped() {
        let (p, _) = plan(json!({"request": {"method": "DELETE", "url": "Patient/p1"}})).await.unwrap();
        assert_eq!(upstream_request(&p), &json!({"method": "DELETE", "url": "Patient/acme-p1"}));
        let put = json!({"request": {"method": "PUT", "url": "Patient/p1", "ifMatch": "W/\"3\""},
            "resource": {"resourceType": "Patient", "id": "p1"}});
        let (p, _) = plan(put).await.unwrap();
        assert_eq!(upstream_request(&p), &json!({"method": "PUT", "url": "Patient/acme-p1", "ifMatch": "W/\"3\""}));
        let (p, _) = plan(json!({"request": {"method": "GET", "url": "http://fence.test/fhir/Patient/p1/_history/2"}}))
            .await
            .unwrap();
        assert_eq!(upstream_request(&p)["url"], "Patient/acme-p1/_history/2");
        let (p, _) =
            plan(json!({"request": {"method": "GET", "url": "Observation?subject=Patient/p1"}})).await.unwrap();
        let url = upstream_request(&p)["url"].as_str().unwrap();
        assert!(url.contains("subject=Patient%2Facme-p1"), "{url}");
        assert!(url.contains("_tag="), "the tenant parameter is added: {url}");
    }

    #[test]
    fn a_response_entry_is_answered_in_the_callers_terms() {
        let acme = ctx("acme");
        let own = json!({"resourceType": "Patient", "id": "acme-p1", "meta": marked("acme")});
        let answer = json!({"response": {"status": "201 Created", "location": "http://127.0.0.1:9/fhir/Patient/acme-p1/_history/1",
            "outcome": {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "upstream words Patient/globex-p9",
            "details": {"coding": [{"system": "https://hapifhir.io/fhir/CodeSystem/hapi-fhir-storage-response-code",
            "code": "SUCCESSFUL_UPDATE_AS_CREATE", "display": "x"}]}}]}}, "resource": own});
        let (fields, resource) = response_entry(&acme, "Patient", Some("p1"), Answer::Resource, answer);
        assert_eq!(fields["fullUrl"], "http://fence.test/fhir/Patient/p1");
        let mut response = fields["response"].clone();
        let outcome = response.as_object_mut().unwrap().remove("outcome").unwrap();
        assert_eq!(
            response,
            json!({"status": "201 Created", "location": "http://fence.test/fhir/Patient/p1/_history/1"})
        );
        assert_eq!(outcome["issue"][0]["details"]["coding"][0]["code"], "SUCCESSFUL_UPDATE_AS_CREATE");
        assert!(
            !outcome.to_string().contains("upstream words") && !outcome.to_string().contains("globex"),
            "{outcome}"
        );
        assert_eq!(resource.unwrap().into_tree()["id"], "p1");
        // Another tenant's resource and location are left out, whatever the upstream says.
        let foreign = json!({"response": {"status": "200 OK", "location": "Patient/globex-p9/_history/1"},
            "resource": {"resourceType": "Patient", "id": "globex-p9", "meta": marked("globex")}});
        let (fields, resource) = response_entry(&acme, "Patient", None, Answer::Resource, foreign);
        assert_eq!(fields["response"], json!({"status": "200 OK"}));
        assert!(resource.is_none());
        // The caller's own deleted resource is 410, as alone; a read Bundle is a resource, not a search's page.
        let gone = json!({"response": {"status": "410 Gone"}});
        let (fields, _) = response_entry(&acme, "Patient", Some("p2"), Answer::Resource, gone);
        assert_eq!(fields["response"]["status"], "410 Gone");
        let stored = json!({"response": {"status": "200 OK"}, "resource": {"resourceType": "Bundle", "type": "searchset",
            "id": "acme-b1", "meta": marked("acme"),
            "link": [{"relation": "next", "url": "http://127.0.0.1:9/fhir/Patient/globex-p1/_history?_count=1"}]}});
        let (_, resource) = response_entry(&acme, "Bundle", Some("b1"), Answer::Resource, stored);
        let bundle = resource.expect("the tenant's own Bundle").into_tree();
        assert_eq!(bundle["id"], "b1");
        assert!(!bundle.to_string().contains("_page="), "its links are data, never turned into page tokens: {bundle}");
    }
}
