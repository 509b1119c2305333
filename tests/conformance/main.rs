//! The conformance run a team would make, on the shipped corpus: real FHIR data not written by
//! us (the HL7 R4 examples and the Synthea transactions of the fhiry sdist, fetched by
//! `scripts/fetch-test-data`) is sent through `fhir-fence record` to a plain, fresh HAPI
//! (`HAPI_RECORD_URL`); the recording is then replayed with `fhir-fence replay` through
//! fhir-fence in front of the shared HAPI (`HAPI_URL`) as three tenants at once.
//!
//! Pass: no isolation failure, every expected refusal. The transparency rate is reported (and
//! held above a floor); every kind of difference left is explained in `docs/conformance.md`.
//! The corpus and the reports stay in `target/conformance/` for reading.
#[path = "../integration/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use support::client::{self, Reply};
use support::hl7::{close_over_references, examples, instance_examples, key, literals, transaction, SEARCHES};
use support::{tenants, Options};

/// The transparency rate below which the run fails: a regression, not noise (the corpus is
/// deterministic). The corpus measures 99.0 % (7 explained differences per tenant, see
/// `docs/conformance.md`; the CI run measured 98.7 %); the floor leaves room for the upstream
/// timeouts (504) a loaded 2-core machine gives the three tenants' transactions, each of which
/// also costs the later comparisons of the ids it would have taught.
const TRANSPARENCY_FLOOR: f64 = 0.975;

/// The same floor for Medplum's router (issue 22): it measures 76.3 %, nearly all of the
/// difference one limit of the router's (a transaction may hold at most 50 updates, and
/// fhir-fence sends every create as an update to an id in the tenant's namespace, so the large
/// transactions of the corpus are refused, and the reads and searches of what they would have
/// written differ): `docs/conformance.md`.
const TRANSPARENCY_FLOOR_MEDPLUM: f64 = 0.75;

/// The same floor for the Helios FHIR Server (issue 22): it measures 93.1 % (the differences are
/// the server's own forms, passed through or answered in fhir-fence's: `docs/conformance.md`).
const TRANSPARENCY_FLOOR_HELIOS: f64 = 0.90;

/// Sent as a bearer token and a cookie while recording; must not appear in the corpus.
const SECRET: &str = "recording-secret-4f1d";

