//! What the benchmarks that run the real `fhir-fence` binary share: starting it on a config,
//! minting its tokens, waiting for ports, and killing the processes they start.
#![allow(dead_code)]
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `fhir-fence` binary of this build (release under `cargo bench`).
pub const EXE: &str = env!("CARGO_BIN_EXE_fhir-fence");

/// A port free now, for the processes a benchmark starts (they are told their listen address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `url` answers at all.
pub async fn wait_for(url: &str) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..200 {
        if client.get(url.parse().unwrap()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
}

/// Waits until `port` accepts connections.
pub async fn wait_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("port {port} did not open");
}

/// A child process, killed when dropped.
pub struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A token for `tenant` minted by `fhir-fence token` from the config's issuer.
pub fn token(config: &Path, tenant: &str) -> String {
    let out = Command::new(EXE).args(["token", "--config"]).arg(config).args(["--tenant", tenant]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `fhir-fence serve` on `config`, its log shown when `FF_BENCH_PROXY_LOG` sets a level.
pub fn serve(config: &Path) -> Killed {
    let log = std::env::var("FF_BENCH_PROXY_LOG").ok();
    Killed(
        Command::new(EXE)
            .args(["serve", "--config"])
            .arg(config)
            .env("FHIR_FENCE_LOG", log.clone().unwrap_or_else(|| "warn".into()))
            .stdout(if log.is_some() { Stdio::inherit() } else { Stdio::null() })
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The tenant coding system the benchmarks' configs use.
pub const SYSTEM: &str = "https://fhir-fence.dev/CodeSystem/tenant";

/// A fhir-fence config for a benchmark: public and admin ports, one upstream `origin`, a
/// development issuer for `acme` and `globex`, then `tenants` (their `[tenants.…]` sections).
pub fn config(public: u16, admin: u16, origin_base: &str, tenants: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    format!(
        r#"
[server]
listen = "127.0.0.1:{public}"
public_base = "http://127.0.0.1:{public}/fhir"
[admin]
listen = "127.0.0.1:{admin}"
[tenancy]
marker = "tag"
system = "{SYSTEM}"
[upstreams.origin]
base_url = "{origin_base}"
request_timeout_ms = 60000
[issuers.dev]
iss = "https://issuer.test/bench"
audience = ["http://127.0.0.1:{public}/fhir"]
algorithms = ["HS256"]
secret_file = "{root}/fixtures/dev-hs256.secret"
tenant_claim = "$.tenant"
tenants = ["acme", "globex"]
{tenants}"#
    )
}

/// An in-process origin: a CapabilityStatement, and for `Patient/{prefix}-{id}` a Patient of that
/// tenant (`acme` for `acme-…`, else `globex`).
pub async fn origin() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}/fhir", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    let body = match path.strip_prefix("/fhir/Patient/") {
                        Some(id) => {
                            let tenant = if id.starts_with("acme-") { "acme" } else { "globex" };
                            serde_json::json!({"resourceType": "Patient", "id": id, "meta": {"versionId": "1",
                                "tag": [{"system": SYSTEM, "code": tenant}]}, "name": [{"family": "Neighbour"}]})
                        }
                        None => capability_statement(),
                    };
                    let mut r = http::Response::new(Full::new(Bytes::from(body.to_string())));
                    r.headers_mut().insert("content-type", "application/fhir+json".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    base
}

fn capability_statement() -> serde_json::Value {
    let params = serde_json::json!([{"name": "_tag", "type": "token"}, {"name": "_id", "type": "token"}]);
    serde_json::json!({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
        "format": ["json"], "rest": [{"mode": "server", "resource": [
            {"type": "Patient", "interaction": [{"code": "read"}, {"code": "update"}], "searchParam": params}]}]})
}

/// The `p`-th percentile of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// One line of latencies (sorted) under a `width`-wide name.
pub fn report(width: usize, name: &str, times: &[Duration], failed: usize) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<width$} {:>5} reads  p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  failed {failed}",
        times.len(),
        ms(percentile(times, 0.50)),
        ms(percentile(times, 0.90)),
        ms(percentile(times, 0.99)),
        ms(*times.last().unwrap()),
    );
}
