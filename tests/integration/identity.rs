//! Identity (RFC 8725): who may call, as which tenant; and what never reaches the upstream.
use crate::support::client::get;
use crate::support::fake::{self, Answer};
use crate::support::{self, fixture, tenants, Fence, Options};
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

async fn setup() -> (Fence, fake::Fake, Vec<support::T>) {
    let mut ts = tenants(3);
    ts[2].suspended = true;
    let (a_name, a_prefix) = (ts[0].name.clone(), ts[0].prefix.clone());
    let upstream = fake::start(move |_| Answer::Json(200, fake::stored("Patient", &a_prefix, &a_name, "p1"))).await;
    let fence = support::start(Options::new(&upstream.base, &ts)).await;
    (fence, upstream, ts)
}

fn hs_token(fence: &Fence, claims: Value) -> String {
    let secret = std::fs::read(fixture("dev-hs256.secret")).unwrap();
    let secret: Vec<u8> = secret.into_iter().filter(|b| *b != b'\n').collect();
    let _ = fence;
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&secret)).unwrap()
}

fn dev_claims(fence: &Fence, tenant: &str) -> Value {
    let now = get_current_timestamp();
    json!({"iss": "https://issuer.test/dev", "aud": fence.base, "sub": "u", "iat": now, "exp": now + 300, "tenant": tenant})
}

async fn status_with(fence: &Fence, token: &str) -> (u16, String) {
    let r = get(&fence.url("Patient/p1")).bearer(token).send().await;
    let d = if r.status == 200 { String::new() } else { r.diagnostics() };
    (r.status, d)
}

#[tokio::test]
async fn valid_tokens_from_each_issuer_kind_are_accepted() {
    let (fence, _up, ts) = setup().await;
    for issuer in ["dev", "rs", "es"] {
        let r = get(&fence.url("Patient/p1")).bearer(&fence.token_from(issuer, &ts[0].name)).send().await;
        assert_eq!(r.status, 200, "issuer {issuer}: {}", r.body);
        assert_eq!(r.body["id"], "p1");
    }
}

#[tokio::test]
async fn missing_token_is_401_with_challenge_and_outcome() {
    let (fence, up, _) = setup().await;
    let r = get(&fence.url("Patient/p1")).send().await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.body["issue"][0]["code"], "login");
    let r = get(&fence.url("Patient/p1")).header("authorization", "Basic dXNlcjpwYXNz").send().await;
    assert_eq!(r.status, 401);
    assert!(up.seen().is_empty(), "nothing may reach the upstream before identity is proven");
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let (fence, up, ts) = setup().await;
    let a = &ts[0].name;
    let now = get_current_timestamp();

    let mut c = dev_claims(&fence, a);
    c["exp"] = json!(now - 120);
    assert_eq!(status_with(&fence, &hs_token(&fence, c)).await.0, 401, "expired");

    let mut c = dev_claims(&fence, a);
    c["nbf"] = json!(now + 600);
    assert_eq!(status_with(&fence, &hs_token(&fence, c)).await.0, 401, "not yet valid");

    let mut c = dev_claims(&fence, a);
    c["iat"] = json!(now + 600);
    assert_eq!(status_with(&fence, &hs_token(&fence, c)).await.0, 401, "issued in the future");

    let mut c = dev_claims(&fence, a);
    c["aud"] = json!("https://someone-else/fhir");
    assert_eq!(status_with(&fence, &hs_token(&fence, c)).await.0, 401, "wrong audience");

    let mut c = dev_claims(&fence, a);
    c["iss"] = json!("https://issuer.test/unknown");
    assert_eq!(status_with(&fence, &hs_token(&fence, c)).await.0, 401, "unknown issuer");

    let mut c = dev_claims(&fence, a);
    c.as_object_mut().unwrap().remove("tenant");
    assert_eq!(status_with(&fence, &hs_token(&fence, c)).await.0, 401, "no tenant claim");

    let c = dev_claims(&fence, "nobody");
    assert_eq!(status_with(&fence, &hs_token(&fence, c)).await.0, 401, "unknown tenant");

    // Signed with another secret.
    let forged =
        encode(&Header::new(Algorithm::HS256), &dev_claims(&fence, a), &EncodingKey::from_secret(&[7u8; 48])).unwrap();
    assert_eq!(status_with(&fence, &forged).await.0, 401, "bad signature");

    assert_eq!(status_with(&fence, "not.a.jwt").await.0, 401, "garbage");
    assert!(up.seen().is_empty(), "no rejected token may cause upstream traffic");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (fence, _up, ts) = setup().await;
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&dev_claims(&fence, &ts[0].name)));
    let (status, _) = status_with(&fence, &token).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let (fence, _up, ts) = setup().await;
    let public_pem = std::fs::read(fixture("keys/rs256-public.pem")).unwrap();
    let now = get_current_timestamp();
    let claims = json!({"iss": "https://issuer.test/rs", "aud": "fhir-fence-tests", "iat": now, "exp": now + 300, "org": {"id": ts[0].name}});
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("test-rs-1".into());
    let token = encode(&header, &claims, &EncodingKey::from_secret(&public_pem)).unwrap();
    let (status, diag) = status_with(&fence, &token).await;
    assert_eq!(status, 401);
    assert!(diag.contains("algorithm"), "{diag}");
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let (fence, _up, ts) = setup().await;
    let pem = std::fs::read(fixture("keys/rs256-private.pem")).unwrap();
    let now = get_current_timestamp();
    let claims = json!({"iss": "https://issuer.test/rs", "aud": "fhir-fence-tests", "iat": now, "exp": now + 300, "org": {"id": ts[0].name}});
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rotated-away".into());
    let token = encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap();
    assert_eq!(status_with(&fence, &token).await.0, 401);
}

