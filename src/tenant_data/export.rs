//! `tenant export`: every current resource of a tenant, of every type its upstream declares
//! searchable, to `DIR/Type.ndjson` in the tenant's local form, and `DIR/manifest.json`.
//!
//! Each resource passes the outbound gate the proxy's answers pass (`outbound::resource`: the
//! tenant's coding *and* id prefix, every reference inside the tenant; then markers stripped and
//! references made local). One that fails is not written and is counted as a refusal: the
//! export holds exactly what the tenant could read through fhir-fence.
//!
//! Resumable: a type's file is written as `Type.ndjson.part` and renamed once complete, then the
//! type is recorded in `DIR/.export-state.json`; a rerun skips recorded types and redoes an
//! unfinished one. Once the manifest is written a rerun changes nothing and says so.
use super::journal::{self, DoneType, ExportState};
use super::manifest::{self, DigestInfo, Manifest, Source, TypeEntry};
use super::progress::Progress;
use super::scan::Scan;
use super::{DataError, Job, Refusal, Report};
use crate::outbound;
use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

/// Scans `rtype` for the tenant and hands every resource that passes the outbound gate, in its
/// local form, to `each`; answers the refusals. Each id is handed over once.
pub async fn scan_type(
    job: &Job,
    rtype: &str,
    progress: &Progress,
    phase: &str,
    mut each: impl FnMut(Value) -> Result<(), DataError>,
) -> Result<Vec<Refusal>, DataError> {
    let ctx = job.ctx();
    let mut scan = Scan::new(job, rtype);
    let mut refused = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut done = 0u64;
    while let Some(page) = scan.next_page().await? {
        for raw in page {
            let id = raw.get("id").and_then(Value::as_str).unwrap_or("(no id)").to_owned();
            let refusal = |reason: &str| Refusal::new(rtype, &id, reason);
            if raw.get("resourceType").and_then(Value::as_str) != Some(rtype) {
                refused.push(refusal("not of the type searched"));
                continue;
            }
            let local = match outbound::resource(&ctx, raw) {
                Ok(checked) => checked.into_tree(),
                Err(e) => {
                    refused.push(refusal(&format!("fails the tenant's ownership check: {e}")));
                    continue;
                }
            };
            let Some(local_id) = local.get("id").and_then(Value::as_str) else {
                refused.push(refusal("no id"));
                continue;
            };
            if !seen.insert(local_id.to_owned()) {
                continue;
            }
            each(local)?;
            done += 1;
        }
        progress.update(phase, Some(rtype), done, scan.total);
    }
    Ok(refused)
}

/// Exports the job's tenant into `dir` (created if missing).
pub async fn export(job: &Job, dir: &Path, progress: &Progress) -> Result<Report, DataError> {
    let started = std::time::Instant::now();
    let mut report = Report::new("export", job);
    report.detail("dir", dir.display().to_string());
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let state_path = dir.join(journal::EXPORT);
    let mut state = match journal::read::<ExportState>(&state_path)? {
        Some(s) if s.tenant != job.tenant.name || s.upstream != job.tenant.upstream => {
            return Err(DataError::Refused(format!(
                "{} holds an export of tenant {:?} on upstream {:?}; choose another directory",
                dir.display(),
                s.tenant,
                s.upstream
            )))
        }
        Some(s) => s,
        None => {
            let mut entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
            if entries.next().is_some() {
                return Err(DataError::Refused(format!(
                    "{} is not empty and holds no export state: export into an empty directory",
                    dir.display()
                )));
            }
            ExportState { tenant: job.tenant.name.clone(), upstream: job.tenant.upstream.clone(), ..Default::default() }
        }
    };
    if state.complete {
        let m = Manifest::read(dir)?;
        report.noop = true;
        report.detail("message", "the export in this directory is complete; nothing was done");
        report.types = m.types.iter().map(|(t, e)| (t.clone(), e.count)).collect();
        report.total = m.total;
        for r in state.done.values().flat_map(|d| d.refused.iter()) {
            report.refuse(r.clone());
        }
        report.timed(started, 0);
        return Ok(report);
    }
    let resumed = state.done.len();
    let mut exported = 0u64;
    // Types the tenant holds nothing of are done at once (one count search each, run together).
    let held = super::scan::held(job, progress, "count").await?;
    for rtype in job.searchable_types() {
        if !held.iter().any(|(t, _)| *t == rtype) {
            state.done.entry(rtype).or_default();
        }
    }
    journal::write(&state_path, &state)?;
    for (rtype, _) in held {
        if state.done.contains_key(&rtype) {
            continue;
        }
        let file = dir.join(manifest::file_name(&rtype));
        let part = dir.join(format!("{}.part", manifest::file_name(&rtype)));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&part).map_err(|e| DataError::io(&part, e))?);
        let mut done = DoneType::default();
        let refused = scan_type(job, &rtype, progress, "export", |local| {
            let id = local.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            done.resources.insert(id, manifest::digest(&local));
            serde_json::to_writer(&mut out, &local).map_err(|e| DataError::io(&part, e.into()))?;
            out.write_all(b"\n").map_err(|e| DataError::io(&part, e))
        })
        .await?;
        let out = out.into_inner().map_err(|e| DataError::io(&part, e.into_error()))?;
        out.sync_all().map_err(|e| DataError::io(&part, e))?;
        if done.resources.is_empty() {
            std::fs::remove_file(&part).map_err(|e| DataError::io(&part, e))?;
        } else {
            std::fs::rename(&part, &file).map_err(|e| DataError::io(&file, e))?;
        }
        exported += done.resources.len() as u64;
        done.refused = refused;
        state.done.insert(rtype, done);
        journal::write(&state_path, &state)?;
    }
    let m = manifest_of(job, &state);
    journal::replace(&dir.join(manifest::FILE), &serde_json::to_vec_pretty(&m).expect("a manifest serialises"))?;
    state.complete = true;
    journal::write(&state_path, &state)?;
    progress.finish();
    report.types = m.types.iter().map(|(t, e)| (t.clone(), e.count)).collect();
    report.total = m.total;
    for r in state.done.values().flat_map(|d| d.refused.iter()) {
        report.refuse(r.clone());
    }
    report.detail("resumed_types", resumed);
    report.timed(started, exported);
    Ok(report)
}

fn manifest_of(job: &Job, state: &ExportState) -> Manifest {
    let types: std::collections::BTreeMap<String, TypeEntry> = state
        .done
        .iter()
        .filter(|(_, d)| !d.resources.is_empty())
        .map(|(t, d)| {
            let entry = TypeEntry {
                file: manifest::file_name(t),
                count: d.resources.len() as u64,
                resources: d.resources.clone(),
            };
            (t.clone(), entry)
        })
        .collect();
    Manifest {
        format: manifest::FORMAT.into(),
        tenant: job.tenant.name.clone(),
        source: Source { upstream: job.tenant.upstream.clone(), base_url: job.upstream.base.clone() },
        exported_at: super::now_rfc3339(),
        digest: DigestInfo::default(),
        total: types.values().map(|e| e.count).sum(),
        refused: state.done.values().map(|d| d.refused.len() as u64).sum(),
        types,
    }
}
