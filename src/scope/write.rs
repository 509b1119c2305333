//! Create, update and delete. A body is checked and rewritten before the upstream sees it:
//! `resourceType` must match the URL, the tenant coding is stamped (another tenant's → 422),
//! the id is moved into the tenant's namespace, and every reference is rewritten to upstream
//! ids and collected for [`refcheck`](super::refcheck). POST becomes a PUT with an id
//! fhir-fence assigns, so ids never come from the upstream's shared sequence.
use super::refcheck::{self, Target as RefTarget};
use super::{Ctx, ScopeError};
use crate::fhir::canonical;
use crate::fhir::capabilities::Capabilities;
use crate::fhir::reference::{self, Target};
use crate::headers::{base_headers, version_headers};
use crate::outbound::{self, Checked};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// What a write returns to the pipeline.
pub struct WriteResult {
    pub status: StatusCode,
    /// The stored resource in the client's view (after a delete: fhir-fence's OperationOutcome).
    pub body: Option<Checked>,
    pub local_id: String,
    pub version: Option<String>,
    pub headers: HeaderMap,
}

impl WriteResult {
    /// The public URL of the version written (`Location`; a batch entry's `response.location`).
    pub fn location(&self, public_base: &str, rtype: &str) -> String {
        match &self.version {
            Some(v) => format!("{public_base}/{rtype}/{}/_history/{v}", self.local_id),
            None => format!("{public_base}/{rtype}/{}", self.local_id),
        }
    }
}

/// `POST [type]` (`id` is `None`) and `PUT [type]/[id]`.
pub async fn create_or_update(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    id: Option<&str>,
    body: Value,
    if_match: Option<&HeaderValue>,
) -> Result<WriteResult, ScopeError> {
    let Planned { prepared: Prepared { body, targets, canonicals }, local, upstream_id } =
        plan(ctx, caps, rtype, id, body)?;
    refcheck::check_all(ctx, &targets).await?;
    super::canonicals::check_written(ctx, caps, &canonicals, &Default::default()).await?;
    provable_once_stored(ctx, &body)?;

    let mut headers = base_headers(ctx.correlation);
    headers.insert(crate::headers::PREFER, HeaderValue::from_static("return=representation"));
    if let Some(v) = if_match {
        headers.insert(http::header::IF_MATCH, v.clone());
    }
    let answer = ctx.upstream.send(Method::PUT, &format!("{rtype}/{upstream_id}"), headers, Some(&body)).await?;
    let status = answer.status;
    let headers = version_headers(&answer.headers);
    if status != StatusCode::OK && status != StatusCode::CREATED {
        return Err(super::refused(&answer));
    }
    let stored = outbound::resource(ctx, answer.body.ok_or(ScopeError::Unprovable)?)?;
    if stored.get("id").and_then(Value::as_str) != Some(local.as_str()) {
        return Err(ScopeError::Unprovable);
    }
    let version = stored.pointer("/meta/versionId").and_then(Value::as_str).map(str::to_owned);
    // A POST always answers 201, whatever the upstream PUT reported.
    let status = if id.is_none() { StatusCode::CREATED } else { status };
    Ok(WriteResult { status, body: Some(stored), local_id: local, version, headers })
}

/// A single write planned: the body prepared, its local and upstream ids.
pub struct Planned {
    pub prepared: Prepared,
    pub local: String,
    pub upstream_id: String,
}

