//! A tenant's data carried out and back in: `export` (every current resource of the tenant, in
//! the local form the tenant sees, to NDJSON files plus a manifest with a digest per resource),
//! `restore` (such an export into an empty tenant on any upstream, every reference intact),
//! `verify` (a tenant's data, and an export's files, held to the manifest) and `purge` (every
//! upstream resource of a tenant deleted, its history expunged where the upstream allows it,
//! and the absence proven).
//!
//! `adopt` brings a legacy server's data (written without fhir-fence) into a tenant the same
//! way: its selection is written as an export and restored.
//!
//! These are operator commands (`fhir-fence tenant export|restore|verify|purge|adopt …`, `cli.rs`): they talk to the
//! tenant's upstream directly, never through the proxy listener, but with the functions the
//! proxy's own data path uses, so there is one definition of each rule: resources leave through
//! the outbound gate (`outbound::resource`: ownership, markers stripped, references local) and
//! come back through the write path (`scope::write::prepare`: stamped, prefixed, references
//! moved into the target tenant's namespace, `provable_once_stored`).
//!
//! - `scan`     — a tenant-scoped search of one type paged to its end (`Cache-Control: no-cache`)
//! - `export`   — the export and the in-memory re-export `verify` compares
//! - `manifest` — the manifest, the canonical JSON form and its SHA-256 digest
//! - `journal`  — the state files that make export and restore resumable
//! - `order`    — the reference graph: strongly connected components in dependency order, batches
//! - `schedule` — transactions side by side where their dependencies allow
//! - `restore`  — restore into an empty tenant as transaction Bundles of PUTs
//! - `verify`   — files and upstream data compared with the manifest
//! - `select`   — `adopt`'s selection on a legacy server: criteria, compartments, references
//! - `adopt`    — a legacy server's data into an empty tenant: selection, judgement, restore
//! - `purge`    — deletes in reverse dependency order, `$expunge`, the proof of absence
//! - `catch_up` — a move's changes since a moment (the upstream's history), copied to the target
//! - `relocate` — `tenant move`: copy, catch up, freeze, catch up, verify, switch
//! - `progress` — a bar on a terminal, JSON lines otherwise
//! - `command`  — the CLI commands: runtime, snapshot, report on stdout
//! - `jobs`     — the same commands run by the admin API in the server, as jobs to poll
pub mod adopt;
pub mod catch_up;
pub mod command;
pub mod export;
pub mod jobs;
pub mod journal;
pub mod manifest;
pub mod order;
pub mod progress;
pub mod purge;
pub mod relocate;
pub mod restore;
pub mod scan;
pub mod schedule;
pub mod select;
pub mod verify;

use crate::fhir::capabilities::Capabilities;
use crate::scope::{Ctx, ScopeError};
use crate::state::Snapshot;
use crate::tenancy::Tenant;
use crate::upstream::{Upstream, UpstreamError};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything a tenant data command does can fail in one of these ways; `command` prints it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("no tenant {0:?} in the config")]
    NoTenant(String),
    #[error("the CapabilityStatement of upstream {0:?} could not be read")]
    Capabilities(String),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream {what}: answered {status}: {detail}")]
    Status { what: String, status: u16, detail: String },
    #[error("the upstream's answer to {0} is not what fhir-fence can follow: {1}")]
    Answer(String, String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Corrupt(PathBuf, String),
    #[error("{0}")]
    Refused(String),
    #[error("tenant {tenant:?} is not empty: it holds {total} resources ({detail}); restore writes only into an empty tenant")]
    NotEmpty { tenant: String, total: u64, detail: String },
    /// `purge::purge_permitted`'s reason.
    #[error("purge refused: {0}")]
    NotPermitted(String),
    #[error("{0}")]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::change::LifecycleError),
}

impl DataError {
    fn io(path: &std::path::Path, e: std::io::Error) -> DataError {
        DataError::Io(path.to_owned(), e)
    }
}

/// One tenant and its upstream, as the commands see them.
pub struct Job {
    pub snap: Arc<Snapshot>,
    pub tenant: Arc<Tenant>,
    /// The tenant's upstream, ungated: an operator command is not held to the tenant's
    /// connection cap.
    pub upstream: Arc<Upstream>,
    pub caps: Arc<Capabilities>,
    /// Sent upstream as `X-Request-Id` (so HAPI's `meta.source` names the command's run).
    pub correlation: String,
}

impl Job {
    /// The job for `tenant`, reading its upstream's CapabilityStatement.
    pub async fn new(snap: Arc<Snapshot>, tenant: &str, correlation: &str) -> Result<Job, DataError> {
        let tenant = snap.tenants.get(tenant).cloned().ok_or_else(|| DataError::NoTenant(tenant.to_owned()))?;
        Job::with(snap, tenant, correlation).await
    }

    /// The job for `tenant` as if its data lived on `upstream` (a move's target, or the
    /// source it left): the same name, prefix and coding, another server.
    pub async fn on(snap: Arc<Snapshot>, tenant: &str, upstream: &str, correlation: &str) -> Result<Job, DataError> {
        let mut t =
            snap.tenants.get(tenant).map(|t| (**t).clone()).ok_or_else(|| DataError::NoTenant(tenant.to_owned()))?;
        if !snap.upstreams.contains_key(upstream) {
            return Err(DataError::Refused(format!("no upstream {upstream:?} in the config")));
        }
        t.upstream = upstream.to_owned();
        Job::with(snap, Arc::new(t), correlation).await
    }

