//! The `tenant export|restore|verify|purge|adopt` commands around the library parts: a runtime, the snapshot built from the
//! config (as `serve` and `check` build it), progress on stderr, the JSON report on stdout.
//! Exit status: 0 done, 1 refused or found wrong (the report or the error says why), 2 the
//! config could not be used.
use super::progress::Progress;
use super::relocate::{self, Control, Move};
use super::select::Criterion;
use super::{adopt, export, purge, restore, verify, DataError, Job};
use crate::config;
use crate::state::Snapshot;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// What to do, with its arguments (parsed by `cli`).
pub enum Op {
    Export {
        out: PathBuf,
    },
    Restore {
        from: PathBuf,
    },
    Verify {
        against: PathBuf,
    },
    /// `moved_from`: the copy a finished move left on that upstream, not the tenant's data.
    Purge {
        expunge: bool,
        moved_from: Option<String>,
    },
    /// `isolation`: what the tenant is on its new upstream (default: what it is now).
    Move {
        to: String,
        isolation: Option<crate::config::Isolation>,
    },
    /// `adopt --from LEGACY [--where …] [--compartment …]` (criteria as written, parsed here).
    Adopt {
        from: String,
        wheres: Vec<String>,
        compartments: Vec<String>,
        with_referenced: bool,
        accept_refusals: bool,
    },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Export { .. } => "export",
            Op::Restore { .. } => "restore",
            Op::Verify { .. } => "verify",
            Op::Purge { .. } => "purge",
            Op::Move { .. } => "move",
            Op::Adopt { .. } => "adopt",
        }
    }
}

pub fn run(config_path: &Path, tenant: &str, op: Op) -> ExitCode {
    let name = op.name();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let snap = match config::load(config_path).and_then(Snapshot::build) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("{}: invalid: {e}", config_path.display());
                return ExitCode::from(2);
            }
        };
        let snap_state_dir = snap.loaded.config.lifecycle.state_dir.as_ref().map(|d| snap.loaded.resolve(d));
        let snap_status = snap.loaded.config.tenants.get(tenant).map(|t| t.status.as_str()).unwrap_or_default();
        // HAPI records the writing request's id as `meta.source`: it names this run.
        let correlation = format!("fence-{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let progress = Progress::stderr();
        let state_root = snap_state_dir.clone();
        let needs_state =
            || state_root.clone().ok_or_else(|| DataError::Refused("this needs lifecycle.state_dir".into()));
        let done = async {
            let _only = state_root.as_deref().map(|d| super::exclusive(d, tenant)).transpose()?;
            match &op {
                Op::Purge { expunge, moved_from: Some(from) } => {
                    let job = Job::on(snap, tenant, from, &correlation).await?;
                    let permit = purge::Permit::MovedAway { state_root: needs_state()? };
                    return purge::purge(&job, *expunge, permit, &progress).await;
                }
                Op::Move { to, isolation } => {
                    let source = Job::new(snap.clone(), tenant, &correlation).await?;
                    let target = Job::on(snap.clone(), tenant, to, &correlation).await?;
                    let isolation = isolation.unwrap_or_else(|| {
                        snap.loaded.config.tenants.get(tenant).map(|t| t.isolation).unwrap_or_default()
                    });
                    // A server running this config sees each change through its file watch; the
                    // move then waits out the longest request under the old one.
                    let longest = snap.loaded.config.upstreams.values().map(|u| u.request_timeout_ms).max();
                    let wait = crate::live::SETTLE * 2 + std::time::Duration::from_millis(longest.unwrap_or(0));
                    let control = Control::Files { config: config_path.to_owned(), wait };
                    let state_root = needs_state()?;
                    let who = crate::lifecycle::command::who();
                    let m = Move { source: &source, target: &target, isolation, state_root: &state_root, who: &who };
                    return relocate::relocate(m, &control, &progress).await;
                }
                _ => {}
            }
            let job = Job::new(snap, tenant, &correlation).await?;
            match &op {
                Op::Export { out } => export::export(&job, out, &progress).await,
                Op::Restore { from } => restore::restore(&job, from, &progress).await,
                Op::Verify { against } => verify::verify(&job, against, &progress).await,
                Op::Purge { expunge, .. } => purge::purge(&job, *expunge, purge::Permit::Deleted, &progress).await,
                Op::Move { .. } => unreachable!("answered above"),
                Op::Adopt { from, wheres, compartments, with_referenced, accept_refusals } => {
                    let criteria = wheres
                        .iter()
                        .map(|w| Criterion::parse_where(w))
                        .chain(compartments.iter().map(|c| Criterion::parse_compartment(c)))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(DataError::Refused)?;
                    let a = adopt::Adopt {
                        from: from.clone(),
                        criteria,
                        with_referenced: *with_referenced,
                        accept_refusals: *accept_refusals,
                    };
                    adopt::adopt(&job, &a, snap_state_dir.as_deref(), &progress).await
                }
            }
        };
        match done.await {
            Ok(report) => {
                println!("{}", serde_json::to_string_pretty(&report).expect("a report serialises"));
                // Written to the lifecycle record (kept when the tenant is gone), when there is one.
                if let (Some(dir), false) = (&snap_state_dir, report.noop) {
                    let who = crate::lifecycle::command::who();
                    if let Err(e) = super::record(dir, &report, snap_status, &who) {
                        eprintln!("fhir-fence tenant {name}: the lifecycle record could not be written: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                if report.ok {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("fhir-fence tenant {name}: finished with differences (see the report)");
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                progress.finish();
                eprintln!("fhir-fence tenant {name}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
