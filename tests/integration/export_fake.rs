//! Bulk Data export against the fake upstream: what the kickoff sends upstream, how handles
//! are bound, how the manifest is rebuilt, and the NDJSON filter on hostile and huge files.
use crate::support::client::{delete, get, post, request};
use crate::support::fake::{self, Answer, Seen};
use crate::support::{self, tenants, Options, SYSTEM, T};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

const POLL: &str = "/fhir/$export-poll-status";

/// The upstream side of an export: kickoff → 202, polls → 202 then the manifest, files by Binary id.
pub(crate) fn exporting_upstream(
    files: Arc<dyn Fn(&str) -> Answer + Send + Sync>,
    manifest: Value,
) -> impl Fn(&Seen) -> Answer {
    let polls = AtomicUsize::new(0);
    move |s: &Seen| {
        let base = format!("http://{}/fhir", s.headers["host"].to_str().unwrap());
        if s.path.ends_with("/$export") && s.method == "POST" {
            let location = format!("{base}/$export-poll-status?_jobId=job-1");
            return Answer::Headers(202, vec![("content-location", location)], None);
        }
        if s.path == POLL && s.method == "DELETE" {
            return Answer::Headers(202, vec![], None);
        }
        if s.path == POLL {
            if polls.fetch_add(1, Ordering::SeqCst) == 0 {
                let h = vec![("x-progress", "50% done".to_owned()), ("retry-after", "7".to_owned())];
                return Answer::Headers(202, h, None);
            }
            let m = manifest.to_string().replace("{base}", &base);
            return Answer::Json(200, serde_json::from_str(&m).unwrap());
        }
        if let Some(id) = s.path.strip_prefix("/fhir/Binary/") {
            return files(id);
        }
        Answer::Json(404, json!({"resourceType": "OperationOutcome"}))
    }
}

fn param<'a>(body: &'a Value, name: &str) -> Vec<&'a str> {
    body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == name)
        .map(|p| p["valueString"].as_str().unwrap())
        .collect()
}

pub(crate) fn kickoff(url: &str, token: &str) -> crate::support::client::Call {
    get(url).bearer(token).header("prefer", "respond-async")
}

#[tokio::test]
async fn kickoff_is_scoped_and_widening_filters_are_closed() {
    let ts = tenants(2);
    let up = fake::start(exporting_upstream(Arc::new(|_| Answer::Hang), json!({}))).await;
    let fence = support::start(Options::new(&up.base, &ts)).await;
    let tok = fence.token(&ts[0].name);
    let tag = format!("_tag={}%7C{}", SYSTEM.replace('/', "%2F"), ts[0].name);

    // Two filters for Patient (ORed upstream: the second alone would match every tenant's
    // patients) and none for Observation (exported whole upstream): all scoped.
    let url =
        fence.url("$export?_type=Patient,Observation&_typeFilter=Patient%3Fname%3DAnn&_typeFilter=Patient%3F_id%3Dp1");
    let r = kickoff(&url, &tok).send().await;
    assert_eq!(r.status, 202, "{}", r.body);
    let status_url = r.header("content-location").unwrap().to_owned();
    assert!(status_url.starts_with(&fence.url("_export/")), "{status_url}");
    assert!(!status_url.contains("job-1"));
    let seen = up.last();
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("POST", "/fhir/$export"));
    assert_eq!(seen.headers["prefer"], "respond-async");
    assert_eq!(seen.headers["cache-control"], "no-cache");
    let body = seen.body.unwrap();
    assert_eq!(param(&body, "_type"), ["Patient,Observation"]);
    assert_eq!(param(&body, "_outputFormat"), ["application/fhir+ndjson"]);
    let filters = param(&body, "_typeFilter");
    assert_eq!(
        filters,
        [
            format!("Patient?name=Ann&{tag}"),
            format!("Patient?_id={}-p1&{tag}", ts[0].prefix),
            format!("Observation?{tag}")
        ]
    );

    // Defaults: every type the tenant may export, each with the tenant filter; never a server-wide type.
    let r = kickoff(&fence.url("$export"), &tok).send().await;
    assert_eq!(r.status, 202, "{}", r.body);
    let body = up.last().body.unwrap();
    let mut types: Vec<&str> = param(&body, "_type")[0].split(',').collect();
    types.sort();
    assert_eq!(types, ["Observation", "Patient"]);
    assert_eq!(param(&body, "_typeFilter").len(), 2);

    // Patient export of one patient: ownership checked first (the fake has no such patient).
    let r = kickoff(&fence.url("Patient/p1/$export"), &tok).send().await;
    assert_eq!(r.status, 404, "{}", r.body);

    let refusals = [
        ("$export?_outputFormat=text%2Fcsv", 400, "NDJSON"),
        ("$export?_type=ValueSet", 400, "ValueSet"),
        ("$export?_type=Patient&_typeFilter=Observation%3Fcode%3Dx", 400, "not in _type"),
        ("$export?_type=Patient&_typeFilter=Patient%3F_include%3DPatient%3Aorganization", 400, "_include"),
        ("$export?_type=Patient&_typeFilter=Patient%3F_filter%3Dx", 400, "_filter"),
        ("$export?_until=2020-01-01", 400, "_until"),
        ("$export?_mystery=1", 400, "unknown parameter"),
        ("Observation/$export", 403, "system, Patient"),
        ("$export-poll-status?_jobId=job-1", 403, "poll the status URL"),
    ];
    for (path, status, words) in refusals {
        let r = kickoff(&fence.url(path), &tok).send().await;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(r.diagnostics().contains(words), "{path}: {}", r.diagnostics());
    }
    let r = get(&fence.url("$export")).bearer(&tok).send().await;
    assert_eq!(r.status, 400);
    assert!(r.diagnostics().contains("respond-async"));

    // The operation must be enabled for the tenant.
    let mut off = tenants(1);
    off[0].operations = vec![];
    let fence2 = support::start(Options::new(&up.base, &off)).await;
    let r = kickoff(&fence2.url("$export"), &fence2.token(&off[0].name)).send().await;
    assert_eq!(r.status, 403, "{}", r.body);
}

