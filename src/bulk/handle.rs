//! Sealed export handles. The client never sees the upstream's job id or file URLs: it gets
//! fhir-fence URLs carrying an AEAD-sealed handle bound to the tenant, the party that started
//! the job (`Caller::party`: the client id, else the token's subject), the SMART grant and the
//! upstream, with an expiry. Any replica with the same key (`paging.key_file`) opens them.
//! A cancelled job is remembered (tombstone, `cancelled`: on every replica when `[redis]` is
//! set) until its handles expire, so its status and files answer 404 from then on.
use super::ExportError;
use crate::identity::Caller;
use crate::state::Snapshot;
use crate::tenancy::Tenant;
use serde::{Deserialize, Serialize};
use std::time::Duration;

const JOB: &str = "export-job";
/// `v2`: a file handle names its upstream path (a `v1` handle named a HAPI Binary id).
const FILE: &str = "export-file/v2";

/// What a job handle carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Job {
    /// fhir-fence's own random id for this job (the tombstone key).
    pub id: String,
    pub tenant: String,
    /// `Caller::party` of the caller that started it.
    pub client: Option<String>,
    pub upstream: String,
    /// The upstream's job id (in its status URL).
    pub upstream_job: String,
    /// How the upstream names the job's status and files (handles made before Helios: HAPI's).
    #[serde(default)]
    pub form: super::locations::Form,
    /// The kickoff URL as the client sent it (the manifest's `request`).
    pub request: String,
    /// The resource types requested; output files of other types are never handed out.
    pub types: Vec<String>,
    /// The starting caller's SMART grant fingerprint (0: scopes not enforced).
    #[serde(default)]
    pub grant: u64,
}

/// Which list of the manifest a file came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Kind {
    Output,
    Error,
    Deleted,
}

/// What a file handle carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct File {
    pub job: String,
    pub tenant: String,
    pub client: Option<String>,
    pub upstream: String,
    /// The file's path under the upstream's base (`Binary/{id}`, `export-file/{job}/{name}`).
    pub path: String,
    /// The file's resource type (every line must have it).
    pub rtype: String,
    pub kind: Kind,
    /// The job's grant fingerprint.
    #[serde(default)]
    pub grant: u64,
}

fn ttl(snap: &Snapshot) -> Duration {
    Duration::from_secs(snap.loaded.config.export.job_ttl_secs)
}

pub fn seal_job(snap: &Snapshot, tenant: &Tenant, job: &Job) -> String {
    snap.seals.seal(tenant, JOB, job, ttl(snap))
}

pub fn seal_file(snap: &Snapshot, tenant: &Tenant, file: &File) -> String {
    snap.seals.seal(tenant, FILE, file, ttl(snap))
}

/// The fingerprint of a caller's SMART grant (0: scopes not enforced).
pub fn grant_of(caller: &Caller) -> u64 {
    caller.grant.as_deref().map_or(0, crate::smart::Grant::fingerprint)
}

/// True when the handle was given to this caller (same tenant, party, upstream and SMART
/// grant: another client, another subject of a token without a client id, or the same client
/// with other scopes, is another caller).
fn bound_to(caller: &Caller, tenant: &str, client: &Option<String>, upstream: &str, grant: u64) -> bool {
    caller.tenant.name == tenant
        && &caller.party() == client
        && caller.tenant.upstream == upstream
        && grant_of(caller) == grant
}

/// Opens a job handle for `caller`; anything else is the same 404.
pub async fn open_job(snap: &Snapshot, caller: &Caller, token: &str) -> Result<Job, ExportError> {
    let job: Job = snap.seals.open(&caller.tenant, JOB, token).map_err(|_| ExportError::UnknownHandle)?;
    if !bound_to(caller, &job.tenant, &job.client, &job.upstream, job.grant)
        || super::cancelled::is_cancelled(snap, &job.id).await?
    {
        return Err(ExportError::UnknownHandle);
    }
    Ok(job)
}

/// Opens a file handle for `caller`; anything else is the same 404.
pub async fn open_file(snap: &Snapshot, caller: &Caller, token: &str) -> Result<File, ExportError> {
    let file: File = snap.seals.open(&caller.tenant, FILE, token).map_err(|_| ExportError::UnknownHandle)?;
    if !bound_to(caller, &file.tenant, &file.client, &file.upstream, file.grant)
        || super::cancelled::is_cancelled(snap, &file.job).await?
    {
        return Err(ExportError::UnknownHandle);
    }
    Ok(file)
}
