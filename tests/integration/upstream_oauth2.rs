//! fhir-fence's own OAuth2 client-credentials token for an upstream (`upstreams.NAME.oauth2`),
//! against a token endpoint the test controls (the in-process fake behind a TLS front with a
//! test CA): what the token request carries, and what a client gets when the endpoint refuses,
//! answers nonsense, fails or hangs — 502 or a bounded 503, never a 500 or a stall, and no
//! second call inside the back-off. `identity_provider.rs` runs it against oidc-provider.
use crate::support::client::get;
use crate::support::fake::{self, Answer, Seen};
use crate::support::pki::{self, Ca, Volume};
use crate::support::{self, tenants, Options};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn form(s: &Seen) -> Vec<(String, String)> {
    form_urlencoded::parse(&s.raw).into_owned().collect()
}

/// How the fake token endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Token,
    InvalidClient,
    Dpop,
    NotJson,
    Error,
    Hang,
}

#[tokio::test]
async fn upstream_tokens_are_fetched_with_client_credentials_and_failures_are_bounded() {
    let ts = tenants(1);
    let (name, prefix) = (ts[0].name.clone(), ts[0].prefix.clone());
    let mode = Arc::new(Mutex::new(Mode::Token));
    let issued = Arc::new(AtomicUsize::new(0));
    let (mode2, issued2) = (mode.clone(), issued.clone());
    let endpoint = fake::start(move |s| {
        let f = form(s);
        let has = |k: &str, v: &str| f.iter().any(|(a, b)| a == k && b == v);
        // client_secret_post: the credentials in the form, no Authorization header.
        let authenticated = s.method == "POST"
            && s.headers.get("authorization").is_none()
            && has("client_id", "fence")
            && has("client_secret", "s3cret+/");
        if !authenticated || !has("grant_type", "client_credentials") {
            return Answer::Json(401, json!({"error": "invalid_client"}));
        }
        match *mode2.lock().unwrap() {
            Mode::Token => {
                let n = issued2.fetch_add(1, Ordering::SeqCst) + 1;
                Answer::Json(
                    200,
                    json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": 3600}),
                )
            }
            Mode::InvalidClient => {
                Answer::Json(400, json!({"error": "invalid_client", "error_description": "s3cret+/"}))
            }
            Mode::Dpop => Answer::Json(200, json!({"access_token": "bound", "token_type": "DPoP", "expires_in": 60})),
            Mode::NotJson => Answer::Raw(200, "application/json", "tok"),
            Mode::Error => Answer::Json(503, json!({})),
            Mode::Hang => Answer::Hang,
        }
    })
    .await;
    let ca = Ca::new();
    let host = endpoint.base.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let front = pki::tls_front(host, &ca.issue(&["localhost"]), None).await;
    let port = front.rsplit(':').next().unwrap().to_owned();
    let files = Volume::new();
    files.swap(&[("ca.pem", &ca.pem()), ("secret", "s3cret+/\n")]);

    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let refusing = refused.clone();
    let up = fake::start(move |s| {
        let sent = s.headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        if !sent.starts_with("Bearer tok-") || refusing.lock().unwrap().contains(&sent) {
            return Answer::Json(401, json!({"resourceType": "OperationOutcome"}));
        }
        Answer::Json(200, fake::stored("Patient", &prefix, &name, "p1"))
    })
    .await;
    let options = || {
        let mut o = Options::new(&up.base, &ts);
        o.extra = format!(
            "[upstreams.main.oauth2]\ntoken_endpoint = \"https://localhost:{port}/token\"\nclient_id = \"fence\"\n\
             client_secret_file = {:?}\nclient_auth = \"client_secret_post\"\nscope = \"system/*.rs fhir\"\n\
             resource = \"https://fhir.internal.example/fhir\"\naudience = \"https://fhir.example/api\"\nca_file = {:?}\n",
            files.path("secret"),
            files.path("ca.pem"),
        );
        o
    };
    let calls = || endpoint.seen().len();

    // The token request: client credentials (posted), the scope and the resource; the token
    // answered reaches the upstream, and is reused.
    let fence = support::start(options()).await;
    let read = |fence: &support::Fence| {
        let (url, token) = (fence.url("Patient/p1"), fence.token(&ts[0].name));
        async move { get(&url).bearer(&token).send().await }
    };
    assert_eq!(read(&fence).await.status, 200);
    assert_eq!(read(&fence).await.status, 200);
    let asked = endpoint.last();
    assert_eq!(asked.path, "/token");
    let f = form(&asked);
    for (k, v) in [
        ("scope", "system/*.rs fhir"),
        ("resource", "https://fhir.internal.example/fhir"),
        ("audience", "https://fhir.example/api"),
    ] {
        assert!(f.iter().any(|(a, b)| a == k && b == v), "{k} in {f:?}");
    }
    assert_eq!(calls(), 1, "one token for the start-up and both reads");
    assert_eq!(up.last().headers["authorization"], "Bearer tok-1");

    // The endpoint fails in each way just as the upstream refuses the current token: the read
    // gets 502 (a refusal or an unusable answer) or 503 with Retry-After (unreachable), within
    // the bound; a second read inside the back-off gets the same answer at once, without a call.
    for (failing, status) in
        [(Mode::InvalidClient, 502), (Mode::Dpop, 502), (Mode::NotJson, 502), (Mode::Error, 503), (Mode::Hang, 503)]
    {
        *mode.lock().unwrap() = Mode::Token;
        let fence = support::start(options()).await;
        // The token this fhir-fence fetched when it started.
        refused.lock().unwrap().push(format!("Bearer tok-{}", issued.load(Ordering::SeqCst)));
        *mode.lock().unwrap() = failing;
        let before = calls();
        for attempt in 0..2 {
            let started = Instant::now();
            let r = read(&fence).await;
            assert_eq!(r.status, status, "{failing:?} {attempt}: {}", r.body);
            assert_eq!(r.body["resourceType"], "OperationOutcome");
            assert_eq!(r.header("retry-after"), (status == 503).then_some("5"), "{failing:?}");
            assert!(!r.raw.windows(8).any(|w| w == b"s3cret+/"), "{failing:?}: nothing of the endpoint's answer shown");
            let bound = if attempt == 0 { Duration::from_secs(7) } else { Duration::from_millis(500) };
            assert!(started.elapsed() < bound, "{failing:?} {attempt}: {:?}", started.elapsed());
        }
        assert_eq!(calls(), before + 1, "{failing:?}: one call, the second read answered from the back-off");
        let metrics = String::from_utf8_lossy(&get(&format!("{}/metrics", fence.admin)).send().await.raw).into_owned();
        let line = format!("fhir_fence_upstream_errors_total{{kind=\"token\",tenant=\"{}\"}} 2", ts[0].name);
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

#[test]
fn upstream_oauth2_settings_are_checked() {
    let ts = tenants(1);
    let files = Volume::new();
    files.swap(&[("secret", "s"), ("bearer", "b")]);
    let secret = files.path("secret");
    let ok = format!(
        "[upstreams.main.oauth2]\ntoken_endpoint = \"https://idp.example/token\"\nclient_id = \"fence\"\n\
         client_secret_file = {secret:?}\n"
    );
    let check_with = |upstream: &str, extra: String| {
        let mut o = Options::new("http://127.0.0.1:9/fhir", &ts);
        o.extra = extra;
        let text =
            support::config_text(&o, 1, 2).replace("[upstreams.main]\n", &format!("[upstreams.main]\n{upstream}"));
        support::check_config(&text)
    };
    let check = |extra: String| check_with("", extra);
    assert_eq!(check(ok.clone()), Ok(()));
    assert_eq!(
        check(format!(
            "{ok}client_auth = \"client_secret_post\"\nscope = \"a b:c\"\nresource = \"https://fhir.example/fhir\"\n"
        )),
        Ok(())
    );
    let bearer = format!("bearer_file = {:?}\n", files.path("bearer"));
    assert_eq!(check_with(&bearer, String::new()), Ok(()));
    let both = check_with(&bearer, ok.clone()).expect_err("bearer_file and oauth2");
    assert!(both.contains("upstreams.main.oauth2") && both.contains("not both"), "{both}");
    for (bad, names) in [
        (ok.replace("https://", "http://"), "upstreams.main.oauth2.token_endpoint"),
        (ok.replace("\"fence\"", "\"\""), "upstreams.main.oauth2.client_id"),
        (ok.replace(&secret, "/nonexistent"), "upstreams.main.oauth2.client_secret_file"),
        (format!("{ok}scope = \"a  b\"\n"), "upstreams.main.oauth2.scope"),
        (format!("{ok}scope = \"a\\\\b\"\n"), "upstreams.main.oauth2.scope"),
        (format!("{ok}resource = \"https://fhir.example/fhir#x\"\n"), "upstreams.main.oauth2.resource"),
        (format!("{ok}resource = \"fhir\"\n"), "upstreams.main.oauth2.resource"),
        (format!("{ok}client_auth = \"private_key_jwt\"\n"), "client_auth"),
        (format!("{ok}audience = \"\"\n"), "upstreams.main.oauth2.audience"),
        (format!("{ok}audiences = \"x\"\n"), "audiences"),
    ] {
        let e = check(bad.clone()).expect_err(&bad);
        assert!(e.contains(names), "{names} in {e}");
    }
}

#[tokio::test]
async fn upstream_tokens_are_renewed_in_the_background_before_they_expire() {
    let ts = tenants(1);
    let (name, prefix) = (ts[0].name.clone(), ts[0].prefix.clone());
    // The first token lives 5 s (renewed from 4 s on, sent until 4.5 s); the renewal's answer
    // waits until the test releases it.
    let release = Arc::new(tokio::sync::Notify::new());
    let issued = Arc::new(AtomicUsize::new(0));
    let (release2, issued2) = (release.clone(), issued.clone());
    let endpoint = fake::start(move |_| {
        let n = issued2.fetch_add(1, Ordering::SeqCst) + 1;
        let token =
            Answer::Json(200, json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": 5}));
        if n == 1 {
            token
        } else {
            Answer::After(release2.clone(), Box::new(token))
        }
    })
    .await;
    let ca = Ca::new();
    let host = endpoint.base.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let front = pki::tls_front(host, &ca.issue(&["localhost"]), None).await;
    let files = Volume::new();
    files.swap(&[("ca.pem", &ca.pem()), ("secret", "s3cret")]);
    let up = fake::start(move |_| Answer::Json(200, fake::stored("Patient", &prefix, &name, "p1"))).await;
    let mut o = Options::new(&up.base, &ts);
    o.extra = format!(
        "[upstreams.main.oauth2]\ntoken_endpoint = \"https://localhost:{}/token\"\nclient_id = \"fence\"\n\
         client_secret_file = {:?}\nca_file = {:?}\n",
        front.rsplit(':').next().unwrap(),
        files.path("secret"),
        files.path("ca.pem"),
    );
    let fence = support::start(o).await;
    let fetched = Instant::now();
    let token = fence.token(&ts[0].name);
    let read = || async {
        let started = Instant::now();
        let r = get(&fence.url("Patient/p1")).bearer(&token).send().await;
        assert_eq!(r.status, 200, "{}", r.body);
        (up.last().headers["authorization"].to_str().unwrap().to_owned(), started.elapsed())
    };

    // Until 80 % of its life the token is used as it is; then a read starts one renewal (only a
    // read does) and carries on with the current token: the renewal's answer is held back, so
    // a read that waited for it would not come back before the test releases it.
    while issued.load(Ordering::SeqCst) < 2 {
        let (sent, took) = read().await;
        assert_eq!(sent, "Bearer tok-1");
        assert!(took < Duration::from_secs(1), "a read waited {took:?}");
        assert!(fetched.elapsed() < Duration::from_secs(5), "no renewal began");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (Counted from when the start-up returned, a little after the fetch.)
    assert!(
        fetched.elapsed() >= Duration::from_millis(3800),
        "renewed at {:?}, before 80 % of its life",
        fetched.elapsed()
    );
    // The renewal's token is used once it arrives; one renewal however many reads saw it due.
    release.notify_one();
    let deadline = Instant::now() + Duration::from_secs(5);
    while read().await.0 != "Bearer tok-2" {
        assert!(Instant::now() < deadline, "the renewed token never reached the upstream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(issued.load(Ordering::SeqCst), 2, "one renewal");
}
