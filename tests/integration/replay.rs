//! `fhir-fence replay` (the binary) against servers whose behaviour the test controls.
use crate::support::fake::{self, Answer};
use crate::support::{self, tenants, Options};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The tenant a bearer token claims (read, not verified: the fake trusts everyone).
fn tenant_of(s: &fake::Seen) -> String {
    let auth = s.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let payload = auth.trim_start_matches("Bearer ").split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap_or_default();
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["tenant"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A multi-tenant FHIR server with the bug fhir-fence exists to prevent: its Patient search
/// answers the caller's Patients plus the latest Patient another tenant created.
async fn leaky_server() -> fake::Fake {
    type Store = BTreeMap<String, Vec<Value>>;
    let store: Arc<Mutex<Store>> = Arc::default();
    fake::start(move |s| {
        let tenant = tenant_of(s);
        let mut store = store.lock().unwrap();
        let segs: Vec<&str> = s.path.trim_start_matches("/fhir/").split('/').collect();
        match (s.method.as_str(), segs.as_slice()) {
            ("PUT", ["Patient", _]) | ("POST", ["Patient"]) => {
                let id = segs.get(1).map_or_else(|| uuid::Uuid::new_v4().to_string(), |id| (*id).to_owned());
                let mut body = s.body.clone().unwrap_or_default();
                body["id"] = json!(id);
                let mine = store.entry(tenant).or_default();
                mine.retain(|p| p["id"] != json!(id));
                mine.push(body.clone());
                Answer::Headers(
                    201,
                    vec![("location", format!("http://fake/fhir/Patient/{id}/_history/1"))],
                    Some(body),
                )
            }
            ("GET", ["Patient", id]) => {
                match store.get(&tenant).and_then(|m| m.iter().find(|p| p["id"] == json!(id))) {
                    Some(p) => Answer::Json(200, p.clone()),
                    None => Answer::Json(404, json!({"resourceType": "OperationOutcome", "issue": []})),
                }
            }
            ("GET", ["Patient"]) => {
                let mut entries: Vec<Value> = store.get(&tenant).cloned().unwrap_or_default();
                let foreign = store.iter().filter(|(t, _)| **t != tenant).find_map(|(_, ps)| ps.last().cloned());
                entries.extend(foreign);
                let entry: Vec<Value> = entries.into_iter().map(|r| json!({"resource": r})).collect();
                Answer::Json(200, json!({"resourceType": "Bundle", "type": "searchset", "entry": entry}))
            }
            _ => Answer::Json(400, json!({"resourceType": "OperationOutcome", "issue": []})),
        }
    })
    .await
}

fn patient(id: Option<&str>, family: &str) -> Value {
    let mut p = json!({"resourceType": "Patient", "name": [{"family": family}]});
    if let Some(id) = id {
        p["id"] = json!(id);
    }
    p
}

/// A recording of one tenant against a correct server: two creates (one with a server-assigned
/// id), a read of the created one, a search.
fn recording() -> String {
    let (p1, p77) = (patient(Some("p1"), "Lovelace"), patient(Some("77"), "Byron"));
    let loc = |id: &str| json!({"location": format!("http://recorded/fhir/Patient/{id}/_history/1")});
    let lines = [
        json!({"id": "put-p1", "request": {"method": "PUT", "path": "Patient/p1", "headers": {"content-type": "application/fhir+json"}, "body": p1},
               "response": {"status": 201, "headers": loc("p1"), "body": p1}}),
        json!({"id": "post", "request": {"method": "POST", "path": "Patient", "headers": {"content-type": "application/fhir+json"}, "body": patient(None, "Byron")},
               "response": {"status": 201, "headers": loc("77"), "body": p77}}),
        json!({"id": "read-77", "request": {"method": "GET", "path": "Patient/77"}, "response": {"status": 200, "body": p77}}),
        json!({"id": "search", "request": {"method": "GET", "path": "Patient"},
               "response": {"status": 200, "body": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": p1}, {"resource": p77}]}}}),
    ];
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[tokio::test]
async fn a_leaking_server_fails_the_replay_naming_the_exchange_and_the_leaked_id() {
    let ts = tenants(2);
    let server = leaky_server().await;
    // Only the config's issuers are used (to mint tokens); no fhir-fence runs in this test.
    let config = support::write_config(&support::config_text(&Options::new(&server.base, &ts), 1, 2));
    let dir = std::env::temp_dir().join(format!("ff-replay-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let traffic = dir.join("traffic.ndjson");
    std::fs::write(&traffic, recording()).unwrap();
    let (json_path, junit_path) = (dir.join("report.json"), dir.join("report.xml"));
    // The first tenant's token is given ready (the fake reads its claims without checking the
    // signature); the second's is minted from the config.
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"tenant": ts[0].name}).to_string());
    let given = format!("{}=e30.{claims}.c2ln", ts[0].name);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fhir-fence"))
        .args(["replay", "--traffic", traffic.to_str().unwrap(), "--target", &server.base])
        .args(["--config", config.to_str().unwrap(), "--issuer", "dev", "--token", &given, "--tenants", &ts[1].name])
        .args(["--json", json_path.to_str().unwrap(), "--junit", junit_path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an isolation failure fails the run:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(report["summary"]["isolation_failures"], 2, "{stdout}");
    let failures: Vec<&Value> =
        report["outcomes"].as_array().unwrap().iter().filter(|o| o["isolation"]["result"] == "fail").collect();
    for f in &failures {
        assert_eq!(f["exchange"], "search", "only the search leaks: {f}");
        let detail = f["isolation"]["detail"].as_str().unwrap();
        let other = if f["tenant"] == ts[0].name.as_str() { &ts[1].name } else { &ts[0].name };
        assert!(detail.contains(&format!("written by tenant {other}")), "{detail}");
        // The leaked entry is the other tenant's server-assigned Patient: named by its id.
        let leaked = detail.split_whitespace().find(|w| w.starts_with("Patient/")).unwrap();
        assert_ne!(leaked, "Patient/77", "{detail}");
        assert!(
            stdout.contains(&format!("exchange search (GET Patient) as {}: {leaked}", f["tenant"].as_str().unwrap())),
            "{stdout}"
        );
    }
    // Ids the server assigned were mapped: the read of the recording's Patient/77 found the
    // replay's own, and answered as recorded.
    let read = report["outcomes"].as_array().unwrap().iter().filter(|o| o["exchange"] == "read-77").collect::<Vec<_>>();
    assert_eq!(read.len(), 2);
    for r in read {
        assert_eq!((r["status"].as_u64(), &r["transparency"]["result"]), (Some(200), &json!("pass")), "{r}");
    }
    let junit = std::fs::read_to_string(&junit_path).unwrap();
    assert_eq!(junit.matches("<failure type=\"isolation\"").count(), 2, "{junit}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `replay import-har` writes the traffic format without the HAR's credentials, and a traffic
/// file that does not parse stops a replay before it starts (exit 2, the line named).
#[tokio::test]
async fn import_har_then_a_malformed_traffic_file_is_named() {
    let dir = std::env::temp_dir().join(format!("ff-har-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let har = json!({"log": {"version": "1.2", "entries": [
        {"request": {"method": "GET", "url": "http://ehr.test/fhir/Patient/p1",
            "headers": [{"name": "Authorization", "value": "Bearer har-secret"}]},
         "response": {"status": 200, "headers": [], "content": {"text": "{\"resourceType\":\"Patient\",\"id\":\"p1\"}"}}},
        {"request": {"method": "GET", "url": "http://ehr.test/login"}, "response": {"status": 302}}]}});
    let (har_path, traffic) = (dir.join("s.har"), dir.join("t.ndjson"));
    std::fs::write(&har_path, har.to_string()).unwrap();
    let bin = env!("CARGO_BIN_EXE_fhir-fence");
    let out = tokio::process::Command::new(bin)
        .args(["replay", "import-har", "--har", har_path.to_str().unwrap(), "--base", "http://ehr.test/fhir"])
        .args(["--out", traffic.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 exchanges written"));
    let text = std::fs::read_to_string(&traffic).unwrap();
    let xs = fhir_fence::replay::format::read(text.as_bytes()).unwrap();
    assert_eq!((xs.len(), xs[0].request.path.as_str()), (1, "Patient/p1"));
    assert!(!text.contains("har-secret"));

    std::fs::write(&traffic, format!("{text}{{\"id\": \"x\", \"request\": {{\"method\": \"GET\"}}}}\n")).unwrap();
    let out = tokio::process::Command::new(bin)
        .args(["replay", "--traffic", traffic.to_str().unwrap(), "--target", "http://127.0.0.1:1/fhir"])
        .args(["--token", "a=x", "--token", "b=y"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("missing field `path`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `fhir-fence record` in front of an upstream that never answers: the client gets a 504
/// OperationOutcome after `--timeout`, and nothing is recorded for it.
#[tokio::test]
async fn the_recorder_answers_504_when_the_upstream_does_not_answer() {
    let up = fake::start(|_| Answer::Hang).await;
    let dir = std::env::temp_dir().join(format!("ff-rec-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let traffic = dir.join("t.ndjson");
    let port = support::free_port();
    let mut recorder = tokio::process::Command::new(env!("CARGO_BIN_EXE_fhir-fence"))
        .args(["record", "--listen", &format!("127.0.0.1:{port}"), "--upstream", &up.base, "--timeout", "1"])
        .args(["--out", traffic.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(recorder.stderr.take().unwrap()));
    let first = lines.next_line().await.unwrap().unwrap_or_default();
    assert!(first.contains("listening on"), "{first}");
    let call = crate::support::client::get(&format!("http://127.0.0.1:{port}/fhir/Patient/p1")).send();
    let r = tokio::time::timeout(std::time::Duration::from_secs(30), call).await.expect("the recorder answered");
    assert_eq!(r.status, 504);
    assert!(r.diagnostics().contains("no answer in 1s"), "{}", r.diagnostics());
    let pid = recorder.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let last = lines.next_line().await.unwrap().unwrap_or_default();
    assert!(recorder.wait().await.unwrap().success());
    assert!(last.contains("0 exchanges written"), "{last}");
    assert_eq!(std::fs::read_to_string(&traffic).unwrap(), "");
    std::fs::remove_dir_all(&dir).unwrap();
}
