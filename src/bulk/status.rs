//! Export status and cancellation, by sealed job handle.
//!
//! While the upstream works, its 202 is passed on with `X-Progress` and `Retry-After` (checked
//! for shape). When it is done, its manifest is rebuilt from scratch: `request` is the client's
//! own kickoff URL, every file URL becomes a sealed fhir-fence URL bound to this job, caller and
//! file type, `requiresAccessToken` is true, and `count` is dropped (lines are filtered on the
//! way out, so the upstream's count is not the client's). A file this proxy cannot account for
//! (an unexpected type or URL) fails the whole manifest: nothing is silently lost.
use super::handle::{self, File, Job, Kind};
use super::locations;
use super::ExportError;
use crate::error::Error;
use crate::headers::base_headers;
use crate::identity::Caller;
use crate::scope::{Ctx, ScopeError};
use http::header::{HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Map, Value};

/// `GET [base]/_export/[job]`.
pub async fn poll(ctx: &Ctx<'_>, caller: &Caller, token: &str) -> Result<(StatusCode, Value, HeaderMap), Error> {
    let job = handle::open_job(ctx.snap, caller, token).await?;
    let answer = ctx.upstream.send(Method::GET, &poll_path(&job), base_headers(ctx.correlation), None).await?;
    match answer.status {
        StatusCode::ACCEPTED => {
            let mut headers = HeaderMap::new();
            if let Some(v) = answer.headers.get("x-progress").filter(|v| printable(v, 200)) {
                headers.insert("x-progress", v.clone());
            }
            if let Some(v) = answer.headers.get(RETRY_AFTER).filter(|v| v.as_bytes().iter().all(u8::is_ascii_digit)) {
                headers.insert(RETRY_AFTER, v.clone());
            }
            let outcome = crate::fhir::outcome::information("export in progress");
            Ok((StatusCode::ACCEPTED, outcome, headers))
        }
        StatusCode::OK => {
            let manifest = answer.body.ok_or(ScopeError::Unprovable)?;
            Ok((StatusCode::OK, rewrite_manifest(ctx, &job, manifest)?, HeaderMap::new()))
        }
        StatusCode::NOT_FOUND | StatusCode::GONE => Err(ExportError::UnknownHandle.into()),
        _ => Err(crate::scope::refused(&answer).into()),
    }
}

/// `DELETE [base]/_export/[job]`: tombstones the handle (shared first: if that cannot be
/// recorded, nothing is cancelled and the client retries), then cancels upstream. An upstream
/// that refuses the cancel leaves the job dead to clients all the same, as they asked.
pub async fn cancel(ctx: &Ctx<'_>, caller: &Caller, token: &str) -> Result<(StatusCode, Value, HeaderMap), Error> {
    let job = handle::open_job(ctx.snap, caller, token).await?;
    super::cancelled::cancel(ctx.snap, &job.id).await?;
    // HAPI answers a cancel without a content type; only the status matters here.
    match ctx.upstream.status_of(Method::DELETE, &poll_path(&job), base_headers(ctx.correlation)).await? {
        StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => {}
        StatusCode::NOT_FOUND | StatusCode::GONE => return Err(ExportError::UnknownHandle.into()),
        other => return Err(ScopeError::Refused(other.as_u16(), "export cancel".into()).into()),
    }
    tracing::info!(correlation = ctx.correlation, tenant = %ctx.tenant.name, job = %job.id, "export cancelled");
    Ok((StatusCode::ACCEPTED, crate::fhir::outcome::information("export cancelled"), HeaderMap::new()))
}

/// The upstream's status URL of `job`, relative to its base.
fn poll_path(job: &Job) -> String {
    locations::status_path(job.form, &job.upstream_job)
}

fn printable(v: &HeaderValue, max: usize) -> bool {
    v.len() <= max && v.as_bytes().iter().all(|b| (0x20..0x7f).contains(b))
}

/// Builds the client's manifest from the upstream's.
fn rewrite_manifest(ctx: &Ctx, job: &Job, manifest: Value) -> Result<Value, ScopeError> {
    let transaction_time = manifest.get("transactionTime").and_then(Value::as_str).ok_or(ScopeError::Unprovable)?;
    let mut out = Map::new();
    out.insert("transactionTime".into(), json!(transaction_time));
    out.insert("request".into(), json!(job.request));
    out.insert("requiresAccessToken".into(), json!(true));
    for (list, kind) in [("output", Kind::Output), ("error", Kind::Error), ("deleted", Kind::Deleted)] {
        let files = match manifest.get(list) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(files)) => files,
            Some(_) => return Err(ScopeError::Unprovable),
        };
        let mut rewritten = Vec::with_capacity(files.len());
        for f in files {
            rewritten.push(file_entry(ctx, job, f, kind)?);
        }
        if !rewritten.is_empty() || list != "deleted" {
            out.insert(list.into(), Value::Array(rewritten));
        }
    }
    Ok(Value::Object(out))
}

/// One manifest file: its type must be what this list may hold, its URL one of the job's files
/// (`locations`).
fn file_entry(ctx: &Ctx, job: &Job, f: &Value, kind: Kind) -> Result<Value, ScopeError> {
    let rtype = f.get("type").and_then(Value::as_str).ok_or(ScopeError::Unprovable)?;
    let type_ok = match kind {
        Kind::Output => job.types.iter().any(|t| t == rtype),
        Kind::Error => rtype == "OperationOutcome",
        Kind::Deleted => rtype == "Bundle",
    };
    let url = f.get("url").and_then(Value::as_str).ok_or(ScopeError::Unprovable)?;
    let path = locations::file_path(job.form, &job.upstream_job, &ctx.upstream.base, url);
    let (true, Some(path)) = (type_ok, path) else {
        tracing::warn!(correlation = ctx.correlation, tenant = %ctx.tenant.name, rtype, "export manifest names a file fhir-fence cannot account for");
        return Err(ScopeError::Unprovable);
    };
    let file = File {
        job: job.id.clone(),
        tenant: job.tenant.clone(),
        client: job.client.clone(),
        upstream: job.upstream.clone(),
        path,
        rtype: rtype.to_owned(),
        kind,
        grant: job.grant,
    };
    let url = format!("{}/_export-file/{}", ctx.snap.public_base, handle::seal_file(ctx.snap, ctx.tenant, &file));
    Ok(json!({"type": rtype, "url": url}))
}