/// The checks of [`create_or_update`] that need no upstream (type, body, id, [`prepare`]):
/// every refusal a write gets before references and canonicals are looked up (also what
/// observe mode judges, `observe`).
pub fn plan(ctx: &Ctx, caps: &Capabilities, rtype: &str, id: Option<&str>, body: Value) -> Result<Planned, ScopeError> {
    if !caps.has_type(rtype) {
        return Err(ScopeError::UnknownType(rtype.to_owned()));
    }
    let Value::Object(resource) = body else {
        return Err(ScopeError::Body("the body must be a JSON object".into()));
    };
    if resource.get("resourceType").and_then(Value::as_str) != Some(rtype) {
        return Err(ScopeError::Body(format!("resourceType must be {rtype}")));
    }
    let local = match id {
        Some(url_id) => {
            match resource.get("id").and_then(Value::as_str) {
                Some(body_id) if body_id == url_id => {}
                Some(_) => return Err(ScopeError::Body("the id in the body differs from the id in the URL".into())),
                None => return Err(ScopeError::Body("an update needs the resource id in the body".into())),
            }
            url_id.to_owned()
        }
        None => uuid::Uuid::new_v4().to_string(),
    };
    let prepared = prepare(ctx, caps, Value::Object(resource), &local, &InBundle::default())?;
    let upstream_id = ctx.tenant.upstream_id(&local).map_err(ScopeError::from)?;
    Ok(Planned { prepared, local, upstream_id })
}

/// An `If-Match` as the upstream reads it: a version tag, `W/"<version id>"` or `"<version id>"`.
/// Anything else is refused here (HAPI answers 500 to a tag it cannot read, and takes `W/""` as
/// no condition at all).
pub fn if_match(value: Option<&HeaderValue>) -> Result<Option<HeaderValue>, ScopeError> {
    let Some(value) = value else { return Ok(None) };
    let tag = value.to_str().ok().map(|v| v.trim());
    let version = tag.and_then(|t| t.strip_prefix("W/").unwrap_or(t).strip_prefix('"')?.strip_suffix('"'));
    match version {
        Some(v) if reference::is_id(v) => Ok(Some(value.clone())),
        _ => Err(ScopeError::Param("If-Match must be one version tag, W/\"<version id>\"".into())),
    }
}

/// `PATCH [type]/[id]` with JSON Patch or FHIRPath Patch: read-modify-write. The caller's own
/// resource is read (in the client's view), the patch applied here within bounds
/// (`fhir::patch`, `fhir::fhirpath_patch`: operation count, the document's size at every step,
/// the work), and the result written back through [`create_or_update`] — so it is stamped, its
/// references checked, and `If-Match` pins the version that was patched. A patch can therefore
/// never move a resource or its references out of the tenant, whatever paths it touches.
pub async fn patch(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    id: &str,
    patch: Value,
    if_match: Option<&HeaderValue>,
) -> Result<WriteResult, ScopeError> {
    let (doc, pinned) = patched(ctx, rtype, id, patch, if_match).await?;
    create_or_update(ctx, caps, rtype, Some(id), doc, pinned.as_ref()).await
}

/// The read-modify-write of [`patch`] up to the write: the caller's `rtype/id` read, `patch`
/// applied within the body limit, the result through the typed gate. Returns the patched
/// resource and the `If-Match` that pins the version patched (the caller's own, if it sent one).
/// A transaction entry's patch is this, then written as the entry's `PUT`.
pub async fn patched(
    ctx: &Ctx<'_>,
    rtype: &str,
    id: &str,
    patch: Value,
    if_match: Option<&HeaderValue>,
) -> Result<(Value, Option<HeaderValue>), ScopeError> {
    use crate::fhir::patch::PatchError;
    let refused = |e: PatchError| match e {
        PatchError::TooLarge(limit) => ScopeError::PatchTooLarge(limit),
        PatchError::Malformed(why) => ScopeError::Body(why),
        failed @ PatchError::Invalid(_) => ScopeError::PatchFailed(failed.to_string()),
        other => ScopeError::Patch(other.to_string()),
    };
    let patch = crate::fhir::fhirpath_patch::Patch::parse(patch).map_err(refused)?;
    let current = super::read::read(ctx, rtype, id, None).await?;
    let version = current.body.pointer("/meta/versionId").and_then(Value::as_str).map(str::to_owned);
    let mut doc = current.body.into_tree();
    let limit = ctx.snap.loaded.config.server.max_body_bytes;
    patch.apply(&mut doc, limit).map_err(refused)?;
    if doc.get("id").and_then(Value::as_str) != Some(id) {
        return Err(ScopeError::Body(format!("a patch must not change the resource's id ({rtype}/{id})")));
    }
    // The patched resource passes the same typed gate as a body sent whole (`request::parse_body`).
    crate::fhir::shape::check(&doc)
        .map_err(|e| ScopeError::Patch(format!("the result is not valid FHIR R4 JSON: {e}")))?;
    let pinned = match (if_match, version) {
        (Some(v), _) => Some(v.clone()),
        (None, Some(v)) => HeaderValue::from_str(&format!("W/\"{v}\"")).ok(),
        (None, None) => None,
    };
    Ok((doc, pinned))
}

