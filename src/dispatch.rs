//! The one router from an interaction to the scope function that serves it, for single
//! requests (`pipeline`) and batch entries (`bundle`) alike. Its product is an [`Outcome`]: what
//! the scope function decided, not yet an HTTP response, so a batch entry is built from it
//! directly and a single request's answer by `answer::respond`.
use crate::error::Error;
use crate::identity::Caller;
use crate::outbound::Checked;
use crate::request::RequestError;
use crate::route::{self, Interaction};
use crate::scope::confine::{self, confine};
use crate::scope::read::ReadResult;
use crate::scope::write::WriteResult;
use crate::scope::{conditional, read, search, write, Ctx, ScopeError};
use crate::smart::{self, Access};
use http::header;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

/// What an interaction produced.
pub enum Outcome {
    /// A read or vread: whether it is answered 304, or as a Binary's own content, depends on
    /// the request's headers.
    Read(ReadResult),
    /// A search, history, page or operation answer: 200 with the checked body.
    Found(ReadResult),
    /// A create, update or patch: `Prefer: return=…` decides the body.
    Written { rtype: String, done: WriteResult },
    /// Anything else, with a body fhir-fence made (an OperationOutcome, an export manifest) or
    /// one the outbound gate checked.
    Other { status: StatusCode, body: Checked, headers: HeaderMap },
}

impl Outcome {
    /// Entries blocked on the way out (for metrics and the audit record).
    pub fn dropped(&self) -> usize {
        match self {
            Outcome::Read(r) | Outcome::Found(r) => r.dropped,
            _ => 0,
        }
    }

    fn info(status: StatusCode, text: &str, headers: HeaderMap) -> Outcome {
        Outcome::Other { status, body: Checked::authored(crate::fhir::outcome::information(text)), headers }
    }
}

/// Runs one routed interaction for the caller. Export file downloads (streamed), `metadata`
/// (answered before identity) and Bundles (`bundle`, whose entries come back here) are handled
/// by the pipeline and never reach this function.
pub async fn dispatch(
    ctx: &Ctx<'_>,
    caller: &Caller,
    interaction: Interaction,
    params: &route::Params,
    body: Option<Value>,
    headers: &HeaderMap,
    self_url: &str,
) -> Result<Outcome, Error> {
    // The token's SMART scopes, after the tenant rule (which the scope modules apply whatever
    // they say): a request they do not allow is refused here, one granted only by patient/
    // scopes is narrowed to the patient's compartment. A batch entry comes through here too.
    let access = permit(caller, &interaction, params, body.as_ref(), headers)?;
    let narrowed;
    let (interaction, params) = match access {
        Access::Full => (interaction, params),
        Access::Patient(patient) => {
            let caps =
                ctx.snap.capabilities(&caller.tenant.upstream).await.ok_or(ScopeError::CapabilitiesUnavailable)?;
            let (interaction, changed) = confine(ctx, &caps, interaction, params, body.as_ref(), &patient).await?;
            narrowed = changed;
            (interaction, narrowed.as_ref().unwrap_or(params))
        }
    };
    let if_match = preflight(ctx, &interaction, headers)?;
    let outcome = run(ctx, caller, interaction, params, body, headers, self_url, if_match.as_ref()).await?;
    Ok(match caller.grant.as_deref() {
        Some(grant) => recheck(ctx, grant, outcome)?,
        None => outcome,
    })
}

/// What the caller's SMART grant allows this interaction: in full, only for the launch patient
/// (narrowed by `confine` in [`dispatch`]), or not (`SmartError`). No upstream call.
pub(crate) fn permit(
    caller: &Caller,
    interaction: &Interaction,
    params: &route::Params,
    body: Option<&Value>,
    headers: &HeaderMap,
) -> Result<Access, Error> {
    let Some(grant) = caller.grant.as_deref() else { return Ok(Access::Full) };
    let criteria = match headers.get("if-none-exist").map(|v| v.to_str()) {
        Some(Ok(c)) => Some(route::parse_query(Some(c.split_once('?').map_or(c, |(_, q)| q)))?),
        Some(Err(_)) => return Err(RequestError::Header("if-none-exist").into()),
        None => None,
    };
    Ok(smart::permit(grant, interaction, params, criteria.as_ref(), body)?)
}

