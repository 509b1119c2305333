//! `tenant adopt NAME --from LEGACY`: a legacy FHIR server's data (no tenant coding, plain ids,
//! written without fhir-fence; `upstreams.LEGACY.legacy = true`) brought into an empty,
//! enforced tenant (paper §7.1, the move from shared everything to tenant-scoped).
//!
//! A legacy resource looks like a tenant's local form: its ids are what the tenant's ids will be
//! locally, its references are relative. So adopt is an export and a restore: the selection
//! (`select`) is written as an export directory, `lifecycle.state_dir/adopt/NAME/` (`Type.ndjson`
//! and a manifest with each legacy resource's digest), and `restore` loads it — the one write
//! path, every resource through `scope::write::prepare` (stamped, prefixed, references moved into
//! the tenant's namespace) — and verifies the tenant's re-export against the manifest: every
//! adopted resource's digest over the canonical form, after the ids are mapped back, equal to
//! the legacy resource's, and the counts per type.
//!
//! **What is left behind, and why.** Before the directory is written every selected resource is
//! judged by `restore::judge` (the inbound gate `fhir::shape::check`, a type the tenant's
//! upstream serves and fhir-fence lets a tenant write, an id that fits the tenant's namespace,
//! `prepare`, `provable_once_stored`). A refused resource is left behind; a resource that
//! references one left behind, or one outside the selection (dangling), is refused too — fail
//! closed: it is never written with the reference dropped — and reported with that reference;
//! and so on until nothing more is refused. The report lists them (`refused`, with reasons) and
//! counts them (`refusals`); `ok` is false when anything was left behind, unless the operator
//! passed `--accept-refusals` (then `ok` says only that what was adopted verified).
//!
//! Resumable and idempotent: `.adopt-state.json` in the directory records the run (source,
//! criteria, the refusals) once the selection is written; a rerun with the same arguments goes
//! on with the restore (itself resumable), a finished one is a noop, other arguments are refused.
//! A crash during the selection redoes the selection (it only reads).
use super::manifest::{self, DigestInfo, Manifest, Source, TypeEntry};
use super::progress::Progress;
use super::select::{self, Criterion, Legacy, Selection};
use super::{journal, restore, DataError, Job, Refusal, Report};
use crate::fhir::reference;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What to adopt (the command's arguments).
#[derive(Debug, Clone)]
pub struct Adopt {
    /// The legacy upstream's name.
    pub from: String,
    pub criteria: Vec<Criterion>,
    pub with_referenced: bool,
    /// `ok` stays true when resources were left behind (they are still listed and counted).
    pub accept_refusals: bool,
}

/// The adopt state, `.adopt-state.json` in the adopt directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptState {
    pub tenant: String,
    pub from: String,
    pub criteria: Vec<String>,
    pub with_referenced: bool,
    /// Resources the selection found (adopted and left behind).
    pub selected: u64,
    /// Of those, added by `--with-referenced`.
    pub referenced: u64,
    /// Every resource left behind, and why.
    pub refused: Vec<Refusal>,
}

pub const STATE: &str = ".adopt-state.json";

/// `state_dir/adopt/NAME`.
pub fn directory(state_dir: &Path, tenant: &str) -> PathBuf {
    state_dir.join("adopt").join(tenant)
}

pub async fn adopt(job: &Job, a: &Adopt, state_dir: Option<&Path>, progress: &Progress) -> Result<Report, DataError> {
    let started = std::time::Instant::now();
    let config = &job.snap.loaded.config;
    let Some(source) = config.upstreams.get(&a.from) else {
        return Err(DataError::Refused(format!("no upstream {:?} in the config", a.from)));
    };
    if !source.legacy {
        return Err(DataError::Refused(format!(
            "upstream {:?} is not a legacy upstream (upstreams.{}.legacy = true): its data is not adopted",
            a.from, a.from
        )));
    }
    if config.upstreams.get(&job.tenant.upstream).is_some_and(|u| u.legacy) {
        return Err(DataError::Refused(format!(
            "tenant {:?} is on legacy upstream {:?} (an observing tenant): adopt into an enforced tenant",
            job.tenant.name, job.tenant.upstream
        )));
    }
    let Some(state_dir) = state_dir else {
        return Err(DataError::Refused("adopt keeps its selection under lifecycle.state_dir: set it".into()));
    };
    let dir = directory(state_dir, &job.tenant.name);
    let criteria: Vec<String> = a.criteria.iter().map(Criterion::describe).collect();
    let state_path = dir.join(STATE);
    let state = match journal::read::<AdoptState>(&state_path)? {
        Some(s) if s.from != a.from || s.criteria != criteria || s.with_referenced != a.with_referenced => {
            return Err(DataError::Refused(format!(
                "{} records another adoption into tenant {:?} (from {:?}, {}): it is not continued, and nothing \
                 was done",
                dir.display(),
                s.tenant,
                s.from,
                if s.criteria.is_empty() { "everything".to_owned() } else { s.criteria.join(", ") }
            )))
        }
        Some(s) => s,
        None => {
            restore::ensure_empty(job, progress).await?;
            let upstream = job.snap.upstreams.get(&a.from).ok_or_else(|| DataError::Capabilities(a.from.clone()))?;
            let caps = job.snap.capabilities(&a.from).await.ok_or_else(|| DataError::Capabilities(a.from.clone()))?;
            let legacy = Legacy { name: &a.from, upstream, caps: &caps, correlation: &job.correlation };
            let selection = select::select(&legacy, &a.criteria, a.with_referenced, progress).await?;
            let state = write_selection(job, &legacy, selection, &dir, a, criteria)?;
            progress.update("selected", None, state.selected, Some(state.selected));
            state
        }
    };
    let restored = restore::restore(job, &dir, progress).await?;
    Ok(report(job, a, &state, restored, &dir, started))
}