/// `DELETE [type]/[id]`.
pub async fn delete(ctx: &Ctx<'_>, rtype: &str, id: &str) -> Result<WriteResult, ScopeError> {
    let upstream_id = ctx.tenant.upstream_id(id).map_err(|_| ScopeError::NotFound(format!("{rtype}/{id}")))?;
    let answer = ctx
        .upstream
        .send(Method::DELETE, &format!("{rtype}/{upstream_id}"), base_headers(ctx.correlation), None)
        .await?;
    match answer.status {
        StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::ACCEPTED => {}
        StatusCode::NOT_FOUND | StatusCode::GONE => return Err(ScopeError::NotFound(format!("{rtype}/{id}"))),
        _ => return Err(super::refused(&answer)),
    }
    ctx.snap.ref_cache.invalidate(&(ctx.tenant.name.clone(), format!("{rtype}/{upstream_id}"))).await;
    // The upstream's coded outcome (HAPI: deleted, or already deleted) with fhir-fence's text.
    let outcome =
        crate::fhir::outcome::information_with_details(&format!("deleted {rtype}/{id}"), answer.body.as_ref());
    Ok(WriteResult {
        status: StatusCode::OK,
        body: Some(Checked::authored(outcome)),
        local_id: id.to_owned(),
        version: None,
        headers: version_headers(&answer.headers),
    })
}

use crate::fhir::server_wide::SERVER_WIDE;

/// Refuses a change to a resource of `rtype` that no tenant may make through fhir-fence: the
/// server-wide types, and `AuditEvent` while fhir-fence writes the audit trail there (a tenant
/// may read its trail, never edit or delete it). Called for every body written (`prepare`) and
/// for every interaction that changes a resource (`dispatch`, transaction entries).
pub fn writable(ctx: &Ctx, rtype: &str) -> Result<(), ScopeError> {
    if let Some((_, why)) = SERVER_WIDE.iter().find(|(t, _)| *t == rtype) {
        return Err(ScopeError::NotWritable(rtype.to_owned(), why));
    }
    if rtype == "AuditEvent" && ctx.snap.audit.writes_fhir() {
        return Err(ScopeError::NotWritable(rtype.to_owned(), "the audit trail is written by fhir-fence only"));
    }
    Ok(())
}

/// What a transaction Bundle itself defines: `fullUrl`s (`urn:uuid:…` or absolute) mapped to
/// the upstream references fhir-fence assigned, and the upstream paths the Bundle writes (no
/// existence check for those: they exist once the transaction commits).
#[derive(Default)]
pub struct InBundle {
    pub full_urls: HashMap<String, String>,
    pub written: HashSet<String>,
    /// The bytes of the resources PATCH entries have produced so far: together at most one
    /// body's worth (`server.max_body_bytes`), so a few small patch documents cannot make a
    /// transaction hold many bodies' worth of patched resources.
    pub patched_bytes: usize,
}

/// A body ready for the upstream, with what must still be proven before it is sent.
pub struct Prepared {
    pub body: Value,
    /// References that must exist in the caller's tenant ([`refcheck`]).
    pub targets: Vec<RefTarget>,
    /// Canonical URLs that must name the caller's definitions (`canonicals::check_written`).
    pub canonicals: Vec<super::canonicals::Needed>,
}