/// `target/conformance` (HAPI) or `target/conformance-medplum`.
fn out_dir(server: support::Server) -> PathBuf {
    let name = match server {
        support::Server::Hapi => "conformance",
        support::Server::Medplum => "conformance-medplum",
        support::Server::Helios => "conformance-helios",
    };
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The types a server's CapabilityStatement lets a client create (asked past the recorder:
/// the Helios FHIR Server keeps `AuditEvent` read-only).
async fn creatable(base: &str) -> BTreeSet<String> {
    let metadata = client::get(&format!("{base}/metadata")).send().await;
    let resources = metadata.body["rest"][0]["resource"].as_array().cloned().unwrap_or_default();
    let creates = |r: &Value| r["interaction"].as_array().is_some_and(|i| i.iter().any(|i| i["code"] == "create"));
    let types: BTreeSet<String> =
        resources.iter().filter(|r| creates(r)).filter_map(|r| r["type"].as_str().map(str::to_owned)).collect();
    assert!(types.contains("Patient"), "{base}/metadata declares no creatable types: {}", metadata.body);
    types
}

/// The client whose traffic is recorded: everything a FHIR application does to a server
/// (`creatable`: the types it lets a client create).
async fn drive(base: &str, creatable: &BTreeSet<String>) -> usize {
    let mut n = 0;
    let mut send = |r: Reply| {
        n += 1;
        r
    };
    // 1. The HL7 examples, one PUT each, referenced resources before those referring to them;
    //    what only a transaction can write (reference cycles) last, in one transaction.
    // HAPI refuses client-assigned ids of digits only (HAPI-0960); through fhir-fence they carry
    // the tenant prefix and are accepted. Left out (with what refers to them) so that one
    // difference does not spread into every search: `docs/conformance.md`.
    let mut selection: Vec<Value> =
        examples().into_iter().filter(|r| !r["id"].as_str().unwrap().bytes().all(|b| b.is_ascii_digit())).collect();
    close_over_references(&mut selection);
    let (ordered, cycles) = dependency_order(selection);
    let mut loaded: Vec<Value> = vec![];
    for r in ordered {
        // Credentials and cookies as a real client sends them: the recorder must not write them.
        let put = client::put(&format!("{base}/{}", key(&r)), &r).bearer(SECRET).header("cookie", SECRET);
        let reply = send(put.send().await);
        if reply.status == 200 || reply.status == 201 {
            loaded.push(r);
        }
    }
    let mut rest: Vec<Value> = loaded.iter().chain(cycles.iter()).cloned().collect();
    close_over_references(&mut rest);
    send(client::post(base, &transaction(&rest)).send().await);

    // 2. Server-assigned ids: creates, reads, searches by them, an update, history, a delete.
    for name in ["Alpha", "Beta", "Gamma"] {
        let patient = json!({"resourceType": "Patient", "name": [{"family": format!("Replay{name}")}],
            "identifier": [{"system": "urn:fhir-fence:replay", "value": name}]});
        let created = send(client::post(&format!("{base}/Patient"), &patient).send().await);
        let loc = created.header("location").unwrap_or_default().to_owned();
        let id = loc.split("/Patient/").nth(1).and_then(|s| s.split('/').next()).unwrap_or_default().to_owned();
        let obs = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/{id}")}, "valueQuantity": {"value": 72, "unit": "/min"}});
        let o = send(client::post(&format!("{base}/Observation"), &obs).send().await);
        send(client::get(&format!("{base}/Patient/{id}")).send().await);
        send(client::get(&format!("{base}/Observation?subject=Patient/{id}")).send().await);
        send(client::get(&format!("{base}/Patient?_id={id}")).send().await);
        let mut updated = patient.clone();
        updated["id"] = json!(id);
        updated["gender"] = json!("other");
        send(client::put(&format!("{base}/Patient/{id}"), &updated).send().await);
        send(client::get(&format!("{base}/Patient/{id}/_history")).send().await);
        // A conditional create that finds the existing Patient (no new one).
        let conditional = client::post(&format!("{base}/Patient"), &patient)
            .header("if-none-exist", &format!("identifier=urn:fhir-fence:replay|{name}"));
        send(conditional.send().await);
        if let Some(oid) = o.body["id"].as_str() {
            send(client::delete(&format!("{base}/Observation/{oid}")).send().await);
            send(client::get(&format!("{base}/Observation/{oid}")).send().await);
        }
    }

    // 3. Synthea transactions (POST entries, `urn:uuid` references), then searches over them.
    for file in ["afhir.json", "cfhir.json"] {
        let bundle: Value =
            serde_json::from_slice(&std::fs::read(support::test_data_dir().join("fhiry").join(file)).unwrap()).unwrap();
        send(client::post(base, &bundle).send().await);
    }
    for q in ["Encounter?_count=20", "Immunization?_sort=date,_id", "Claim?_count=5", "Condition?_summary=count"] {
        send(client::get(&format!("{base}/{q}")).send().await);
    }

    // 4. Searches over the examples, and paging followed link by link.
    for q in SEARCHES {
        send(client::get(&format!("{base}/{q}")).send().await);
    }
    // (Over client-assigned ids only: server-assigned ones sort differently in every run.)
    let mut next = Some(format!("{base}/Observation?subject=Patient/example&_count=3&_sort=_id"));
    while let Some(u) = next.take() {
        let page = send(client::get(&u).send().await);
        next = page.body["link"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str().map(str::to_owned));
    }

    // 5. Reads of what was loaded.
    for r in loaded.iter().take(150) {
        send(client::get(&format!("{base}/{}", key(r))).send().await);
    }

    // 6. Every instance example a tenant may write, created through transactions, and read back.
    for path in create_instance_examples(base, creatable, &mut send).await {
        send(client::get(&format!("{base}/{path}")).send().await);
    }

    // 7. Patches and raw Binary content, as clients send them (issue 21): a FHIRPath Patch and a
    //    JSON Patch of a Patient, each read back; a PDF PUT and a PNG POST as raw bytes, read
    //    back raw and as FHIR JSON; the history of a deleted resource.
    let patient = json!({"resourceType": "Patient", "id": "replay-patch", "name": [{"family": "Patched"}],
        "gender": "female"});
    send(client::put(&format!("{base}/Patient/replay-patch"), &patient).send().await);
    let fhirpath = json!({"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": [{"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.gender"}, {"name": "value", "valueCode": "other"}]},
        {"name": "operation", "part": [{"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "birthDate"},
            {"name": "value", "valueDate": "1970-01-01"}]}]});
    let patch = |body: String, content_type: &str| {
        client::request("PATCH", &format!("{base}/Patient/replay-patch"))
            .header("content-type", content_type)
            .raw_body(body)
    };
    send(patch(fhirpath.to_string(), "application/fhir+json").send().await);
    send(client::get(&format!("{base}/Patient/replay-patch")).send().await);
    let json_patch = json!([{"op": "replace", "path": "/name/0/family", "value": "PatchedTwice"}]);
    send(patch(json_patch.to_string(), "application/json-patch+json").send().await);
    send(client::get(&format!("{base}/Patient/replay-patch")).send().await);
    // The same two kinds of patch as entries of one transaction (JSON Patch inside a Binary).
    let second = json!({"resourceType": "Patient", "id": "replay-patch2", "name": [{"family": "Second"}]});
    send(client::put(&format!("{base}/Patient/replay-patch2"), &second).send().await);
    let in_binary = {
        use base64::Engine;
        let document = json!([{"op": "add", "path": "/active", "value": true}]).to_string();
        json!({"resourceType": "Binary", "contentType": "application/json-patch+json",
            "data": base64::engine::general_purpose::STANDARD.encode(document)})
    };
    let patches = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": in_binary, "request": {"method": "PATCH", "url": "Patient/replay-patch"}},
        {"resource": fhirpath, "request": {"method": "PATCH", "url": "Patient/replay-patch2"}}]});
    send(client::post(base, &patches).send().await);
    send(client::get(&format!("{base}/Patient/replay-patch2")).send().await);
    // Not UTF-8, so the corpus holds it in base64.
    let pdf: &[u8] = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n";
    let raw = |method: &str, path: &str, content_type: &str, bytes: &'static [u8]| {
        client::request(method, &format!("{base}/{path}")).header("content-type", content_type).raw_body(bytes)
    };
    send(raw("PUT", "Binary/replay-pdf", "application/pdf", pdf).send().await);
    send(client::get(&format!("{base}/Binary/replay-pdf")).send().await);
    send(client::get(&format!("{base}/Binary/replay-pdf")).header("accept", "application/fhir+json").send().await);
    let png: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR";
    let posted = send(raw("POST", "Binary", "image/png", png).send().await);
    let loc = posted.header("location").unwrap_or_default().to_owned();
    if let Some(bid) = loc.split("/Binary/").nth(1).and_then(|s| s.split('/').next()) {
        send(client::get(&format!("{base}/Binary/{bid}")).send().await);
    }
    send(client::delete(&format!("{base}/Binary/replay-pdf")).send().await);
    send(client::get(&format!("{base}/Binary/replay-pdf")).send().await);
    send(client::get(&format!("{base}/Binary/replay-pdf/_history")).send().await);
    // An _include over client-assigned ids.
    send(
        client::get(&format!(
            "{base}/Observation?subject=Patient/example&_include=Observation:subject&_count=5&_sort=_id"
        ))
        .send()
        .await,
    );

    // 8. What fhir-fence refuses by design (the file says so with `expect`, below).
    send(client::get(&format!("{base}/$get-resource-counts")).send().await);
    n
}

