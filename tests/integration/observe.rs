//! Observe mode (`tenants.NAME.enforcement = "observe"`): an observing tenant gets its legacy
//! upstream's answers byte for byte, while what enforcement would refuse or drop is counted.
use crate::support::client::{get, post, request};
use crate::support::fake::{self, Answer};
use crate::support::{self, tenants, Options, T};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The value of one Prometheus series (0 when absent): `name` with every label in `labels`.
pub fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

pub async fn metrics(fence: &support::Fence) -> String {
    String::from_utf8(get(&format!("{}/metrics", fence.admin)).send().await.raw.to_vec()).unwrap()
}

/// Polls the metrics until `done` holds (the answer stage is judged after the answer is sent).
pub async fn metrics_until(fence: &support::Fence, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(fence).await;
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The tenants of an observe test: the first enforced on `main`, the second observing on the
/// legacy upstream `old` at `legacy_url`.
pub fn enforcing_and_observing(main_url: &str, legacy_url: &str) -> (Vec<T>, Options) {
    let mut ts = tenants(2);
    ts[1].upstream = "old".into();
    ts[1].extra = "enforcement = \"observe\"\n".into();
    let mut o = Options::new(main_url, &ts);
    o.extra = format!("[upstreams.old]\nbase_url = \"{legacy_url}\"\nlegacy = true\n");
    (ts, o)
}

/// Legacy answers, as a legacy server writes them (spacing and key order its own).
const SEARCH: &str = r#"{"resourceType":"Bundle","type":"searchset",  "total":2,"entry":[{"resource":{"resourceType":"Patient","id":"1","name":[{"family":"Legacy"}]}},{"resource":{"resourceType":"Patient","id":"2"}}]}"#;
const CREATED: &str = r#"{ "resourceType": "Observation", "id": "77", "status": "final", "subject": {"reference": "http://elsewhere.example/fhir/Patient/x"} }"#;

#[tokio::test]
async fn an_observing_tenant_gets_the_legacy_bytes_and_the_counters_show_what_enforcement_would_refuse() {
    let upstream = fake::start(|s| match (s.method.as_str(), s.path.as_str()) {
        ("GET", "/fhir/Patient") => Answer::Raw(200, "application/fhir+json;charset=utf-8", SEARCH),
        ("POST", "/fhir/Observation") => Answer::Headers(
            201,
            vec![("location", "http://legacy/fhir/Observation/77/_history/1".into()), ("etag", "W/\"1\"".into())],
            Some(serde_json::from_str(CREATED).unwrap()),
        ),
        _ => Answer::Json(404, json!({"resourceType": "OperationOutcome", "issue": []})),
    })
    .await;
    // The enforced tenant's upstream is another server (a legacy upstream may not be one an
    // enforced tenant uses); nothing enforced reaches it here.
    let main = fake::start(|_| Answer::Json(404, json!({"resourceType": "OperationOutcome", "issue": []}))).await;
    let (ts, o) = enforcing_and_observing(&main.base, &upstream.base);
    let fence = support::start(o).await;
    let (enforced, observing) = (fence.token(&ts[0].name), fence.token(&ts[1].name));
    let observation = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "http://elsewhere.example/fhir/Patient/x"}});

    // 1. An unknown search parameter: refused when enforced, passed through when observed.
    let url = fence.url("Patient?no-such-param=1&name=Legacy");
    let refused = get(&url).bearer(&enforced).send().await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let seen = upstream.seen().len();
    let r = get(&url).bearer(&observing).send().await;
    assert_eq!((r.status, &r.raw[..]), (200, SEARCH.as_bytes()), "the legacy answer, byte for byte");
    assert_eq!(r.header("content-type"), Some("application/fhir+json;charset=utf-8"));
    let sent = upstream.last();
    assert_eq!(upstream.seen().len(), seen + 1);
    assert_eq!((sent.path.as_str(), sent.param("no-such-param")), ("/fhir/Patient", vec!["1"]), "unchanged, unscoped");
    assert!(sent.param("_tag").is_empty());
    assert!(sent.headers.get("authorization").is_none(), "the client's token never reaches the upstream");

    // 2. A write with an absolute reference outside the tenant.
    let refused = post(&fence.url("Observation"), &observation).bearer(&enforced).send().await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    let r = post(&fence.url("Observation"), &observation).bearer(&observing).send().await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body, serde_json::from_str::<Value>(CREATED).unwrap());
    assert_eq!(r.header("location"), Some("http://legacy/fhir/Observation/77/_history/1"));
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    let sent = upstream.last();
    assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/fhir/Observation"));
    assert_eq!(sent.body.as_ref(), Some(&observation), "the body as the client sent it: no id, no tenant tag");

    // 3. A search whose answer holds untagged legacy resources: enforcement would drop both.
    let r = get(&fence.url("Patient?name=Legacy")).bearer(&observing).send().await;
    assert_eq!((r.status, &r.raw[..]), (200, SEARCH.as_bytes()));

    // Identity is never observed: no token, 401, nothing sent.
    let seen = upstream.seen().len();
    assert_eq!(get(&fence.url("Patient?name=Legacy")).send().await.status, 401);
    assert_eq!(upstream.seen().len(), seen);

    let tenant = ts[1].name.as_str();
    let text = metrics_until(&fence, |t| {
        series(t, "fhir_fence_observed_differences_total", &[("tenant", tenant), ("stage", "response")]) >= 5
    })
    .await;
    let request = |reason: &str| {
        series(
            &text,
            "fhir_fence_observed_differences_total",
            &[("tenant", tenant), ("stage", "request"), ("reason", reason)],
        )
    };
    let response = |reason: &str| {
        series(
            &text,
            "fhir_fence_observed_differences_total",
            &[("tenant", tenant), ("stage", "response"), ("reason", reason)],
        )
    };
    assert_eq!(series(&text, "fhir_fence_observed_requests_total", &[("tenant", tenant)]), 3, "{text}");
    assert_eq!(request("scope/param-not-supported") + request("scope/param") + request("route/param"), 1, "{text}");
    assert_eq!(request("scope/reference-form"), 1, "{text}");
    assert_eq!(series(&text, "fhir_fence_observed_differences_total", &[("tenant", tenant), ("stage", "request")]), 2);
    // Two searches of two untagged entries each, and the created Observation.
    assert_eq!(response("outbound/entry-dropped"), 4, "{text}");
    assert_eq!(series(&text, "fhir_fence_observed_differences_total", &[("tenant", tenant), ("stage", "response")]), 5);
    // The enforced tenant is never observed, and its refusals are its own.
    let enforced_name = ts[0].name.as_str();
    assert_eq!(series(&text, "fhir_fence_observed_requests_total", &[("tenant", enforced_name)]), 0);
    assert_eq!(series(&text, "fhir_fence_refused_total", &[("tenant", enforced_name)]), 2, "{text}");
    assert_eq!(series(&text, "fhir_fence_refused_total", &[("tenant", tenant)]), 0, "{text}");
}

