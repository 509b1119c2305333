//! A [`Ctx`] for unit tests beside the scope and outbound code: a [`Snapshot`] built from a
//! two-tenant config (`acme`, `globex`, prefixes equal to the names) on one upstream that is
//! never called (port 9 refuses), and capabilities for Patient and Observation. For the checks
//! that need no upstream: preparing a write, planning a transaction entry until it would
//! search, rewriting an answer, the outbound check.
use super::Ctx;
use crate::config;
use crate::fhir::capabilities::Capabilities;
use crate::state::Snapshot;
use serde_json::json;
use std::sync::OnceLock;

/// The tenant marker's coding system in this config.
pub const SYSTEM: &str = "https://fhir-fence.dev/CodeSystem/tenant";

fn snapshot() -> &'static Snapshot {
    shared()
}

/// The same snapshot, shared (for code that keeps an `Arc`, such as a `tenant_data::Job`).
pub fn shared() -> &'static std::sync::Arc<Snapshot> {
    static SNAP: OnceLock<std::sync::Arc<Snapshot>> = OnceLock::new();
    SNAP.get_or_init(|| {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
        let dir = std::env::temp_dir().join(format!("fhir-fence-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join("fence.toml");
        let mut toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
public_base = "http://fence.test/fhir"
[admin]
listen = "127.0.0.1:0"
[tenancy]
marker = "tag"
system = "{SYSTEM}"
shared_canonical_bases = ["http://hl7.org/fhir/"]
[paging]
key_file = "{fixtures}/dev-seal.key"
[upstreams.main]
base_url = "http://127.0.0.1:9/fhir"
[issuers.dev]
iss = "https://issuer.test"
audience = ["http://fence.test/fhir"]
algorithms = ["HS256"]
secret_file = "{fixtures}/dev-hs256.secret"
tenant_claim = "$.tenant"
tenants = ["acme", "globex"]
"#
        );
        for name in ["acme", "globex"] {
            toml += &format!("[tenants.{name}]\nprefix = \"{name}\"\nupstream = \"main\"\nstatus = \"active\"\n");
        }
        std::fs::write(&path, toml).expect("the test config is written");
        let snap = config::load(&path).and_then(Snapshot::build).expect("the test config builds");
        let _ = std::fs::remove_dir_all(&dir);
        std::sync::Arc::new(snap)
    })
}

/// The context of a request by `tenant` (`acme` or `globex`).
pub fn ctx(tenant: &str) -> Ctx<'static> {
    let snap = snapshot();
    Ctx { snap, tenant: &snap.tenants[tenant], upstream: &snap.upstreams["main"], correlation: "unit", grant: 0 }
}

/// Patient and Observation, searchable by `_id`, `_tag`, `identifier`, `name` and `subject`.
pub fn capabilities() -> Capabilities {
    let params = json!([
        {"name": "_id", "type": "token"}, {"name": "_tag", "type": "token"},
        {"name": "identifier", "type": "token"}, {"name": "name", "type": "string"},
        {"name": "subject", "type": "reference"}
    ]);
    Capabilities::from_statement(json!({"resourceType": "CapabilityStatement", "status": "active",
        "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"],
        "rest": [{"mode": "server", "resource": [
            {"type": "Patient", "interaction": [{"code": "read"}, {"code": "search-type"}], "searchParam": params},
            {"type": "Observation", "interaction": [{"code": "read"}, {"code": "search-type"}], "searchParam": params}
        ], "interaction": [{"code": "transaction"}]}]}))
    .expect("the test CapabilityStatement reads")
}

/// `meta` with the tenant coding of `tenant`.
pub fn marked(tenant: &str) -> serde_json::Value {
    json!({"tag": [{"system": SYSTEM, "code": tenant}]})
}