#[tokio::test]
async fn post_kickoff_takes_parameters() {
    let ts = tenants(1);
    let up = fake::start(exporting_upstream(Arc::new(|_| Answer::Hang), json!({}))).await;
    let fence = support::start(Options::new(&up.base, &ts)).await;
    let tok = fence.token(&ts[0].name);
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "_typeFilter", "valueString": "Observation?subject=Patient/p9"},
        {"name": "_elements", "valueString": "code"}]});
    let r = post(&fence.url("Patient/$export"), &body).bearer(&tok).header("prefer", "respond-async").send().await;
    assert_eq!(r.status, 202, "{}", r.body);
    let seen = up.last();
    assert_eq!(seen.path, "/fhir/Patient/$export");
    let sent = seen.body.unwrap();
    assert!(
        param(&sent, "_typeFilter")[0].starts_with(&format!("Observation?subject=Patient%2F{}-p9&_tag=", ts[0].prefix))
    );
    assert_eq!(param(&sent, "_elements"), ["code,meta"]);
}

pub(crate) fn line(rtype: &str, prefix: &str, tenant: &str, local: &str, extra: &str) -> String {
    format!(
        r#"{{"resourceType":"{rtype}","id":"{prefix}-{local}","meta":{{"tag":[{{"system":"{SYSTEM}","code":"{tenant}"}}]}}{extra}}}"#
    )
}

/// Starts an export through `fence` and returns the manifest.
pub(crate) async fn manifest(fence: &support::Fence, tok: &str) -> (String, Value) {
    let r = kickoff(&fence.url("$export?_type=Observation"), tok).send().await;
    assert_eq!(r.status, 202, "{}", r.body);
    let status_url = r.header("content-location").unwrap().to_owned();
    let r = get(&status_url).bearer(tok).send().await;
    assert_eq!(r.status, 202, "first poll: in progress");
    assert_eq!(r.header("x-progress"), Some("50% done"));
    assert_eq!(r.header("retry-after"), Some("7"));
    let r = get(&status_url).bearer(tok).send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    (status_url, r.body)
}

