//! Key-refresh benchmark (issue 18): do requests whose key fhir-fence has cached wait while a
//! refresh of an identity provider's keys is in flight?
//!
//! `cargo bench --bench key_refresh` (reads: `FF_BENCH_REQUESTS`, default 2000; flooding
//! clients: `FF_BENCH_FLOOD`, default 200; under `cargo test` a smoke run of 40 and 20). In one
//! run it
//! 1. starts, in this process, an origin answering `Patient` reads and a slow identity provider
//!    over HTTPS (a CA and certificate made at start): its JWKS (the test RSA key,
//!    `fixtures/keys`) is answered at once the first time, then after [`SLOW`] each time;
//! 2. starts the release `fhir-fence` binary with an issuer whose keys come from that
//!    provider's `jwks_uri`;
//! 3. measures sequential reads by `globex`, each with a token never presented before (so its
//!    signature is checked with the cached key, not answered from the verified-token cache), each
//!    on a new connection;
//! 4. starts the flood: that many clients send tokens with made-up `kid`s one after another,
//!    each on its kept-alive connection (each request makes fhir-fence wait for a refresh:
//!    single-flight, one per 2 s, each slow at the provider); once every client has had an
//!    answer and the provider is answering the next refresh, waits [`SETTLE`] (the clients'
//!    next requests, sent together as the previous refresh ended, are read by then) and
//!    measures the reads again, inside that refresh;
//! 5. reports both latency distributions (p50, p90, p99, max), their p99 ratio, the flood's
//!    answers and latencies, the provider's fetches and how long a refresh was in flight during
//!    the measurement; fails if a read was not a 200 or a flooding request not a 401.
//!
//! See `docs/performance.md`.
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use serde_json::json;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

mod support;
use support::{free_port, origin, percentile, report, serve, wait_for};

/// How long the provider takes to answer a JWKS fetch after its first.
const SLOW: Duration = Duration::from_millis(2500);
/// How long after a refresh begins the reads start (see `bench`).
const SETTLE: Duration = Duration::from_millis(250);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs a smoke run.
    let full = args.iter().any(|a| a == "--bench");
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let requests = env("FF_BENCH_REQUESTS", if full { 2000 } else { 40 });
    let flood = env("FF_BENCH_FLOOD", if full { 200 } else { 20 });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(bench(requests, flood));
}

/// What the provider saw: JWKS fetches, how many are being answered now, and when each was
/// answered (start, end; the end `None` while it runs).
#[derive(Default)]
struct Provider {
    fetches: AtomicUsize,
    in_flight: AtomicUsize,
    spans: Mutex<Vec<(Instant, Option<Instant>)>>,
}

impl Provider {
    /// How long within `from..to` a fetch was being answered.
    fn busy(&self, from: Instant, to: Instant) -> Duration {
        let spans = self.spans.lock().unwrap();
        spans.iter().map(|(s, e)| e.unwrap_or(to).min(to).saturating_duration_since((*s).max(from))).sum()
    }
}

/// The slow provider over HTTPS on `localhost`; its port and the PEM of the CA that signed its
/// certificate.
async fn provider(seen: Arc<Provider>) -> (u16, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let jwks =
        Bytes::from(std::fs::read(format!("{}/fixtures/keys/rs256-jwks.json", env!("CARGO_MANIFEST_DIR"))).unwrap());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, seen, jwks) = (acceptor.clone(), seen.clone(), jwks.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = service_fn(move |_: Request<Incoming>| {
                    let (seen, jwks) = (seen.clone(), jwks.clone());
                    async move {
                        let span = {
                            let mut spans = seen.spans.lock().unwrap();
                            spans.push((Instant::now(), None));
                            spans.len() - 1
                        };
                        seen.in_flight.fetch_add(1, Ordering::SeqCst);
                        if seen.fetches.fetch_add(1, Ordering::SeqCst) > 0 {
                            tokio::time::sleep(SLOW).await;
                        }
                        seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                        seen.spans.lock().unwrap()[span].1 = Some(Instant::now());
                        let mut r = Response::new(Full::new(jwks));
                        r.headers_mut().insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), service).await;
            });
        }
    });
    (port, ca.pem())
}

fn config(public: u16, admin: u16, origin_base: &str, idp_port: u16, ca_file: &std::path::Path) -> String {
    let rest = format!(
        r#"
[issuers.idp]
iss = "https://idp.bench"
jwks_uri = "https://localhost:{idp_port}/jwks"
ca_file = {ca:?}
audience = ["fhir-fence-bench"]
algorithms = ["RS256"]
tenant_claim = "$.tenant"
tenants = ["globex"]
[tenants.acme]
prefix = "acme"
upstream = "origin"
status = "active"
[tenants.globex]
prefix = "globex"
upstream = "origin"
status = "active"
"#,
        ca = ca_file.display().to_string()
    );
    support::config(public, admin, origin_base, &rest)
}

/// A token of the provider's issuer for `globex`, unique by `n`, with `kid`.
fn token(key: &jsonwebtoken::EncodingKey, kid: &str, n: usize) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let claims = json!({"iss": "https://idp.bench", "aud": "fhir-fence-bench", "exp": now + 3600, "iat": now,
        "sub": "bench", "tenant": "globex", "jti": format!("{kid}-{n}")});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// One read on a new connection: its latency and status.
async fn read_once(port: u16, token: &str) -> (Duration, u16) {
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
    let status = match send.send_request(req).await {
        Ok(resp) => {
            let status = resp.status();
            match resp.into_body().collect().await {
                Ok(_) => status.as_u16(),
                Err(_) => 0,
            }
        }
        Err(_) => 0,
    };
    (started.elapsed(), status)
}

