//! The export fast path (`bulk::fastline`) against the full outbound check
//! (`outbound::resource`), differentially: whenever the fast path accepts a line, the full
//! check accepts it too and produces the same JSON; when it declines, it leaves nothing behind.
//! The first byte chooses whether the line must be an Observation (a typed export file) or may
//! be any type; the rest is the line. Two tenants (`acme`, `globex`) share one upstream; the
//! checks run for `acme`.
#![no_main]
use fhir_fence::outbound::fast_line;
use fhir_fence::config;
use fhir_fence::fhir::json::parse_strict;
use fhir_fence::{outbound, scope::Ctx};
use fhir_fence::state::Snapshot;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures");

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fhir-fence-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fence.toml");
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
public_base = "http://127.0.0.1:8080/fhir"
[admin]
listen = "127.0.0.1:0"
[tenancy]
marker = "tag"
system = "https://fhir-fence.dev/CodeSystem/tenant"
shared_canonical_bases = ["http://hl7.org/fhir/"]
[paging]
key_file = "{FIXTURES}/dev-seal.key"
[upstreams.main]
base_url = "http://127.0.0.1:9/fhir"
[issuers.dev]
iss = "https://issuer.fuzz"
audience = ["http://127.0.0.1:8080/fhir"]
algorithms = ["HS256"]
secret_file = "{FIXTURES}/dev-hs256.secret"
tenant_claim = "$.tenant"
tenants = ["acme", "globex"]
[tenants.acme]
prefix = "acme"
upstream = "main"
status = "active"
[tenants.globex]
prefix = "globex"
upstream = "main"
status = "active"
"#
        );
        std::fs::write(&path, toml).unwrap();
        let snap = config::load(&path).and_then(Snapshot::build).expect("the fuzz config builds");
        let _ = std::fs::remove_dir_all(&dir);
        snap
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, line)) = data.split_first() else { return };
    let snap = snapshot();
    let tenant = &*snap.tenants["acme"];
    let upstream = &*snap.upstreams["main"];
    let rtype = (mode & 1 == 0).then_some("Observation");
    let ctx = Ctx { snap, tenant, upstream, correlation: "fuzz", grant: 0 };
    let mut out = Vec::new();
    if fast_line(snap, tenant, upstream, rtype).accept(line, &mut out).is_err() {
        assert!(out.is_empty(), "a declined line leaves nothing behind");
        return;
    }
    let got: Value = serde_json::from_slice(&out).expect("the fast path writes JSON");
    let v = parse_strict(line).expect("the fast path accepted what strict JSON refuses");
    if let Some(t) = rtype {
        assert_eq!(v.get("resourceType").and_then(Value::as_str), Some(t), "a line of another type");
    }
    let want = outbound::resource(&ctx, v).expect("the fast path accepted what the full check refuses").into_tree();
    assert_eq!(got, want, "the two checks disagree on the output");
});