pub(crate) fn standard_manifest() -> Value {
    json!({"transactionTime": "2026-01-01T00:00:00Z", "request": "{base}/$export?_typeFilter=secret",
        "requiresAccessToken": false, "extension": {"x": 1},
        "output": [{"type": "Observation", "url": "{base}/Binary/obs1", "count": 99}],
        "error": [{"type": "OperationOutcome", "url": "{base}/Binary/err1"}]})
}

#[tokio::test]
async fn manifest_is_rebuilt_and_handles_are_bound_to_the_caller() {
    let ts = tenants(2);
    let (a, b) = (ts[0].clone(), ts[1].clone());
    let a2 = a.clone();
    let files: Arc<dyn Fn(&str) -> Answer + Send + Sync> = Arc::new(move |id| {
        match id {
        "obs1" => {
            let l = line("Observation", &a2.prefix, &a2.name, "o1", "") + "\n";
            Answer::Chunks(200, "application/fhir+ndjson", Box::new(std::iter::once(Bytes::from(l))))
        }
        _ => Answer::Chunks(
            200,
            "application/fhir+ndjson",
            Box::new(std::iter::once(Bytes::from_static(
                br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"Patient/other-tenant-secret failed"}]}"#,
            ))),
        ),
    }
    });
    let up = fake::start(exporting_upstream(files, standard_manifest())).await;
    let fence = support::start(Options::new(&up.base, &ts)).await;
    let (ta, tb) = (fence.token(&a.name), fence.token(&b.name));
    let (status_url, m) = manifest(&fence, &ta).await;

    assert_eq!(m["request"], fence.url("$export?_type=Observation"));
    assert_eq!(m["requiresAccessToken"], true);
    assert_eq!(m.get("extension"), None);
    assert_eq!(m["output"][0].get("count"), None, "the upstream's count is not the client's");
    let text = m.to_string();
    assert!(!text.contains(&up.base) && !text.contains("obs1") && !text.contains("secret"), "{text}");
    let file = m["output"][0]["url"].as_str().unwrap().to_owned();
    let err = m["error"][0]["url"].as_str().unwrap().to_owned();
    assert!(file.starts_with(&fence.url("_export-file/")));

    // The owner downloads; the lines are the client's view.
    let r = get(&file).bearer(&ta).header("accept", "application/fhir+ndjson").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/fhir+ndjson"));
    let v: Value = serde_json::from_slice(&r.raw).unwrap();
    assert_eq!((v["id"].as_str(), v["meta"].get("tag")), (Some("o1"), None));
    let r = get(&err).bearer(&ta).send().await;
    let text = String::from_utf8_lossy(&r.raw).to_string();
    assert!(text.contains("processing") && !text.contains("other-tenant-secret"), "{text}");

    // Another tenant, another user of the same tenant (tokens without a client id are bound
    // by their subject), a tampered handle, a handle of the other kind: all 404.
    let other_user = {
        let snap = fence.snap();
        let keys = snap.verifier.issuer_keys("dev").unwrap();
        fhir_fence::identity::mint(&snap.loaded.config.issuers["dev"], keys, &a.name, "someone-else", 300).unwrap()
    };
    for url in [&status_url, &file] {
        assert_eq!(get(url).bearer(&other_user).send().await.status, 404, "{url}");
    }
    let mut tampered = status_url.clone().into_bytes();
    let mid = tampered.len() - 40;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let job = status_url.rsplit('/').next().unwrap();
    for (url, tok) in [
        (status_url.clone(), &tb),
        (file.clone(), &tb),
        (tampered, &ta),
        (fence.url(&format!("_export-file/{job}")), &ta),
    ] {
        let r = get(&url).bearer(tok).send().await;
        assert_eq!(r.status, 404, "{url}");
        assert_eq!(r.body["resourceType"], "OperationOutcome");
    }
    let r = delete(&status_url).bearer(&tb).send().await;
    assert_eq!(r.status, 404);
    assert!(!up.seen().iter().any(|s| s.method == "DELETE"), "another tenant's cancel never reaches the upstream");

    // Cancel: upstream job deleted, then the handle and its files are dead.
    let r = delete(&status_url).bearer(&ta).send().await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(up.last().method, "DELETE");
    assert_eq!(up.last().param("_jobId"), ["job-1"]);
    assert_eq!(get(&status_url).bearer(&ta).send().await.status, 404);
    assert_eq!(get(&file).bearer(&ta).send().await.status, 404);
}