/// Sequential reads, one per token; the latencies (sorted) and the count of non-200 answers.
async fn measure(port: u16, tokens: &[String]) -> (Vec<Duration>, usize) {
    let mut times = Vec::with_capacity(tokens.len());
    let mut failed = 0;
    for t in tokens {
        let (took, status) = read_once(port, t).await;
        times.push(took);
        failed += usize::from(status != StatusCode::OK.as_u16());
    }
    times.sort();
    (times, failed)
}

#[derive(Default)]
struct Flood {
    stop: AtomicBool,
    /// Answers by status (0: no answer), and their latencies.
    answers: Mutex<BTreeMap<u16, usize>>,
    times: Mutex<Vec<Duration>>,
}

/// Requests with made-up kids, one after another on one kept-alive connection (a new one when
/// it closes).
async fn flooder(port: u16, tokens: Arc<Vec<String>>, offset: usize, flood: Arc<Flood>) {
    let mut n = offset;
    while !flood.stop.load(Ordering::Relaxed) {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        while !flood.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let req = Request::get(format!("http://127.0.0.1:{port}/fhir/Patient/p1"))
                .header("host", "127.0.0.1")
                .header("authorization", format!("Bearer {}", tokens[n % tokens.len()]))
                .body(Full::new(Bytes::new()))
                .unwrap();
            n += 1;
            let status = match send.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    resp.into_body().collect().await.map_or(0, |_| status)
                }
                Err(_) => 0,
            };
            *flood.answers.lock().unwrap().entry(status).or_default() += 1;
            flood.times.lock().unwrap().push(started.elapsed());
            if status == 0 || send.ready().await.is_err() {
                break;
            }
        }
    }
}

async fn bench(requests: usize, flood_size: usize) {
    let seen = Arc::new(Provider::default());
    let (idp_port, ca_pem) = provider(seen.clone()).await;
    let origin_base = origin().await;
    let (public, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("fhir-fence-key-refresh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    let path = dir.join("bench.toml");
    std::fs::write(&path, config(public, admin, &origin_base, idp_port, &dir.join("ca.pem"))).unwrap();
    let pem = std::fs::read(format!("{}/fixtures/keys/rs256-private.pem", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    // Every read's token is new to fhir-fence (none is answered from its verified-token cache).
    let known: Vec<String> = (0..2 * requests + 20).map(|n| token(&key, "test-rs-1", n)).collect();
    let unknown: Arc<Vec<String>> = Arc::new((0..200).map(|n| token(&key, &format!("made-up-{n}"), n)).collect());
    let _fence = serve(&path);
    wait_for(&format!("http://127.0.0.1:{admin}/healthz")).await;
    // Warm-up: the first (fast) key fetch, the capability fetch, the first connections.
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_once(public, &known[0]).await.1 != 200 {
        assert!(Instant::now() < deadline, "the provider's key never verified a token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    measure(public, &known[1..20]).await;

    let (quiet, quiet_failed) = measure(public, &known[20..20 + requests]).await;

    let flood = Arc::new(Flood::default());
    let tasks: Vec<_> =
        (0..flood_size).map(|i| tokio::spawn(flooder(public, unknown.clone(), i, flood.clone()))).collect();
    // The flood is steady once every client has had its first answer and the provider is
    // answering the next refresh the flood caused; the reads start `SETTLE` later, once the
    // clients' next requests (sent together when the previous refresh ended) have been read.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = seen.fetches.load(Ordering::SeqCst);
    while flood.times.lock().unwrap().len() < flood_size
        || seen.fetches.load(Ordering::SeqCst) < before + 2
        || seen.in_flight.load(Ordering::SeqCst) == 0
    {
        assert!(Instant::now() < deadline, "the flood caused no refresh");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let fetches = seen.fetches.load(Ordering::SeqCst);
    let started = Instant::now();
    let (flooded, flooded_failed) = measure(public, &known[20 + requests..]).await;
    let ended = Instant::now();
    let flooded_for = ended - started;
    let busy = seen.busy(started, ended);
    let fetched = seen.fetches.load(Ordering::SeqCst) - fetches;
    flood.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }

    println!(
        "key refresh: {flood_size} clients sending made-up kids against a provider answering each refresh after {SLOW:?}"
    );
    report(34, "known kid, no refresh", &quiet, quiet_failed);
    report(34, "known kid, refresh in flight", &flooded, flooded_failed);
    let p99 = |t: &[Duration]| percentile(t, 0.99).as_secs_f64();
    let mut flood_times = flood.times.lock().unwrap().clone();
    flood_times.sort();
    let answers = flood.answers.lock().unwrap().clone();
    println!(
        "p99 ratio (refresh in flight / none): {:.2}; over the {:.2} s measured a refresh was being answered \
         {:.0} % of the time ({} more fetches began)",
        p99(&flooded) / p99(&quiet),
        flooded_for.as_secs_f64(),
        100.0 * busy.as_secs_f64() / flooded_for.as_secs_f64(),
        fetched,
    );
    println!(
        "flood: {answers:?} (status: requests), latency p50 {:.0} ms, max {:.0} ms",
        percentile(&flood_times, 0.5).as_secs_f64() * 1000.0,
        flood_times.last().unwrap().as_secs_f64() * 1000.0,
    );
    assert_eq!((quiet_failed, flooded_failed), (0, 0), "every read with a known kid is answered 200");
    assert!(answers.keys().all(|s| *s == 401), "every made-up kid is a 401: {answers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
