//! Bulk Data export end to end against the real HAPI: two tenants with overlapping data (the
//! same local ids), each tenant's system, Patient, Patient-instance and Group exports hold
//! exactly its own resources (compared with scoped searches), and no handle works for anyone
//! else. HAPI runs its batch jobs every `HAPI_BATCH_MS` (scripts/hapi), so each export is
//! polled, as the Bulk Data protocol says, until its manifest is ready.
use crate::support::client::{delete, get, post, Reply};
use crate::support::{self, tenants, Fence, Options};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn hapi() -> String {
    crate::support::hapi_url("HAPI_URL", 8090)
}

/// p1, p2 (and p3 when `extra`), one Observation each, and Group g1 of p1 and p2.
async fn load(f: &Fence, tok: &str, extra: bool) {
    let mut entries = vec![];
    let n = if extra { 3 } else { 2 };
    for i in 1..=n {
        entries.push(
            json!({"resource": {"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": "Shared"}]},
            "request": {"method": "PUT", "url": format!("Patient/p{i}")}}),
        );
        entries.push(json!({"resource": {"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
            "code": {"text": "weight"}, "subject": {"reference": format!("Patient/p{i}")}},
            "request": {"method": "PUT", "url": format!("Observation/o{i}")}}));
    }
    entries.push(json!({"resource": {"resourceType": "Group", "id": "g1", "type": "person", "actual": true,
        "member": [{"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Patient/p2"}}]},
        "request": {"method": "PUT", "url": "Group/g1"}}));
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let r = post(&f.base, &bundle).bearer(tok).send().await;
    assert_eq!(r.status, 200, "{}", r.body);
}

fn kickoff(f: &Fence, path: &str, tok: &str) -> impl std::future::Future<Output = Reply> {
    get(&f.url(path)).bearer(tok).header("prefer", "respond-async").send()
}

/// Polls a status URL until the manifest is ready (the Bulk Data protocol; bounded).
async fn finished(status_url: &str, tok: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let r = get(status_url).bearer(tok).send().await;
        match r.status {
            200 => return r.body,
            202 => assert!(Instant::now() < deadline, "export not finished in time"),
            other => panic!("poll answered {other}: {}", r.body),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Downloads every output file: ids by resource type, sorted.
async fn contents(manifest: &Value, tok: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in manifest["output"].as_array().unwrap() {
        let r = get(file["url"].as_str().unwrap()).bearer(tok).header("accept", "application/fhir+ndjson").send().await;
        assert_eq!(r.status, 200);
        for line in String::from_utf8(r.raw.to_vec()).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["resourceType"], file["type"]);
            assert_eq!(v["meta"].get("tag"), None, "the tenant tag is stripped");
            out.entry(file["type"].as_str().unwrap().to_owned())
                .or_default()
                .push(v["id"].as_str().unwrap().to_owned());
        }
    }
    out.values_mut().for_each(|v| v.sort());
    out
}