/// Nothing is written that the answer would refuse: the body as the upstream will store it
/// passes the outbound check first. (Without this, such a write would be committed and the
/// writer answered 502: fail closed on the answer, but not on the write.)
pub fn provable_once_stored(ctx: &Ctx, body: &Value) -> Result<(), ScopeError> {
    outbound::resource(ctx, body.clone()).map(drop).map_err(|_| {
        ScopeError::Body("the resource would not be provably this tenant's once stored; nothing was written".into())
    })
}

/// Checks and rewrites a resource body for the upstream: the id moved into the tenant namespace,
/// the tenant coding stamped, every reference rewritten.
pub fn prepare(
    ctx: &Ctx,
    caps: &Capabilities,
    body: Value,
    local: &str,
    bundle: &InBundle,
) -> Result<Prepared, ScopeError> {
    // Canonicals in forms the upstream resolves its own way, or naming the upstream itself, and
    // definitions squatting a shared url are refused before anything is rewritten.
    let canonicals = super::canonicals::check_forms(ctx, &body, &bundle.full_urls)?;
    let Value::Object(mut resource) = body else {
        return Err(ScopeError::Body("the body must be a JSON object".into()));
    };
    let rtype = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
    writable(ctx, &rtype)?;
    if rtype == "Subscription" {
        super::subscription::inbound(ctx, caps, &mut resource)?;
    }
    let upstream_id = ctx.tenant.upstream_id(local)?;
    resource.insert("id".into(), Value::String(upstream_id));
    ctx.snap.marking.stamp(&mut resource, ctx.tenant)?;
    // A resource inside this one (contained, a Bundle's entry, a Parameters' resource) cannot
    // carry a tenant marker of its own: only the outermost is stamped and judged.
    if resource.iter().filter(|(k, _)| *k != "meta").any(|(_, v)| marks_nested(ctx, v)) {
        return Err(ScopeError::ForeignMarker);
    }
    let mut body = Value::Object(resource);
    let mut targets = Vec::new();
    reference::for_each_mut(&mut body, &mut |r: &mut String| inbound_reference(ctx, r, bundle, &mut targets))?;
    reference::for_each_attachment_url_mut(&mut body, &mut |u: &mut String| attachment_url(ctx, u, &mut targets))?;
    canonical::for_each_mut(&mut body, &mut |c: &mut String| inbound_canonical(ctx, c, bundle, &mut targets))?;
    targets.dedup();
    Ok(Prepared { body, targets, canonicals })
}

/// `Attachment.url` is treated as a reference: a `Binary` of the caller's (relative, or under the
/// public base, kept as written) or an allow-listed base; anything else is refused.
/// Whether `value` holds, at any depth, a resource whose `meta` names the tenant coding system.
fn marks_nested(ctx: &Ctx, value: &Value) -> bool {
    match value {
        Value::Object(o) => {
            let marked =
                o.contains_key("resourceType") && o.get("meta").is_some_and(|m| ctx.snap.marking.mentions_system(m));
            marked || o.values().any(|v| marks_nested(ctx, v))
        }
        Value::Array(items) => items.iter().any(|v| marks_nested(ctx, v)),
        _ => false,
    }
}

fn attachment_url(ctx: &Ctx, url: &str, targets: &mut Vec<RefTarget>) -> Result<(), ScopeError> {
    let literal = match reference::parse(url) {
        Target::Relative(l) => l,
        Target::Absolute { base, literal } if base == ctx.snap.public_base => literal,
        Target::Absolute { base, .. } if ctx.snap.external_bases.iter().any(|b| b == base) => return Ok(()),
        _ if ctx.snap.external_bases.iter().any(|b| url.starts_with(&format!("{b}/"))) => return Ok(()),
        _ => {
            return Err(ScopeError::ReferenceForm(
                url.to_owned(),
                "Attachment.url must name a Binary of this tenant or a URL under an allow-listed base",
            ))
        }
    };
    if literal.rtype != "Binary" {
        return Err(ScopeError::ReferenceForm(url.to_owned(), "Attachment.url on this server must name a Binary"));
    }
    let upstream_id = ctx.tenant.upstream_id(literal.id).map_err(|_| ScopeError::Reference(url.to_owned()))?;
    targets.push(RefTarget { path: literal.with_id(&upstream_id), rtype: "Binary".into(), original: url.to_owned() });
    Ok(())
}

