//! Export download benchmark (issue 4): NDJSON filter throughput through the running proxy.
//!
//! `cargo bench --bench export_filter` (size: `FF_BENCH_MB`, default 1024; under `cargo test`
//! a smoke run of 8 MiB). In one run it
//! 1. starts an origin in this process that speaks the Bulk Data protocol and serves a
//!    generated export file of realistic Observation lines (about 1.3 KB each, half of them
//!    another tenant's), produced on the fly so the origin itself needs little memory;
//! 2. starts the release `fhir-fence` binary in front of it (its own process) and downloads the
//!    file through it as tenant `acme`: every line parsed, checked, stripped and rewritten;
//! 3. starts a plain streaming forwarder (this binary again, in its own process: the same
//!    hyper client and server stack, bytes passed through untouched) and downloads the same
//!    file through it: the cost of streaming without the filter.
//!
//! 4. runs the same filter in this process on the same lines, without any network, on one
//!    core: the filter's own cost.
//!
//! It reports wall-clock MB/s, MB/s of input per CPU-second of the proxy process (per core),
//! the ratio between the two proxies, and the proxy's peak RSS (VmHWM). See `docs/performance.md`.
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::convert::Infallible;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

mod support;
use support::{free_port, serve, wait_for, wait_port, Killed, SYSTEM};

const LINES_IN_POOL: usize = 50_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if args.get(1).map(String::as_str) == Some("forward") {
        rt.block_on(forward(args[2].clone(), args[3].clone()));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this too, as a quick
    // smoke run (8 MiB) so the benchmark cannot rot unnoticed.
    let default_mb = if args.iter().any(|a| a == "--bench") { 1024 } else { 8 };
    rt.block_on(bench(default_mb));
}

/// One realistic Observation line (about 1.3 KB).
fn observation(prefix: &str, tenant: &str, i: usize) -> String {
    json!({"resourceType": "Observation", "id": format!("{prefix}-obs-{i:06}"),
        "meta": {"versionId": "1", "lastUpdated": "2026-11-26T10:00:00.000+00:00", "source": "#k2QvYt6d8ZpA",
            "tag": [{"system": SYSTEM, "code": tenant}]},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9",
            "display": "Blood pressure panel with all children optional"}], "text": "Blood pressure"},
        "subject": {"reference": format!("Patient/{prefix}-pat-{:06}", i / 7)},
        "encounter": {"reference": format!("Encounter/{prefix}-enc-{i:06}")},
        "effectiveDateTime": "2026-11-26T09:30:00+00:00", "issued": "2026-11-26T09:31:00.000+00:00",
        "performer": [{"reference": format!("Practitioner/{prefix}-prac-{}", i % 13)}],
        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
            "code": "N", "display": "Normal"}]}],
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}]},
             "valueQuantity": {"value": 100 + i % 40, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic blood pressure"}]},
             "valueQuantity": {"value": 60 + i % 30, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]})
    .to_string()
}

/// The export file's lines, in 1 MiB chunks, alternating the caller's and another tenant's.
fn pool() -> Vec<Bytes> {
    let mut chunks = vec![];
    let mut chunk = Vec::with_capacity(1 << 20);
    for i in 0..LINES_IN_POOL {
        let line = if i % 2 == 0 { observation("acme", "acme", i) } else { observation("glx", "globex", i) };
        chunk.extend_from_slice(line.as_bytes());
        chunk.push(b'\n');
        if chunk.len() >= 1 << 20 {
            chunks.push(Bytes::from(std::mem::take(&mut chunk)));
        }
    }
    chunks.push(Bytes::from(chunk));
    chunks
}

/// Streams `total` bytes (whole chunks) from the pool, round and round.
struct Generated {
    pool: Arc<Vec<Bytes>>,
    next: usize,
    left: u64,
}

