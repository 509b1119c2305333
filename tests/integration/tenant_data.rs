//! `fhir-fence tenant` export, purge, restore and verify, run as the binary, against the
//! real HAPI servers: the shared one (`HAPI_URL`, 8090) holds the source tenant and a neighbour
//! with the same local ids; the dedicated one (`HAPI_DEDICATED_URL`, 8091) receives the restore.
//! Data is written and read back through a running fhir-fence; the absence after a purge is
//! checked on the upstream directly.
use crate::support::client::{delete, get, put};
use crate::support::{self, config_text, tenants, Fence, Options, SYSTEM, T};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn hapi() -> String {
    support::hapi_url("HAPI_URL", 8090)
}

fn dedicated() -> String {
    support::hapi_url("HAPI_DEDICATED_URL", 8091)
}

/// Three fresh tenants: `a` (the source) and `b` (its neighbour) on the shared HAPI, `c` (the
/// restore's target) on the dedicated one.
struct Setup {
    fence: Fence,
    ts: Vec<T>,
    options: Options,
}

/// A config text with tenant `c` moved to upstream `second`.
fn retarget(text: &str, c: &str) -> String {
    text.replace(
        &format!("[tenants.{c}]\nprefix = \"{c}\"\nupstream = \"main\""),
        &format!("[tenants.{c}]\nprefix = \"{c}\"\nupstream = \"second\""),
    )
}

async fn setup() -> Setup {
    let ts = tenants(3);
    let mut options = Options::new(&hapi(), &ts);
    options.extra = format!("[upstreams.second]\nbase_url = \"{}\"\nrequest_timeout_ms = 60000\n", dedicated());
    options.request_timeout_ms = 60_000;
    let c = ts[2].name.clone();
    let fence = support::start_with(options.clone(), move |t| support::write_config(&retarget(t, &c))).await;
    Setup { fence, ts, options }
}

impl Setup {
    /// A config file for the CLI, with the `deleted` tenants deleted long enough ago that their
    /// grace is over (purge needs that).
    fn cli_config(&self, deleted: &[&str]) -> PathBuf {
        let mut o = self.options.clone();
        for t in &mut o.tenants {
            t.suspended = deleted.contains(&t.name.as_str());
        }
        let text = config_text(&o, self.fence.ports.0, self.fence.ports.1)
            .replace("status = \"suspended\"", "status = \"deleting\"\ndeleted_at = \"2000-01-01T00:00:00Z\"")
            + "\n[lifecycle]\nstate_dir = \"state\"\n";
        support::write_config(&retarget(&text, &self.ts[2].name))
    }
}

/// Runs `fhir-fence tenant --config C <args…>`: exit success, the stdout report, stderr.
pub(crate) async fn tenant_data(config: &Path, args: &[&str]) -> (bool, Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fhir-fence"))
        .arg("tenant")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.success(), report, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The JSON progress lines of a command's stderr.
fn progress_of(stderr: &str) -> Vec<Value> {
    stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn temp_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fhir-fence-{what}-{}", uuid::Uuid::new_v4()))
}

/// A resource without what the upstream assigns on each write (the export's canonical form).
fn content(r: Value) -> Value {
    fhir_fence::tenant_data::manifest::content(&r)
}

/// PUTs `body` as `tenant` through fhir-fence, expecting it written.
async fn write(f: &Fence, tenant: &str, body: Value) {
    let path = format!("{}/{}", body["resourceType"].as_str().unwrap(), body["id"].as_str().unwrap());
    let r = put(&f.url(&path), &body).bearer(&f.token(tenant)).send().await;
    assert!(r.status == 200 || r.status == 201, "{path}: {} {}", r.status, r.body);
}

/// The source tenant's data: two Patients linking each other (a reference cycle), an Encounter,
/// Observations referencing both, one with a reference under an allowed external base.
async fn write_source(f: &Fence, a: &str) -> Vec<String> {
    write(f, a, json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Source", "given": ["One"]}]})).await;
    write(
        f,
        a,
        json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Source"}],
        "link": [{"other": {"reference": "Patient/p1"}, "type": "seealso"}]}),
    )
    .await;
    write(
        f,
        a,
        json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Source", "given": ["One"]}],
        "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}]}),
    )
    .await;
    write(
        f,
        a,
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"}}),
    )
    .await;
    let mut ids = vec!["Patient/p1".to_owned(), "Patient/p2".to_owned(), "Encounter/e1".to_owned()];
    for i in 0..5 {
        let subject = if i % 2 == 0 { "Patient/p1" } else { "Patient/p2" };
        let mut o = json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
            "code": {"text": format!("measure {i}")}, "subject": {"reference": subject},
            "encounter": {"reference": "Encounter/e1"}, "valueQuantity": {"value": 1.5 + i as f64, "unit": "mg"},
            "meta": {"tag": [{"system": "http://example.org/tags", "code": "kept"}]}});
        if i == 0 {
            o["performer"] = json!([{"reference": "https://terminology.example.org/fhir/Practitioner/ext1"}]);
        }
        write(f, a, o).await;
        ids.push(format!("Observation/o{i}"));
    }
    ids
}