/// A canonical the upstream would resolve as a reference (`fhir::canonical`) is one: rewritten
/// and checked like a `reference`. One naming a server-wide type (`ValueSet/x`) names shared
/// definitions and is left alone; URLs are matched by `url`, not resolved as references.
fn inbound_canonical(
    ctx: &Ctx,
    c: &mut String,
    bundle: &InBundle,
    targets: &mut Vec<RefTarget>,
) -> Result<(), ScopeError> {
    if let Some(mapped) = bundle.full_urls.get(c.as_str()) {
        *c = mapped.clone();
        return Ok(());
    }
    let Some((literal, rest)) = canonical::tenant_literal(c) else { return Ok(()) };
    *c = format!("{}{rest}", in_tenant(ctx, literal, c, bundle, targets)?);
    Ok(())
}

/// A literal moved into the caller's namespace; unless the Bundle being written creates it,
/// recorded as a target that must exist in the caller's tenant.
fn in_tenant(
    ctx: &Ctx,
    literal: reference::Literal,
    original: &str,
    bundle: &InBundle,
    targets: &mut Vec<RefTarget>,
) -> Result<String, ScopeError> {
    let upstream_id = ctx.tenant.upstream_id(literal.id).map_err(|_| ScopeError::Reference(original.to_owned()))?;
    let path = literal.with_id(&upstream_id);
    if !bundle.written.contains(&format!("{}/{}", literal.rtype, upstream_id)) {
        targets.push(RefTarget { path: path.clone(), rtype: literal.rtype.to_owned(), original: original.to_owned() });
    }
    Ok(path)
}

