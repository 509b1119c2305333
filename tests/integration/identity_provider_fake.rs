//! An identity provider the test controls (the in-process fake behind a TLS front with a test
//! CA), serving discovery documents and the test JWKS, for what the real one cannot be made to
//! do: a discovery document naming another issuer, tokens that are not RFC 9068 access tokens,
//! a provider that hangs. Tokens are signed with the test RSA key (`fixtures/keys`), whose
//! public key the fake serves. `identity_provider.rs` runs against oidc-provider.
use crate::support::client::get;
use crate::support::fake::{self, searchset, Answer};
use crate::support::pki::{self, Ca, Volume};
use crate::support::{self, fixture, tenants, Options};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const AUD: &str = "urn:fhir-fence:fake-provider-test";

/// A token of `iss` for `tenant`, signed with the test RSA key (kid `test-rs-1`), with `typ`.
fn signed(iss: &str, typ: Option<&str>, tenant: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-rs-1".into());
    header.typ = typ.map(str::to_owned);
    let claims = json!({"iss": iss, "aud": AUD, "exp": now + 300, "iat": now, "sub": "app", "tenant": tenant});
    let pem = std::fs::read(fixture("keys/rs256-private.pem")).unwrap();
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

/// `[issuers.NAME]` for a provider at `https://localhost:port`, keys found by `discovery`.
fn issuer(name: &str, iss: &str, discovery: &str, ca: &str, tenant: &str, extra: &str) -> String {
    format!(
        "[issuers.{name}]\niss = \"{iss}\"\ndiscovery = \"{discovery}\"\nca_file = {ca:?}\naudience = [\"{AUD}\"]\n\
         algorithms = [\"RS256\"]\ntenant_claim = \"$.tenant\"\ntenants = [{tenant:?}]\n{extra}\n"
    )
}

/// The provider's count of `result` refreshes for `issuer` (the counter is process-wide: each
/// test's issuers have names of their own).
async fn refreshes(admin: &str, issuer: &str, result: &str) -> u64 {
    let text = String::from_utf8_lossy(&get(&format!("{admin}/metrics")).send().await.raw).into_owned();
    let series = format!("fhir_fence_jwks_refreshes_total{{issuer=\"{issuer}\",result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn a_discovery_naming_another_issuer_and_tokens_of_another_type_are_refused() {
    let ts = tenants(1);
    let up = fake::start(|s| {
        Answer::Json(200, searchset(&format!("http://{}/fhir", s.headers["host"].to_str().unwrap()), vec![], None))
    })
    .await;
    let ca = Ca::new();
    let jwks: Value = serde_json::from_slice(&std::fs::read(fixture("keys/rs256-jwks.json")).unwrap()).unwrap();
    // The front's port is known only once it listens: the fake reads it from the Host header.
    let provider = fake::start(move |s| {
        let origin = format!("https://{}", s.headers["host"].to_str().unwrap());
        let discovery =
            |issuer: &str| Answer::Json(200, json!({"issuer": issuer, "jwks_uri": format!("{origin}/jwks")}));
        match s.path.as_str() {
            "/jwks" => Answer::Json(200, jwks.clone()),
            "/good/.well-known/openid-configuration" => discovery("https://idp.example/good"),
            "/access/.well-known/openid-configuration" => discovery("https://idp.example/access"),
            // A document naming another issuer than the one configured (a misdirected or
            // hostile discovery URL): its keys are not this issuer's.
            "/bad/.well-known/openid-configuration" => discovery("https://evil.example"),
            _ => Answer::Json(404, json!({})),
        }
    })
    .await;
    let host = provider.base.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let front = pki::tls_front(host, &ca.issue(&["localhost"]), None).await;
    let origin = format!("https://localhost:{}", front.rsplit(':').next().unwrap());
    let files = Volume::new();
    files.swap(&[("ca.pem", &ca.pem())]);
    let ca_file = files.path("ca.pem");
    let well_known = |p: &str| format!("{origin}/{p}/.well-known/openid-configuration");
    let tenant = ts[0].name.clone();
    let mut o = Options::new(&up.base, &ts);
    o.extra = issuer("fake-good", "https://idp.example/good", &well_known("good"), &ca_file, &tenant, "")
        + &issuer("fake-bad", "https://idp.example/bad", &well_known("bad"), &ca_file, &tenant, "")
        + &issuer(
            "fake-access",
            "https://idp.example/access",
            &well_known("access"),
            &ca_file,
            &tenant,
            "token_type = \"at+jwt\"",
        );
    let fence = support::start(o).await;
    let status = |token: String| {
        let url = fence.url("Patient?name=x");
        async move { get(&url).bearer(&token).send().await }
    };

    // The same key verifies the issuer whose discovery document names it…
    let r = status(signed("https://idp.example/good", None, &tenant)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // …and not the one whose document names another issuer: 401, and the failure counted.
    let r = status(signed("https://idp.example/bad", None, &tenant)).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(refreshes(&fence.admin, "fake-bad", "failed").await >= 1);
    assert_eq!(refreshes(&fence.admin, "fake-bad", "ok").await, 0);

    // An issuer of RFC 9068 access tokens: its own key's token verifies as `at+jwt` only; a
    // plain JWT (an ID token's type) or none is refused, whatever its signature.
    let iss = "https://idp.example/access";
    let r = status(signed(iss, Some("at+jwt"), &tenant)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for typ in [Some("JWT"), None] {
        let r = status(signed(iss, typ, &tenant)).await;
        assert_eq!(r.status, 401, "{typ:?}: {}", r.body);
        assert!(r.diagnostics().contains("at+jwt"), "{typ:?}: {}", r.body);
    }
}

#[tokio::test]
async fn a_hanging_provider_costs_a_request_a_bounded_401_not_a_stall() {
    let ts = tenants(1);
    let up = fake::start(|s| {
        Answer::Json(200, searchset(&format!("http://{}/fhir", s.headers["host"].to_str().unwrap()), vec![], None))
    })
    .await;
    let provider = fake::start(|_| Answer::Hang).await;
    let ca = Ca::new();
    let host = provider.base.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let front = pki::tls_front(host, &ca.issue(&["localhost"]), None).await;
    let origin = format!("https://localhost:{}", front.rsplit(':').next().unwrap());
    let files = Volume::new();
    files.swap(&[("ca.pem", &ca.pem())]);
    let iss = "https://idp.example/hanging";
    let mut o = Options::new(&up.base, &ts);
    let discovery = format!("{origin}/.well-known/openid-configuration");
    o.extra = issuer("fake-hanging", iss, &discovery, &files.path("ca.pem"), &ts[0].name, "");
    let fence = support::start(o).await;
    let token = signed(iss, None, &ts[0].name);

    // No keys yet, and the provider never answers: the request waits for the one fetch in
    // flight at most `WAIT` in all, then gets 401 — never a 500, never a stall.
    let bound = fhir_fence::identity::remote::WAIT + Duration::from_secs(2);
    let started = Instant::now();
    let r = get(&fence.url("Patient?name=x")).bearer(&token).send().await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    assert!(provider.seen().iter().any(|s| s.path == "/.well-known/openid-configuration"), "the provider was asked");
    assert!(refreshes(&fence.admin, "fake-hanging", "failed").await >= 1, "the timeout is counted as a failure");
    // Inside the back-off that follows, the next request is answered at once.
    let started = Instant::now();
    let r = get(&fence.url("Patient?name=x")).bearer(&token).send().await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}
