//! `fhir-fence tenant adopt`, run as the binary: a plain HAPI written without fhir-fence (the
//! legacy one, `HAPI_LEGACY_URL`, 8093) holds two Synthea patients — two customers — loaded by
//! this test as transaction Bundles; one customer is adopted by criteria into a tenant on the
//! shared HAPI (`HAPI_URL`, 8090), then read back through a running fhir-fence and compared with
//! the legacy server resource by resource. Other tests may load more into the legacy server:
//! everything here is selected by the ids this test's own transactions created.
use crate::support::client::{get, post, put};
use crate::support::{self, config_text, tenants, Fence, Options};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn legacy() -> String {
    support::hapi_url("HAPI_LEGACY_URL", 8093)
}

/// A Synthea transaction of the fhiry sdist loaded into the legacy server: the `Type/id`s it
/// created, the Patient's id first.
async fn load(file: &str) -> Vec<String> {
    let bundle: Value =
        serde_json::from_slice(&std::fs::read(support::test_data_dir().join("fhiry").join(file)).unwrap()).unwrap();
    let r = post(&legacy(), &bundle).send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    let created: Vec<String> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let l = e["response"]["location"].as_str().unwrap();
            l.split("/_history").next().unwrap().to_owned()
        })
        .collect();
    assert!(created[0].starts_with("Patient/"), "{}", created[0]);
    created
}

/// A resource without what the upstream assigns on each write (the export's canonical form).
fn content(r: Value) -> Value {
    fhir_fence::tenant_data::manifest::content(&r)
}

/// Every resource of `rtype` a tenant reads through fhir-fence, by id, every page followed.
async fn tenant_search(f: &Fence, tenant: &str, rtype: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut next = Some(f.url(&format!("{rtype}?_count=100")));
    while let Some(url) = next.take() {
        let r = get(&url).bearer(&f.token(tenant)).header("cache-control", "no-cache").send().await;
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        for e in r.body["entry"].as_array().into_iter().flatten() {
            let res = e["resource"].clone();
            out.insert(res["id"].as_str().unwrap().to_owned(), content(res));
        }
        next = r.body["link"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str().map(str::to_owned));
    }
    out
}

/// Runs `fhir-fence tenant --config C adopt <args…>`: exit success, the stdout report, stderr.
async fn adopt(config: &Path, args: &[&str]) -> (bool, Value, String) {
    let args: Vec<&str> = std::iter::once("adopt").chain(args.iter().copied()).collect();
    crate::tenant_data::tenant_data(config, &args).await
}

fn by_type(ids: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in ids {
        let (t, id) = i.split_once('/').unwrap();
        out.entry(t.to_owned()).or_default().insert(id.to_owned());
    }
    out
}