/// Rewrites one reference in a body to upstream form and records what must exist.
fn inbound_reference(
    ctx: &Ctx,
    r: &mut String,
    bundle: &InBundle,
    targets: &mut Vec<RefTarget>,
) -> Result<(), ScopeError> {
    if let Some(mapped) = bundle.full_urls.get(r.as_str()) {
        *r = mapped.clone();
        return Ok(());
    }
    let literal = match reference::parse(r) {
        Target::Contained => return Ok(()),
        Target::Relative(l) => l,
        Target::Absolute { base, literal } if base == ctx.snap.public_base => literal,
        Target::Absolute { base, .. } if ctx.snap.external_bases.iter().any(|b| b == base) => return Ok(()),
        Target::Absolute { .. } | Target::Other => {
            return Err(ScopeError::ReferenceForm(
                r.clone(),
                "absolute references must be under this server's base or an allow-listed one",
            ))
        }
        Target::Urn => {
            return Err(ScopeError::ReferenceForm(r.clone(), "urn references are only meaningful inside a transaction"))
        }
        Target::Conditional => {
            return Err(ScopeError::ReferenceForm(
                r.clone(),
                "conditional references are only resolved inside a transaction",
            ))
        }
    };
    *r = in_tenant(ctx, literal, r, bundle, targets)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::testing::{capabilities, ctx, marked, SYSTEM};
    use serde_json::json;

    fn prepared(body: Value) -> Result<Prepared, ScopeError> {
        prepare(&ctx("acme"), &capabilities(), body, "o1", &InBundle::default())
    }

    #[test]
    fn a_write_is_stamped_prefixed_and_its_references_moved_into_the_tenant() {
        let p = prepared(json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "subject": {"reference": "Patient/p1"}, "meta": {"tag": [{"system": "http://x", "code": "y"}]}}))
        .unwrap();
        assert_eq!(p.body["id"], "acme-o1");
        assert_eq!(p.body["subject"]["reference"], "Patient/acme-p1");
        assert_eq!(
            p.body["meta"]["tag"],
            json!([{"system": "http://x", "code": "y"}, {"system": SYSTEM, "code": "acme"}])
        );
        let targets: Vec<&str> = p.targets.iter().map(|t| t.path.as_str()).collect();
        assert_eq!(targets, ["Patient/acme-p1"], "the reference must still be proven to exist");
        provable_once_stored(&ctx("acme"), &p.body).expect("what acme writes, acme can read back");
    }

    #[test]
    fn another_tenants_marker_is_refused_wherever_it_hides() {
        let foreign = json!({"resourceType": "Patient", "meta": marked("globex")});
        assert!(matches!(prepared(foreign), Err(ScopeError::ForeignMarker)));
        let contained = json!({"resourceType": "Observation", "status": "final",
            "contained": [{"resourceType": "Patient", "id": "c", "meta": marked("acme")}]});
        assert!(matches!(prepared(contained), Err(ScopeError::ForeignMarker)));
        let in_a_bundle = json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": {"resourceType": "Patient", "id": "globex-p1", "meta": marked("globex")}}]});
        assert!(matches!(prepared(in_a_bundle), Err(ScopeError::ForeignMarker)));
        let in_parameters = json!({"resourceType": "Parameters", "parameter": [{"name": "p", "part": [
            {"name": "r", "resource": {"resourceType": "Patient", "meta": marked("acme")}}]}]});
        assert!(matches!(prepared(in_parameters), Err(ScopeError::ForeignMarker)));
        let not_a_list = json!({"resourceType": "Patient", "meta": {"tag": {"system": SYSTEM, "code": "globex"}}});
        assert!(prepared(not_a_list).is_err());
    }

    #[test]
    fn if_match_is_one_version_tag() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        for ok in ["W/\"1\"", "\"12\"", " W/\"a.b-c\" "] {
            assert!(if_match(Some(&h(ok))).unwrap().is_some(), "{ok}");
        }
        // HAPI answers these 500 (or, for W/"", takes them as no condition at all).
        for refused in ["garbage", "W/\"abc def\"", "*", "W/\"1\", W/\"2\"", "W/1", "W/\"\""] {
            assert!(matches!(if_match(Some(&h(refused))), Err(ScopeError::Param(_))), "{refused}");
        }
        assert!(if_match(None).unwrap().is_none());
    }

    #[test]
    fn server_wide_types_are_not_writable() {
        assert!(matches!(writable(&ctx("acme"), "SearchParameter"), Err(ScopeError::NotWritable(..))));
        assert!(writable(&ctx("acme"), "Patient").is_ok());
        let body = json!({"resourceType": "SearchParameter", "status": "active"});
        assert!(matches!(prepared(body), Err(ScopeError::NotWritable(..))));
    }

    #[test]
    fn only_what_could_be_read_back_is_sent() {
        let acme = ctx("acme");
        let mut p = prepared(json!({"resourceType": "Observation", "status": "final"})).unwrap().body;
        provable_once_stored(&acme, &p).unwrap();
        // An id already in another tenant's namespace, or an upstream URL, can never be read back.
        for reference in ["Patient/globex-p1", "http://127.0.0.1:9/fhir/Patient/globex-p1"] {
            p["subject"] = json!({ "reference": reference });
            assert!(matches!(provable_once_stored(&acme, &p), Err(ScopeError::Body(_))), "{reference}");
        }
        // Nor can a body stored under the other tenant's marker.
        let globex =
            prepare(&ctx("globex"), &capabilities(), json!({"resourceType": "Patient"}), "p", &InBundle::default());
        assert!(provable_once_stored(&acme, &globex.unwrap().body).is_err());
    }
}
