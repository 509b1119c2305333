//! The data commands run by the admin API inside the server: `move`, `export`, `restore`,
//! `verify`, `purge`, `adopt` (`POST /tenants/NAME/{op}`) start a job and answer at once with its id;
//! `GET /jobs/ID` says how it goes (its last progress step, then its report or error).
//!
//! A job runs the same library function as the CLI command, on the server's current snapshot;
//! a `move` changes the tenant through the running server (`Control::Live`), so its freeze and
//! switch take effect before the move goes on. Directories a job reads or writes are inside
//! `lifecycle.state_dir` (the admin API never names an arbitrary path on the server), and each
//! run is written to the lifecycle record like the CLI's. One job per tenant at a time.
use super::progress::Progress;
use super::relocate::{self, Control, Move};
use super::select::Criterion;
use super::{adopt, export, purge, restore, verify, DataError, Job, Report};
use crate::config::Isolation;
use crate::live::Live;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

/// What a job is asked to do (the admin API's request body, by operation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    /// `move`: the upstream to move to.
    #[serde(default)]
    pub to: Option<String>,
    /// `move`: `shared` or `dedicated` on the new upstream (default: as now).
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// `export` (where to write), `restore` (what to load), `verify` (what to compare with): a
    /// directory relative to `lifecycle.state_dir`. `export` defaults to `exports/NAME/JOB`.
    #[serde(default)]
    pub dir: Option<String>,
    /// `purge`: also `$expunge` the history.
    #[serde(default)]
    pub expunge: bool,
    /// `purge`: the copy a finished move left on this upstream.
    #[serde(default)]
    pub moved_from: Option<String>,
    /// `adopt`: the legacy upstream, and the selection (as the CLI's flags).
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default, rename = "where")]
    pub wheres: Vec<String>,
    #[serde(default, rename = "compartment")]
    pub compartments: Vec<String>,
    #[serde(default)]
    pub with_referenced: bool,
    #[serde(default)]
    pub accept_refusals: bool,
}

/// The operations a job runs.
pub const OPERATIONS: [&str; 6] = ["move", "export", "restore", "verify", "purge", "adopt"];

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Bad(String),
    #[error("tenant {0:?} has a job running already ({1})")]
    Busy(String, String),
    #[error("data commands need lifecycle.state_dir")]
    NoStateDir,
}

struct Entry {
    operation: &'static str,
    tenant: String,
    progress: Arc<Mutex<Value>>,
    /// `None` while running.
    outcome: Mutex<Option<Result<Value, String>>>,
}

static JOBS: LazyLock<Mutex<HashMap<String, Arc<Entry>>>> = LazyLock::new(Default::default);

fn jobs() -> std::sync::MutexGuard<'static, HashMap<String, Arc<Entry>>> {
    JOBS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A path inside `root` named by a relative `dir` without `..`, and through no symbolic link
/// (one inside `state_dir` could lead anywhere).
fn inside(root: &Path, dir: &str) -> Result<PathBuf, JobError> {
    let p = Path::new(dir);
    if dir.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(JobError::Bad(format!("dir {dir:?} must be a relative path inside lifecycle.state_dir")));
    }
    let mut at = root.to_path_buf();
    for c in p.components() {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(JobError::Bad(format!("dir {dir:?} goes through a symbolic link; name a plain directory")));
        }
    }
    Ok(at)
}

