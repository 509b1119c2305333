//! One replay case per class of difference issue 21 found between a plain HAPI and HAPI behind
//! fhir-fence: a client's traffic is recorded against the plain dedicated HAPI, replayed
//! through fhir-fence on the shared HAPI with `--strict`, and every exchange of every class must
//! come back as the plain server answered it. Each class is its own labelled group of
//! exchanges, so a regression names the class.
use crate::support::client::{self, Reply};
use crate::support::{self, tenants, Options};
use serde_json::{json, Value};

/// The id part of a `Location` (`…/Type/ID/_history/N`).
fn created_id(reply: &Reply, kind: &str) -> String {
    let loc = reply.header("location").unwrap_or_default();
    let id = loc.split(&format!("/{kind}/")).nth(1).and_then(|s| s.split('/').next()).unwrap_or_default();
    assert!(!id.is_empty(), "{kind} created: {} {}", reply.status, reply.body);
    id.to_owned()
}

/// The traffic of each class, sent to `base`; returns (class, number of exchanges) in order.
async fn drive(base: &str, run: &str) -> Vec<(&'static str, usize)> {
    let mut classes = vec![];
    let patient = |family: &str| json!({"resourceType": "Patient", "name": [{"family": family}], "gender": "female"});

    // Reading one's own deleted resource: 410 Gone, and its history lists the deletion.
    let p = client::post(&format!("{base}/Patient"), &patient(&format!("Gone{run}"))).send().await;
    let id = created_id(&p, "Patient");
    client::delete(&format!("{base}/Patient/{id}")).send().await;
    let gone = client::get(&format!("{base}/Patient/{id}")).send().await;
    assert_eq!(gone.status, 410, "the plain server answers 410 for a deleted resource");
    client::get(&format!("{base}/Patient/{id}/_history")).send().await;
    classes.push(("deleted-then-read", 4));

    // A transaction: every response entry carries the server's `outcome`.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:9a4c1f2e-0000-4000-8000-000000000001",
         "resource": patient(&format!("Tx{run}")), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "urn:uuid:9a4c1f2e-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let answered = client::post(base, &tx).send().await;
    assert!(answered.body["entry"][0]["response"]["outcome"].is_object(), "HAPI gives outcomes: {}", answered.body);
    classes.push(("transaction-outcome", 1));

    // A delete's OperationOutcome, coded details included.
    let o = client::post(
        &format!("{base}/Observation"),
        &json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]}}),
    )
    .send()
    .await;
    let oid = created_id(&o, "Observation");
    let deleted = client::delete(&format!("{base}/Observation/{oid}")).send().await;
    assert!(deleted.body["issue"][0]["details"].is_object(), "HAPI gives details: {}", deleted.body);
    classes.push(("delete-details", 2));

    // `_include`: the matches, then the included resources, in the server's order.
    let subject =
        created_id(&client::post(&format!("{base}/Patient"), &patient(&format!("Inc{run}"))).send().await, "Patient");
    for code in ["8867-4", "8310-5", "9279-1"] {
        let obs = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": format!("Patient/{subject}")}});
        client::post(&format!("{base}/Observation"), &obs).send().await;
    }
    let q = format!("{base}/Observation?subject=Patient/{subject}&_include=Observation:subject&_sort=code");
    let included = client::get(&q).send().await;
    assert_eq!(included.body["entry"].as_array().map(Vec::len), Some(4), "{}", included.body);
    classes.push(("include-order", 5));

    // FHIRPath Patch (a `Parameters` body), then the patched resource.
    let pid = format!("cls-{run}-patch");
    let mut target = patient(&format!("Patch{run}"));
    target["id"] = json!(pid);
    client::put(&format!("{base}/Patient/{pid}"), &target).send().await;
    let fhirpath = json!({"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": [{"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.gender"}, {"name": "value", "valueCode": "other"}]}]});
    let patched = client::request("PATCH", &format!("{base}/Patient/{pid}"))
        .header("content-type", "application/fhir+json")
        .raw_body(fhirpath.to_string())
        .send()
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    client::get(&format!("{base}/Patient/{pid}")).send().await;
    classes.push(("fhirpath-patch", 3));

    // Raw Binary: a PDF PUT and read back raw and as FHIR JSON, a PNG POST read back raw.
    let bid = format!("cls-{run}-pdf");
    let pdf: &[u8] = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n";
    let put = client::request("PUT", &format!("{base}/Binary/{bid}"))
        .header("content-type", "application/pdf")
        .raw_body(pdf)
        .send()
        .await;
    assert_eq!(put.status, 201, "{}", put.body);
    client::get(&format!("{base}/Binary/{bid}")).send().await;
    client::get(&format!("{base}/Binary/{bid}")).header("accept", "application/fhir+json").send().await;
    let png: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR";
    let posted = client::request("POST", &format!("{base}/Binary"))
        .header("content-type", "image/png")
        .raw_body(png)
        .send()
        .await;
    let png_id = created_id(&posted, "Binary");
    client::get(&format!("{base}/Binary/{png_id}")).send().await;
    classes.push(("raw-binary", 5));
    classes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_class_of_difference_replays_identically() {
    let bin = env!("CARGO_BIN_EXE_fhir-fence");
    let dir = std::env::temp_dir().join(format!("ff-replay-classes-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let traffic = dir.join("traffic.ndjson");
    let run = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());

    // Record against the plain dedicated HAPI (the run's own names keep it apart from what
    // other tests wrote there).
    let dedicated = support::hapi_url("HAPI_DEDICATED_URL", 8091);
    let recorder = support::recorder::Recorder::start(bin, &dedicated, &traffic).await;
    let classes = drive(&recorder.base, &run).await;
    recorder.stop().await;
    let total: usize = classes.iter().map(|(_, n)| n).sum();

    // Label each exchange with its class, as a person reading the report would want.
    let text = std::fs::read_to_string(&traffic).unwrap();
    let mut exchanges: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(exchanges.len(), total, "every exchange recorded");
    let mut at = 0;
    for (class, n) in &classes {
        for e in &mut exchanges[at..at + n] {
            e["labels"] = json!([class]);
        }
        at += n;
    }
    let labelled: Vec<String> = exchanges.iter().map(Value::to_string).collect();
    std::fs::write(&traffic, labelled.join("\n") + "\n").unwrap();

    // Replay through fhir-fence on the shared HAPI as two fresh tenants at once (isolation
    // needs another tenant).
    let ts = tenants(2);
    let fence = support::start(Options::new(&support::hapi_url("HAPI_URL", 8090), &ts)).await;
    let json_path = dir.join("report.json");
    let out = tokio::process::Command::new(bin)
        .args(["replay", "--traffic", traffic.to_str().unwrap(), "--target", &fence.base])
        .args([
            "--config",
            fence.config_path.to_str().unwrap(),
            "--issuer",
            "dev",
            "--tenants",
            &format!("{},{}", ts[0].name, ts[1].name),
        ])
        .args(["--json", json_path.to_str().unwrap(), "--strict"])
        .output()
        .await
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    let report: Value = match std::fs::read(&json_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(e) => panic!("no report ({e}): {summary}\n{}", String::from_utf8_lossy(&out.stderr)),
    };
    let outcomes = report["outcomes"].as_array().unwrap();
    // Name each failing class with the reason, so a regression says which promise broke.
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o["transparency"]["result"] != "pass")
        .map(|o| {
            let i = exchanges.iter().position(|e| e["id"] == o["exchange"]).unwrap();
            format!("{} ({} {}): {}", exchanges[i]["labels"][0], o["method"], o["path"], o["transparency"])
        })
        .collect();
    assert!(failed.is_empty(), "classes that differ:\n{}\n{summary}", failed.join("\n"));
    let s = &report["summary"];
    assert_eq!(s["isolation_failures"], 0, "{summary}");
    assert_eq!(s["transparency_checked"].as_u64(), Some(2 * total as u64), "every exchange compared: {summary}");
    assert_eq!(out.status.code(), Some(0), "{summary}");
    let _ = std::fs::remove_dir_all(&dir);
}