#[tokio::test]
async fn a_manifest_naming_an_unrequested_type_or_a_foreign_url_is_refused_whole() {
    for bad in [
        json!({"type": "Patient", "url": "{base}/Binary/p1"}),
        json!({"type": "Observation", "url": "http://elsewhere/fhir/Binary/o1"}),
    ] {
        let ts = tenants(1);
        let mut m = standard_manifest();
        m["output"].as_array_mut().unwrap().push(bad);
        let up = fake::start(exporting_upstream(Arc::new(|_| Answer::Hang), m)).await;
        let fence = support::start(Options::new(&up.base, &ts)).await;
        let tok = fence.token(&ts[0].name);
        let r = kickoff(&fence.url("$export?_type=Observation"), &tok).send().await;
        let status_url = r.header("content-location").unwrap().to_owned();
        get(&status_url).bearer(&tok).send().await;
        let r = get(&status_url).bearer(&tok).send().await;
        assert_eq!(r.status, 502, "{}", r.body);
    }
}

/// Downloads the one output file of an export whose upstream file is `chunks`.
async fn download(
    ts: &[T],
    max_line: usize,
    chunks: impl Fn() -> Box<dyn Iterator<Item = Bytes> + Send + Sync> + Send + Sync + 'static,
) -> (u16, http::HeaderMap, Vec<u8>, bool, String) {
    let files: Arc<dyn Fn(&str) -> Answer + Send + Sync> =
        Arc::new(move |_| Answer::Chunks(200, "application/fhir+ndjson", chunks()));
    let up = fake::start(exporting_upstream(files, standard_manifest())).await;
    let mut o = Options::new(&up.base, ts);
    o.max_line_bytes = max_line;
    let fence = support::start(o).await;
    let tok = fence.token(&ts[0].name);
    let (_, m) = manifest(&fence, &tok).await;
    let mut out = Vec::new();
    let (status, headers, result) =
        get(m["output"][0]["url"].as_str().unwrap()).bearer(&tok).stream(|d| out.extend_from_slice(d)).await;
    let metrics = String::from_utf8(fence.snap().metrics.render()).unwrap();
    (status, headers, out, result.is_ok(), metrics)
}