/// Judges the selection until nothing more is refused, writes what may be adopted as an
/// export directory, and records the state.
fn write_selection(
    job: &Job,
    legacy: &Legacy<'_>,
    mut selection: Selection,
    dir: &Path,
    a: &Adopt,
    criteria: Vec<String>,
) -> Result<AdoptState, DataError> {
    let selected = selection.total() + selection.refused.len() as u64;
    let referenced = selection.referenced;
    let mut refused = std::mem::take(&mut selection.refused);
    let mut resources: BTreeMap<String, Vec<Value>> =
        selection.resources.into_iter().map(|(t, m)| (t, m.into_values().collect())).collect();
    refused.extend(settle(job, &mut resources));
    // A rerun after a crash here starts the directory again.
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut types = BTreeMap::new();
    for (rtype, list) in resources.iter().filter(|(_, l)| !l.is_empty()) {
        let file = dir.join(manifest::file_name(rtype));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).map_err(|e| DataError::io(&file, e))?);
        let mut digests = BTreeMap::new();
        for r in list {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            digests.insert(id, manifest::digest(r));
            serde_json::to_writer(&mut out, r).map_err(|e| DataError::io(&file, e.into()))?;
            out.write_all(b"\n").map_err(|e| DataError::io(&file, e))?;
        }
        let out = out.into_inner().map_err(|e| DataError::io(&file, e.into_error()))?;
        out.sync_all().map_err(|e| DataError::io(&file, e))?;
        types.insert(
            rtype.clone(),
            TypeEntry { file: manifest::file_name(rtype), count: digests.len() as u64, resources: digests },
        );
    }
    let m = Manifest {
        format: manifest::FORMAT.into(),
        tenant: job.tenant.name.clone(),
        source: Source { upstream: a.from.clone(), base_url: legacy.upstream.base.clone() },
        exported_at: super::now_rfc3339(),
        digest: DigestInfo::default(),
        total: types.values().map(|e: &TypeEntry| e.count).sum(),
        refused: refused.len() as u64,
        types,
    };
    journal::replace(&dir.join(manifest::FILE), &serde_json::to_vec_pretty(&m).expect("a manifest serialises"))?;
    let state = AdoptState {
        tenant: job.tenant.name.clone(),
        from: a.from.clone(),
        criteria,
        with_referenced: a.with_referenced,
        selected,
        referenced,
        refused,
    };
    journal::write(&dir.join(STATE), &state)?;
    Ok(state)
}

/// Removes from `resources` everything `restore::judge` refuses, and then what references it,
/// until nothing more is refused; answers the refusals. A resource refused for a reference to
/// one left behind says so (its reason names the reference and that resource's own refusal is
/// listed too).
pub fn settle(job: &Job, resources: &mut BTreeMap<String, Vec<Value>>) -> Vec<Refusal> {
    let mut all: Vec<Refusal> = Vec::new();
    let mut left: HashSet<String> = HashSet::new();
    let selected: HashSet<(String, String)> = resources
        .iter()
        .flat_map(|(t, l)| l.iter().filter_map(|r| Some((t.clone(), r.get("id")?.as_str()?.to_owned()))))
        .collect();
    let selected: HashSet<(&str, &str)> = selected.iter().map(|(t, i)| (t.as_str(), i.as_str())).collect();
    loop {
        let (_, refused) = restore::judge(job, resources, restore::Outside::Refused);
        if refused.is_empty() {
            return all;
        }
        for r in &refused {
            if let Some(list) = resources.get_mut(&r.rtype) {
                list.retain(|v| v.get("id").and_then(Value::as_str) != Some(r.id.as_str()));
            }
            left.insert(format!("{}/{}", r.rtype, r.id));
        }
        for mut r in refused {
            if let Some(target) = r.reference.as_deref() {
                let (rtype, id) = target.split_once('/').unwrap_or_default();
                r.reason = if left.contains(target) {
                    format!("references {target}, which is left behind (see its own refusal)")
                } else if selected.contains(&(rtype, id)) || !reference::is_id(id) {
                    format!("{} (the reference is {target})", r.reason)
                } else {
                    format!("references {target}, which the selection does not contain")
                };
            }
            all.push(r);
        }
    }
}

