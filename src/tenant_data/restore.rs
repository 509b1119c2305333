//! `tenant restore`: an export loaded into an **empty** tenant, on any upstream, with every
//! reference intact; then verified against the export's manifest.
//!
//! Before anything is written: the files are held to the manifest (a tampered export is
//! refused); the target tenant must hold nothing (a `_summary=count` search per type); and every
//! resource is prepared exactly as a write through fhir-fence is (`scope::write::prepare`:
//! stamped with the target tenant's coding, id prefixed, references moved into its namespace,
//! then `provable_once_stored`). A reference the export does not contain (and not under an
//! allowed external base), or a canonical naming a definition it does not contain, refuses the
//! whole restore. The resources are then written as transaction Bundles of PUTs in dependency
//! order (`order`): a reference cycle stays inside one transaction.
//!
//! Transactions run side by side where their references allow (`schedule`, `CONCURRENT`).
//! Resumable: `DIR/.restore-<tenant>.json` records the transactions committed; a rerun checks it
//! is continuing the same plan and sends the others (a transaction committed just before a
//! crash, but not recorded, is sent again: its PUTs write the same content once more).
use super::journal::{self, RestoreState};
use super::manifest::Manifest;
use super::order::{batches, dependencies, Graph};
use super::progress::Progress;
use super::scan::{self, status_error};
use super::verify::{self, read_files};
use super::{schedule, DataError, Job, Refusal, Report};
use crate::headers::{base_headers, PREFER};
use crate::scope::canonicals::defined_in;
use crate::scope::write::{prepare, provable_once_stored, InBundle};
use crate::scope::ScopeError;
use http::{HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Entries per transaction (a reference cycle larger than this is one transaction of its own).
pub const TRANSACTION: usize = 200;
/// Transactions in flight at once (where their references allow: `schedule`).
pub const CONCURRENT: usize = 4;

/// One resource ready for the upstream.
pub(super) struct Ready {
    pub rtype: String,
    /// `Type/{prefix}-{id}`.
    pub url: String,
    pub body: Value,
}

/// What a reference to a resource outside the written set means.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Outside {
    /// A restore: the export holds the whole tenant, so it is dangling and refuses the restore.
    Refused,
    /// A move's catch-up: the rest of the tenant is on the target already (the verification
    /// proves every resource equal before the switch).
    Present,
}

pub async fn restore(job: &Job, dir: &Path, progress: &Progress) -> Result<Report, DataError> {
    let started = std::time::Instant::now();
    let mut report = Report::new("restore", job);
    report.detail("from", dir.display().to_string());
    let m = Manifest::read(dir)?;
    let files = read_files(dir, &m)?;
    if let Some(first) = files.differences.first() {
        return Err(DataError::Refused(format!(
            "the export in {} does not match its manifest ({} differences; first: {} {} {}); nothing was written",
            dir.display(),
            files.differences.len(),
            first.rtype,
            first.id.as_deref().unwrap_or(""),
            first.problem
        )));
    }
    let ready = prepare_all(job, &files.resources, Outside::Refused)?;
    let (graph, plan) = plan(job, &ready);
    let fingerprint = fingerprint(&ready, &plan);
    let state_path = journal::restore_file(dir, &job.tenant.name);
    let mut state = match journal::read::<RestoreState>(&state_path)? {
        Some(s) if s.upstream != job.tenant.upstream || s.plan != fingerprint => {
            return Err(DataError::Refused(format!(
                "{} records another restore into tenant {:?} (upstream {:?}, another export or config); \
                 it is not continued, and nothing was written",
                state_path.display(),
                s.tenant,
                s.upstream
            )))
        }
        Some(s) => s,
        None => RestoreState {
            tenant: job.tenant.name.clone(),
            upstream: job.tenant.upstream.clone(),
            plan: fingerprint,
            transactions: plan.len(),
            done: Default::default(),
            complete: false,
        },
    };
    let mut types: BTreeMap<String, u64> = BTreeMap::new();
    for r in &ready {
        *types.entry(r.rtype.clone()).or_default() += 1;
    }
    report.types = types;
    report.total = ready.len() as u64;
    report.detail("transactions", plan.len());
    if state.complete {
        report.noop = true;
        report.detail("message", "this export was restored into this tenant already; nothing was done");
        report.timed(started, 0);
        return Ok(report);
    }
    if state.done.is_empty() {
        ensure_empty(job, progress).await?;
    }
    report.detail("resumed_with_transactions_done", state.done.len());
    journal::write(&state_path, &state)?;
    let total = ready.len() as u64;
    let size = |i: &usize| plan[*i].len() as u64;
    let mut written: u64 = state.done.iter().map(size).sum();
    let before = written;
    let deps = dependencies(&graph, &plan, true);
    let mut done = std::mem::take(&mut state.done);
    let sent = schedule::run(
        &deps,
        &mut done,
        CONCURRENT,
        |i| transaction(job, &ready, &plan[i], i),
        |i, done| {
            written += size(&i);
            progress.update("restore", None, written, Some(total));
            journal::write(&state_path, &RestoreState { done: done.clone(), ..state.clone() })
        },
    )
    .await;
    state.done = done;
    sent?;
    let sent = written - before;
    state.complete = true;
    journal::write(&state_path, &state)?;
    report.timed(started, sent);
    let restored_secs = report.elapsed_secs;
    let rate = report.resources_per_sec;
    let differences = verify::upstream_differences(job, &m, progress, &mut Report::new("verify", job)).await?;
    progress.finish();
    report.detail("restore_secs", restored_secs);
    report.detail("verified", differences.is_empty());
    report.ok = differences.is_empty();
    report.detail("difference_count", differences.len());
    report.detail("differences", serde_json::to_value(&differences[..differences.len().min(100)]).unwrap_or_default());
    report.timed(started, sent);
    // The rate is the writing's: the verification is a second pass of its own.
    report.resources_per_sec = rate;
    Ok(report)
}

