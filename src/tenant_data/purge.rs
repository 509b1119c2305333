//! `tenant purge`: every upstream resource of a tenant deleted, its history expunged where
//! the upstream allows it (`--expunge`, HAPI's `$expunge`, an operator-side server setting), and
//! the absence proven: a tenant-parameter search of every searchable type counts 0, and every id
//! deleted reads 410 Gone (404 once expunged).
//!
//! The resources are found by the tenant-scoped searches `export` uses, and only those that pass
//! the ownership test (`Marking::owns`: the tenant's coding *and* id prefix) are deleted; any
//! other is reported as a refusal and left alone. Deletes go in transaction Bundles in reverse
//! dependency order (`order`: referrers first, a reference cycle in one transaction), as HAPI
//! refuses to delete a resource something still references. A second purge finds nothing and
//! says so.
use super::order::{batches, dependencies, Graph};
use super::progress::Progress;
use super::restore::{CONCURRENT, TRANSACTION};
use super::scan::{self, status_error, Scan};
use super::{schedule, DataError, Job, Refusal, Report};
use crate::config::{Lifecycle, Tenant};
use crate::headers::base_headers;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

/// Why a tenant may not be purged.
#[derive(Debug, thiserror::Error)]
pub enum Why {
    #[error("tenant {0:?} has status {1:?}; only a deleted tenant (status \"deleting\", `fhir-fence tenant delete`) is purged, once its grace is over")]
    Status(String, String),
    #[error("tenant {0:?} can still be undeleted until {1} (lifecycle.delete_grace_secs); it is purged after that")]
    InGrace(String, String),
}

/// Whether `tenant` may be purged now: it is `deleting` and its grace (`deleted_at` plus
/// `lifecycle.delete_grace_secs`, `lifecycle::purge_allowed_at`) is over.
pub fn purge_permitted(name: &str, tenant: &Tenant, lifecycle: &Lifecycle) -> Result<(), Why> {
    let status = || Why::Status(name.to_owned(), format!("{:?}", tenant.status).to_lowercase());
    let at = crate::lifecycle::purge_allowed_at(tenant, lifecycle).ok_or_else(status)?;
    match time::OffsetDateTime::now_utc() >= at {
        true => Ok(()),
        false => Err(Why::InGrace(name.to_owned(), crate::lifecycle::rfc3339(at))),
    }
}

/// One resource to delete, as the upstream holds it.
struct Found {
    rtype: String,
    /// `Type/{prefix}-{id}`.
    url: String,
    body: Value,
}

/// Reads in flight at once while proving the deleted ids gone.
const PROOF_READS: usize = 8;

/// Why a purge may run.
pub enum Permit {
    /// The tenant is deleted and its grace is over (`purge_permitted`).
    Deleted,
    /// The job's upstream is one a finished move took the tenant away from (the copy it left,
    /// `relocate::moved_away`; `state_root` is the lifecycle `state_dir`).
    MovedAway { state_root: std::path::PathBuf },
}