/// The examples in an order where every resource comes after those it names, and those caught
/// in reference cycles (which no such order has).
fn dependency_order(all: Vec<Value>) -> (Vec<Value>, Vec<Value>) {
    let mut pending: Vec<(Value, Vec<String>)> = all
        .into_iter()
        .map(|r| {
            let mut out = vec![];
            literals(&r, &mut out);
            let me = key(&r);
            out.retain(|x| *x != me);
            (r, out)
        })
        .collect();
    let mut done = std::collections::HashSet::new();
    let mut ordered = vec![];
    loop {
        let (ready, waiting): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(|(_, deps)| deps.iter().all(|d| done.contains(d)));
        if ready.is_empty() {
            return (ordered, waiting.into_iter().map(|(r, _)| r).collect());
        }
        for (r, _) in ready {
            done.insert(key(&r));
            ordered.push(r);
        }
        pending = waiting;
    }
}

/// Replaces every string naming a key of `names` (a `reference`, a canonical) by its value.
fn rename(v: &mut Value, names: &HashMap<String, String>) {
    match v {
        Value::Object(m) => m.values_mut().for_each(|x| rename(x, names)),
        Value::Array(a) => a.iter_mut().for_each(|x| rename(x, names)),
        Value::String(s) => {
            if let Some(new) = names.get(s.as_str()) {
                *s = new.clone();
            }
        }
        _ => {}
    }
}