/// Refuses, naming the counts, when the tenant holds any resource.
pub(super) async fn ensure_empty(job: &Job, progress: &Progress) -> Result<(), DataError> {
    let held = scan::held(job, progress, "check-empty").await?;
    if held.is_empty() {
        return Ok(());
    }
    Err(DataError::NotEmpty {
        tenant: job.tenant.name.clone(),
        total: held.iter().map(|(_, n)| n).sum(),
        detail: held.iter().map(|(t, n)| format!("{t}: {n}")).collect::<Vec<_>>().join(", "),
    })
}

/// Every resource of the export prepared for the target tenant as a write through fhir-fence
/// would be; any that cannot be refuses the whole restore (listing up to ten).
pub(super) fn prepare_all(
    job: &Job,
    resources: &BTreeMap<String, Vec<Value>>,
    outside: Outside,
) -> Result<Vec<Ready>, DataError> {
    let (ready, refused) = judge(job, resources, outside);
    if refused.is_empty() {
        return Ok(ready);
    }
    let listed: Vec<String> = refused.iter().take(10).map(|r| format!("{}/{}: {}", r.rtype, r.id, r.reason)).collect();
    Err(DataError::Refused(format!(
        "{} resources of the export cannot be restored into tenant {:?}; nothing was written: {}",
        refused.len(),
        job.tenant.name,
        listed.join("; ")
    )))
}

