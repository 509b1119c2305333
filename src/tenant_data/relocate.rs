//! `tenant move NAME --to UPSTREAM` (paper §7.2/§7.3): a tenant's data moved to another
//! upstream (shared → dedicated and back) as a routine operation, with a write freeze of
//! seconds:
//!
//! 1. **copy** while the tenant keeps working: `export` from the source, `restore` into the
//!    target (the same name, prefix and coding, so ids and references are unchanged), verified
//!    against the export;
//! 2. **catch up** while it keeps working: the source's history since the copy began
//!    (`catch_up`), copied over, pass after pass until a pass finds little;
//! 3. **compare** every resource on both sides (digests of the local form), noting the ones
//!    that differ: a difference is allowed only if the resource changed since the comparison
//!    began, which the last pass then copies and checks;
//! 4. **freeze**: the tenant becomes `read-only` (writes answer 503 with `Retry-After`), and
//!    the switch waits until no request under the old configuration is in flight;
//! 5. **last catch-up and verification**: the changes since the last pass copied; each of them
//!    read again on both sides and equal; every difference of step 3 among them; the counts per
//!    type equal. Anything else unfreezes the tenant on its source and fails the move;
//! 6. **switch**: the tenant's upstream becomes the target and its status what it was, in one
//!    change (hot reload; requests in flight finish on the old snapshot).
//!
//! The source copy stays until `tenant purge NAME --moved-from UPSTREAM`, a separate step:
//! until then the move can be undone by hand. What moves is each resource's current version:
//! its history and version ids stay behind (the target numbers versions anew).
//!
//! Resumable: `state_dir/moves/NAME/FROM-to-TO/move.json` records the phase; a rerun continues
//! it (a crash while frozen leaves the tenant read-only until the rerun finishes the move).
use super::catch_up::{self, Key};
use super::progress::Progress;
use super::{export, journal, manifest, restore, scan, DataError, Job, Refusal, Report};
use crate::config::{Isolation, TenantStatus};
use crate::lifecycle::change::{self, Operation};
use crate::live::Live;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How far before "now" a pass's starting point is put: `_since` compares with the upstream's
/// `lastUpdated` (its clock, to the second), so a pass re-reads a few seconds it has seen
/// rather than miss a write.
const MARGIN: Duration = Duration::from_secs(5);
/// Catch-up passes before the freeze, at most.
const PASSES: u32 = 5;
/// A pass that found at most this many changes is the last before the freeze.
const SMALL: usize = 100;

/// How a move changes the tenant's definition.
pub enum Control {
    /// In the running server (the admin API): when a change returns, it is loaded and no
    /// request under the previous configuration is in flight.
    Live(Arc<Live>),
    /// In the files only (the CLI): a running server sees the change through its file watch,
    /// so each change then waits `wait` (the file watch's settling plus the longest a request
    /// can take upstream) before the move goes on.
    Files { config: PathBuf, wait: Duration },
}

impl Control {
    fn config(&self) -> PathBuf {
        match self {
            Control::Live(live) => live.config_path().to_owned(),
            Control::Files { config, .. } => config.clone(),
        }
    }