pub async fn purge(job: &Job, expunge: bool, permit: Permit, progress: &Progress) -> Result<Report, DataError> {
    let tenant = job
        .snap
        .loaded
        .config
        .tenants
        .get(&job.tenant.name)
        .ok_or(DataError::NotPermitted(format!("tenant {:?} is not in the configuration", job.tenant.name)))?;
    match permit {
        Permit::Deleted => purge_permitted(&job.tenant.name, tenant, &job.snap.loaded.config.lifecycle)
            .map_err(|why| DataError::NotPermitted(why.to_string()))?,
        Permit::MovedAway { state_root } => {
            if !super::relocate::moved_away(&state_root, &job.tenant.name, &job.tenant.upstream, &tenant.upstream)? {
                return Err(DataError::NotPermitted(format!(
                    "tenant {:?} lives on {:?}; no finished move took it away from {:?}",
                    job.tenant.name, tenant.upstream, job.tenant.upstream
                )));
            }
        }
    }
    let started = std::time::Instant::now();
    let mut report = Report::new("purge", job);
    let found = find(job, progress, &mut report).await?;
    let mut graph = Graph::new(found.iter().map(|f| f.url.clone()).collect());
    for (i, f) in found.iter().enumerate() {
        graph.add_references(i, &f.body, &job.upstream.base);
    }
    let mut components = graph.components();
    components.reverse();
    let plan = batches(&components, TRANSACTION);
    let deps = dependencies(&graph, &plan, false);
    let mut deleted = 0u64;
    schedule::run(
        &deps,
        &mut Default::default(),
        CONCURRENT,
        |i| delete(job, &found, &plan[i], i),
        |i, _| {
            deleted += plan[i].len() as u64;
            progress.update("delete", None, deleted, Some(found.len() as u64));
            Ok(())
        },
    )
    .await?;
    for f in &found {
        *report.types.entry(f.rtype.clone()).or_default() += 1;
    }
    report.total = deleted;
    report.detail("transactions", plan.len());
    report.timed(started, deleted);
    report.detail("delete_secs", report.elapsed_secs);
    let delete_rate = report.resources_per_sec;

    let mut expunged: HashSet<String> = HashSet::new();
    let expunge_outcome = if !expunge {
        "not asked".to_owned()
    } else if found.is_empty() {
        "nothing deleted by this run".to_owned()
    } else {
        let mut outcome = "done".to_owned();
        for f in &found {
            match expunge_one(job, &f.url).await? {
                None => {
                    expunged.insert(f.url.clone());
                }
                Some(refusal) => {
                    outcome = format!("refused by the upstream: {refusal}");
                    break;
                }
            }
            progress.update("expunge", None, expunged.len() as u64, Some(found.len() as u64));
        }
        outcome
    };
    report.detail("expunged", expunged.len());
    report.detail("expunge", expunge_outcome.clone());

    let (remaining, reads) = prove(job, &found, &expunged, progress).await?;
    progress.finish();
    let wrong_reads = reads.get("unexpected").and_then(Value::as_array).map_or(0, Vec::len);
    report.ok = remaining.is_empty() && wrong_reads == 0 && (!expunge || found.is_empty() || expunge_outcome == "done");
    report.noop = found.is_empty();
    if report.noop {
        report.detail("message", "the tenant holds nothing on its upstream; nothing was deleted");
    }
    report.detail("proof", json!({"remaining_by_search": remaining, "deleted_ids_read": reads}));
    report.timed(started, deleted);
    report.resources_per_sec = delete_rate;
    Ok(report)
}

/// Every resource the tenant-scoped searches return that the tenant owns; others are refusals.
async fn find(job: &Job, progress: &Progress, report: &mut Report) -> Result<Vec<Found>, DataError> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    for (rtype, _) in scan::held(job, progress, "count").await? {
        let mut scan = Scan::new(job, &rtype);
        while let Some(page) = scan.next_page().await? {
            for raw in page {
                let id = raw.get("id").and_then(Value::as_str).unwrap_or("(no id)").to_owned();
                let owned = raw.get("resourceType").and_then(Value::as_str) == Some(rtype.as_str())
                    && raw.as_object().is_some_and(|m| job.snap.marking.owns(m, &job.tenant));
                if !owned {
                    report.refuse(Refusal::new(
                        &rtype,
                        &id,
                        "found by the tenant's search but fails the ownership test: not deleted",
                    ));
                    continue;
                }
                let url = format!("{rtype}/{id}");
                if seen.insert(url.clone()) {
                    found.push(Found { rtype: rtype.clone(), url, body: raw });
                }
            }
            progress.update("find", Some(&rtype), found.len() as u64, None);
        }
    }
    Ok(found)
}

/// One transaction of DELETEs; every entry must report the delete.
async fn delete(job: &Job, found: &[Found], batch: &[usize], index: usize) -> Result<usize, DataError> {
    let entries: Vec<Value> =
        batch.iter().map(|&i| json!({"request": {"method": "DELETE", "url": found[i].url}})).collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let what = format!("purge transaction {} ({} deletes)", index + 1, batch.len());
    let answer = job.upstream.send(Method::POST, "", base_headers(&job.correlation), Some(&bundle)).await?;
    if answer.status != StatusCode::OK {
        return Err(status_error(&what, &answer));
    }
    let body = answer.body.unwrap_or(Value::Null);
    let ok = body.get("entry").and_then(Value::as_array).is_some_and(|e| {
        e.len() == batch.len()
            && e.iter().all(|e| {
                let s = e.pointer("/response/status").and_then(Value::as_str).unwrap_or("");
                s.starts_with("200") || s.starts_with("204")
            })
    });
    if !ok {
        return Err(DataError::Answer(what, "not every entry was deleted".into()));
    }
    Ok(index)
}

