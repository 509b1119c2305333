//! Test harness: a config per test, fhir-fence in-process, a fake upstream, an HTTP client.
#![allow(dead_code)]
pub mod client;
pub mod fake;
pub mod hl7;
pub mod pki;
pub mod recorder;
pub mod scope_harness;

use fhir_fence::config;
use fhir_fence::live::Live;
use fhir_fence::state::Snapshot;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const SYSTEM: &str = "https://fhir-fence.dev/CodeSystem/tenant";

/// A HAPI base URL from the environment (`scripts/test` sets them), or the harness default.
pub fn hapi_url(var: &str, default_port: u16) -> String {
    std::env::var(var).unwrap_or_else(|_| format!("http://127.0.0.1:{default_port}/fhir"))
}

/// A Helios FHIR Server base from the environment, or the harness default (`scripts/helios`
/// serves FHIR at the root path).
fn helios_url(var: &str, default_port: u16) -> String {
    std::env::var(var).unwrap_or_else(|_| format!("http://127.0.0.1:{default_port}"))
}

/// The FHIR server a suite runs against, chosen by `FHIR_TEST_UPSTREAM` (`hapi`, the default,
/// `medplum` or `helios`: issue 22), with what the suite may expect of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Hapi,
    Medplum,
    Helios,
}

impl Server {
    pub fn selected() -> Server {
        match std::env::var("FHIR_TEST_UPSTREAM").as_deref() {
            Err(_) | Ok("hapi") => Server::Hapi,
            Ok("medplum") => Server::Medplum,
            Ok("helios") => Server::Helios,
            Ok(other) => panic!("FHIR_TEST_UPSTREAM={other}: expected hapi, medplum or helios"),
        }
    }

    /// Its FHIR base (`HAPI_URL`, `MEDPLUM_URL` or `HELIOS_URL`, as `scripts/test` exports them).
    pub fn url(self) -> String {
        match self {
            Server::Hapi => hapi_url("HAPI_URL", 8090),
            Server::Medplum => hapi_url("MEDPLUM_URL", 8097),
            Server::Helios => helios_url("HELIOS_URL", 8094),
        }
    }

    /// A second server of the same kind that one tenant has alone, for the transparency suite
    /// (`HAPI_DEDICATED_URL`, `MEDPLUM_DEDICATED_URL`, `HELIOS_DEDICATED_URL`).
    pub fn dedicated_url(self) -> String {
        match self {
            Server::Hapi => hapi_url("HAPI_DEDICATED_URL", 8091),
            Server::Medplum => hapi_url("MEDPLUM_DEDICATED_URL", 8099),
            Server::Helios => helios_url("HELIOS_DEDICATED_URL", 8088),
        }
    }

    /// The most writes it accepts in one transaction (Medplum's router: 50 updates, and
    /// fhir-fence sends every create as an update); `None`: no limit a test meets.
    pub fn max_transaction_writes(self) -> Option<usize> {
        match self {
            Server::Hapi | Server::Helios => None,
            Server::Medplum => Some(50),
        }
    }

    /// A second, plain and empty server of the same kind that the conformance run records
    /// against (`HAPI_RECORD_URL`, `MEDPLUM_RECORD_URL`, `HELIOS_RECORD_URL`).
    pub fn record_url(self) -> String {
        match self {
            Server::Hapi => hapi_url("HAPI_RECORD_URL", 8092),
            Server::Medplum => hapi_url("MEDPLUM_RECORD_URL", 8098),
            Server::Helios => helios_url("HELIOS_RECORD_URL", 8089),
        }
    }

    /// Whether its searches carry paging links (Medplum's router gives none).
    pub fn pages_by_links(self) -> bool {
        self != Server::Medplum
    }

    /// Whether it serves Bulk Data export (Medplum's router does not).
    pub fn exports(self) -> bool {
        self != Server::Medplum
    }
}

/// A port free now, for a child process that must be told its port (in-process servers bind 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Where `scripts/fetch-test-data` put the real FHIR data.
pub fn test_data_dir() -> std::path::PathBuf {
    std::env::var("FHIR_TEST_DATA")
        .unwrap_or_else(|_| format!("{}/target/test-data", env!("CARGO_MANIFEST_DIR")))
        .into()
}