/// The neighbour writes the same local ids (and references them).
async fn write_neighbour(f: &Fence, b: &str) {
    write(f, b, json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Neighbour"}]})).await;
    write(
        f,
        b,
        json!({"resourceType": "Observation", "id": "o0", "status": "final", "code": {"text": "neighbour"},
        "subject": {"reference": "Patient/p1"}}),
    )
    .await;
}

/// Every resource as `tenant` reads it through fhir-fence.
async fn read_all(f: &Fence, tenant: &str, ids: &[String]) -> Vec<(u16, Value)> {
    let mut out = Vec::new();
    for id in ids {
        let r = get(&f.url(id)).bearer(&f.token(tenant)).send().await;
        out.push((r.status, r.body));
    }
    out
}

/// `Type?_tag=system|tenant&_summary=count` on an upstream directly, run now.
async fn upstream_count(base: &str, rtype: &str, tenant: &str) -> u64 {
    let url = format!("{base}/{rtype}?_tag={}&_summary=count", urlencode(&format!("{SYSTEM}|{tenant}")));
    let r = get(&url).header("cache-control", "no-cache").send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["total"].as_u64().unwrap()
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn export_purge_restore_verify_carry_a_tenant_whole_and_touch_no_neighbour() {
    let s = setup().await;
    let f = &s.fence;
    let (a, b, c) = (s.ts[0].name.clone(), s.ts[1].name.clone(), s.ts[2].name.clone());
    let ids = write_source(f, &a).await;
    write_neighbour(f, &b).await;
    let before = read_all(f, &a, &ids).await;
    assert!(before.iter().all(|(st, _)| *st == 200));
    let neighbour_before = read_all(f, &b, &["Patient/p1".into(), "Observation/o0".into()]).await;
    let active = s.cli_config(&[]);

    // Export: the source's 8 resources in their local form; the neighbour's never.
    let dir = temp_dir("export");
    let d = dir.to_str().unwrap();
    let (ok, report, stderr) = tenant_data(&active, &["export", &a, "--out", d]).await;
    assert!(ok, "{stderr}");
    assert_eq!(report["types"], json!({"Encounter": 1, "Observation": 5, "Patient": 2}), "{report}");
    assert_eq!(
        (report["total"].as_u64(), report["refusals"].as_u64(), report["noop"].as_bool()),
        (Some(8), Some(0), Some(false))
    );
    assert!(report["resources_per_sec"].as_f64().unwrap() > 0.0);
    assert!(
        progress_of(&stderr).iter().any(|p| p["phase"] == "export" && p["type"] == "Observation" && p["done"] == 5),
        "JSON progress lines on a non-terminal stderr: {stderr}"
    );
    let patients = std::fs::read_to_string(dir.join("Patient.ndjson")).unwrap();
    assert_eq!(patients.lines().count(), 2);
    assert!(!patients.contains("Neighbour") && !patients.contains(SYSTEM) && !patients.contains(&format!("{a}-")));
    let p1: Value =
        patients.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).find(|p| p["id"] == "p1").unwrap();
    assert_eq!(content(p1), content(before[0].1.clone()), "the file holds the resource as the tenant reads it");
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["tenant"], a.as_str());
    assert_eq!(manifest["types"]["Observation"]["count"], 5);
    assert_eq!(manifest["types"]["Observation"]["resources"].as_object().unwrap().len(), 5);
    assert_eq!(manifest["digest"]["algorithm"], "sha-256");
    // A finished export run again does nothing, and says so.
    let (ok, again, _) = tenant_data(&active, &["export", &a, "--out", d]).await;
    assert!(ok);
    assert_eq!((again["noop"].as_bool(), again["total"].as_u64()), (Some(true), Some(8)), "{again}");

    // An export interrupted after some types resumes: finished types are kept, the rest redone.
    let state_path = dir.join(".export-state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["done"].as_object_mut().unwrap().remove("Observation");
    state["complete"] = json!(false);
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    std::fs::write(dir.join("Observation.ndjson.part"), "half a line").unwrap();
    let (ok, resumed, stderr) = tenant_data(&active, &["export", &a, "--out", d]).await;
    assert!(ok, "{stderr}");
    assert_eq!((resumed["noop"].as_bool(), resumed["total"].as_u64()), (Some(false), Some(8)), "{resumed}");
    assert!(resumed["resumed_types"].as_u64().unwrap() >= 2, "Patient and Encounter were kept: {resumed}");
    assert!(!progress_of(&stderr).iter().any(|p| p["phase"] == "export" && p["type"] == "Patient"), "not redone");
    let again: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(again["types"], manifest["types"], "the same export");
    assert_eq!(std::fs::read_to_string(dir.join("Observation.ndjson")).unwrap().lines().count(), 5);
    assert!(!dir.join("Observation.ndjson.part").exists());

    // Purge: refused while the tenant is active; then every resource deleted, proven gone.
    let (ok, _, stderr) = tenant_data(&active, &["purge", &a]).await;
    assert!(!ok && stderr.contains("status \"active\""), "{stderr}");
    assert_eq!(upstream_count(&hapi(), "Patient", &a).await, 2, "a refused purge deletes nothing");
    let suspended = s.cli_config(&[&a]);
    let (ok, report, stderr) = tenant_data(&suspended, &["purge", &a]).await;
    assert!(ok, "{stderr}\n{report}");
    // The purge is in the lifecycle record, with its counts.
    let record = std::fs::read_to_string(suspended.parent().unwrap().join("state/lifecycle.jsonl")).unwrap();
    let last: Value = serde_json::from_str(record.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["operation"].as_str(), last["tenant"].as_str(), last["ok"].as_bool()),
        (Some("purge"), Some(a.as_str()), Some(true))
    );
    assert_eq!(last["counts"], report["types"], "{last}");
    assert_eq!(report["types"], json!({"Encounter": 1, "Observation": 5, "Patient": 2}), "{report}");
    assert_eq!(report["proof"]["remaining_by_search"], json!({}));
    assert_eq!(report["proof"]["deleted_ids_read"]["by_status"], json!({"410": 8}));
    for rtype in ["Patient", "Observation", "Encounter"] {
        assert_eq!(upstream_count(&hapi(), rtype, &a).await, 0, "{rtype} left on the upstream");
    }
    let gone = get(&format!("{}/Patient/{}-p1", hapi(), s.ts[0].prefix)).send().await;
    assert_eq!(gone.status, 410, "deleted on the upstream itself");
    assert_eq!(
        read_all(f, &b, &["Patient/p1".into(), "Observation/o0".into()]).await,
        neighbour_before,
        "the neighbour's resources with the same local ids are untouched"
    );
    // A second purge finds nothing and says so.
    let (ok, again, stderr) = tenant_data(&suspended, &["purge", &a]).await;
    assert!(ok, "{stderr}");
    assert_eq!((again["noop"].as_bool(), again["total"].as_u64()), (Some(true), Some(0)), "{again}");

    // Restore into a new tenant on the other upstream, verified; a rerun does nothing.
    let (ok, report, stderr) = tenant_data(&active, &["restore", &c, "--from", d]).await;
    assert!(ok, "{stderr}\n{report}");
    assert_eq!((report["total"].as_u64(), report["verified"].as_bool()), (Some(8), Some(true)), "{report}");
    assert_eq!(upstream_count(&dedicated(), "Observation", &c).await, 5);
    let (ok, again, _) = tenant_data(&active, &["restore", &c, "--from", d]).await;
    assert!(ok);
    assert_eq!(again["noop"], true, "{again}");
    let (ok, report, stderr) = tenant_data(&active, &["verify", &c, "--against", d]).await;
    assert!(ok, "{stderr}\n{report}");
    assert_eq!((report["files_ok"].as_bool(), report["upstream_ok"].as_bool()), (Some(true), Some(true)));

    // Read through fhir-fence as the new tenant: ids, references and content as before.
    let after = read_all(f, &c, &ids).await;
    for ((id, (st0, b0)), (st1, b1)) in ids.iter().zip(&before).zip(&after) {
        assert_eq!((*st0, *st1), (200, 200), "{id}: {b1}");
        assert_eq!(content(b0.clone()), content(b1.clone()), "{id}");
    }
    assert_eq!(after[0].1["link"][0]["other"]["reference"], "Patient/p2", "the cycle survived");

    // The neighbour is not empty: restore refuses, naming the count, and writes nothing.
    let (ok, _, stderr) = tenant_data(&active, &["restore", &b, "--from", d]).await;
    assert!(!ok && stderr.contains("is not empty") && stderr.contains("Patient: 1"), "{stderr}");
    assert_eq!(upstream_count(&hapi(), "Patient", &b).await, 1);

    // A tampered file fails verification, naming the resource.
    let tampered = temp_dir("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tampered.join(e.file_name())).unwrap();
    }
    let obs = std::fs::read_to_string(tampered.join("Observation.ndjson")).unwrap();
    let changed = obs.replacen("\"final\"", "\"amended\"", 1);
    assert_ne!(obs, changed);
    std::fs::write(tampered.join("Observation.ndjson"), changed).unwrap();
    let (ok, report, _) = tenant_data(&active, &["verify", &c, "--against", tampered.to_str().unwrap()]).await;
    assert!(!ok, "{report}");
    assert_eq!((report["files_ok"].as_bool(), report["upstream_ok"].as_bool()), (Some(false), Some(true)), "{report}");
    assert!(report["differences"][0]["problem"].as_str().unwrap().contains("digest"), "{report}");
    // and a restore from it is refused before anything is written.
    let (ok, _, stderr) = tenant_data(&active, &["restore", &a, "--from", tampered.to_str().unwrap()]).await;
    assert!(!ok && stderr.contains("does not match its manifest"), "{stderr}");
    assert_eq!(upstream_count(&hapi(), "Patient", &a).await, 0);
}

