//! Noisy-neighbour benchmark (issue 15): one tenant's latency while another floods fhir-fence
//! with slow request bodies.
//!
//! `cargo bench --bench noisy_neighbour` (requests: `FF_BENCH_REQUESTS`, default 2000; flood
//! connections: `FF_BENCH_FLOOD`, default 300; under `cargo test` a smoke run of 60 and 40). In
//! one run it
//! 1. starts an origin in this process that answers every `Patient` read with a small Patient
//!    of the tenant its id belongs to;
//! 2. starts the release `fhir-fence` binary in front of it with two tenants: `acme` (the
//!    attacker, `limits.max_connections = 32`, as in `policies/demo.toml`) and `globex`;
//! 3. measures `globex` alone: sequential reads, each on a new connection (so each one has to
//!    be admitted by the listener, the worst case under a connection flood);
//! 4. starts the flood: `acme` opens that many connections, each sending a write's headers and
//!    then trickling its body one byte every 200 ms (below `server.min_body_bytes_per_sec`, so
//!    each ends in 408 after `server.body_timeout_ms`), reopening a connection a second after
//!    it is closed or refused; once the server holds acme's connections, measures `globex` again;
//! 5. reports both latency distributions (p50, p90, p99, max), their p99 ratio, what the flood
//!    got (answers by status), and fails if any `globex` read was not a 200.
//!
//! See `docs/performance.md`.
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::{free_port, origin, percentile, report, serve, wait_for};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs a smoke run.
    let full = args.iter().any(|a| a == "--bench");
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let requests = env("FF_BENCH_REQUESTS", if full { 2000 } else { 60 });
    let flood = env("FF_BENCH_FLOOD", if full { 300 } else { 40 });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(bench(requests, flood));
}

fn config(public: u16, admin: u16, origin_base: &str) -> String {
    let tenants = r#"
[tenants.acme]
prefix = "acme"
upstream = "origin"
status = "active"
[tenants.acme.limits]
rate_per_second = 1000
burst = 2000
max_in_flight = 16
max_connections = 32
[tenants.globex]
prefix = "globex"
upstream = "origin"
status = "active"
"#;
    support::config(public, admin, origin_base, tenants)
}

/// One read on a new connection: its latency, and whether it was a 200.
async fn read_once(port: u16, token: &str) -> (Duration, bool) {
    let started = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://127.0.0.1:{port}/fhir/Patient/p1"))
        .header("host", "127.0.0.1")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let ok = match send.send_request(req).await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            status == StatusCode::OK && body.is_ok()
        }
        Err(_) => false,
    };
    (started.elapsed(), ok)
}

/// `requests` sequential reads as `globex`; the latencies (sorted) and the count of failures.
async fn measure(port: u16, token: &str, requests: usize) -> (Vec<Duration>, usize) {
    let mut times = Vec::with_capacity(requests);
    let mut failed = 0;
    for _ in 0..requests {
        let (t, ok) = read_once(port, token).await;
        times.push(t);
        failed += usize::from(!ok);
    }
    times.sort();
    (times, failed)
}

#[derive(Default)]
struct Flood {
    stop: AtomicBool,
    /// Connections whose headers were sent and are trickling now.
    trickling: AtomicUsize,
    /// Answers the flood got, by status (0: closed without an answer).
    answers: Mutex<BTreeMap<u16, usize>>,
}

/// One flooding connection after another: headers of a 100 KB write, then a byte every 200 ms.
async fn flooder(port: u16, token: String, flood: Arc<Flood>) {
    let head = format!(
        "PUT /fhir/Patient/slow HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\n\
         content-type: application/fhir+json\r\ncontent-length: 100000\r\n\r\n{{\"resourceType\""
    );
    while !flood.stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        if s.write_all(head.as_bytes()).await.is_ok() {
            flood.trickling.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 512];
            let status = loop {
                tokio::select! {
                    read = s.read(&mut buf) => {
                        let text = match read { Ok(n) if n > 0 => String::from_utf8_lossy(&buf[..n]).into_owned(), _ => String::new() };
                        break text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0u16);
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if flood.stop.load(Ordering::Relaxed) || s.write_all(b" ").await.is_err() {
                            break 0;
                        }
                    }
                }
            };
            flood.trickling.fetch_sub(1, Ordering::Relaxed);
            *flood.answers.lock().unwrap().entry(status).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn bench(requests: usize, flood_size: usize) {
    let origin_base = origin().await;
    let (public, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("fhir-fence-noisy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bench.toml");
    std::fs::write(&path, config(public, admin, &origin_base)).unwrap();
    let (attacker, victim) = (support::token(&path, "acme"), support::token(&path, "globex"));
    let _fence = serve(&path);
    wait_for(&format!("http://127.0.0.1:{admin}/healthz")).await;
    // Warm-up: the capability fetch and the first connections.
    measure(public, &victim, 20).await;

    let (quiet, quiet_failed) = measure(public, &victim, requests).await;

    let flood = Arc::new(Flood::default());
    let tasks: Vec<_> =
        (0..flood_size).map(|_| tokio::spawn(flooder(public, attacker.clone(), flood.clone()))).collect();
    // The flood is on once the server has refused (503) as many of acme's connections as go
    // beyond its cap of 32, and holds the rest trickling.
    let deadline = Instant::now() + Duration::from_secs(60);
    while flood.answers.lock().unwrap().get(&503).copied().unwrap_or(0) < flood_size.saturating_sub(32) {
        assert!(Instant::now() < deadline, "the flood never reached the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let (flooded, flooded_failed) = measure(public, &victim, requests).await;
    let flooded_for = started.elapsed();
    flood.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }

    println!("noisy neighbour: {flood_size} slow-body connections of acme (cap 32) against globex's reads");
    report(26, "globex alone", &quiet, quiet_failed);
    report(26, "globex under acme's flood", &flooded, flooded_failed);
    let p99 = |t: &[Duration]| percentile(t, 0.99).as_secs_f64();
    println!(
        "p99 ratio (flooded / alone): {:.2}; acme's flood got {:?} (status: connections) over {:.1} s",
        p99(&flooded) / p99(&quiet),
        flood.answers.lock().unwrap(),
        flooded_for.as_secs_f64()
    );
    assert_eq!((quiet_failed, flooded_failed), (0, 0), "every read of globex is answered 200");
    let _ = std::fs::remove_dir_all(&dir);
}