/// The judgements every interaction gets before its scope function runs, none calling the
/// upstream; answers the request's `If-Match` as the upstream will read it.
pub(crate) fn preflight(
    ctx: &Ctx<'_>,
    interaction: &Interaction,
    headers: &HeaderMap,
) -> Result<Option<http::HeaderValue>, Error> {
    // A read-only tenant changes nothing (503 + Retry-After); types no tenant may change
    // (server-wide ones, the audit trail) are refused before any scope module runs; a batch
    // entry comes through here too.
    if let Some(rtype) = interaction.changes() {
        frozen(ctx)?;
        write::writable(ctx, rtype)?;
    }
    let if_match = write::if_match(headers.get(header::IF_MATCH))?;
    // The upstream ignores If-Match on a delete: refused rather than dropped.
    if if_match.is_some() && matches!(interaction, Interaction::Delete { .. } | Interaction::ConditionalDelete { .. }) {
        return Err(
            ScopeError::Param("If-Match on a delete is not supported (the upstream would ignore it)".into()).into()
        );
    }
    Ok(if_match)
}

/// Refuses a change for a `read-only` tenant (`Error::ReadOnly`: 503 with `Retry-After`). The
/// one judgement of a frozen tenant: `dispatch` calls it for every interaction that changes
/// data (single requests and batch entries), `bundle` for a transaction with any such entry.
pub(crate) fn frozen(ctx: &Ctx<'_>) -> Result<(), Error> {
    if ctx.tenant.status == crate::config::TenantStatus::ReadOnly {
        return Err(Error::ReadOnly { retry_after: ctx.snap.loaded.config.lifecycle.read_only_retry_after_secs });
    }
    Ok(())
}

/// Whether a resource in an answer may reach a caller with a SMART grant: its type granted in
/// full for `letters` (`r`; a search's entries `r` or `s`), or — with `patient/` scopes — the
/// launch patient's (`scope::confine::is_patients`). fhir-fence's own OperationOutcomes always.
pub(crate) fn visible(ctx: &Ctx<'_>, grant: &smart::Grant, resource: &Value, letters: smart::Perms) -> bool {
    let rtype = resource.get("resourceType").and_then(Value::as_str);
    rtype == Some("OperationOutcome")
        || grant.perms(rtype, false).intersects(letters)
        || grant.patient.as_deref().is_some_and(|p| grant.confines() && confine::is_patients(ctx, resource, p))
}

/// The answer judged again for a caller with a SMART grant: every resource it holds must be
/// [`visible`]. A read that is not becomes the 404 of a resource that does not exist; a Bundle
/// loses the entry (and, with `patient/` scopes, always its `total`: another page may lose
/// what this one did not, and HAPI's `$everything` counts are its own); a write's answer loses
/// its resource (the write happened; the caller may not read what it wrote over).
fn recheck(ctx: &Ctx<'_>, grant: &smart::Grant, outcome: Outcome) -> Result<Outcome, Error> {
    use smart::Perms;
    Ok(match outcome {
        Outcome::Read(read) => {
            let resource = read.body.as_tree().cloned().unwrap_or_else(|| read.body.clone().into_tree());
            if !visible(ctx, grant, &resource, Perms::R) {
                let rtype = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
                let id = resource.get("id").and_then(Value::as_str).unwrap_or_default();
                return Err(ScopeError::NotFound(format!("{rtype}/{id}")).into());
            }
            Outcome::Read(read)
        }
        Outcome::Found(found) => {
            let keep = |r: &Value| visible(ctx, grant, r, Perms::R.union(Perms::S));
            let (body, dropped) = found.body.retain_entries(keep, grant.confines());
            Outcome::Found(ReadResult { body, headers: found.headers, dropped: found.dropped + dropped })
        }
        Outcome::Written { rtype, mut done } => {
            if done.body.as_ref().is_some_and(|b| !visible(ctx, grant, &b.clone().into_tree(), Perms::R)) {
                done.body = None;
            }
            Outcome::Written { rtype, done }
        }
        other => other,
    })
}