/// Starts `operation` on `tenant`; answers the job's id.
pub fn start(live: Arc<Live>, tenant: &str, operation: &str, ask: Ask) -> Result<String, JobError> {
    let operation = OPERATIONS
        .into_iter()
        .find(|o| *o == operation)
        .ok_or_else(|| JobError::Bad(format!("no operation {operation:?}")))?;
    let snap = live.snapshot();
    let state_root =
        snap.loaded.config.lifecycle.state_dir.as_ref().map(|d| snap.loaded.resolve(d)).ok_or(JobError::NoStateDir)?;
    if !snap.tenants.contains_key(tenant) {
        return Err(JobError::Bad(format!("no tenant {tenant:?}")));
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let dir = match (operation, &ask.dir) {
        ("export", None) => Some(state_root.join("exports").join(tenant).join(&id)),
        ("restore" | "verify", None) => return Err(JobError::Bad(format!("{operation} needs \"dir\""))),
        (_, Some(d)) => Some(inside(&state_root, d)?),
        (_, None) => None,
    };
    if operation == "move" && ask.to.is_none() {
        return Err(JobError::Bad("move needs \"to\"".into()));
    }
    if operation == "adopt" && ask.from.is_none() {
        return Err(JobError::Bad("adopt needs \"from\"".into()));
    }
    let entry = Arc::new(Entry {
        operation,
        tenant: tenant.to_owned(),
        progress: Arc::new(Mutex::new(Value::Null)),
        outcome: Mutex::new(None),
    });
    {
        let mut all = jobs();
        if let Some((busy, _)) =
            all.iter().find(|(_, e)| e.tenant == tenant && e.outcome.lock().is_ok_and(|o| o.is_none()))
        {
            return Err(JobError::Busy(tenant.to_owned(), busy.clone()));
        }
        all.insert(id.clone(), entry.clone());
    }
    let (tenant, correlation) = (tenant.to_owned(), format!("fence-{operation}-{}", &id[..12]));
    tokio::spawn(async move {
        let progress = Progress::kept(entry.progress.clone());
        let status = snap.loaded.config.tenants.get(&tenant).map(|t| t.status.as_str()).unwrap_or_default();
        let ran = run(&live, &tenant, operation, &ask, dir.as_deref(), &state_root, &correlation, &progress).await;
        let outcome = match ran {
            Ok(report) => {
                if !report.noop {
                    if let Err(e) = super::record(&state_root, &report, status, "admin-api") {
                        tracing::error!(error = %e, "the lifecycle record could not be written");
                    }
                }
                Ok(serde_json::to_value(&report).unwrap_or_default())
            }
            Err(e) => Err(e.to_string()),
        };
        tracing::info!(tenant, operation, ok = outcome.is_ok(), "admin api job finished");
        *entry.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    });
    Ok(id)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    live: &Arc<Live>,
    tenant: &str,
    operation: &str,
    ask: &Ask,
    dir: Option<&Path>,
    state_root: &Path,
    correlation: &str,
    progress: &Progress,
) -> Result<Report, DataError> {
    let _only = super::exclusive(state_root, tenant)?;
    let snap = live.snapshot();
    let dir = || dir.ok_or_else(|| DataError::Refused("no directory".into()));
    match operation {
        "move" => {
            let to = ask.to.as_deref().unwrap_or_default();
            let source = Job::new(snap.clone(), tenant, correlation).await?;
            let target = Job::on(snap.clone(), tenant, to, correlation).await?;
            let isolation = ask
                .isolation
                .unwrap_or_else(|| snap.loaded.config.tenants.get(tenant).map(|t| t.isolation).unwrap_or_default());
            let m = Move { source: &source, target: &target, isolation, state_root, who: "admin-api" };
            relocate::relocate(m, &Control::Live(live.clone()), progress).await
        }
        "purge" => match &ask.moved_from {
            Some(from) => {
                let job = Job::on(snap, tenant, from, correlation).await?;
                let permit = purge::Permit::MovedAway { state_root: state_root.to_owned() };
                purge::purge(&job, ask.expunge, permit, progress).await
            }
            None => {
                let job = Job::new(snap, tenant, correlation).await?;
                purge::purge(&job, ask.expunge, purge::Permit::Deleted, progress).await
            }
        },
        "adopt" => {
            let job = Job::new(snap, tenant, correlation).await?;
            let criteria = (ask.wheres.iter().map(|w| Criterion::parse_where(w)))
                .chain(ask.compartments.iter().map(|c| Criterion::parse_compartment(c)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(DataError::Refused)?;
            let a = adopt::Adopt {
                from: ask.from.clone().unwrap_or_default(),
                criteria,
                with_referenced: ask.with_referenced,
                accept_refusals: ask.accept_refusals,
            };
            adopt::adopt(&job, &a, Some(state_root), progress).await
        }
        _ => {
            let job = Job::new(snap, tenant, correlation).await?;
            match operation {
                "export" => export::export(&job, dir()?, progress).await,
                "restore" => restore::restore(&job, dir()?, progress).await,
                _ => verify::verify(&job, dir()?, progress).await,
            }
        }
    }
}

/// A job's status: `running` with its last progress step, then `done` with the report (whose
/// `ok` says whether it found things right) or `failed` with the error.
pub fn status(id: &str) -> Option<Value> {
    let entry = jobs().get(id).cloned()?;
    let progress = entry.progress.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let outcome = entry.outcome.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (state, report, error) = match outcome {
        None => ("running", Value::Null, Value::Null),
        Some(Ok(r)) => ("done", r, Value::Null),
        Some(Err(e)) => ("failed", Value::Null, Value::String(e)),
    };
    Some(json!({"id": id, "operation": entry.operation, "tenant": entry.tenant, "state": state,
        "progress": progress, "report": report, "error": error}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_directories_stay_inside_the_state_dir() {
        let root = Path::new("/var/lib/fence");
        assert_eq!(inside(root, "exports/a/1").unwrap(), root.join("exports/a/1"));
        for bad in ["", "/etc", "../x", "a/../../x", "./a"] {
            assert!(inside(root, bad).is_err(), "{bad}");
        }
        let tmp = std::env::temp_dir().join(format!("fence-jobs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(tmp.join("real")).unwrap();
        std::os::unix::fs::symlink(std::env::temp_dir(), tmp.join("ln")).unwrap();
        assert!(inside(&tmp, "real/x").is_ok());
        assert!(inside(&tmp, "ln/x").is_err(), "a link inside state_dir is not followed");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