pub fn fixture(name: &str) -> String {
    format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A tenant in a test config.
#[derive(Clone)]
pub struct T {
    pub name: String,
    pub prefix: String,
    pub suspended: bool,
    /// Operations enabled for the tenant (all scoped ones by default).
    pub operations: Vec<&'static str>,
    /// Allowed Subscription destinations (none by default).
    pub destinations: Vec<String>,
    /// TOML lines for `[tenants.NAME.limits]` (none by default).
    pub limits: String,
    /// More `key = value` lines for `[tenants.NAME]` (none by default).
    pub extra: String,
    /// The upstream (in `[upstreams]`) holding the tenant's data (`main` by default).
    pub upstream: String,
}

/// Tenant names and prefixes unique to this test, so tests sharing one HAPI never see each other.
pub fn tenants(n: usize) -> Vec<T> {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..7];
    (0..n)
        .map(|i| {
            let letter = (b'a' + i as u8) as char;
            T {
                name: format!("t{run}{letter}"),
                prefix: format!("t{run}{letter}"),
                suspended: false,
                operations: vec!["everything", "meta", "meta-add", "meta-delete", "validate", "export"],
                destinations: vec![],
                limits: String::new(),
                extra: String::new(),
                upstream: "main".into(),
            }
        })
        .collect()
}

#[derive(Clone)]
pub struct Options {
    pub upstream: String,
    pub tenants: Vec<T>,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
    /// `tag` or `security`.
    pub marker: &'static str,
    /// `export.max_line_bytes`.
    pub max_line_bytes: usize,
    /// Where audit records go (`None`: no audit trail in tests).
    pub audit_file: Option<PathBuf>,
    /// Extra `key = value` lines for the `[server]` table.
    pub server_extra: String,
    /// `[audit.fhir]` lines (`None`: no AuditEvents).
    pub audit_fhir: Option<String>,
    /// Serve as `fhir-fence serve` does, on this many worker threads (`workers.rs`); `None`:
    /// everything on the test's own runtime (`server::run`).
    pub workers: Option<usize>,
    /// Tables appended to the config (e.g. another issuer).
    pub extra: String,
}

impl Options {
    pub fn new(upstream: &str, tenants: &[T]) -> Self {
        Options {
            upstream: upstream.to_owned(),
            tenants: tenants.to_vec(),
            max_body_bytes: 65536,
            request_timeout_ms: 20_000,
            marker: "tag",
            max_line_bytes: 1 << 20,
            audit_file: None,
            server_extra: String::new(),
            workers: None,
            audit_fhir: None,
            extra: String::new(),
        }
    }
}