fn report(
    job: &Job,
    a: &Adopt,
    state: &AdoptState,
    restored: Report,
    dir: &Path,
    started: std::time::Instant,
) -> Report {
    let mut report = Report::new("adopt", job);
    report.noop = restored.noop;
    report.types = restored.types.clone();
    report.total = restored.total;
    for r in &state.refused {
        report.refuse(r.clone());
    }
    let verified = restored.ok;
    report.ok = verified && (state.refused.is_empty() || a.accept_refusals);
    report.details = restored.details;
    report.detail("from", a.from.clone());
    report.detail("criteria", state.criteria.clone());
    report.detail("with_referenced", a.with_referenced);
    report.detail("selected", state.selected);
    report.detail("referenced", state.referenced);
    report.detail("left_behind", state.refused.len());
    report.detail("accept_refusals", a.accept_refusals);
    report.detail("dir", dir.display().to_string());
    if report.noop {
        report.detail("message", "this adoption is complete; nothing was done");
    }
    report.elapsed_secs = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    report.resources_per_sec = restored.resources_per_sec;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::testing::{capabilities, shared};
    use serde_json::json;
    use std::sync::Arc;

    fn job() -> Job {
        let snap = shared().clone();
        Job {
            tenant: snap.tenants["acme"].clone(),
            upstream: snap.upstreams["main"].clone(),
            caps: Arc::new(capabilities()),
            snap,
            correlation: "unit".into(),
        }
    }

    fn obs(id: &str, extra: Value) -> Value {
        let mut o = json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": id}});
        o.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        o
    }

    #[test]
    fn what_cannot_be_moved_is_refused_with_its_reason_and_so_is_what_references_it() {
        let mut resources: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        resources.insert("Patient".into(), vec![json!({"resourceType": "Patient", "id": "p1"})]);
        resources.insert(
            "Observation".into(),
            vec![
                obs("ok", json!({"subject": {"reference": "Patient/p1"}})),
                obs("dangling", json!({"subject": {"reference": "Patient/elsewhere"}})),
                obs("behind", json!({"hasMember": [{"reference": "Observation/dangling"}]})),
                obs("shape", json!({"valueBogus": 1})),
                obs("chain", json!({"derivedFrom": [{"reference": "Observation/behind"}]})),
                obs("toolong", json!({"id": "x".repeat(60)})),
            ],
        );
        resources.insert(
            "Encounter".into(),
            vec![json!({"resourceType": "Encounter", "id": "e1",
            "status": "finished", "class": {"code": "AMB"}})],
        );
        let refused = settle(&job(), &mut resources);
        let by: BTreeMap<String, &Refusal> = refused.iter().map(|r| (format!("{}/{}", r.rtype, r.id), r)).collect();
        let long = format!("Observation/{}", "x".repeat(60));
        let mut expected = [
            "Encounter/e1",
            &long,
            "Observation/behind",
            "Observation/chain",
            "Observation/dangling",
            "Observation/shape",
        ]
        .map(str::to_owned);
        expected.sort();
        assert_eq!(by.keys().cloned().collect::<Vec<_>>(), expected, "{refused:#?}");
        let d = by["Observation/dangling"];
        assert_eq!(d.reference.as_deref(), Some("Patient/elsewhere"));
        assert!(d.reason.contains("the selection does not contain"), "{}", d.reason);
        for (id, target) in [("behind", "Observation/dangling"), ("chain", "Observation/behind")] {
            let r = by[&format!("Observation/{id}")];
            assert_eq!(r.reference.as_deref(), Some(target));
            assert!(r.reason.contains("left behind"), "{}", r.reason);
        }
        assert!(by["Observation/shape"].reason.contains("inbound gate"), "{}", by["Observation/shape"].reason);
        assert!(by[&long].reason.contains("too long"), "{}", by[&long].reason);
        assert!(by["Encounter/e1"].reason.contains("does not serve Encounter"), "{}", by["Encounter/e1"].reason);
        // What stays is exactly what may be written, and judged again nothing more is refused.
        let kept: Vec<&str> = resources.values().flatten().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(kept, ["ok", "p1"]);
        assert!(restore::judge(&job(), &resources, restore::Outside::Refused).1.is_empty());
    }
}