/// `$expunge` of one deleted resource's history: `None` when done, else the upstream's refusal
/// (HAPI answers 405 "HAPI-0968: $expunge is not enabled on this server" unless the operator
/// enabled it).
async fn expunge_one(job: &Job, url: &str) -> Result<Option<String>, DataError> {
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "expungeDeletedResources", "valueBoolean": true},
        {"name": "expungePreviousVersions", "valueBoolean": true}]});
    let answer = job
        .upstream
        .send(Method::POST, &format!("{url}/$expunge"), base_headers(&job.correlation), Some(&params))
        .await?;
    if answer.status == StatusCode::OK {
        return Ok(None);
    }
    Ok(Some(format!("{} {}", answer.status.as_u16(), scan::diagnostics(answer.body.as_ref()))))
}

/// The proof: counts by tenant-scoped search of every searchable type (only the non-zero ones
/// are listed), and how every deleted id reads (410, or 404 once expunged).
async fn prove(
    job: &Job,
    found: &[Found],
    expunged: &HashSet<String>,
    progress: &Progress,
) -> Result<(BTreeMap<String, u64>, Value), DataError> {
    let remaining: BTreeMap<String, u64> = scan::held(job, progress, "prove-search").await?.into_iter().collect();
    let mut counts: BTreeMap<u16, u64> = BTreeMap::new();
    let mut unexpected: Vec<Value> = Vec::new();
    let mut reads = tokio::task::JoinSet::new();
    let mut pending = found.iter().map(|f| f.url.clone());
    let mut read = 0u64;
    loop {
        while reads.len() < PROOF_READS {
            let Some(url) = pending.next() else { break };
            let (upstream, correlation) = (job.upstream.clone(), job.correlation.clone());
            reads.spawn(async move {
                let status = upstream.status_of(Method::GET, &url, base_headers(&correlation)).await;
                (url, status)
            });
        }
        let Some(done) = reads.join_next().await else { break };
        let (url, status) = done.map_err(|e| DataError::Refused(format!("a proof read failed: {e}")))?;
        let status = status?;
        *counts.entry(status.as_u16()).or_default() += 1;
        let expected = if expunged.contains(&url) { StatusCode::NOT_FOUND } else { StatusCode::GONE };
        if status != expected && unexpected.len() < 100 {
            unexpected.push(json!({"url": url, "status": status.as_u16()}));
        }
        read += 1;
        progress.update("prove-read", None, read, Some(found.len() as u64));
    }
    let by_status: serde_json::Map<String, Value> =
        counts.into_iter().map(|(s, n)| (s.to_string(), json!(n))).collect();
    Ok((
        remaining,
        json!({"expected": {"410": found.len() - expunged.len(), "404": expunged.len()}, "by_status": by_status, "unexpected": unexpected}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_deleted_tenant_past_its_grace_is_purged() {
        let tenant = |status: &str| -> Tenant {
            toml::from_str(&format!("prefix = \"acme\"\nupstream = \"u\"\n{status}")).unwrap()
        };
        let lifecycle = Lifecycle::default();
        for status in ["status = \"active\"", "status = \"suspended\"", "status = \"read-only\""] {
            assert!(matches!(purge_permitted("acme", &tenant(status), &lifecycle), Err(Why::Status(..))), "{status}");
        }
        let now = crate::lifecycle::now_utc();
        let fresh = tenant(&format!("status = \"deleting\"\ndeleted_at = \"{now}\""));
        assert!(matches!(purge_permitted("acme", &fresh, &lifecycle), Err(Why::InGrace(..))));
        let old = tenant("status = \"deleting\"\ndeleted_at = \"2000-01-01T00:00:00Z\"");
        assert!(purge_permitted("acme", &old, &lifecycle).is_ok());
    }
}