/// Answers too large to judge are counted as such (and still answered whole); a request that
/// cannot be routed is passed on all the same.
#[tokio::test]
async fn a_large_answer_is_counted_too_large_to_judge_and_unroutable_requests_pass_through() {
    let big: &'static str = Box::leak(
        format!(
            r#"{{"resourceType":"Patient","id":"1","text":{{"status":"generated","div":"{}"}}}}"#,
            "x".repeat(70_000)
        )
        .into_boxed_str(),
    );
    let upstream = fake::start(move |s| match s.path.as_str() {
        "/fhir/Patient/1" => Answer::Raw(200, "application/fhir+json", big),
        _ => Answer::Raw(200, "application/fhir+xml", "<Bundle/>"),
    })
    .await;
    // The enforced tenant's upstream is another server (a legacy upstream may not be one an
    // enforced tenant uses); nothing enforced reaches it here.
    let main = fake::start(|_| Answer::Json(404, json!({"resourceType": "OperationOutcome", "issue": []}))).await;
    let (ts, o) = enforcing_and_observing(&main.base, &upstream.base);
    let fence = support::start(o).await;
    let token = fence.token(&ts[1].name);
    let r = get(&fence.url("Patient/1")).bearer(&token).send().await;
    assert_eq!((r.status, r.raw.len()), (200, big.len()));
    // `_format` is refused by enforcement; the legacy server answers XML, passed on as it is.
    let r = request("GET", &fence.url("Patient?_format=xml"))
        .bearer(&token)
        .header("accept", "application/fhir+xml")
        .send()
        .await;
    assert_eq!((r.status, &r.raw[..]), (200, &b"<Bundle/>"[..]));
    assert_eq!(upstream.last().headers.get("accept").unwrap(), "application/fhir+xml");
    let tenant = ts[1].name.as_str();
    let text = metrics_until(&fence, |t| {
        series(t, "fhir_fence_observed_differences_total", &[("tenant", tenant), ("stage", "response")]) >= 2
    })
    .await;
    let count = |stage: &str, reason: &str| {
        series(
            &text,
            "fhir_fence_observed_differences_total",
            &[("tenant", tenant), ("stage", stage), ("reason", reason)],
        )
    };
    assert_eq!(count("response", "outbound/too-large"), 1, "{text}");
    assert_eq!(count("response", "outbound/not-json"), 1, "{text}");
    assert_eq!(count("request", "route/not-acceptable") + count("request", "request/not-acceptable"), 1, "{text}");
}

/// Each series `name` with label `tenant`, by the value of `label` (mapped by `key`), summed.
fn by_label(
    text: &str,
    name: &str,
    labels: &[(&str, &str)],
    label: &str,
    key: impl Fn(&str) -> String,
) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with(&format!("{name}{{"))) {
        if !labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))) {
            continue;
        }
        let value = l.split(&format!("{label}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap();
        *out.entry(key(value)).or_default() += l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64;
    }
    out
}