#[tokio::test]
async fn what_fails_the_ownership_test_is_neither_exported_nor_deleted() {
    let s = setup().await;
    let f = &s.fence;
    let a = s.ts[0].name.clone();
    write(f, &a, json!({"resourceType": "Patient", "id": "mine", "name": [{"family": "Mine"}]})).await;
    // Planted on the upstream directly: the tenant's coding, another namespace's id.
    let planted = format!("zz{}-x", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let body = json!({"resourceType": "Patient", "id": planted, "meta": {"tag": [{"system": SYSTEM, "code": a}]}});
    let r = put(&format!("{}/Patient/{planted}", hapi()), &body).send().await;
    assert_eq!(r.status, 201, "{}", r.body);

    let dir = temp_dir("export");
    let (ok, report, stderr) = tenant_data(&s.cli_config(&[]), &["export", &a, "--out", dir.to_str().unwrap()]).await;
    assert!(ok, "{stderr}");
    assert_eq!((report["total"].as_u64(), report["refusals"].as_u64()), (Some(1), Some(1)), "{report}");
    assert_eq!(report["refused"][0]["id"], planted.as_str());
    assert!(!std::fs::read_to_string(dir.join("Patient.ndjson")).unwrap().contains(&planted));

    let (ok, report, _) = tenant_data(&s.cli_config(&[&a]), &["purge", &a, "--expunge"]).await;
    assert!(!ok, "a purge that leaves something behind says so: {report}");
    assert_eq!((report["total"].as_u64(), report["refusals"].as_u64()), (Some(1), Some(1)), "{report}");
    assert_eq!(report["proof"]["remaining_by_search"], json!({"Patient": 1}));
    assert_eq!(get(&format!("{}/Patient/{planted}", hapi())).send().await.status, 200, "not deleted");
    // `--expunge`: done where the upstream allows it (404 afterwards), else reported as refused
    // (HAPI's default) and the deleted id reads 410.
    let mine = format!("{}/Patient/{}-mine", hapi(), s.ts[0].prefix);
    let read = get(&mine).send().await.status;
    match report["expunge"].as_str().unwrap() {
        "done" => assert_eq!((read, report["expunged"].as_u64()), (404, Some(1))),
        refused => {
            assert!(refused.contains("expunge"), "{refused}");
            assert_eq!((read, report["expunged"].as_u64()), (410, Some(0)));
        }
    }
    assert_eq!(delete(&format!("{}/Patient/{planted}", hapi())).send().await.status / 100, 2);
}

/// Throughput against HAPI (`cargo test --test integration tenant_data_throughput -- --ignored
/// --nocapture`; `TENANT_DATA_N` resources, 2 000 by default): a quarter Patients, the rest
/// Observations referencing them, written through fhir-fence in transactions; then export,
/// purge, restore onto the other HAPI (with its verification) and purge there, each timed by
/// its own report.
#[tokio::test]
#[ignore = "a measurement, not a test: run it by name"]
async fn tenant_data_throughput() {
    let n: usize = std::env::var("TENANT_DATA_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let s = setup().await;
    let f = &s.fence;
    let (a, c) = (s.ts[0].name.clone(), s.ts[2].name.clone());
    let patients = n / 4;
    let mut entries: Vec<Value> = (0..patients)
        .map(|i| {
            json!({"resource": {"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": format!("F{i}")}]},
                "request": {"method": "PUT", "url": format!("Patient/p{i}")}})
        })
        .collect();
    entries.extend((0..n - patients).map(|i| {
        json!({"resource": {"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
            "code": {"text": "x"}, "subject": {"reference": format!("Patient/p{}", i % patients)},
            "valueQuantity": {"value": i}},
            "request": {"method": "PUT", "url": format!("Observation/o{i}")}})
    }));
    let started = std::time::Instant::now();
    for chunk in entries.chunks(250) {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": chunk});
        let r = crate::support::client::post(&f.url(""), &bundle).bearer(&f.token(&a)).send().await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let seeded = started.elapsed().as_secs_f64();
    let dir = temp_dir("throughput");
    let d = dir.to_str().unwrap();
    let run = |args: Vec<String>, suspended: Vec<String>| {
        let config = s.cli_config(&suspended.iter().map(String::as_str).collect::<Vec<_>>());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, report, stderr) = tenant_data(&config, &args).await;
            assert!(ok, "{stderr}\n{report}");
            report
        }
    };
    let export = run(vec!["export".into(), a.clone(), "--out".into(), d.into()], vec![]).await;
    assert_eq!(export["total"].as_u64(), Some(n as u64));
    let purge = run(vec!["purge".into(), a.clone()], vec![a.clone()]).await;
    let restore = run(vec!["restore".into(), c.clone(), "--from".into(), d.into()], vec![]).await;
    assert_eq!(restore["verified"], true);
    let purge2 = run(vec!["purge".into(), c.clone()], vec![c.clone()]).await;
    println!(
        "tenant-data throughput, {n} resources: seed through fhir-fence {:.1}/s; export {}/s ({} s); \
         purge {}/s (deletes {} s, whole with proof {} s); restore {}/s (writes {} s, with verification {} s); \
         purge on the dedicated HAPI {}/s",
        n as f64 / seeded,
        export["resources_per_sec"],
        export["elapsed_secs"],
        purge["resources_per_sec"],
        purge["delete_secs"],
        purge["elapsed_secs"],
        restore["resources_per_sec"],
        restore["restore_secs"],
        restore["elapsed_secs"],
        purge2["resources_per_sec"],
    );
}

#[tokio::test]
async fn one_data_command_at_a_time_runs_on_a_tenant_across_processes() {
    let s = setup().await;
    let config = s.cli_config(&[]);
    let state = config.parent().unwrap().join("state");
    let a = s.ts[0].name.clone();
    // Another process (here: this test) holds the tenant's data lock.
    let held = fhir_fence::lifecycle::lock::take(&state, &format!("tenant-{a}")).unwrap();
    let out = temp_dir("locked");
    let (ok, _, err) = tenant_data(&config, &["export", &a, "--out", out.to_str().unwrap()]).await;
    assert!(!ok && err.contains("another data command runs on tenant"), "{err}");
    assert!(!out.join("manifest.json").exists());
    // Another tenant is not held up.
    let other = temp_dir("other");
    let (ok, _, err) = tenant_data(&config, &["export", &s.ts[1].name, "--out", other.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    drop(held);
    let (ok, report, err) = tenant_data(&config, &["export", &a, "--out", out.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert_eq!(report["operation"], "export");
}