    async fn set(&self, name: &str, op: Operation, who: &str) -> Result<(), DataError> {
        let (config, name_, who_) = (self.config(), name.to_owned(), who.to_owned());
        let done = tokio::task::spawn_blocking(move || change::apply(&config, &name_, op, &who_))
            .await
            .map_err(|e| DataError::Refused(format!("the tenant change did not finish: {e}")))??;
        if !done.changed() {
            return Ok(());
        }
        match self {
            Control::Live(live) => {
                let drained = live
                    .reload_and_drain("tenant move", live.drain_bound())
                    .await
                    .map_err(|e| DataError::Refused(format!("the change was written, but the reload failed: {e}")))?;
                if !drained {
                    return Err(DataError::Refused(format!(
                        "tenant {name:?}: requests under the previous configuration were still in flight after {:?}",
                        live.drain_bound()
                    )));
                }
            }
            Control::Files { wait, .. } => tokio::time::sleep(*wait).await,
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Phase {
    Copy,
    CatchUp,
    Frozen,
    Switched,
}

/// `move.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveState {
    tenant: String,
    from: String,
    to: String,
    phase: Phase,
    /// The tenant's status before the move, given back at the switch.
    prior: TenantStatus,
    isolation: Isolation,
    /// Changes at or after this (RFC 3339) are not yet on the target.
    since: String,
    passes: u32,
    /// When the comparison before the freeze began, and what it found different (type, upstream id).
    compared_at: Option<String>,
    differing: BTreeSet<Key>,
    /// The types either side held at the comparison (the frozen counts cover them).
    types: BTreeSet<String>,
    /// Every resource a pass found changed since the comparison began: each is read again on
    /// both sides while frozen.
    changed: BTreeSet<Key>,
    /// What the comparison found carrying the tenant's tag without passing the ownership check
    /// (source, target): not moved, and left out of the counts.
    #[serde(default)]
    foreign: [Vec<Refusal>; 2],
    frozen_at: Option<String>,
    copied: u64,
}

/// The directory of a move's state.
pub fn state_dir(state_root: &Path, tenant: &str, from: &str, to: &str) -> PathBuf {
    state_root.join("moves").join(tenant).join(format!("{from}-to-{to}"))
}

/// Whether a finished move of `tenant` left a copy on `from` (so `purge --moved-from` may delete it).
pub fn moved_away(state_root: &Path, tenant: &str, from: &str, now_on: &str) -> Result<bool, DataError> {
    if from == now_on {
        return Ok(false);
    }
    let path = state_dir(state_root, tenant, from, now_on).join("move.json");
    Ok(journal::read::<MoveState>(&path)?.is_some_and(|s| s.phase == Phase::Switched))
}

fn stamp() -> String {
    let t = time::OffsetDateTime::now_utc() - MARGIN;
    crate::lifecycle::rfc3339(t)
}

/// What the move takes: the tenant on its source, the same tenant on the target.
pub struct Move<'a> {
    pub source: &'a Job,
    pub target: &'a Job,
    pub isolation: Isolation,
    /// `state_dir` of the lifecycle config.
    pub state_root: &'a Path,
    /// Who asks (the lifecycle record's `who`).
    pub who: &'a str,
}

pub async fn relocate(m: Move<'_>, control: &Control, progress: &Progress) -> Result<Report, DataError> {
    let started = std::time::Instant::now();
    let (source, target) = (m.source, m.target);
    let name = source.tenant.name.clone();
    let (from, to) = (source.tenant.upstream.clone(), target.tenant.upstream.clone());
    let mut report = Report::new("move", source);
    report.detail("to", to.clone());
    let dir = state_dir(m.state_root, &name, &from, &to);
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    let state_path = dir.join("move.json");
    let fresh = || MoveState {
        tenant: name.clone(),
        from: from.clone(),
        to: to.clone(),
        phase: Phase::Copy,
        prior: source.tenant.status,
        isolation: m.isolation,
        since: String::new(),
        passes: 0,
        compared_at: None,
        differing: BTreeSet::new(),
        types: BTreeSet::new(),
        changed: BTreeSet::new(),
        foreign: Default::default(),
        frozen_at: None,
        copied: 0,
    };
    if from == to {
        // Asked again after it finished (or for where the tenant is): nothing to do.
        report.noop = true;
        report.detail("message", format!("tenant {name:?} is on upstream {to:?}; nothing was done"));
        return Ok(report);
    }
    let mut state = match journal::read::<MoveState>(&state_path)? {
        Some(s) if s.phase == Phase::Switched => {
            // An earlier move this way finished, and the tenant has been moved back since: this
            // is a new move; the old state is kept beside it.
            let kept = dir.with_file_name(format!("{from}-to-{to}-{}", s.frozen_at.as_deref().unwrap_or("done")));
            std::fs::rename(&dir, &kept).map_err(|e| DataError::io(&kept, e))?;
            std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
            fresh()
        }
        Some(s) => s,
        None => fresh(),
    };
    if matches!(state.prior, TenantStatus::Deleting) {
        return Err(DataError::Refused(format!("tenant {name:?} is being deleted; it is not moved")));
    }
    // The switch is judged now, before anything is copied (a dedicated tenant onto a shared
    // upstream, an unknown upstream…).
    let switch = Operation::Place { upstream: to.clone(), status: state.prior, isolation: state.isolation };
    let config = control.config();
    let (n, op) = (name.clone(), switch.clone());
    tokio::task::spawn_blocking(move || change::check(&config, &n, &op))
        .await
        .map_err(|e| DataError::Refused(format!("the check did not finish: {e}")))??;
    let save = |s: &MoveState| journal::write(&state_path, s);

    if state.phase == Phase::Copy {
        if state.since.is_empty() {
            state.since = stamp();
            save(&state)?;
        }
        let export_dir = dir.join("export");
        let exported = export::export(source, &export_dir, progress).await?;
        let restored = restore::restore(target, &export_dir, progress).await?;
        if !restored.ok {
            return Err(DataError::Refused(format!(
                "the copy on {to:?} differs from the export ({} differences); the tenant stays on {from:?}",
                restored.details.get("difference_count").cloned().unwrap_or_default()
            )));
        }
        report.detail("copy_export_secs", exported.elapsed_secs);
        report.detail("copy_restore_secs", restored.details.get("restore_secs").cloned().unwrap_or_default());
        state.copied = restored.total;
        state.phase = Phase::CatchUp;
        save(&state)?;
    }
    let copy_secs = started.elapsed().as_secs_f64();
    let mut caught = catch_up::Applied::default();
    if state.phase == Phase::CatchUp {
        passes(source, target, &mut state, &save, progress, &mut caught).await?;
        state.compared_at = Some(stamp());
        // Passes from here on start no later than the comparison.
        state.since = state.compared_at.clone().unwrap_or_default();
        let c = compare(source, target, progress).await?;
        (state.differing, state.types) = (c.differing, c.types);
        state.foreign = c.foreign;
        state.changed.clear();
        save(&state)?;
        // What changed while comparing, so the frozen pass has little left.
        passes(source, target, &mut state, &save, progress, &mut caught).await?;
        if state.prior == TenantStatus::Active {
            control.set(&name, Operation::ReadOnly, m.who).await?;
        }
        state.frozen_at = Some(crate::lifecycle::now_utc());
        state.phase = Phase::Frozen;
        save(&state)?;
    }
    let frozen = std::time::Instant::now();
    // Frozen: nothing changes on the source any more.
    let last = pass(source, target, &state.since, progress, &mut caught).await?;
    state.changed.extend(last.iter().cloned());
    let last_pass_secs = frozen.elapsed().as_secs_f64();
    let here = catch_up::current(source, &state.changed).await?;
    let there = catch_up::current(target, &state.changed).await?;
    let mut problems: Vec<String> = Vec::new();
    for key in &state.changed {
        let digest = |v: Option<&Option<Value>>| v.and_then(Option::as_ref).map(manifest::digest);
        if digest(here.get(key)) != digest(there.get(key)) {
            problems.push(format!("{}/{} differs after the last catch-up", key.0, key.1));
        }
    }
    for key in state.differing.iter().filter(|k| !state.changed.contains(*k)) {
        problems.push(format!("{}/{} differed before the freeze and did not change since", key.0, key.1));
    }
    // Counted: every type either side held at the comparison, and every type changed since
    // (a type in neither holds nothing on either side: nothing was written to it).
    let types: Vec<String> = state
        .types
        .iter()
        .cloned()
        .chain(last.iter().map(|(t, _)| t.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut counts_here = scan::counts(source, &types, progress, "count").await?;
    let mut counts_there = scan::counts(target, &types, progress, "count").await?;
    // What carries the tag but is not the tenant's is counted by the tag search, never moved.
    for (counts, foreign) in [(&mut counts_here, &state.foreign[0]), (&mut counts_there, &state.foreign[1])] {
        let foreign = per_type(foreign);
        for (t, n) in counts.iter_mut() {
            *n = n.saturating_sub(foreign.get(t).copied().unwrap_or(0));
        }
        counts.retain(|(_, n)| *n > 0);
    }
    if !state.foreign[0].is_empty() {
        report.detail(
            "not_moved",
            serde_json::to_value(&state.foreign[0][..state.foreign[0].len().min(100)]).unwrap_or_default(),
        );
    }
    if counts_here != counts_there {
        problems.push(format!("counts per type differ: {from} {counts_here:?}, {to} {counts_there:?}"));
    }
    report.detail("catch_up_passes", state.passes + 1);
    report.detail("caught_up", serde_json::to_value(caught).unwrap_or_default());
    report.types = counts_here.into_iter().collect::<BTreeMap<_, _>>();
    report.total = report.types.values().sum();
    if !problems.is_empty() {
        // The tenant goes back to work on its source; a rerun compares and freezes again.
        let back =
            Operation::Place { upstream: from.clone(), status: state.prior, isolation: source_isolation(source) };
        control.set(&name, back, m.who).await?;
        state.phase = Phase::CatchUp;
        save(&state)?;
        progress.finish();
        report.ok = false;
        report.detail("verified", false);
        report.detail("problems", problems.iter().take(100).cloned().collect::<Vec<_>>());
        report.detail("freeze_secs", round(frozen.elapsed().as_secs_f64()));
        report.timed(started, state.copied);
        return Ok(report);
    }
    let verify_secs = frozen.elapsed().as_secs_f64() - last_pass_secs;
    control.set(&name, switch, m.who).await?;
    let freeze = frozen.elapsed().as_secs_f64();
    report.detail("frozen_last_pass_secs", round(last_pass_secs));
    report.detail("frozen_verify_secs", round(verify_secs));
    report.detail("frozen_last_pass_changes", last.len());
    report.detail("frozen_verified_changes", state.changed.len());
    state.phase = Phase::Switched;
    save(&state)?;
    progress.finish();
    report.detail("verified", true);
    report.detail("freeze_secs", round(freeze));
    report.detail("copy_secs", round(copy_secs));
    report.detail("source_copy", format!("kept on {from:?} until `tenant purge {name} --moved-from {from}`"));
    report.timed(started, state.copied);
    Ok(report)
}

/// The tenant's isolation as the config held it when the move began.
fn source_isolation(source: &Job) -> Isolation {
    source.snap.loaded.config.tenants.get(&source.tenant.name).map(|t| t.isolation).unwrap_or_default()
}

fn round(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// One catch-up pass: the changes since `since` copied; answers the keys it found.
async fn pass(
    source: &Job,
    target: &Job,
    since: &str,
    progress: &Progress,
    total: &mut catch_up::Applied,
) -> Result<BTreeSet<Key>, DataError> {
    let keys = catch_up::changed_since(source, since, progress).await?;
    let now = catch_up::current(source, &keys).await?;
    let applied = catch_up::apply(target, &now).await?;
    total.written += applied.written;
    total.deleted += applied.deleted;
    Ok(keys)
}

/// Catch-up passes until one finds little (at most `PASSES`).
async fn passes(
    source: &Job,
    target: &Job,
    state: &mut MoveState,
    save: &impl Fn(&MoveState) -> Result<(), DataError>,
    progress: &Progress,
    caught: &mut catch_up::Applied,
) -> Result<(), DataError> {
    for _ in 0..PASSES {
        let next = stamp();
        let found = pass(source, target, &state.since, progress, caught).await?;
        if state.compared_at.is_some() {
            state.changed.extend(found.iter().cloned());
        }
        state.since = next;
        state.passes += 1;
        save(state)?;
        if found.len() <= SMALL {
            break;
        }
    }
    Ok(())
}

/// What the comparison found.
struct Compared {
    differing: BTreeSet<Key>,
    /// The types either side holds.
    types: BTreeSet<String>,
    /// Tagged but not owned, per side.
    foreign: [Vec<Refusal>; 2],
}

/// Every resource of the tenant on both sides, by digest.
async fn compare(source: &Job, target: &Job, progress: &Progress) -> Result<Compared, DataError> {
    let (here, foreign_here) = digests(source, progress).await?;
    let (there, foreign_there) = digests(target, progress).await?;
    let keys: BTreeSet<&Key> = here.keys().chain(there.keys()).collect();
    let types = keys.iter().map(|(t, _)| t.clone()).chain(foreign_here.iter().map(|r| r.rtype.clone())).collect();
    Ok(Compared {
        differing: keys.into_iter().filter(|k| here.get(*k) != there.get(*k)).cloned().collect(),
        types,
        foreign: [foreign_here, foreign_there],
    })
}

/// The tenant's resources on `job`'s upstream by digest, and those its tag search finds that
/// fail the ownership check (written to the upstream directly, never through fhir-fence: they
/// are not moved, but the tag counts include them).
async fn digests(job: &Job, progress: &Progress) -> Result<(BTreeMap<Key, String>, Vec<Refusal>), DataError> {
    let mut out = BTreeMap::new();
    let mut foreign = Vec::new();
    for (rtype, _) in scan::held(job, progress, "count").await? {
        let refused = export::scan_type(job, &rtype, progress, "compare", |local| {
            let id = local.get("id").and_then(Value::as_str).unwrap_or_default();
            let uid = job.tenant.upstream_id(id).map_err(|e| DataError::Refused(e.to_string()))?;
            out.insert((rtype.clone(), uid), manifest::digest(&local));
            Ok(())
        })
        .await?;
        foreign.extend(refused);
    }
    Ok((out, foreign))
}

/// Per type, how many of `refused` there are.
fn per_type(refused: &[Refusal]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in refused {
        *out.entry(r.rtype.clone()).or_default() += 1;
    }
    out
}
