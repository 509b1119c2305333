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