#[tokio::test]
async fn an_issuer_may_only_assert_its_own_tenants() {
    let (fence, _up, ts) = setup().await;
    // `rs` may assert only the first tenant; a correctly signed token for the second is refused.
    let cfg = &fence.snap.loaded.config.issuers["rs"];
    let keys = fence.snap.verifier.issuer_keys("rs").unwrap();
    let token = fhir_fence::identity::mint(cfg, keys, &ts[1].name, "u", 300).unwrap();
    let (status, diag) = status_with(&fence, &token).await;
    assert_eq!(status, 401);
    assert!(diag.contains("may not assert"), "{diag}");
}

#[tokio::test]
async fn suspended_tenant_is_403() {
    let (fence, up, ts) = setup().await;
    let r = get(&fence.url("Patient/p1")).bearer(&fence.token(&ts[2].name)).send().await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["issue"][0]["code"], "suspended");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn client_headers_never_reach_the_upstream() {
    let (fence, up, ts) = setup().await;
    let r = get(&fence.url("Patient/p1"))
        .bearer(&fence.token(&ts[0].name))
        .header("x-meta-snapshot-mode", "TAG")
        .header("x-cascade", "delete")
        .header("cookie", "session=1")
        .header("if-none-match", "W/\"1\"")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    for h in ["authorization", "x-meta-snapshot-mode", "x-cascade", "cookie", "if-none-match"] {
        assert!(!seen.headers.contains_key(h), "{h} was forwarded upstream");
    }
    assert_eq!(seen.headers.get("accept").unwrap(), "application/fhir+json");
    assert_eq!(seen.path, format!("/fhir/Patient/{}-p1", ts[0].prefix));
}

#[test]
fn check_names_the_bad_key() {
    let ts = tenants(1);
    let mut o = Options::new("http://127.0.0.1:9/fhir", &ts);
    o.max_body_bytes = 1;
    let good = support::config_text(&o, 1, 2);
    let bad = good.replace("algorithms = [\"RS256\"]", "algorithms = [\"none\"]");
    let err = fhir_fence::config::load(&support::write_config(&bad))
        .and_then(fhir_fence::state::Snapshot::build)
        .err()
        .expect("alg none must be refused");
    assert!(err.to_string().contains("issuers.rs.algorithms"), "{err}");

    let mixed = good.replace("algorithms = [\"HS256\"]", "algorithms = [\"HS256\", \"RS256\"]");
    let err = fhir_fence::config::load(&support::write_config(&mixed))
        .and_then(fhir_fence::state::Snapshot::build)
        .err()
        .unwrap();
    assert!(err.to_string().contains("issuers.dev.algorithms"), "{err}");

    let typo = good.replace("[admin]", "[admin]\nlisten_typo = 1");
    let err = fhir_fence::config::load(&support::write_config(&typo)).err().unwrap();
    assert!(err.to_string().contains("listen_typo"), "{err}");

    let prefix = good.replace(&format!("prefix = \"{}\"", ts[0].prefix), "prefix = \"Bad-Prefix\"");
    let err = fhir_fence::config::load(&support::write_config(&prefix)).err().unwrap();
    assert!(err.to_string().contains(&format!("tenants.{}.prefix", ts[0].name)), "{err}");
}