/// A running fhir-fence.
pub struct Fence {
    pub base: String,
    pub admin: String,
    pub live: Arc<Live>,
    pub config_path: PathBuf,
    /// The public and admin ports (a rewritten config must keep them).
    pub ports: (u16, u16),
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Fence {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The test config. Issuers: `dev` (HS256, every tenant), `rs` (RS256, JWKS, claim `$.org.id`,
/// only the first tenant), `es` (ES256, only the first tenant).
pub fn config_text(o: &Options, public_port: u16, admin_port: u16) -> String {
    let all: Vec<String> = o.tenants.iter().map(|t| format!("{:?}", t.name)).collect();
    let first = format!("{:?}", o.tenants[0].name);
    let mut s = format!(
        r#"
[server]
listen = "127.0.0.1:{public_port}"
public_base = "http://127.0.0.1:{public_port}/fhir"
max_body_bytes = {max_body}
{server_extra}

[admin]
listen = "127.0.0.1:{admin_port}"

[tenancy]
marker = "{marker}"
system = "{SYSTEM}"
allowed_external_bases = ["https://terminology.example.org/fhir"]
shared_canonical_bases = ["http://hl7.org/fhir/"]

[export]
max_line_bytes = {max_line}

[audit]
{audit}

[upstreams.main]
base_url = "{upstream}"
request_timeout_ms = {timeout}

[issuers.dev]
iss = "https://issuer.test/dev"
audience = ["http://127.0.0.1:{public_port}/fhir"]
algorithms = ["HS256"]
secret_file = "{secret}"
tenant_claim = "$.tenant"
tenants = [{all}]

[issuers.rs]
iss = "https://issuer.test/rs"
audience = ["fhir-fence-tests"]
algorithms = ["RS256"]
jwks_file = "{rs_jwks}"
signing_key_file = "{rs_key}"
tenant_claim = "$.org.id"
tenants = [{first}]

[issuers.es]
iss = "https://issuer.test/es"
audience = ["fhir-fence-tests"]
algorithms = ["ES256"]
jwks_file = "{es_jwks}"
signing_key_file = "{es_key}"
tenant_claim = "$.tenant"
tenants = [{first}]
"#,
        max_body = o.max_body_bytes,
        server_extra = o.server_extra,
        upstream = o.upstream,
        timeout = o.request_timeout_ms,
        marker = o.marker,
        max_line = o.max_line_bytes,
        audit = match &o.audit_file {
            Some(f) => format!("sink = \"file\"\nfile = {:?}", f.display().to_string()),
            None => "sink = \"none\"".to_owned(),
        } + &o.audit_fhir.as_ref().map(|l| format!("\n[audit.fhir]\n{l}")).unwrap_or_default(),
        secret = fixture("dev-hs256.secret"),
        rs_jwks = fixture("keys/rs256-jwks.json"),
        rs_key = fixture("keys/rs256-private.pem"),
        es_jwks = fixture("keys/es256-jwks.json"),
        es_key = fixture("keys/es256-private.pem"),
        all = all.join(", "),
    );
    for t in &o.tenants {
        s.push_str(&format!(
            "\n[tenants.{name}]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\nstatus = \"{status}\"\noperations = {ops:?}\nsubscription_destinations = {dest:?}\n",
            name = t.name,
            prefix = t.prefix,
            upstream = t.upstream,
            status = if t.suspended { "suspended" } else { "active" },
            ops = t.operations,
            dest = t.destinations
        ));
        s.push_str(&t.extra);
        s.push('\n');
        if !t.limits.is_empty() {
            s.push_str(&format!("[tenants.{}.limits]\n{}\n", t.name, t.limits));
        }
    }
    s.push('\n');
    s.push_str(&o.extra);
    s
}

/// `fhir-fence check` on a config text: `Err(stderr)` when it refuses it.
pub fn check_config(text: &str) -> Result<(), String> {
    check_path(&write_config(text))
}

/// `fhir-fence check --config path`: `Err(stderr)` when refused.
pub fn check_path(path: &std::path::Path) -> Result<(), String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhir-fence"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn write_config(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fhir-fence-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts fhir-fence in-process and waits until it has read the upstream's CapabilityStatement.
pub async fn start(o: Options) -> Fence {
    start_with(o, write_config).await
}

/// [`start`], with the config file written by `place` (given the config's text; it returns
/// the path fhir-fence is started with), e.g. laid out like a Kubernetes ConfigMap volume.
pub async fn start_with(o: Options, place: impl FnOnce(&str) -> PathBuf) -> Fence {
    // `FHIR_FENCE_TEST_LOG=info cargo test … -- --nocapture` shows fhir-fence's own log (with
    // the upstream diagnostics it withholds from clients).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("FHIR_FENCE_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let sockets = fhir_fence::workers::bind("127.0.0.1:0".parse().unwrap(), o.workers.unwrap_or(1)).unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (pp, ap) = (sockets[0].local_addr().unwrap().port(), admin.local_addr().unwrap().port());
    let path = place(&config_text(&o, pp, ap));
    let snap = Arc::new(Snapshot::build(config::load(&path).unwrap()).unwrap());
    assert!(
        snap.capabilities("main").await.is_some(),
        "the upstream at {} did not serve its CapabilityStatement",
        o.upstream
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let live = Live::new(&path, snap);
    let stopped = async {
        let _ = stopped.await;
    };
    let server = match o.workers {
        Some(_) => tokio::spawn({
            let live = live.clone();
            async move { fhir_fence::workers::run(live, sockets, admin, stopped).await.unwrap() }
        }),
        None => {
            let public = TcpListener::from_std(sockets.into_iter().next().unwrap()).unwrap();
            tokio::spawn(fhir_fence::server::run(live.clone(), public, admin, stopped))
        }
    };
    Fence {
        base: format!("http://127.0.0.1:{pp}/fhir"),
        admin: format!("http://127.0.0.1:{ap}"),
        live,
        config_path: path,
        ports: (pp, ap),
        stop: Some(stop),
        server: Some(server),
    }
}

impl Fence {
    /// Starts the graceful shutdown (what SIGTERM does in `fhir-fence serve`).
    pub fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Waits until the server has drained and stopped.
    pub async fn stopped(&mut self) {
        if let Some(task) = self.server.take() {
            task.await.expect("the server task ended cleanly");
        }
    }

    /// Writes a new config file for `o` (same listeners); nothing is reloaded by this alone.
    pub fn rewrite_config(&self, o: &Options) {
        std::fs::write(&self.config_path, config_text(o, self.ports.0, self.ports.1)).unwrap();
    }

    /// The snapshot serving now.
    pub fn snap(&self) -> Arc<Snapshot> {
        self.live.snapshot()
    }

    /// A valid token for `tenant` from the HS256 `dev` issuer.
    pub fn token(&self, tenant: &str) -> String {
        self.token_from("dev", tenant)
    }

    pub fn token_from(&self, issuer: &str, tenant: &str) -> String {
        let snap = self.snap();
        let cfg = &snap.loaded.config.issuers[issuer];
        let keys = snap.verifier.issuer_keys(issuer).unwrap();
        fhir_fence::identity::mint(cfg, keys, tenant, "tester", 300).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path)
    }
}