/// Creates every instance example through transactions, as a client migrating its data would:
/// dependencies first, 50 per transaction, each entry a `POST` with a `urn:uuid` `fullUrl`;
/// references inside a transaction name `fullUrl`s, references to earlier ones the ids the
/// server assigned; the reference cycles in one last transaction. Returns where each was created.
async fn create_instance_examples(
    base: &str,
    creatable: &BTreeSet<String>,
    send: &mut impl FnMut(Reply) -> Reply,
) -> Vec<String> {
    let examples = instance_examples().into_iter().filter(|r| creatable.contains(r["resourceType"].as_str().unwrap()));
    let (ordered, cycles) = dependency_order(examples.collect());
    let mut assigned: HashMap<String, String> = HashMap::new();
    let mut created = vec![];
    let chunks: Vec<&[Value]> = ordered.chunks(50).chain([cycles.as_slice()]).filter(|c| !c.is_empty()).collect();
    for chunk in chunks {
        let mut names = assigned.clone();
        for (i, r) in chunk.iter().enumerate() {
            names.insert(key(r), format!("urn:uuid:00000000-0000-4000-8000-{:012}", created.len() + i));
        }
        let entries: Vec<Value> = chunk
            .iter()
            .map(|r| {
                let mut body = r.clone();
                body.as_object_mut().unwrap().remove("id");
                rename(&mut body, &names);
                let rtype = r["resourceType"].as_str().unwrap();
                json!({"fullUrl": names[&key(r)], "resource": body, "request": {"method": "POST", "url": rtype}})
            })
            .collect();
        let reply = send(
            client::post(base, &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
                .send()
                .await,
        );
        assert_eq!(reply.status, 200, "the plain server takes every transaction: {}", reply.body);
        for (r, e) in chunk.iter().zip(reply.body["entry"].as_array().unwrap()) {
            let location = e["response"]["location"].as_str().unwrap();
            let path: Vec<&str> = location.split('/').take(2).collect();
            assigned.insert(key(r), path.join("/"));
            created.push(path.join("/"));
        }
    }
    created
}

/// fhiry's recorded HAPI paging run as a traffic file: the Conditions it searched (their
/// transaction, and the two Patients they name, which the recording's server held), then the
/// three pages as recorded, each request the link the previous page gave.
fn fhiry_paging_traffic() -> String {
    let dir = support::test_data_dir().join("fhiry").join("fhirsearch");
    let read = |f: &str| -> Value { serde_json::from_slice(&std::fs::read(dir.join(f)).unwrap()).unwrap() };
    let json = json!({"content-type": "application/fhir+json"});
    let mut lines = vec![];
    for p in ["pat-id-1", "pat-id-2"] {
        lines.push(json!({"id": format!("setup-{p}"), "labels": ["setup"], "request": {"method": "PUT",
            "path": format!("Patient/{p}"), "headers": json, "body": {"resourceType": "Patient", "id": p}}}));
    }
    lines.push(json!({"id": "setup-conditions", "labels": ["setup"],
        "request": {"method": "POST", "path": "", "headers": json, "body": read("conditions.json")}}));
    let mut request = ("Condition".to_owned(), "_count=2".to_owned());
    for (i, f) in ["search-conditions-page1.json", "search-conditions-page2.json", "search-conditions-page3.json"]
        .iter()
        .enumerate()
    {
        let page = read(f);
        lines.push(json!({"id": format!("page-{}", i + 1), "labels": ["paging"],
            "request": {"method": "GET", "path": request.0, "query": request.1},
            "response": {"status": 200, "headers": json, "body": page}}));
        if let Some(next) = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
            let url = url::Url::parse(next["url"].as_str().unwrap()).unwrap();
            request = (
                url.path().trim_start_matches("/fhir").trim_start_matches('/').to_owned(),
                url.query().unwrap().to_owned(),
            );
        }
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Marks the exchanges fhir-fence must refuse: the recording has the plain server's answer.
fn label_refusals(corpus: &std::path::Path) {
    let text = std::fs::read_to_string(corpus).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut x: Value = serde_json::from_str(line).unwrap();
        if x["request"]["path"] == "$get-resource-counts" {
            x["expect"] = json!({"status": 403});
            x["labels"] = json!(["server-wide operation"]);
        }
        out.push_str(&x.to_string());
        out.push('\n');
    }
    std::fs::write(corpus, out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_replays_as_three_tenants_without_a_leak() {
    let bin = env!("CARGO_BIN_EXE_fhir-fence");
    // The upstream under test (`FHIR_TEST_UPSTREAM`): HAPI by default, or Medplum's router.
    let server = support::Server::selected();
    let dir = out_dir(server);
    let corpus = dir.join("corpus.ndjson");

    // Record against the plain HAPI.
    let recorder = support::recorder::Recorder::start(bin, &server.record_url(), &corpus).await;
    let sent = drive(&recorder.base, &creatable(&server.record_url()).await).await;
    let last = recorder.stop().await;
    assert!(last.contains(&format!("{sent} exchanges written")), "every exchange recorded: {last}");
    label_refusals(&corpus);
    let recorded = std::fs::read_to_string(&corpus).unwrap();
    assert!(!recorded.contains(SECRET), "no credentials or cookies in the corpus");

    // Replay through fhir-fence as three tenants at once.
    // Three tenants for the corpus, three more for the fhiry paging recording (below), and two
    // that replay the corpus first.
    let ts = tenants(8);
    // Transactions as large as the Synthea ones (1 MB, 556 entries) are allowed, as a
    // deployment taking such traffic would configure.
    let options = Options {
        max_body_bytes: 4 << 20,
        server_extra: "max_bundle_entries = 1000".into(),
        ..Options::new(&server.url(), &ts)
    };
    let fence = support::start(options).await;
    // HAPI (8.8) adds a row to its resource-type table the first time it meets a type, and
    // transactions meeting a new type at the same moment can collide on that row (a unique-key
    // violation answered with HTTP 500, seen once in CI). Two tenants replay the corpus first, so
    // the three tenants replaying it below meet no type for the first time. The warm-up's own
    // transparency does not count (it may meet that collision itself); its isolation does.
    let warm = dir.join("warm-up-report.json");
    let warm_names = format!("{},{}", ts[6].name, ts[7].name);
    replay(bin, &corpus, &fence, &warm_names).args(["--json", warm.to_str().unwrap()]).output().await.unwrap();
    let warm: Value = serde_json::from_slice(&std::fs::read(&warm).unwrap()).unwrap();
    assert_eq!(warm["summary"]["isolation_failures"], 0, "warm-up replay: {}", warm["summary"]);
    let names: Vec<String> = ts[..3].iter().map(|t| t.name.clone()).collect();
    let (json_path, junit_path) = (dir.join("report.json"), dir.join("report.xml"));
    let out = replay(bin, &corpus, &fence, &names.join(","))
        .args(["--json", json_path.to_str().unwrap(), "--junit", junit_path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    std::fs::write(dir.join("summary.txt"), summary.as_bytes()).unwrap();
    println!("{summary}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let s = &report["summary"];
    assert_eq!(s["isolation_failures"], 0, "{summary}");
    assert_eq!(s["refusals_passed"], s["refusals_checked"], "{summary}");
    assert_eq!(s["refusals_checked"], 3, "one expected refusal per tenant: {summary}");
    assert_eq!(out.status.code(), Some(0), "{summary}");
    assert_eq!(report["exchanges"].as_u64(), Some(sent as u64));
    let rate = s["transparency_rate"].as_f64().unwrap();
    let floor = match server {
        support::Server::Hapi => TRANSPARENCY_FLOOR,
        support::Server::Medplum => TRANSPARENCY_FLOOR_MEDPLUM,
        support::Server::Helios => TRANSPARENCY_FLOOR_HELIOS,
    };
    assert!(rate >= floor, "transparency {rate:.3} below {floor}: {summary}");

    // (The recording below is of HAPI's answers: its `_getpages` links and its default order,
    // which other servers do not share (Medplum's router gives no links; the Helios FHIR Server
    // pages by cursor and lists the newest first), so only HAPI can answer it identically.)
    if server != support::Server::Hapi {
        return;
    }
    // A recording made by others: fhiry's HAPI paging run (three pages of `Condition?_count=2`,
    // `_getpages` links), replayed as three fresh tenants. Each sees only its own five
    // Conditions, so through fhir-fence on a shared HAPI the pages match what a server holding
    // nothing else answered: every page identical, no foreign entry.
    let paging = dir.join("fhiry-paging.ndjson");
    std::fs::write(&paging, fhiry_paging_traffic()).unwrap();
    let names: Vec<String> = ts[3..6].iter().map(|t| t.name.clone()).collect();
    let paging_json = dir.join("fhiry-paging-report.json");
    let out = replay(bin, &paging, &fence, &names.join(","))
        .args(["--json", paging_json.to_str().unwrap(), "--strict"])
        .output()
        .await
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    println!("{summary}");
    let report: Value = serde_json::from_slice(&std::fs::read(&paging_json).unwrap()).unwrap();
    let s = &report["summary"];
    assert_eq!(s["isolation_failures"], 0, "{summary}");
    assert_eq!(
        (s["transparency_checked"].as_u64(), s["transparency_passed"].as_u64()),
        (Some(9), Some(9)),
        "{summary}"
    );
    assert_eq!(out.status.code(), Some(0), "{summary}");
}

/// `fhir-fence replay` of `traffic` through `fence` as `tenants` (comma-separated), with the dev
/// issuer's tokens; the caller adds where the reports go.
fn replay(bin: &str, traffic: &std::path::Path, fence: &support::Fence, tenants: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(bin);
    command.args(["replay", "--traffic", traffic.to_str().unwrap(), "--target", &fence.base]).args([
        "--config",
        fence.config_path.to_str().unwrap(),
        "--issuer",
        "dev",
        "--tenants",
        tenants,
    ]);
    command
}