/// The one judgement of what may be written into the job's tenant (restore's, adopt's before
/// it writes its export, a move's catch-up): each resource passes the typed inbound gate
/// (`fhir::shape::check`, as every body a client sends does), is of a type the target upstream
/// serves, and is prepared by `scope::write::prepare` (with every id of `resources` as written
/// in the same Bundle) and proven by `provable_once_stored`. With `Outside::Refused`, a
/// reference to a resource `resources` does not hold is a refusal carrying that reference; so
/// is a canonical naming a definition it does not hold. Answers the resources ready to write
/// and the refusals (each resource is in one of them).
pub(super) fn judge(
    job: &Job,
    resources: &BTreeMap<String, Vec<Value>>,
    outside: Outside,
) -> (Vec<Ready>, Vec<Refusal>) {
    let ctx = job.ctx();
    let mut refused: Vec<Refusal> = Vec::new();
    let mut written: HashSet<String> = HashSet::new();
    let mut bad_id: HashSet<(String, String)> = HashSet::new();
    for (rtype, list) in resources {
        for r in list {
            let local = r.get("id").and_then(Value::as_str).unwrap_or_default();
            match job.tenant.upstream_id(local) {
                Ok(uid) => {
                    written.insert(format!("{rtype}/{uid}"));
                }
                Err(e) => {
                    bad_id.insert((rtype.clone(), local.to_owned()));
                    refused.push(Refusal::new(rtype, local, e.to_string()))
                }
            }
        }
    }
    let defined = defined_in(resources.values().flatten());
    let in_bundle = InBundle { written, ..Default::default() };
    let mut ready = Vec::new();
    for (rtype, list) in resources {
        for r in list {
            let local = r.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            if bad_id.contains(&(rtype.clone(), local.clone())) {
                continue;
            }
            let refuse = |reason: String| Refusal::new(rtype, &local, reason);
            if r.get("resourceType").and_then(Value::as_str) != Some(rtype.as_str()) {
                refused.push(refuse(format!("not a {rtype}")));
                continue;
            }
            if let Err(e) = crate::fhir::shape::check(r) {
                refused.push(refuse(format!("the inbound gate refuses it: {e}")));
                continue;
            }
            if !job.caps.has_type(rtype) {
                refused.push(refuse(format!("upstream {} does not serve {rtype}", job.tenant.upstream)));
                continue;
            }
            let p = match prepare(&ctx, &job.caps, r.clone(), &local, &in_bundle) {
                Ok(p) => p,
                Err(e) => {
                    let mut refusal = refuse(e.to_string());
                    if let ScopeError::Reference(original) = &e {
                        refusal.reference = Some(original.clone());
                    }
                    refused.push(refusal);
                    continue;
                }
            };
            if let (Some(t), Outside::Refused) = (p.targets.first(), outside) {
                let mut r = refuse(format!("references {}, which the export does not contain", t.original));
                r.reference = Some(t.original.clone());
                refused.push(r);
                continue;
            }
            let missing =
                p.canonicals.iter().filter(|n| !n.types.is_empty() && outside == Outside::Refused).find(|n| {
                    let url = n.canonical.split_once('|').map_or(n.canonical.as_str(), |(u, _)| u);
                    !defined.contains(url)
                });
            if let Some(n) = missing {
                let mut r = refuse(format!("canonical {} names a definition the export does not contain", n.canonical));
                r.reference = Some(n.canonical.clone());
                refused.push(r);
                continue;
            }
            if let Err(e) = provable_once_stored(&ctx, &p.body) {
                refused.push(refuse(e.to_string()));
                continue;
            }
            let mut body = p.body;
            if let Some(Value::Object(meta)) = body.get_mut("meta") {
                for k in ["versionId", "lastUpdated", "source"] {
                    meta.remove(k);
                }
            }
            let url = format!("{rtype}/{}", body.get("id").and_then(Value::as_str).unwrap_or_default());
            ready.push(Ready { rtype: rtype.clone(), url, body });
        }
    }
    (ready, refused)
}

/// The reference graph and the transactions (indexes into `ready`), in dependency order.
pub(super) fn plan(job: &Job, ready: &[Ready]) -> (Graph, Vec<Vec<usize>>) {
    let mut graph = Graph::new(ready.iter().map(|r| r.url.clone()).collect());
    for (i, r) in ready.iter().enumerate() {
        graph.add_references(i, &r.body, &job.upstream.base);
    }
    let plan = batches(&graph.components(), TRANSACTION);
    (graph, plan)
}

/// SHA-256 over every transaction's entries, in order.
fn fingerprint(ready: &[Ready], plan: &[Vec<usize>]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for batch in plan {
        for &i in batch {
            ctx.update(ready[i].url.as_bytes());
            ctx.update(&super::manifest::canonical_bytes(&ready[i].body));
        }
        ctx.update(b"\n");
    }
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends one transaction of PUTs and checks every entry was written.
async fn transaction(job: &Job, ready: &[Ready], batch: &[usize], index: usize) -> Result<usize, DataError> {
    let entries: Vec<Value> = batch.iter().map(|&i| put_entry(job, &ready[i])).collect();
    let what = format!("restore transaction {} ({} entries)", index + 1, batch.len());
    send_transaction(job, entries, &what).await?;
    Ok(index)
}

/// A transaction entry writing `r` with its id.
pub(super) fn put_entry(job: &Job, r: &Ready) -> Value {
    json!({"fullUrl": format!("{}/{}", job.upstream.base, r.url), "resource": r.body,
        "request": {"method": "PUT", "url": r.url}})
}

/// Sends a transaction of `entries` and checks every entry succeeded.
pub(super) async fn send_transaction(job: &Job, entries: Vec<Value>, what: &str) -> Result<(), DataError> {
    let count = entries.len();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let mut headers = base_headers(&job.correlation);
    headers.insert(PREFER, HeaderValue::from_static("return=minimal"));
    let answer = job.upstream.send(Method::POST, "", headers, Some(&bundle)).await?;
    if answer.status != StatusCode::OK {
        return Err(status_error(what, &answer));
    }
    let body = answer.body.unwrap_or(Value::Null);
    let statuses: Vec<&str> = body
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| e.pointer("/response/status").and_then(Value::as_str).unwrap_or(""))
        .collect();
    let all_written = statuses.len() == count && statuses.iter().all(|s| s.starts_with('2'));
    if body.get("type").and_then(Value::as_str) != Some("transaction-response") || !all_written {
        return Err(DataError::Answer(what.to_owned(), "not every entry was written".into()));
    }
    Ok(())
}
