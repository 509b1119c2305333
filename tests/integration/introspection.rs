//! Opaque tokens checked by RFC 7662 introspection, against an endpoint the test controls (the
//! in-process fake behind a TLS front with a test CA): what makes an answer an active token
//! for a tenant, what it is cached for, and that a provider that fails or hangs gets a bounded
//! 503 — never a 500, never a stall. `identity_provider.rs` runs the same against oidc-provider.
use crate::support::client::get;
use crate::support::fake::{self, searchset, Answer, Seen};
use crate::support::pki::{self, Ca, Volume};
use crate::support::{self, tenants, Options};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ISS: &str = "https://idp.example";
const AUD: &str = "urn:fhir-fence:introspection-test";

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The token a request to the fake introspection endpoint asks about.
fn token_of(s: &Seen) -> String {
    form_urlencoded::parse(&s.raw).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned()).unwrap_or_default()
}

#[tokio::test]
async fn introspection_answers_are_judged_like_claims() {
    let ts = tenants(2);
    let (mine, theirs) = (ts[0].name.clone(), ts[1].name.clone());
    let up = fake::start(|s| {
        Answer::Json(200, searchset(&format!("http://{}/fhir", s.headers["host"].to_str().unwrap()), vec![], None))
    })
    .await;
    let active = move |extra: Value| {
        let mut a = json!({"active": true, "tenant": mine, "aud": AUD, "iss": ISS, "exp": now() + 600,
            "client_id": "app", "token_type": "Bearer"});
        for (k, v) in extra.as_object().unwrap() {
            match v {
                Value::Null => a.as_object_mut().unwrap().remove(k),
                v => a.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        a
    };
    let theirs2 = theirs.clone();
    let provider = fake::start(move |s| {
        let basic = s.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        // fence:s3cret+/ (the secret form-encoded first, RFC 6749 §2.3.1)
        if s.method != "POST" || basic != "Basic ZmVuY2U6czNjcmV0JTJCJTJG" {
            return Answer::Json(401, json!({"error": "invalid_client"}));
        }
        match token_of(s).as_str() {
            "good" | "good-again" => Answer::Json(200, active(json!({}))),
            "array-aud" => Answer::Json(200, active(json!({"aud": ["urn:other", AUD]}))),
            "no-iss" => Answer::Json(200, active(json!({"iss": null}))),
            "stale" => Answer::Json(200, active(json!({"exp": now() - 30}))),
            "inactive" => Answer::Json(200, json!({"active": false})),
            "string-active" => Answer::Json(200, active(json!({"active": "true"}))),
            "other-aud" => Answer::Json(200, active(json!({"aud": "urn:other"}))),
            "no-aud" => Answer::Json(200, active(json!({"aud": null}))),
            "expired" => Answer::Json(200, active(json!({"exp": now() - 3600}))),
            "not-yet" => Answer::Json(200, active(json!({"nbf": now() + 3600}))),
            "dpop" => Answer::Json(200, active(json!({"token_type": "DPoP"}))),
            "bound" => Answer::Json(200, active(json!({"cnf": {"x5t#S256": "abc"}}))),
            "other-iss" => Answer::Json(200, active(json!({"iss": "https://evil.example"}))),
            "other-tenant" => Answer::Json(200, active(json!({"tenant": theirs2}))),
            "no-tenant" => Answer::Json(200, active(json!({"tenant": null}))),
            "duplicate" => Answer::Raw(200, "application/json", r#"{"active":true,"active":false}"#),
            "not-json" => Answer::Raw(200, "application/json", "active"),
            "error" => Answer::Json(500, json!({})),
            "hang" => Answer::Hang,
            _ => Answer::Json(200, json!({"active": false})),
        }
    })
    .await;
    let ca = Ca::new();
    let provider_host = provider.base.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let front = pki::tls_front(provider_host, &ca.issue(&["localhost"]), None).await;
    let port = front.rsplit(':').next().unwrap();
    let files = Volume::new();
    files.swap(&[("ca.pem", &ca.pem()), ("secret", "s3cret+/\n")]);
    let mut o = Options::new(&up.base, &ts);
    o.extra = format!(
        "[issuers.opaque]\niss = \"{ISS}\"\naudience = [\"{AUD}\"]\ntenant_claim = \"$.tenant\"\ntenants = [{:?}]\n\
         ca_file = {:?}\n[issuers.opaque.introspection]\nendpoint = \"https://localhost:{port}/introspect\"\n\
         client_id = \"fence\"\nclient_secret_file = {:?}\n",
        ts[0].name,
        files.0.join("ca.pem").display().to_string(),
        files.0.join("secret").display().to_string(),
    );
    let fence = support::start(o).await;
    // The secret file is watched like the config (a rotated secret is a reload).
    let watched = fence.snap().loaded.source_files(&fence.config_path);
    assert!(watched.iter().any(|p| p.ends_with("secret")), "{watched:?}");
    let calls = |token: &str| provider.seen().iter().filter(|s| token_of(s) == token).count();
    let status = |token: &'static str| {
        let url = fence.url("Patient?name=x");
        async move {
            let r = get(&url).header("authorization", &format!("Bearer {token}")).send().await;
            (r.status, r.header("retry-after").map(str::to_owned), r.body)
        }
    };

    // Active answers for the issuer's tenant, for this audience: served, and asked about once.
    for token in ["good", "array-aud", "no-iss"] {
        assert_eq!(status(token).await.0, 200, "{token}");
        assert_eq!(status(token).await.0, 200, "{token}");
        assert_eq!(calls(token), 1, "{token}: the answer is reused");
    }
    // An answer is never reused past the token's exp (here inside the clock leeway): asked again.
    assert_eq!(status("stale").await.0, 200);
    assert_eq!(status("stale").await.0, 200);
    assert_eq!(calls("stale"), 2, "an expired answer is not reused");

    // Everything else is a 401: an inactive token (remembered, not asked about again), an
    // active that is not the JSON true, another audience or none, out of its time, not a bearer
    // token, another issuer, a tenant the issuer may not assert, or none.
    for token in [
        "inactive",
        "string-active",
        "other-aud",
        "no-aud",
        "expired",
        "not-yet",
        "dpop",
        "bound",
        "other-iss",
        "other-tenant",
        "no-tenant",
    ] {
        let (code, _, body) = status(token).await;
        assert_eq!(code, 401, "{token}: {body}");
    }
    assert_eq!(status("inactive").await.0, 401);
    assert_eq!(calls("inactive"), 1, "an inactive answer is remembered");

    // A JWT-shaped token (three parts) is never shown to the introspection endpoint, nor is
    // anything that is not made of bearer-token characters.
    for token in ["eyJhbGciOiJub25lIn0.e30.", "a%20b", "a,b", "a\"b"] {
        let r = get(&fence.url("Patient?name=x")).header("authorization", &format!("Bearer {token}")).send().await;
        assert_eq!(r.status, 401, "{token}");
        assert_eq!(calls(token), 0, "{token}");
    }

    // A provider that answers what cannot be read, fails, or hangs: 503 with Retry-After (the
    // client may retry), within the bound — and nothing remembered.
    for token in ["duplicate", "not-json", "error", "hang"] {
        let started = Instant::now();
        let (code, retry, body) = status(token).await;
        assert_eq!(code, 503, "{token}: {body}");
        assert_eq!(retry.as_deref(), Some("5"), "{token}");
        assert!(started.elapsed() < Duration::from_secs(8), "{token}: {:?}", started.elapsed());
    }
    assert_eq!(status("error").await.0, 503);
    assert_eq!(calls("error"), 2, "a failure is not remembered");

    // Counted by result.
    let metrics = String::from_utf8_lossy(&get(&format!("{}/metrics", fence.admin)).send().await.raw).into_owned();
    for result in ["active", "inactive", "inactive-remembered", "failed"] {
        let line = format!("fhir_fence_introspections_total{{issuer=\"opaque\",result=\"{result}\"}}");
        assert!(metrics.lines().any(|l| l.starts_with(&line)), "{line} in {metrics}");
    }
}

#[test]
fn one_issuer_introspects_and_its_settings_are_checked() {
    let ts = tenants(1);
    let files = Volume::new();
    files.swap(&[("secret", "s")]);
    let secret = files.0.join("secret").display().to_string();
    let issuer = |name: &str, section: &str| {
        format!(
            "[issuers.{name}]\niss = \"https://{name}.example\"\naudience = [\"a\"]\ntenant_claim = \"$.t\"\n\
             tenants = [{:?}]\n[issuers.{name}.introspection]\n{section}\n",
            ts[0].name
        )
    };
    let ok = format!(
        "endpoint = \"https://idp.example/introspect\"\nclient_id = \"fence\"\nclient_secret_file = {secret:?}"
    );
    let check = |extra: String| {
        let mut o = Options::new("http://127.0.0.1:9/fhir", &ts);
        o.extra = extra;
        support::check_config(&support::config_text(&o, 1, 2))
    };
    assert_eq!(check(issuer("one", &ok)), Ok(()));
    assert_eq!(check(issuer("one", &format!("{ok}\nclient_auth = \"client_secret_post\"\ncache_secs = 300"))), Ok(()));
    for (bad, names) in [
        (issuer("one", &ok) + &issuer("two", &ok), "issuers.two.introspection"),
        (issuer("one", &ok.replace("https://", "http://")), "issuers.one.introspection.endpoint"),
        (issuer("one", &format!("{ok}\ncache_secs = 0")), "issuers.one.introspection.cache_secs"),
        (issuer("one", &format!("{ok}\ncache_secs = 301")), "issuers.one.introspection.cache_secs"),
        (issuer("one", &format!("{ok}\nclient_auth = \"none\"")), "client_auth"),
        (issuer("one", &ok.replace(&secret, "/nonexistent")), "issuers.one.introspection.client_secret_file"),
        (issuer("one", &format!("{ok}\nscope = \"x\"")), "scope"),
    ] {
        let e = check(bad.clone()).expect_err(&bad);
        assert!(e.contains(names), "{names} in {e}");
    }
}