    async fn with(snap: Arc<Snapshot>, tenant: Arc<Tenant>, correlation: &str) -> Result<Job, DataError> {
        let upstream = snap
            .upstreams
            .get(&tenant.upstream)
            .cloned()
            .ok_or_else(|| DataError::Capabilities(tenant.upstream.clone()))?;
        let caps = snap
            .capabilities(&tenant.upstream)
            .await
            .ok_or_else(|| DataError::Capabilities(tenant.upstream.clone()))?;
        Ok(Job { snap, tenant, upstream, caps, correlation: correlation.to_owned() })
    }

    /// The scope context the shared write and outbound functions take.
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx {
            snap: &self.snap,
            tenant: &self.tenant,
            upstream: &self.upstream,
            correlation: &self.correlation,
            grant: 0,
        }
    }

    /// Every type the upstream declares searchable, sorted.
    pub fn searchable_types(&self) -> Vec<String> {
        self.caps.types().into_iter().filter(|t| self.caps.type_interaction(t, "search-type")).collect()
    }
}

/// A resource a command would not take, and why (reported, never written or deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Refusal {
    #[serde(rename = "type")]
    pub rtype: String,
    /// The id as the upstream holds it (this is the operator's report, not a tenant's answer).
    pub id: String,
    pub reason: String,
    /// For a resource refused for a reference (`adopt`: its target is not adopted), the
    /// reference as the resource holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl Refusal {
    pub fn new(rtype: &str, id: &str, reason: impl Into<String>) -> Refusal {
        Refusal { rtype: rtype.to_owned(), id: id.to_owned(), reason: reason.into(), reference: None }
    }
}

/// The digits of a rate, for reports: resources per second over `secs`.
pub fn per_second(count: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    ((count as f64 / secs) * 10.0).round() / 10.0
}

/// What a command did, printed as JSON on stdout when it ends.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub operation: &'static str,
    pub tenant: String,
    pub upstream: String,
    /// False when the command found something wrong (a verification difference, a purge whose
    /// proof failed): the command then exits 1.
    pub ok: bool,
    /// True when there was nothing left to do (a finished export, restore or purge run again).
    pub noop: bool,
    /// Resources per type the command exported, restored, compared or deleted.
    pub types: std::collections::BTreeMap<String, u64>,
    pub total: u64,
    pub refusals: u64,
    /// The first refusals (all are counted in `refusals`).
    pub refused: Vec<Refusal>,
    pub elapsed_secs: f64,
    pub resources_per_sec: f64,
    /// What is particular to the command.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// How many refusals a report lists (all are counted).
const LISTED: usize = 100;

impl Report {
    pub fn new(operation: &'static str, job: &Job) -> Report {
        Report {
            operation,
            tenant: job.tenant.name.clone(),
            upstream: job.tenant.upstream.clone(),
            ok: true,
            noop: false,
            types: Default::default(),
            total: 0,
            refusals: 0,
            refused: Vec::new(),
            elapsed_secs: 0.0,
            resources_per_sec: 0.0,
            details: Default::default(),
        }
    }

    pub fn refuse(&mut self, r: Refusal) {
        self.refusals += 1;
        if self.refused.len() < LISTED {
            self.refused.push(r);
        }
    }

    pub fn detail(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.details.insert(key.to_owned(), value.into());
    }

    /// Sets the elapsed time since `started` and the rate over `counted` resources.
    pub fn timed(&mut self, started: std::time::Instant, counted: u64) {
        let secs = started.elapsed().as_secs_f64();
        self.elapsed_secs = (secs * 1000.0).round() / 1000.0;
        self.resources_per_sec = per_second(counted, secs);
    }
}

/// Now, in RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Appends a data command's run to the lifecycle record in `state_dir` (kept when the tenant is
/// gone): who ran what on which tenant, and the counts. `status` is the tenant's, unchanged.
pub fn record(state_dir: &std::path::Path, report: &Report, status: &str, who: &str) -> std::io::Result<()> {
    let entry = crate::lifecycle::record::Entry {
        at: crate::lifecycle::now_utc(),
        who: who.to_owned(),
        operation: report.operation.to_owned(),
        tenant: report.tenant.clone(),
        from: Some(status.to_owned()),
        to: status.to_owned(),
        prefix: None,
        counts: Some(report.types.clone()),
        ok: Some(report.ok),
    };
    crate::lifecycle::record::append(state_dir, &entry)
}

/// The tenant's data lock: one data command at a time on a tenant, across processes (a move and
/// a purge of the same tenant would undo each other). Held until dropped.
pub fn exclusive(state_dir: &std::path::Path, tenant: &str) -> Result<crate::lifecycle::lock::Held, DataError> {
    crate::lifecycle::lock::take(state_dir, &format!("tenant-{tenant}"))
        .map_err(|e| DataError::Refused(format!("another data command runs on tenant {tenant:?}: {e}")))
}
