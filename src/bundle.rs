//! `POST [base]` with a Bundle. Transactions go to `scope::transaction` (every entry scoped,
//! one atomic upstream transaction); each batch entry is routed and run through
//! [`dispatch`](crate::dispatch) exactly like a single request, and its entry built from the
//! [`Outcome`].
use crate::dispatch::{dispatch, Outcome};
use crate::error::Error;
use crate::identity::Caller;
use crate::outbound::{Checked, Composed};
use crate::route::{self, Interaction};
use crate::scope::{conditional, Ctx, ScopeError};
use http::header;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

/// A Bundle posted to the base: its `type` and entries, at most `server.max_bundle_entries`
/// (the refusals made before any entry is planned; also what observe mode judges).
pub(crate) fn entries(ctx: &Ctx<'_>, body: &Value) -> Result<(String, Vec<Value>), Error> {
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
    Ok((kind, entries))
}

/// `POST [base]` with a Bundle: transactions go to `scope::transaction` (one atomic upstream
/// transaction); each batch entry runs through [`dispatch`] exactly like a single request.
/// `headers`: the request's (a transaction's `Prefer: return=representation` shows the written
/// resources in its response entries).
pub(crate) async fn bundle(ctx: &Ctx<'_>, caller: &Caller, body: Value, headers: &HeaderMap) -> Result<Checked, Error> {
    let (kind, entries) = entries(ctx, &body)?;
    let caps = ctx.snap.capabilities(&caller.tenant.upstream).await.ok_or(ScopeError::CapabilitiesUnavailable)?;
    match kind.as_str() {
        "transaction" => {
            // A frozen tenant's transaction may only read (an entry that cannot be routed is
            // refused by the transaction itself).
            let changes = |e: &Value| {
                route::entry_request(e, &ctx.snap.public_base, &ctx.snap.base_path)
                    .is_ok_and(|r| r.interaction.changes().is_some())
            };
            if entries.iter().any(changes) {
                crate::dispatch::frozen(ctx)?;
            }
            permit_transaction(caller, &entries, ctx)?;
            let written = match crate::request::prefers(headers, "return=representation") {
                true => crate::scope::transaction::Written::Shown,
                false => crate::scope::transaction::Written::Omitted,
            };
            let answer = crate::scope::transaction::run(ctx, &caps, entries, written).await?;
            // Judged again like any answer: a resource the caller may not read leaves the entry.
            Ok(match caller.grant.as_deref() {
                Some(grant) => answer.strip_entry_resources(|r| visible_entry(ctx, grant, r)),
                None => answer,
            })
        }
        "batch" => {
            let mut out = Composed::new("batch-response", &ctx.snap.public_base);
            let mut patched = 0;
            for entry in entries {
                let (fields, resource) = batch_entry(ctx, caller, entry, &mut patched).await;
                out.entry(fields, resource);
            }
            Ok(out.finish())
        }
        other => {
            Err(ScopeError::Body(format!("Bundle.type {other:?} cannot be posted; use transaction or batch")).into())
        }
    }
}

/// A transaction-response entry's resource judged for a caller with a SMART grant: a search's
/// Bundle keeps the entries the caller may see (and loses its `total`); any other resource
/// stays only if the caller may read it (`dispatch::visible`).
fn visible_entry(ctx: &Ctx, grant: &crate::smart::Grant, resource: &mut Value) -> bool {
    use crate::smart::Perms;
    let searched = resource.get("resourceType").and_then(Value::as_str) == Some("Bundle")
        && matches!(resource.get("type").and_then(Value::as_str), Some("searchset" | "history"));
    if !searched {
        return crate::dispatch::visible(ctx, grant, resource, Perms::R);
    }
    if let Some(Value::Array(entries)) = resource.get_mut("entry") {
        entries.retain(|e| {
            e.get("resource").is_none_or(|r| crate::dispatch::visible(ctx, grant, r, Perms::R.union(Perms::S)))
        });
    }
    if let Value::Object(bundle) = resource {
        bundle.remove("total");
    }
    true
}

/// A transaction is one request to the upstream, so the caller's SMART scopes must allow every
/// entry in full (an entry that `patient/` scopes would narrow cannot be narrowed inside it).
fn permit_transaction(caller: &Caller, entries: &[Value], ctx: &Ctx) -> Result<(), Error> {
    let Some(grant) = caller.grant.as_deref() else { return Ok(()) };
    for entry in entries {
        let request = route::entry_request(entry, &ctx.snap.public_base, &ctx.snap.base_path)?;
        let criteria = match request.headers.get("if-none-exist").and_then(|v| v.to_str().ok()) {
            Some(c) => Some(route::parse_query(Some(c.split_once('?').map_or(c, |(_, q)| q)))?),
            None => None,
        };
        let resource = entry.get("resource");
        match crate::smart::permit(grant, &request.interaction, &request.params, criteria.as_ref(), resource)? {
            crate::smart::Access::Full => {}
            crate::smart::Access::Patient(_) => {
                return Err(
                    crate::smart::SmartError::OutsideCompartment(grant.patient.clone().unwrap_or_default()).into()
                )
            }
        }
    }
    Ok(())
}

