//! `tenant verify`: an export's files and a tenant's data held to the export's manifest.
//! The files: every line parses, is of its file's type, and its digest is the manifest's; no id
//! is missing, repeated or unknown. The tenant: re-exported in memory (the same scan and outbound
//! gate as `export`), equal counts per type and every digest equal. Each difference is reported.
use super::export::scan_type;
use super::manifest::{self, Manifest};
use super::progress::Progress;
use super::{DataError, Job, Report};
use crate::fhir::json::parse_strict;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

/// One way the compared data differ from the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// `file` (the export's files) or `upstream` (the tenant's data).
    #[serde(rename = "where")]
    pub place: &'static str,
    #[serde(rename = "type")]
    pub rtype: String,
    pub id: Option<String>,
    pub problem: String,
}

/// How many differences a report lists (all are counted).
const LISTED: usize = 100;

/// An export's resources, per type, read from its files and checked against its manifest.
pub struct Files {
    pub resources: BTreeMap<String, Vec<Value>>,
    pub differences: Vec<Difference>,
}

/// Reads every file the manifest names and compares it with the manifest.
pub fn read_files(dir: &Path, m: &Manifest) -> Result<Files, DataError> {
    let mut out = Files { resources: BTreeMap::new(), differences: Vec::new() };
    for (rtype, entry) in &m.types {
        let path = dir.join(&entry.file);
        let diff = |id: Option<&str>, problem: String| Difference {
            place: "file",
            rtype: rtype.clone(),
            id: id.map(str::to_owned),
            problem,
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                out.differences.push(diff(None, format!("{}: {e}", entry.file)));
                continue;
            }
        };
        let mut seen: HashMap<String, ()> = HashMap::new();
        let mut list = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| DataError::io(&path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let value = match parse_strict(line.as_bytes()) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    out.differences.push(diff(None, format!("line {} is not a JSON object", n + 1)));
                    continue;
                }
                Err(e) => {
                    out.differences.push(diff(None, format!("line {}: {e}", n + 1)));
                    continue;
                }
            };
            let Some(id) = value.get("id").and_then(Value::as_str).map(str::to_owned) else {
                out.differences.push(diff(None, format!("line {} has no id", n + 1)));
                continue;
            };
            if value.get("resourceType").and_then(Value::as_str) != Some(rtype.as_str()) {
                out.differences.push(diff(Some(&id), format!("line {} is not a {rtype}", n + 1)));
                continue;
            }
            if seen.insert(id.clone(), ()).is_some() {
                out.differences.push(diff(Some(&id), "appears twice".into()));
                continue;
            }
            match entry.resources.get(&id) {
                None => out.differences.push(diff(Some(&id), "not in the manifest".into())),
                Some(d) if *d != manifest::digest(&value) => {
                    out.differences.push(diff(Some(&id), "its digest differs from the manifest's".into()))
                }
                Some(_) => list.push(value),
            }
        }
        for id in entry.resources.keys().filter(|id| !seen.contains_key(*id)) {
            out.differences.push(diff(Some(id), "in the manifest, missing from the file".into()));
        }
        out.resources.insert(rtype.clone(), list);
    }
    Ok(out)
}

/// Re-exports the tenant in memory and compares it with the manifest: digests per type and id.
pub async fn upstream_differences(
    job: &Job,
    m: &Manifest,
    progress: &Progress,
    report: &mut Report,
) -> Result<Vec<Difference>, DataError> {
    let mut differences = Vec::new();
    let searchable = job.searchable_types();
    for rtype in m.types.keys().filter(|t| !searchable.contains(t)) {
        differences.push(Difference {
            place: "upstream",
            rtype: rtype.clone(),
            id: None,
            problem: "the upstream does not declare this type searchable".into(),
        });
    }
    // Only the types the tenant holds something of, or the manifest lists, are scanned.
    let held = super::scan::held(job, progress, "count").await?;
    let scanned: Vec<&String> =
        searchable.iter().filter(|t| m.types.contains_key(*t) || held.iter().any(|(h, _)| h == *t)).collect();
    for rtype in scanned {
        let mut found: BTreeMap<String, String> = BTreeMap::new();
        let refused = scan_type(job, rtype, progress, "verify", |local| {
            let id = local.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            found.insert(id, manifest::digest(&local));
            Ok(())
        })
        .await?;
        for r in refused {
            report.refuse(r);
        }
        let expected = m.types.get(rtype).map(|e| &e.resources);
        let diff = |id: &str, problem: &str| Difference {
            place: "upstream",
            rtype: rtype.clone(),
            id: Some(id.to_owned()),
            problem: problem.to_owned(),
        };
        for (id, d) in &found {
            match expected.and_then(|e| e.get(id)) {
                None => differences.push(diff(id, "not in the manifest")),
                Some(e) if e != d => differences.push(diff(id, "differs from the manifest")),
                Some(_) => {}
            }
        }
        for id in expected.into_iter().flat_map(|e| e.keys()).filter(|id| !found.contains_key(*id)) {
            differences.push(diff(id, "in the manifest, missing from the tenant"));
        }
        let want = expected.map_or(0, |e| e.len());
        if found.len() != want {
            differences.push(Difference {
                place: "upstream",
                rtype: rtype.clone(),
                id: None,
                problem: format!("{} resources, the manifest has {want}", found.len()),
            });
        }
        if !found.is_empty() {
            report.types.insert(rtype.clone(), found.len() as u64);
        }
    }
    Ok(differences)
}

/// `verify --against DIR`: the files, then the tenant's data.
pub async fn verify(job: &Job, dir: &Path, progress: &Progress) -> Result<Report, DataError> {
    let started = std::time::Instant::now();
    let mut report = Report::new("verify", job);
    let m = Manifest::read(dir)?;
    let files = read_files(dir, &m)?;
    let upstream = upstream_differences(job, &m, progress, &mut report).await?;
    progress.finish();
    conclude(&mut report, &m, files.differences, upstream);
    report.timed(started, report.total);
    Ok(report)
}

/// Puts the comparison's outcome into `report`.
pub fn conclude(report: &mut Report, m: &Manifest, files: Vec<Difference>, upstream: Vec<Difference>) {
    report.total = report.types.values().sum();
    report.detail("manifest_total", m.total);
    report.detail("files_ok", files.is_empty());
    report.detail("upstream_ok", upstream.is_empty());
    let all: Vec<Difference> = files.into_iter().chain(upstream).collect();
    report.ok = all.is_empty();
    report.detail("difference_count", all.len());
    report.detail("differences", serde_json::to_value(&all[..all.len().min(LISTED)]).expect("differences serialise"));
}