/// The issue's proof, with a real legacy HAPI (`HAPI_LEGACY_URL`): the same traffic file replayed
/// through an enforcing tenant (on the shared HAPI) and an observing one (on the legacy HAPI).
/// The observing tenant's request-stage differences equal the enforcing tenant's refusals,
/// reason by reason; the observing tenant itself is refused nothing.
#[tokio::test]
async fn a_replay_through_both_modes_counts_exactly_the_enforcing_refusals() {
    let main = support::hapi_url("HAPI_URL", 8090);
    let legacy = support::hapi_url("HAPI_LEGACY_URL", 8093);
    let (ts, o) = enforcing_and_observing(&main, &legacy);
    let fence = support::start(o).await;
    assert!(fence.snap().capabilities("old").await.is_some(), "the legacy HAPI at {legacy} did not answer");
    let run = &ts[0].prefix;
    let patient = json!({"resourceType": "Patient", "id": format!("{run}p1"), "name": [{"family": "Replay"}]});
    let fhir = "application/fhir+json";
    let x = |id: &str, method: &str, path: String, query: &str, headers: Value, body: Option<Value>| {
        let mut r = json!({"method": method, "path": path, "query": query, "headers": headers});
        if let Some(b) = body {
            r["body"] = b;
        }
        json!({"id": id, "request": r})
    };
    let foreign_tag =
        json!({"resourceType": "Patient", "meta": {"tag": [{"system": support::SYSTEM, "code": "someone-else"}]}});
    let absolute = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "http://elsewhere.example/fhir/Patient/x"}});
    let traffic = [
        x("put", "PUT", format!("Patient/{run}p1"), "", json!({"content-type": fhir}), Some(patient)),
        x("unknown-param", "GET", "Patient".into(), "no-such-param=1", json!({}), None),
        x("absolute-ref", "POST", "Observation".into(), "", json!({"content-type": fhir}), Some(absolute)),
        x("xml", "GET", format!("Patient/{run}p1"), "", json!({"accept": "application/fhir+xml"}), None),
        x("filter", "GET", "Patient".into(), "_filter=name%20eq%20x", json!({}), None),
        x("foreign-tag", "POST", "Patient".into(), "", json!({"content-type": fhir}), Some(foreign_tag)),
        x("search", "GET", "Patient".into(), &format!("_id={run}p1"), json!({}), None),
        x("delete-if-match", "DELETE", format!("Patient/{run}p1"), "", json!({"if-match": "W/\"1\""}), None),
    ];
    let dir = std::env::temp_dir().join(format!("ff-observe-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("traffic.ndjson");
    std::fs::write(&file, traffic.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let report = dir.join("report.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fhir-fence"))
        .args(["replay", "--traffic", file.to_str().unwrap(), "--target", &fence.base])
        .args(["--config", fence.config_path.to_str().unwrap(), "--issuer", "dev"])
        .args(["--tenants", &format!("{},{}", ts[0].name, ts[1].name), "--json", report.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap_or_else(|_| {
        panic!("no report: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }))
    .unwrap();
    let statuses = |t: &str| -> Vec<(String, u64)> {
        let outcomes = report["outcomes"].as_array().unwrap().iter().filter(|o| o["tenant"] == t);
        outcomes.map(|o| (o["exchange"].as_str().unwrap().to_owned(), o["status"].as_u64().unwrap())).collect()
    };
    let enforced_refused = statuses(&ts[0].name).into_iter().filter(|(_, s)| *s >= 400).count();
    assert_eq!(enforced_refused, 6, "{:?}", statuses(&ts[0].name));
    let text = metrics(&fence).await;
    let refused = by_label(&text, "fhir_fence_refused_total", &[("tenant", &ts[0].name)], "reason", str::to_owned);
    let observed = by_label(
        &text,
        "fhir_fence_observed_differences_total",
        &[("tenant", &ts[1].name), ("stage", "request")],
        "reason",
        |r| r.split('/').next().unwrap().to_owned(),
    );
    assert_eq!(refused.values().sum::<u64>(), 6, "{text}");
    assert_eq!(observed, refused, "observed (by reason) vs enforced refusals:\n{text}");
    assert_eq!(series(&text, "fhir_fence_observed_requests_total", &[("tenant", &ts[1].name)]), 8);
    assert_eq!(series(&text, "fhir_fence_refused_total", &[("tenant", &ts[1].name)]), 0, "{text}");
    // The observing tenant got the legacy server's own answers: its XML read succeeded.
    assert!(statuses(&ts[1].name).contains(&("xml".into(), 200)), "{:?}", statuses(&ts[1].name));
    std::fs::remove_dir_all(&dir).unwrap();
}