#[tokio::test]
async fn adopt_moves_one_customer_of_a_legacy_server_and_leaves_the_other() {
    // Two customers on one legacy server, written without fhir-fence.
    let a = load("afhir.json").await;
    let c = load("cfhir.json").await;
    let patient_a = a[0].clone();
    let patient_c = c[0].clone();
    // Customer a also holds what cannot be moved: an Observation whose legacy id is too long for
    // the tenant's namespace (`{prefix}-{id}` over 64 characters), and a report naming it.
    let long_id = format!("x{}", uuid::Uuid::new_v4().simple()).repeat(2)[..60].to_owned();
    let long = json!({"resourceType": "Observation", "id": long_id, "status": "final", "code": {"text": "long"},
        "subject": {"reference": patient_a}});
    let r = put(&format!("{}/Observation/{long_id}", legacy()), &long).send().await;
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    let report_id = format!("r{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let dr = json!({"resourceType": "DiagnosticReport", "id": report_id, "status": "final", "code": {"text": "r"},
        "subject": {"reference": patient_a}, "result": [{"reference": format!("Observation/{long_id}")}]});
    let r = put(&format!("{}/DiagnosticReport/{report_id}", legacy()), &dr).send().await;
    assert!(r.status == 200 || r.status == 201, "{}", r.body);

    let ts = tenants(2);
    let mut options = Options::new(&support::hapi_url("HAPI_URL", 8090), &ts);
    options.extra =
        format!("[upstreams.legacy]\nbase_url = \"{}\"\nlegacy = true\nrequest_timeout_ms = 60000\n", legacy());
    options.request_timeout_ms = 60_000;
    let fence = support::start(options.clone()).await;
    let config: PathBuf = support::write_config(
        &(config_text(&options, fence.ports.0, fence.ports.1) + "\n[lifecycle]\nstate_dir = \"state\"\n"),
    );
    let (ta, tb) = (ts[0].name.as_str(), ts[1].name.as_str());

    // Customer a, its compartment and the Organizations and Practitioners it names.
    let started = std::time::Instant::now();
    let (ok, report, stderr) = adopt(
        &config,
        &[ta, "--from", "legacy", "--compartment", &patient_a, "--with-referenced", "--accept-refusals"],
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    assert!(ok, "{report:#}\n{stderr}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["verified"], true, "{report:#}");
    assert_eq!(report["total"], a.len() as u64, "{report:#}");
    assert_eq!(report["refusals"], 2, "{report:#}");
    let refused: BTreeMap<String, (String, Value)> = report["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                format!("{}/{}", r["type"].as_str().unwrap(), r["id"].as_str().unwrap()),
                (r["reason"].to_string(), r["reference"].clone()),
            )
        })
        .collect();
    let (why, _) = &refused[&format!("Observation/{long_id}")];
    assert!(why.contains("too long"), "{why}");
    let (why, reference) = &refused[&format!("DiagnosticReport/{report_id}")];
    assert!(why.contains("left behind"), "{why}");
    assert_eq!(reference, &json!(format!("Observation/{long_id}")));
    let expected = by_type(&a);
    let types: BTreeMap<String, u64> = serde_json::from_value(report["types"].clone()).unwrap();
    assert_eq!(types, expected.iter().map(|(t, s)| (t.clone(), s.len() as u64)).collect(), "counts per type");
    assert!(stderr.lines().any(|l| l.contains("\"phase\":\"select\"")), "progress lines: {stderr}");
    println!("adopt: {} resources in {secs:.1} s ({:.1} resources/s)", a.len(), a.len() as f64 / secs);

    // Through fhir-fence the tenant holds exactly customer a's resources, each equal to the
    // legacy one (same local ids, so every reference intact), and nothing of customer c.
    let c_ids: BTreeSet<String> = c.iter().cloned().collect();
    for (rtype, ids) in &expected {
        let held = tenant_search(&fence, ta, rtype).await;
        assert_eq!(held.keys().cloned().collect::<BTreeSet<_>>(), *ids, "{rtype}");
        for (id, r) in &held {
            assert!(!c_ids.contains(&format!("{rtype}/{id}")), "customer c's {rtype}/{id} in the tenant");
            let l = get(&format!("{}/{rtype}/{id}", legacy())).send().await;
            assert_eq!(l.status, 200);
            assert_eq!(*r, content(l.body), "{rtype}/{id}");
        }
    }
    for other in [&patient_c, &c[1], &format!("Observation/{long_id}")] {
        assert_eq!(get(&fence.url(other)).bearer(&fence.token(ta)).send().await.status, 404, "{other}");
    }
    // The tenant's Observations that name a subject all name customer a.
    let held = tenant_search(&fence, ta, "Observation").await;
    assert!(held.values().all(|o| o["subject"]["reference"] == json!(patient_a)));

    // Run again: nothing to do.
    let (ok, again, _) = adopt(
        &config,
        &[ta, "--from", "legacy", "--compartment", &patient_a, "--with-referenced", "--accept-refusals"],
    )
    .await;
    assert!(ok && again["noop"] == true, "{again:#}");
    // Other criteria for the same tenant: refused.
    let (ok, _, stderr) = adopt(&config, &[ta, "--from", "legacy", "--compartment", &patient_c]).await;
    assert!(!ok && stderr.contains("records another adoption"), "{stderr}");

    // Customer c without what its records reference outside the compartment: fail closed. Each
    // resource naming an Organization or Practitioner is left behind with that reference, and so
    // is whatever names one of those; the rest is adopted, and `ok` is false.
    let (ok, report, stderr) = adopt(&config, &[tb, "--from", "legacy", "--compartment", &patient_c]).await;
    assert!(!ok, "{report:#}\n{stderr}");
    assert_eq!(report["ok"], false);
    assert_eq!(report["verified"], true, "{report:#}");
    let left = report["refusals"].as_u64().unwrap();
    assert_eq!(report["total"].as_u64().unwrap() + left, report["selected"].as_u64().unwrap(), "{report:#}");
    let shared = c.iter().filter(|i| i.starts_with("Organization/") || i.starts_with("Practitioner/")).count();
    assert_eq!(report["selected"].as_u64().unwrap() as usize, c.len() - shared, "{report:#}");
    let listed = report["refused"].as_array().unwrap();
    assert!(listed.iter().any(|r| r["reference"].as_str().is_some_and(|x| x.starts_with("Organization/"))
        && r["reason"].as_str().unwrap().contains("the selection does not contain")));
    assert!(listed.iter().all(|r| r["reference"].is_string()), "every refusal here is for a reference: {report:#}");
    let patients = tenant_search(&fence, tb, "Patient").await;
    assert_eq!(patients.keys().collect::<Vec<_>>(), [patient_c.split_once('/').unwrap().1]);
    let encounters = tenant_search(&fence, tb, "Encounter").await;
    assert!(encounters.is_empty(), "every Encounter names an Organization: {encounters:?}");
    // Recorded in the lifecycle record.
    let record = std::fs::read_to_string(config.parent().unwrap().join("state/lifecycle.jsonl")).unwrap();
    let adopts: Vec<Value> = record
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["operation"] == "adopt")
        .collect();
    assert_eq!(adopts.len(), 2, "{record}");
    assert_eq!((adopts[0]["tenant"].as_str(), adopts[0]["ok"].as_bool()), (Some(ta), Some(true)));
    assert_eq!((adopts[1]["tenant"].as_str(), adopts[1]["ok"].as_bool()), (Some(tb), Some(false)));
}