/// [`dispatch`] without the answer's second SMART check.
#[allow(clippy::too_many_arguments)]
async fn run(
    ctx: &Ctx<'_>,
    caller: &Caller,
    interaction: Interaction,
    params: &route::Params,
    body: Option<Value>,
    headers: &HeaderMap,
    self_url: &str,
    if_match: Option<&http::HeaderValue>,
) -> Result<Outcome, Error> {
    let caps = || async {
        ctx.snap.capabilities(&caller.tenant.upstream).await.ok_or(Error::from(ScopeError::CapabilitiesUnavailable))
    };
    let written = |rtype: String, done: WriteResult| Outcome::Written { rtype, done };
    Ok(match interaction {
        Interaction::Read { rtype, id } => Outcome::Read(read::read_for_client(ctx, &rtype, &id, None).await?),
        Interaction::Vread { rtype, id, version } => {
            Outcome::Read(read::read_for_client(ctx, &rtype, &id, Some(&version)).await?)
        }
        Interaction::InstanceHistory { rtype, id } => {
            Outcome::Found(read::history(ctx, &rtype, &id, params, self_url).await?)
        }
        Interaction::Search { rtype, .. } => {
            Outcome::Found(search::search(ctx, &*caps().await?, &rtype, params, self_url).await?)
        }
        Interaction::SystemSearch { .. } => {
            Outcome::Found(search::system(ctx, &*caps().await?, params, self_url).await?)
        }
        Interaction::Compartment { ctype, id, rtype } => {
            Outcome::Found(search::compartment(ctx, &*caps().await?, (&ctype, &id, &rtype), params, self_url).await?)
        }
        Interaction::History { rtype } => {
            Outcome::Found(search::history(ctx, &*caps().await?, rtype.as_deref(), params, self_url).await?)
        }
        Interaction::Page { token } => Outcome::Found(search::page(ctx, &token, self_url).await?),
        Interaction::Create { rtype } => {
            let caps = caps().await?;
            let done = match headers.get("if-none-exist").map(|v| v.to_str()) {
                Some(Ok(criteria)) => {
                    conditional::create(ctx, &caps, &rtype, criteria, body.unwrap_or_default()).await?
                }
                Some(Err(_)) => return Err(RequestError::Header("if-none-exist").into()),
                None => write::create_or_update(ctx, &caps, &rtype, None, body.unwrap_or_default(), None).await?,
            };
            written(rtype, done)
        }
        Interaction::ConditionalUpdate { rtype } => {
            let done =
                conditional::update(ctx, &*caps().await?, &rtype, params, body.unwrap_or_default(), if_match).await?;
            written(rtype, done)
        }
        Interaction::ConditionalPatch { rtype } => {
            let done =
                conditional::patch(ctx, &*caps().await?, &rtype, params, body.unwrap_or_default(), if_match).await?;
            written(rtype, done)
        }
        Interaction::ConditionalDelete { rtype } => {
            let status = conditional::delete(ctx, &*caps().await?, &rtype, params).await?;
            Outcome::info(status, &format!("conditional delete on {rtype} done"), HeaderMap::new())
        }
        Interaction::Update { rtype, id } => {
            let caps = caps().await?;
            let done =
                write::create_or_update(ctx, &caps, &rtype, Some(&id), body.unwrap_or_default(), if_match).await?;
            written(rtype, done)
        }
        Interaction::Patch { rtype, id } => {
            let done = write::patch(ctx, &*caps().await?, &rtype, &id, body.unwrap_or_default(), if_match).await?;
            written(rtype, done)
        }
        Interaction::Delete { rtype, id } => {
            let done = write::delete(ctx, &rtype, &id).await?;
            match done.body {
                Some(body) => Outcome::Other { status: StatusCode::OK, body, headers: done.headers },
                None => Outcome::info(StatusCode::OK, &format!("deleted {rtype}/{}", done.local_id), done.headers),
            }
        }
        Interaction::Operation { rtype, id, op } => {
            Outcome::Found(crate::scope::operation::run(ctx, &rtype, &id, op, params, body, self_url).await?)
        }
        Interaction::Validate { rtype, id } => {
            let (status, body) = crate::scope::operation::validate(ctx, &rtype, id.as_deref(), body).await?;
            Outcome::Other { status, body, headers: HeaderMap::new() }
        }
        Interaction::Export { level, .. } => {
            let caps = caps().await?;
            let (status, body, headers) =
                crate::bulk::kickoff::kickoff(ctx, &caps, caller, &level, params, body, headers, self_url).await?;
            Outcome::Other { status, body: Checked::authored(body), headers }
        }
        Interaction::ExportStatus { job } => {
            let (status, body, headers) = crate::bulk::status::poll(ctx, caller, &job).await?;
            Outcome::Other { status, body: Checked::authored(body), headers }
        }
        Interaction::ExportCancel { job } => {
            let (status, body, headers) = crate::bulk::status::cancel(ctx, caller, &job).await?;
            Outcome::Other { status, body: Checked::authored(body), headers }
        }
        Interaction::ExportFile { .. } | Interaction::Metadata | Interaction::Bundle => {
            return Err(ScopeError::Body("this request cannot be a batch entry".into()).into())
        }
    })
}
