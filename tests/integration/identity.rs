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

fn hs_token(_fence: &Fence, claims: Value) -> String {
    let secret = std::fs::read(fixture("dev-hs256.secret")).unwrap();
    let secret: Vec<u8> = secret.into_iter().filter(|b| *b != b'\n').collect();
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
async fn a_remembered_token_does_not_vouch_for_an_altered_one() {
    let (fence, _up, ts) = setup().await;
    let good = fence.token(&ts[0].name);
    for _ in 0..3 {
        // Verified once, then answered from the verified-token cache.
        assert_eq!(get(&fence.url("Patient/p1")).bearer(&good).send().await.status, 200);
    }
    let (head, sig) = good.rsplit_once('.').unwrap();
    let flipped = if sig.ends_with('A') { "B" } else { "A" };
    let altered_signature = format!("{head}.{}{flipped}", &sig[..sig.len() - 1]);
    let no_signature = format!("{head}.");
    let other_tenant_claims = fence.token(&ts[1].name);
    let (_, other_sig) = other_tenant_claims.rsplit_once('.').unwrap();
    let spliced = format!("{head}.{other_sig}");
    for bad in [altered_signature, no_signature, spliced] {
        let r = get(&fence.url("Patient/p1")).bearer(&bad).send().await;
        assert_eq!(r.status, 401, "{bad}");
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

/// Tokens that must all be refused with 401, each with a label: expired, not yet valid, issued
/// in the future, wrong audience, unknown issuer, no tenant claim, unknown tenant, bad signature,
/// garbage, `alg: none`, HS256 signed with the RS issuer's public key, an issuer asserting a
/// tenant it may not, and an unknown `kid`. `a` may be asserted by every issuer, `b` only by `dev`.
pub fn bad_tokens(fence: &Fence, a: &str, b: &str) -> Vec<(&'static str, String)> {
    use base64::Engine;
    let now = get_current_timestamp();
    let with = |k: &str, v: Value| {
        let mut c = dev_claims(fence, a);
        c[k] = v;
        hs_token(fence, c)
    };
    let mut no_tenant = dev_claims(fence, a);
    no_tenant.as_object_mut().unwrap().remove("tenant");
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let rs_claims = |tenant: &str| json!({"iss": "https://issuer.test/rs", "aud": "fhir-fence-tests", "iat": now, "exp": now + 300, "org": {"id": tenant}});
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("test-rs-1".into());
    let public_pem = std::fs::read(fixture("keys/rs256-public.pem")).unwrap();
    let rs_pem = std::fs::read(fixture("keys/rs256-private.pem")).unwrap();
    let mut unknown_kid = Header::new(Algorithm::RS256);
    unknown_kid.kid = Some("rotated-away".into());
    let snap = fence.snap();
    let rs_cfg = &snap.loaded.config.issuers["rs"];
    let rs_keys = snap.verifier.issuer_keys("rs").unwrap();
    vec![
        ("expired", with("exp", json!(now - 120))),
        ("not yet valid", with("nbf", json!(now + 600))),
        ("issued in the future", with("iat", json!(now + 600))),
        ("wrong audience", with("aud", json!("https://someone-else/fhir"))),
        ("unknown issuer", with("iss", json!("https://issuer.test/unknown"))),
        ("no tenant claim", hs_token(fence, no_tenant)),
        ("unknown tenant", hs_token(fence, dev_claims(fence, "nobody"))),
        (
            "bad signature",
            encode(&Header::new(Algorithm::HS256), &dev_claims(fence, a), &EncodingKey::from_secret(&[7u8; 48]))
                .unwrap(),
        ),
        ("garbage", "not.a.jwt".to_owned()),
        ("alg none", format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&dev_claims(fence, a)))),
        (
            "HS256 with the RS public key",
            encode(&hs_header, &rs_claims(a), &EncodingKey::from_secret(&public_pem)).unwrap(),
        ),
        ("issuer asserting a tenant it may not", fhir_fence::identity::mint(rs_cfg, rs_keys, b, "u", 300).unwrap()),
        ("unknown kid", encode(&unknown_kid, &rs_claims(a), &EncodingKey::from_rsa_pem(&rs_pem).unwrap()).unwrap()),
    ]
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let (fence, up, ts) = setup().await;
    for (label, token) in bad_tokens(&fence, &ts[0].name, &ts[1].name) {
        let r = get(&fence.url("Patient/p1")).bearer(&token).send().await;
        assert_eq!(r.status, 401, "{label}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer error=\"invalid_token\""), "{label}");
        assert_eq!(r.body["issue"][0]["code"], "login", "{label}");
    }
    assert!(up.seen().is_empty(), "no rejected token may cause upstream traffic");
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

/// Tenants named by the issuer itself: one issuer per tenant (a realm each, no tenant claim),
/// and an issuer template whose `{tenant}` is the tenant's name or an id mapped to one (as
/// Entra ID's `tid`). A claim naming another tenant changes nothing; an `iss` the template
/// does not cover, an unmapped id, or an issuer's tenant it may not assert is 401.
#[tokio::test]
async fn the_issuer_itself_names_the_tenant() {
    let ts = tenants(2);
    let (a, b) = (ts[0].name.clone(), ts[1].name.clone());
    let (a_name, a_prefix) = (a.clone(), ts[0].prefix.clone());
    let upstream = fake::start(move |_| Answer::Json(200, fake::stored("Patient", &a_prefix, &a_name, "p1"))).await;
    let mut o = Options::new(&upstream.base, &ts);
    let secret = fixture("dev-hs256.secret");
    o.extra = format!(
        r#"
[issuers.realm_a]
iss = "https://kc.test/realms/{a}"
audience = ["realm-aud"]
algorithms = ["HS256"]
secret_file = "{secret}"
tenant = "{a}"

[issuers.entra]
iss = "https://login.test/{{tenant}}/v2.0"
audience = ["entra-aud"]
algorithms = ["HS256"]
secret_file = "{secret}"
tenant_ids = {{ "9188040d-6c67-4c5b-b112-36a304b66dad" = "{a}" }}
tenants = ["{a}"]

[issuers.named]
iss = "https://named.test/t/{{tenant}}"
audience = ["named-aud"]
algorithms = ["HS256"]
secret_file = "{secret}"
tenants = ["{a}"]
"#
    );
    let fence = support::start(o).await;
    let token = |iss: &str, aud: &str, claims: Value| {
        let now = get_current_timestamp();
        let mut c = json!({"iss": iss, "aud": aud, "sub": "u", "iat": now, "exp": now + 300});
        c.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
        hs_token(&fence, c)
    };
    let ok = [
        ("the realm's own tenant", token(&format!("https://kc.test/realms/{a}"), "realm-aud", json!({}))),
        ("a claim cannot move it", token(&format!("https://kc.test/realms/{a}"), "realm-aud", json!({"tenant": b}))),
        ("a mapped tid", token("https://login.test/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0", "entra-aud", json!({}))),
        ("the tenant's name", token(&format!("https://named.test/t/{a}"), "named-aud", json!({"tenant": b}))),
    ];
    for (why, t) in ok {
        let (status, d) = status_with(&fence, &t).await;
        assert_eq!(status, 200, "{why}: {d}");
    }
    let refused = [
        ("another realm", token(&format!("https://kc.test/realms/{b}"), "realm-aud", json!({}))),
        (
            "an unmapped tid",
            token("https://login.test/00000000-0000-0000-0000-000000000000/v2.0", "entra-aud", json!({})),
        ),
        ("a name where ids are mapped", token(&format!("https://login.test/{a}/v2.0"), "entra-aud", json!({}))),
        ("a tenant the issuer may not assert", token(&format!("https://named.test/t/{b}"), "named-aud", json!({}))),
        ("a path beyond the template", token(&format!("https://named.test/t/{a}/x"), "named-aud", json!({}))),
        ("another issuer's audience", token(&format!("https://named.test/t/{a}"), "entra-aud", json!({}))),
    ];
    for (why, t) in refused {
        let (status, d) = status_with(&fence, &t).await;
        assert_eq!(status, 401, "{why}: {d}");
    }
}

/// `fhir-fence check` names an issuer whose tenant source is missing, doubled or malformed.
#[test]
fn issuers_name_their_tenant_source_exactly_once() {
    let ts = tenants(1);
    let base = support::config_text(&Options::new("http://127.0.0.1:9/fhir", &ts), 1, 2);
    let t = ts[0].name.clone();
    let secret = fixture("dev-hs256.secret");
    let cases = [
        ("no source", format!("iss = \"https://x.test/a\"\ntenants = [\"{t}\"]"), "exactly one of"),
        (
            "two sources",
            format!("iss = \"https://x.test/a\"\ntenant = \"{t}\"\ntenant_claim = \"$.t\""),
            "exactly one of",
        ),
        (
            "a template and a claim",
            format!("iss = \"https://x.test/{{tenant}}\"\ntenant_claim = \"$.t\"\ntenants = [\"{t}\"]"),
            "exactly one of",
        ),
        (
            "the placeholder in the host",
            format!("iss = \"https://{{tenant}}.x.test/\"\ntenants = [\"{t}\"]"),
            "in the path",
        ),
        ("another placeholder", format!("iss = \"https://x.test/{{tid}}\"\ntenants = [\"{t}\"]"), "placeholder"),
        (
            "ids without a template",
            format!("iss = \"https://x.test/a\"\ntenant = \"{t}\"\ntenant_ids = {{ a = \"{t}\" }}"),
            "tenant_ids",
        ),
        (
            "an id mapped outside",
            format!("iss = \"https://x.test/{{tenant}}\"\ntenant_ids = {{ a = \"nobody\" }}\ntenants = [\"{t}\"]"),
            "tenant_ids",
        ),
        (
            "a template over another issuer's iss",
            format!("iss = \"https://issuer.test/{{tenant}}\"\ntenants = [\"{t}\"]"),
            "can match both",
        ),
        (
            "a placeholder in the query",
            format!("iss = \"https://x.test/a?t={{tenant}}\"\ntenants = [\"{t}\"]"),
            "no query",
        ),
        (
            "a fixed tenant and others",
            format!("iss = \"https://x.test/a\"\ntenant = \"{t}\"\ntenants = [\"{t}\", \"zz\"]"),
            "tenants",
        ),
    ];
    for (why, lines, says) in cases {
        let text = format!("{base}\n[issuers.extra]\naudience = [\"a\"]\nalgorithms = [\"HS256\"]\nsecret_file = \"{secret}\"\n{lines}\n");
        let err = support::check_config(&text).expect_err(why);
        assert!(err.contains("issuers.extra") && err.contains(says), "{why}: {err}");
    }
}