/// One batch entry as a request of its own: routed, scoped and checked like any other; its
/// answer (or its OperationOutcome) becomes the entry's response. The entry's own fields, and
/// its checked resource. `patched` counts the bytes of the resources the batch's PATCH entries
/// have produced (small patch documents can each produce a large resource the response then
/// holds): once they exceed one body's worth (`server.max_body_bytes`), later PATCH entries →
/// 413, so the batch's patched resources stay under two bodies' worth.
async fn batch_entry(
    ctx: &Ctx<'_>,
    caller: &Caller,
    entry: Value,
    patched: &mut usize,
) -> (Map<String, Value>, Option<Checked>) {
    let limit = ctx.snap.loaded.config.server.max_body_bytes;
    let mut is_patch = false;
    let result = async {
        let request = route::entry_request(&entry, &ctx.snap.public_base, &ctx.snap.base_path)?;
        if matches!(request.interaction, Interaction::Bundle | Interaction::Page { .. } | Interaction::Metadata) {
            return Err(ScopeError::Body("this request cannot be a batch entry".into()).into());
        }
        let route::EntryRequest { interaction, params, headers, url, .. } = request;
        let self_url = format!("{}/{url}", ctx.snap.public_base);
        let mut body = entry.get("resource").cloned();
        if matches!(interaction, Interaction::Patch { .. } | Interaction::ConditionalPatch { .. }) {
            is_patch = true;
            if *patched > limit {
                return Err(ScopeError::PatchTooLarge(limit).into());
            }
            // A patch entry's resource is the patch (JSON Patch inside a Binary, or Parameters).
            body = body.map(crate::fhir::patch::entry_body).transpose().map_err(|e| ScopeError::Body(e.to_string()))?;
        }
        Box::pin(dispatch(ctx, caller, interaction, &params, body, &headers, &self_url)).await.map(|o| (o, headers))
    }
    .await;
    let (status, resource, outcome, headers) = match result {
        Ok((outcome, request_headers)) => entry_parts(ctx, outcome, &request_headers),
        Err(e) => failed(ctx, e),
    };
    if is_patch {
        let mut bytes = Vec::new();
        resource.iter().for_each(|r| r.write_to(&mut bytes));
        *patched = patched.saturating_add(bytes.len().max(1));
    }
    let mut resp = serde_json::Map::new();
    let reason = status.canonical_reason().unwrap_or("");
    resp.insert("status".into(), format!("{} {reason}", status.as_u16()).trim().to_owned().into());
    for (name, field) in [(header::LOCATION, "location"), (header::ETAG, "etag")] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            resp.insert(field.into(), v.into());
        }
    }
    if let Some(o) = outcome {
        resp.insert("outcome".into(), o.into_tree());
    }
    let mut out = Map::new();
    out.insert("response".into(), Value::Object(resp));
    (out, resource)
}

/// An entry's status, resource, outcome and response headers (`Location`, `ETag`).
type EntryParts = (StatusCode, Option<Checked>, Option<Checked>, HeaderMap);

/// A failed entry: its OperationOutcome (fhir-fence's own words, `error.rs`).
fn failed(ctx: &Ctx, e: Error) -> EntryParts {
    let (status, outcome) = e.outcome(ctx.correlation);
    (status, None, Some(Checked::authored(outcome)), HeaderMap::new())
}

/// What a batch entry's response holds for an interaction's outcome: the same facts a single
/// request's answer carries (`answer::respond`), as JSON.
fn entry_parts(ctx: &Ctx, outcome: Outcome, request: &HeaderMap) -> EntryParts {
    match outcome {
        Outcome::Read(result) if conditional::not_modified(request, &result) => {
            (StatusCode::NOT_MODIFIED, None, None, result.headers)
        }
        Outcome::Read(result) | Outcome::Found(result) => (StatusCode::OK, Some(result.body), None, result.headers),
        Outcome::Written { rtype, done } => {
            let location = done.location(&ctx.snap.public_base, &rtype);
            let mut headers = done.headers;
            if let Ok(v) = http::HeaderValue::from_str(&location) {
                headers.insert(header::LOCATION, v);
            }
            (done.status, done.body, None, headers)
        }
        Outcome::Other { status, body, headers } if status.is_success() => (status, Some(body), None, headers),
        Outcome::Other { status, body, headers } => (status, None, Some(body), headers),
    }
}