#[tokio::test]
async fn the_ndjson_filter_keeps_only_whole_lines_of_the_caller() {
    let ts = tenants(2);
    let (a, b) = (&ts[0], &ts[1]);
    let own_ref = format!(r#","subject":{{"reference":"Patient/{}-p1"}}"#, a.prefix);
    let foreign_ref = format!(r#","subject":{{"reference":"Patient/{}-p1"}}"#, b.prefix);
    let untagged = format!(r#"{{"resourceType":"Observation","id":"{}-o3","meta":{{}}}}"#, a.prefix);
    // The same key twice: parsers disagree on which wins, so the line is refused.
    let duplicate = line("Observation", &a.prefix, &a.name, "o5", &format!(r#","id":"{}-o5""#, a.prefix));
    let lines = [
        line("Observation", &a.prefix, &a.name, "o1", &own_ref),
        line("Observation", &b.prefix, &b.name, "o1", ""),
        untagged,
        line("Patient", &a.prefix, &a.name, "o4", ""),
        duplicate,
        line("Observation", &a.prefix, &a.name, "o6", &foreign_ref),
        line("Observation", &b.prefix, &a.name, "o7", ""),
        String::new(),
        "{not json".to_owned(),
        line("Observation", &a.prefix, &a.name, "o8", ""),
    ];
    let file = lines.join("\r\n");
    // Seven-byte chunks: every line arrives split.
    let (status, headers, out, complete, metrics) = download(&ts, 1 << 20, move || {
        let chunks: Vec<Bytes> = file.as_bytes().chunks(7).map(Bytes::copy_from_slice).collect();
        Box::new(chunks.into_iter())
    })
    .await;
    assert_eq!(status, 200);
    assert!(complete);
    assert_eq!(headers.get("content-length"), None);
    assert_eq!(headers.get("etag"), None);
    assert_eq!(headers["transfer-encoding"], "chunked");
    let text = String::from_utf8(out).unwrap();
    let kept: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&str> = kept.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["o1", "o8"], "{text}");
    assert_eq!(kept[0]["subject"]["reference"], "Patient/p1", "references back to local ids");
    assert!(!text.contains(&b.prefix) && !text.contains(SYSTEM), "{text}");
    // Every blocked line is counted, by reason (garbage without the caller's id prefix is refused unparsed).
    for (reason, n) in [("refused", 5), ("wrong-type", 1), ("malformed", 1)] {
        let line = format!(r#"fhir_fence_ndjson_lines_dropped_total{{reason="{reason}",tenant="{}"}} {n}"#, a.name);
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in:\n{metrics}");
    }
}

#[tokio::test]
async fn an_over_long_line_aborts_the_download_without_a_partial_line() {
    let ts = tenants(1);
    let good = line("Observation", &ts[0].prefix, &ts[0].name, "o1", "") + "\n";
    let long = format!("{{\"resourceType\":\"Observation\",\"note\":\"{}\"}}\n", "x".repeat(5000));
    let (status, _, out, complete, _) = download(&ts, 4096, move || {
        Box::new(vec![Bytes::from(good.clone()), Bytes::from(long.clone()), Bytes::from(good.clone())].into_iter())
    })
    .await;
    assert_eq!(status, 200, "the head is sent before the long line arrives");
    assert!(!complete, "the stream must end in an error, not look whole");
    assert!(out.is_empty() || out.ends_with(b"\n"), "only whole lines");
    assert!(!String::from_utf8_lossy(&out).contains("xxxx"));
}

/// Peak resident memory of this test process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_two_gigabyte_export_streams_in_constant_memory() {
    const TOTAL: u64 = 2 << 30;
    let ts = tenants(2);
    let (own, foreign) = (
        line("Observation", &ts[0].prefix, &ts[0].name, "o1", r#","status":"final""#) + "\n",
        line("Observation", &ts[1].prefix, &ts[1].name, "o2", r#","status":"final""#) + "\n",
    );
    // 1 MiB chunks: one own line, the rest foreign lines (about 10 000 per chunk).
    let mut chunk = own.clone().into_bytes();
    while chunk.len() + foreign.len() <= 1 << 20 {
        chunk.extend_from_slice(foreign.as_bytes());
    }
    let chunk = Bytes::from(chunk);
    let chunks_total = TOTAL / chunk.len() as u64 + 1;
    let produced = Arc::new(AtomicU64::new(0));
    let p2 = produced.clone();
    let before = peak_rss();
    let first_seen_at = Arc::new(AtomicU64::new(0));
    let f2 = first_seen_at.clone();
    let files: Arc<dyn Fn(&str) -> Answer + Send + Sync> = Arc::new(move |_| {
        let (c, p) = (chunk.clone(), p2.clone());
        let it = (0..chunks_total).map(move |_| {
            p.fetch_add(c.len() as u64, Ordering::SeqCst);
            c.clone()
        });
        Answer::Chunks(200, "application/fhir+ndjson", Box::new(it))
    });
    let up = fake::start(exporting_upstream(files, standard_manifest())).await;
    let fence = support::start(Options::new(&up.base, &ts)).await;
    let tok = fence.token(&ts[0].name);
    let (_, m) = manifest(&fence, &tok).await;
    let (mut lines, mut bytes) = (0u64, 0u64);
    let (status, _, result) = request("GET", m["output"][0]["url"].as_str().unwrap())
        .bearer(&tok)
        .stream(|d| {
            if bytes == 0 {
                f2.store(produced.load(Ordering::SeqCst), Ordering::SeqCst);
            }
            bytes += d.len() as u64;
            lines += d.iter().filter(|b| **b == b'\n').count() as u64;
        })
        .await;
    assert_eq!(status, 200);
    assert!(result.is_ok());
    assert_eq!(lines, chunks_total, "exactly one own line per chunk");
    let first = first_seen_at.load(Ordering::SeqCst);
    assert!(first < 64 << 20, "output must start before the upstream file is read (started after {first} bytes)");
    let growth = peak_rss().saturating_sub(before);
    assert!(growth < 512 << 20, "peak RSS grew by {growth} bytes while streaming {TOTAL} bytes");
}