impl http_body::Body for Generated {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let chunk = self.pool[self.next % self.pool.len()].clone();
        self.next += 1;
        self.left = self.left.saturating_sub(chunk.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_answer(status: u16, v: serde_json::Value, location: Option<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert("content-type", "application/fhir+json".parse().unwrap());
    if let Some(l) = location {
        r.headers_mut().insert("content-location", l.parse().unwrap());
    }
    r
}

/// The origin: CapabilityStatement, kickoff, a finished manifest, and the generated file.
async fn origin(pool: Arc<Vec<Bytes>>, total: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}/fhir", listener.local_addr().unwrap().port());
    let b2 = base.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (pool, base) = (pool.clone(), b2.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (pool, base) = (pool.clone(), base.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let resp = match path.as_str() {
                            "/fhir/metadata" => json_answer(200, capability_statement(), None),
                            "/fhir/$export" => {
                                let l = format!("{base}/$export-poll-status?_jobId=bench");
                                json_answer(202, json!({"resourceType": "OperationOutcome", "issue": []}), Some(l))
                            }
                            "/fhir/$export-poll-status" => json_answer(
                                200,
                                json!({"transactionTime": "2026-11-26T10:00:00Z", "request": format!("{base}/$export"),
                                    "requiresAccessToken": true,
                                    "output": [{"type": "Observation", "url": format!("{base}/Binary/bench")}], "error": []}),
                                None,
                            ),
                            _ => {
                                let mut r = Response::new(Generated { pool, next: 0, left: total }.boxed());
                                r.headers_mut().insert("content-type", "application/fhir+ndjson".parse().unwrap());
                                r
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    base
}

fn capability_statement() -> serde_json::Value {
    let params = json!([{"name": "_tag", "type": "token"}, {"name": "_id", "type": "token"}]);
    json!({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
        "format": ["json"], "rest": [{"mode": "server", "resource": [
            {"type": "Observation", "interaction": [{"code": "read"}], "searchParam": params},
            {"type": "Patient", "interaction": [{"code": "read"}], "searchParam": params}]}]})
}

/// The baseline: a streaming forwarder on the same hyper stack, no filter (`forward LISTEN ORIGIN`).
/// `bench/run` uses it too, as the floor of a proxy built on hyper.
async fn forward(listen: String, origin: String) {
    let listener = TcpListener::bind(&listen).await.unwrap();
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        let (client, origin) = (client.clone(), origin.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (client, origin) = (client.clone(), origin.clone());
                async move {
                    let path = req.uri().path_and_query().map_or("", |p| p.as_str());
                    let uri = format!("{origin}{}", path.strip_prefix("/fhir").unwrap_or(""));
                    let up = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                    let resp = client.request(up).await.unwrap();
                    let (parts, body) = resp.into_parts();
                    Ok::<_, Infallible>(Response::from_parts(parts, body))
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// (utime + stime) of a process, in seconds.
fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let f = stat_fields(pid);
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks
}

/// Minor page faults of a process so far.
fn minor_faults(pid: u32) -> u64 {
    stat_fields(pid)[7].parse().unwrap()
}

/// The fields of `/proc/PID/stat` after the command name.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..].split_whitespace().map(str::to_owned).collect()
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 =
        status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

struct Run {
    wall: Duration,
    cpu: f64,
    faults: u64,
    rss_mb: f64,
    bytes_out: u64,
    lines_out: u64,
}

/// Downloads `url` through the proxy process `pid`, discarding the body.
async fn download(url: &str, token: Option<&str>, pid: u32, ticks: f64) -> Run {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (cpu0, faults0) = (cpu_seconds(pid, ticks), minor_faults(pid));
    let started = Instant::now();
    let resp = client.request(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut bytes_out, mut lines_out) = (0u64, 0u64);
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            bytes_out += d.len() as u64;
            lines_out += memchr::memchr_iter(b'\n', d).count() as u64;
        }
    }
    let wall = started.elapsed();
    Run {
        wall,
        cpu: cpu_seconds(pid, ticks) - cpu0,
        faults: minor_faults(pid) - faults0,
        rss_mb: peak_rss_mb(pid),
        bytes_out,
        lines_out,
    }
}

/// Runs the download filter of `acme` over `total` bytes of the pool, in this thread.
fn filter_alone(config: &std::path::Path, pool: &[Bytes], total: u64) -> (Duration, u64) {
    use fhir_fence::bulk::download::file_filter;
    use fhir_fence::bulk::handle::{File, Kind};
    let snap = Arc::new(fhir_fence::state::Snapshot::build(fhir_fence::config::load(config).unwrap()).unwrap());
    let tenant = snap.tenants["acme"].clone();
    let upstream = snap.upstreams["origin"].clone();
    let file = File {
        job: "bench".into(),
        tenant: "acme".into(),
        client: None,
        upstream: "origin".into(),
        path: "Binary/bench".into(),
        rtype: "Observation".into(),
        kind: Kind::Output,
        grant: 0,
    };
    let mut filter = file_filter(&snap, &tenant, &upstream, &file, "bench");
    let mut out = Vec::with_capacity(2 << 20);
    let started = Instant::now();
    let (mut fed, mut i) = (0u64, 0usize);
    while fed < total {
        let chunk = &pool[i % pool.len()];
        filter.push(chunk, &mut out).unwrap();
        out.clear();
        fed += chunk.len() as u64;
        i += 1;
    }
    filter.finish(&mut out).unwrap();
    (started.elapsed(), filter.counts.kept)
}

/// The fhir-fence config for the benchmark: tenants `acme` and `globex` on `origin`.
fn bench_config(public: u16, admin: u16, origin_base: &str) -> String {
    let tenants = r#"
[tenants.acme]
prefix = "acme"
upstream = "origin"
status = "active"
operations = ["export"]
[tenants.globex]
prefix = "glx"
upstream = "origin"
status = "active"
"#;
    support::config(public, admin, origin_base, tenants)
}

async fn bench(default_mb: u64) {
    let mb: u64 = std::env::var("FF_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(default_mb);
    let total = mb << 20;
    let ticks: f64 = String::from_utf8(Command::new("getconf").arg("CLK_TCK").output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pool = Arc::new(pool());
    let pool_for_alone = pool.clone();
    if std::env::var_os("FF_BENCH_FILTER_ONLY").is_some() {
        // For profiling the filter: step 4 alone, on a config with an unused origin.
        let dir = std::env::temp_dir().join(format!("fhir-fence-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("bench.toml");
        std::fs::write(&config, bench_config(free_port(), free_port(), "http://127.0.0.1:9/fhir")).unwrap();
        let (alone, kept) = filter_alone(&config, &pool_for_alone, total);
        println!("filter alone: {kept} lines kept, {:.1} MiB/s", (total >> 20) as f64 / alone.as_secs_f64());
        return;
    }
    let origin_base = origin(pool, total).await;

    let (public, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("fhir-fence-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bench.toml");
    std::fs::write(&config, bench_config(public, admin, &origin_base)).unwrap();
    let token = support::token(&config, "acme");
    let fence = serve(&config);
    let fence_base = format!("http://127.0.0.1:{public}/fhir");
    wait_for(&format!("http://127.0.0.1:{admin}/healthz")).await;

    // Kickoff and manifest through fhir-fence, as a client would.
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let kick = Request::get(format!("{fence_base}/$export?_type=Observation"))
        .header("authorization", format!("Bearer {token}"))
        .header("prefer", "respond-async")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(kick).await.unwrap();
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"].to_str().unwrap().to_owned();
    let poll = Request::get(&status_url)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let manifest = client.request(poll).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let file_url = manifest["output"][0]["url"].as_str().unwrap().to_owned();

    let fport = free_port();
    let me = std::env::current_exe().unwrap();
    let forwarder =
        Killed(Command::new(me).args(["forward", &format!("127.0.0.1:{fport}"), &origin_base]).spawn().unwrap());
    let forward_url = format!("http://127.0.0.1:{fport}/fhir/Binary/bench");
    wait_port(fport).await;

    let filtered = download(&file_url, Some(&token), fence.0.id(), ticks).await;
    let plain = download(&forward_url, None, forwarder.0.id(), ticks).await;
    let input_mb = total as f64 / (1 << 20) as f64;
    let report = |name: &str, r: &Run| {
        println!(
            "{name:<28} input {input_mb:>6.0} MiB  out {:>6.0} MiB  {:>8} lines  wall {:>6.2} s = {:>7.1} MiB/s  \
             proxy CPU {:>6.2} s = {:>7.1} MiB/s per core  peak RSS {:>5.1} MiB  {:>7} page faults",
            r.bytes_out as f64 / (1 << 20) as f64,
            r.lines_out,
            r.wall.as_secs_f64(),
            input_mb / r.wall.as_secs_f64(),
            r.cpu,
            input_mb / r.cpu,
            r.rss_mb,
            r.faults
        );
    };
    println!("export download benchmark: {input_mb:.0} MiB of Observation NDJSON, 50% another tenant's");
    report("fhir-fence (filtered)", &filtered);
    report("plain forwarder (baseline)", &plain);
    println!(
        "ratio fhir-fence / forwarder: wall throughput {:.2}, per-core throughput {:.2}",
        plain.wall.as_secs_f64() / filtered.wall.as_secs_f64(),
        plain.cpu / filtered.cpu
    );
    drop(forwarder);
    drop(fence);

    // 4. The filter alone, on one core.
    let (alone, kept) = filter_alone(&config, &pool_for_alone, total);
    println!(
        "{:<28} input {input_mb:>6.0} MiB  {:>8} lines kept  {:>6.2} s = {:>7.1} MiB/s on one core (no network)",
        "filter alone",
        kept,
        alone.as_secs_f64(),
        input_mb / alone.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(dir);
}