/// Ids the tenant's own scoped search finds.
async fn searched(f: &Fence, tok: &str, query: &str) -> Vec<String> {
    let r = get(&f.url(query)).bearer(tok).send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut ids: Vec<String> =
        r.body["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

fn expect(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs.iter().map(|(t, ids)| (t.to_string(), ids.iter().map(|s| s.to_string()).collect())).collect()
}

/// Kicks off `path` for `tok`, waits, downloads: ids by type, plus the status URL and manifest.
async fn export(f: &Fence, path: &str, tok: &str) -> (BTreeMap<String, Vec<String>>, String, Value) {
    let r = kickoff(f, path, tok).await;
    assert_eq!(r.status, 202, "{path}: {}", r.body);
    let status_url = r.header("content-location").unwrap().to_owned();
    let manifest = finished(&status_url, tok).await;
    (contents(&manifest, tok).await, status_url, manifest)
}

#[tokio::test]
async fn each_tenants_exports_hold_exactly_its_own_data() {
    let ts = tenants(2);
    let f = support::start(Options::new(&hapi(), &ts)).await;
    let (a, b) = (f.token(&ts[0].name), f.token(&ts[1].name));
    load(&f, &a, false).await;
    load(&f, &b, true).await;

    let widen = "$export?_type=Patient,Observation&_typeFilter=Patient%3Ffamily%3DShared\
                 &_typeFilter=Patient%3F_lastUpdated%3Dgt2000-01-01";
    let paths = [
        "$export?_type=Patient,Observation,Group",
        "Patient/$export?_type=Patient,Observation",
        "Patient/p1/$export?_type=Patient,Observation",
        "Group/g1/$export?_type=Patient,Observation",
        widen,
    ];
    // Every export of both tenants at once: HAPI runs them side by side.
    let runs = paths.iter().flat_map(|p| [(*p, &a), (*p, &b)]).map(|(p, t)| export(&f, p, t));
    let results = futures::future::join_all(runs).await;
    let got = |path: &str, tok: &String| {
        let i = paths.iter().position(|p| *p == path).unwrap() * 2 + usize::from(tok == &b);
        results[i].0.clone()
    };

    let (a_obs, b_obs) = (searched(&f, &a, "Observation").await, searched(&f, &b, "Observation").await);
    let (a_pat, b_pat) = (searched(&f, &a, "Patient").await, searched(&f, &b, "Patient").await);
    assert_eq!((a_pat.len(), b_pat.len()), (2, 3));
    let system = |p: &[String], o: &[String]| {
        let (p, o): (Vec<&str>, Vec<&str>) =
            (p.iter().map(|s| s.as_str()).collect(), o.iter().map(|s| s.as_str()).collect());
        expect(&[("Group", &["g1"]), ("Observation", &o), ("Patient", &p)])
    };
    assert_eq!(got(paths[0], &a), system(&a_pat, &a_obs));
    assert_eq!(got(paths[0], &b), system(&b_pat, &b_obs));
    let mut no_group = system(&a_pat, &a_obs);
    no_group.remove("Group");
    assert_eq!(got(paths[1], &a), no_group, "Patient-level export");
    assert_eq!(got(widen, &a), no_group, "an extra ORed filter widens nothing");
    let mut b_no_group = system(&b_pat, &b_obs);
    b_no_group.remove("Group");
    assert_eq!(got(paths[1], &b), b_no_group);
    assert_eq!(got(widen, &b), b_no_group);
    let one = expect(&[("Observation", &["o1"]), ("Patient", &["p1"])]);
    assert_eq!(got(paths[2], &a), one, "Patient instance export");
    assert_eq!(got(paths[2], &b), one);
    let group = expect(&[("Observation", &["o1", "o2"]), ("Patient", &["p1", "p2"])]);
    assert_eq!(got(paths[3], &a), group, "Group export: the members only");
    assert_eq!(got(paths[3], &b), group);

    // A's handles are nothing to B; a tampered one is nothing to anyone.
    let (_, a_status, a_manifest) = &results[0];
    let a_file = a_manifest["output"][0]["url"].as_str().unwrap();
    for url in [a_status.as_str(), a_file] {
        let r = get(url).bearer(&b).send().await;
        assert_eq!(r.status, 404, "{url}");
        assert!(!r.raw.windows(ts[0].prefix.len()).any(|w| w == ts[0].prefix.as_bytes()));
    }
    assert_eq!(delete(a_status).bearer(&b).send().await.status, 404);
    let mut tampered = a_status.clone().into_bytes();
    let mid = tampered.len() / 2 + 20;
    tampered[mid] = if tampered[mid] == b'x' { b'y' } else { b'x' };
    assert_eq!(get(&String::from_utf8(tampered).unwrap()).bearer(&a).send().await.status, 404);
    assert_eq!(get(a_status).bearer(&a).send().await.status, 200, "the owner still polls");

    // HAPI's export Binaries are unreachable as resources: untagged, unprefixed.
    let raw = get(&format!("{}/Binary?_sort=-_lastUpdated&_count=1", hapi()))
        .header("accept", "application/fhir+json")
        .send()
        .await;
    let binary = raw.body["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(get(&f.url(&format!("Binary/{binary}"))).bearer(&a).send().await.status, 404);
}

#[tokio::test]
async fn a_cancelled_export_is_gone_for_its_owner_too() {
    let ts = tenants(1);
    let f = support::start(Options::new(&hapi(), &ts)).await;
    let a = f.token(&ts[0].name);
    load(&f, &a, false).await;
    let r = kickoff(&f, "$export?_type=Patient", &a).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let status_url = r.header("content-location").unwrap().to_owned();
    let r = delete(&status_url).bearer(&a).send().await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(get(&status_url).bearer(&a).send().await.status, 404);
    assert_eq!(delete(&status_url).bearer(&a).send().await.status, 404);
}
