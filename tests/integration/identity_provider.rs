//! Keys from a real identity provider (`scripts/idp`: the npm package oidc-provider, over HTTPS
//! with a test CA): found through its discovery document, refreshed when it rotates its signing
//! key or reuses a kid for a new one, kept while it cannot be reached — and an unknown key then
//! refused with 401, not a stall or a 500. Tokens are the provider's own (`client_credentials`,
//! RFC 9068 `at+jwt`), for a client registered with the tenant it may act for; opaque ones are
//! introspected there; and fhir-fence's own client there obtains the upstream's token
//! (`upstreams.NAME.oauth2`).
use crate::support::client::get;
use crate::support::fake::{self, searchset, Answer};
use crate::support::{self, tenants, Options};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

const AUDIENCE: &str = "urn:fhir-fence:idp-test";

struct Provider {
    url: String,
    ca: PathBuf,
}

impl Provider {
    fn from_env() -> Provider {
        let url = std::env::var("IDP_URL").unwrap_or_else(|_| "https://127.0.0.1:8095".into());
        let ca = std::env::var("IDP_CA")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/idp/ca.pem"));
        Provider { url, ca }
    }

    /// One HTTPS call to the provider (curl, verifying it with the test CA); the JSON answer.
    fn call(&self, path: &str, args: &[&str]) -> Value {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--max-time", "10", "--cacert"])
            .arg(&self.ca)
            .args(args)
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("curl runs");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{path}: {body} {}", String::from_utf8_lossy(&out.stderr));
        if body.is_empty() {
            return Value::Null; // revocation answers 200 with no body
        }
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// A client whose tokens name `tenant`: (client_id, client_secret).
    fn register(&self, tenant: &str) -> (String, String) {
        let metadata = serde_json::json!({"grant_types": ["client_credentials"], "response_types": [],
            "redirect_uris": [], "token_endpoint_auth_method": "client_secret_basic", "tenant": tenant});
        let c = self.call("/reg", &["-H", "content-type: application/json", "-d", &metadata.to_string()]);
        (c["client_id"].as_str().unwrap().to_owned(), c["client_secret"].as_str().unwrap().to_owned())
    }

    /// A confidential client with no tenant (fhir-fence's own, for introspection):
    /// (client_id, client_secret).
    fn register_service(&self) -> (String, String) {
        let metadata = serde_json::json!({"grant_types": ["client_credentials"], "response_types": [],
            "redirect_uris": [], "token_endpoint_auth_method": "client_secret_basic"});
        let c = self.call("/reg", &["-H", "content-type: application/json", "-d", &metadata.to_string()]);
        (c["client_id"].as_str().unwrap().to_owned(), c["client_secret"].as_str().unwrap().to_owned())
    }

    fn token(&self, client: &(String, String)) -> String {
        self.token_for(client, AUDIENCE)
    }

    /// A client-credentials token for `resource` (opaque when its URL says "opaque").
    fn token_for(&self, (id, secret): &(String, String), resource: &str) -> String {
        let t = self.call(
            "/token",
            &[
                "-u",
                &format!("{id}:{secret}"),
                "-d",
                "grant_type=client_credentials",
                "-d",
                &format!("resource={resource}"),
            ],
        );
        t["access_token"].as_str().unwrap().to_owned()
    }

    fn admin(&self, action: &str) -> Value {
        self.call(&format!("/admin/{action}"), &["-X", "POST"])
    }
}

/// The provider is one process: a test that takes it offline holds this, and every test here
/// takes it, so none sees another's outage.
static PROVIDER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Brings the provider back however the test ends.
struct Online<'p>(&'p Provider);

impl Drop for Online<'_> {
    fn drop(&mut self) {
        self.0.admin("online");
    }
}

fn kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn keys_follow_the_provider_and_outlast_it_for_a_while() {
    let _one = PROVIDER.lock().await;
    let idp = Provider::from_env();
    let ts = tenants(2);
    let up = fake::start(|s| {
        Answer::Json(200, searchset(&format!("http://{}/fhir", s.headers["host"].to_str().unwrap()), vec![], None))
    })
    .await;
    let mut o = Options::new(&up.base, &ts);
    o.extra = format!(
        "[issuers.idp]\niss = \"{url}\"\ndiscovery = \"{url}/.well-known/openid-configuration\"\nca_file = {ca:?}\n\
         audience = [\"{AUDIENCE}\"]\nalgorithms = [\"RS256\"]\ntoken_type = \"at+jwt\"\ntenant_claim = \"$.tenant\"\n\
         tenants = [{first:?}]\n",
        url = idp.url,
        ca = idp.ca.display().to_string(),
        first = ts[0].name,
    );
    let fence = support::start(o).await;
    let search = |token: String| {
        let url = fence.url("Patient?name=x");
        async move { get(&url).bearer(&token).send().await }
    };

    // The provider's token verifies with keys fhir-fence found by discovery.
    let client = idp.register(&ts[0].name);
    let first = idp.token(&client);
    let r = search(first.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The provider may name only the tenants the config lets it assert.
    let other = idp.token(&idp.register(&ts[1].name));
    assert_eq!(search(other).await.status, 401);

    // Reached over verified TLS only: trusting other CAs than the one that signed the
    // provider's certificate, fhir-fence gets no keys, and the same token is a 401.
    let up_untrusted = fake::start(|_| Answer::Json(200, serde_json::json!({}))).await;
    let mut o2 = Options::new(&up_untrusted.base, &ts);
    // The machine's public roots: a real CA list, without the test CA.
    let public_roots = "/etc/ssl/certs/ca-certificates.crt";
    o2.extra = format!(
        "[issuers.untrusted]\niss = \"{url}\"\ndiscovery = \"{url}/.well-known/openid-configuration\"\nca_file = {public_roots:?}\n\
         audience = [\"{AUDIENCE}\"]\nalgorithms = [\"RS256\"]\ntenant_claim = \"$.tenant\"\ntenants = [{first:?}]\n",
        url = idp.url,
        first = ts[0].name,
    );
    let untrusted = support::start(o2).await;
    let token = idp.token(&client);
    let r = get(&untrusted.url("Patient?name=x")).bearer(&token).send().await;
    assert_eq!(r.status, 401, "{}", r.body);
    drop(untrusted);

    // A rotation: the new key's tokens verify after one refresh — one fetch however many
    // requests wait for it — and the old key's still do.
    idp.admin("rotate");
    let second = idp.token(&client);
    assert_ne!(kid(&first), kid(&second), "the provider signs with its new key");
    let refreshes = || async {
        let text = String::from_utf8_lossy(&get(&format!("{}/metrics", fence.admin)).send().await.raw).into_owned();
        let line =
            text.lines().find(|l| l.starts_with("fhir_fence_jwks_refreshes_total{issuer=\"idp\",result=\"ok\"}"));
        line.and_then(|l| l.rsplit(' ').next()).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
    };
    let before = refreshes().await;
    let waiting: Vec<_> = (0..8).map(|_| search(second.clone())).collect();
    for r in futures::future::join_all(waiting).await {
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(refreshes().await, before + 1, "eight requests with the new kid, one fetch");
    assert_eq!(search(second).await.status, 200);
    assert_eq!(search(first).await.status, 200);
    // Signed with the same key, not presented yet (so no verified-token cache entry).
    let unseen = idp.token(&client);
    let metrics = String::from_utf8_lossy(&get(&format!("{}/metrics", fence.admin)).send().await.raw).into_owned();
    assert!(
        metrics.lines().any(|l| l.starts_with("fhir_fence_jwks_refreshes_total{issuer=\"idp\",result=\"ok\"}")),
        "{metrics}"
    );

    // The provider goes down after signing with a key fhir-fence has not seen: cached keys
    // still verify, the unknown one is a 401 (never a 500), and nothing waits forever.
    idp.admin("rotate");
    let third = idp.token(&client);
    let _online = Online(&idp);
    idp.admin("offline");
    assert_eq!(search(unseen).await.status, 200, "the cached key outlasts the provider");
    let r = search(third).await;
    assert_eq!(r.status, 401, "{}", r.body);
}

#[tokio::test]
async fn opaque_tokens_are_introspected_at_the_provider() {
    let _one = PROVIDER.lock().await;
    let idp = Provider::from_env();
    let ts = tenants(2);
    let up = fake::start(|s| {
        Answer::Json(200, searchset(&format!("http://{}/fhir", s.headers["host"].to_str().unwrap()), vec![], None))
    })
    .await;
    // fhir-fence's own client at the provider (no tenant): it may introspect, nothing else.
    let (fence_id, fence_secret) = idp.register_service();
    let secret = support::write_config(&fence_secret);
    let opaque = "urn:fhir-fence:opaque-test";
    let mut o = Options::new(&up.base, &ts);
    o.extra = format!(
        "[issuers.idp]\niss = \"{url}\"\nca_file = {ca:?}\naudience = [\"{opaque}\"]\ntenant_claim = \"$.tenant\"\n\
         tenants = [{first:?}]\n[issuers.idp.introspection]\nendpoint = \"{url}/token/introspection\"\n\
         client_id = \"{fence_id}\"\nclient_secret_file = {secret:?}\n",
        url = idp.url,
        ca = idp.ca.display().to_string(),
        first = ts[0].name,
        secret = secret.display().to_string(),
    );
    let fence = support::start(o).await;
    let search = |token: String| {
        let url = fence.url("Patient?name=x");
        async move { get(&url).bearer(&token).send().await }
    };

    let client = idp.register(&ts[0].name);
    let token = idp.token_for(&client, opaque);
    assert_eq!(token.split('.').count(), 1, "the provider issued an opaque token: {token}");
    let r = search(token.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The same tenant rules as for JWTs: a client of a tenant the issuer may not assert is 401,
    // and so is a token for another resource server.
    let other = idp.token_for(&idp.register(&ts[1].name), opaque);
    assert_eq!(search(other).await.status, 401);
    let elsewhere = idp.token_for(&client, "urn:fhir-fence:opaque-elsewhere");
    assert_eq!(search(elsewhere).await.status, 401);
    // A token the provider revoked before it was presented is inactive.
    let revoked = idp.token_for(&client, opaque);
    idp.call("/token/revocation", &["-u", &format!("{}:{}", client.0, client.1), "-d", &format!("token={revoked}")]);
    let r = search(revoked).await;
    assert_eq!(r.status, 401, "{}", r.body);
    // Made-up tokens are inactive, not errors.
    assert_eq!(search("madeUpToken123".into()).await.status, 401);

    // The provider goes down: a token answered before keeps working (for its cache_secs), a
    // new one gets 503 with Retry-After — quickly, never a 500 or a stall.
    let unseen = idp.token_for(&client, opaque);
    let _online = Online(&idp);
    idp.admin("offline");
    assert_eq!(search(token).await.status, 200, "answered before, still cached");
    let started = std::time::Instant::now();
    let r = search(unseen).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "{:?}", started.elapsed());
}

impl Provider {
    /// The claims of a JWT the provider signed (with a key of its JWKS) for `audience`; panics
    /// on any other (oidc-provider does not introspect its JWTs).
    fn verify(&self, token: &str, audience: &str) -> Value {
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(self.call("/jwks", &[])).unwrap();
        let jwk = jwks.find(&kid(token)).expect("signed with a key the provider publishes");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[&self.url]);
        jsonwebtoken::decode::<Value>(token, &key, &validation).expect("the provider's token").claims
    }
}

#[tokio::test]
async fn upstream_tokens_come_from_the_provider_by_client_credentials() {
    use std::sync::{Arc, Mutex};
    let _one = PROVIDER.lock().await;
    let idp = Provider::from_env();
    let ts = tenants(1);
    let (name, prefix) = (ts[0].name.clone(), ts[0].prefix.clone());
    // The upstream answers 401 to the tokens the test tells it to refuse, as a FHIR server does
    // whose authorization server revoked them.
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let refusing = refused.clone();
    let up = fake::start(move |s| {
        let sent = s.headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        if sent.is_empty() || refusing.lock().unwrap().contains(&sent) {
            return Answer::Json(401, serde_json::json!({"resourceType": "OperationOutcome"}));
        }
        Answer::Json(200, fake::stored("Patient", &prefix, &name, "p1"))
    })
    .await;
    let (fence_id, fence_secret) = idp.register_service();
    let secret = support::write_config(&format!("{fence_secret}\n"));
    let resource = "urn:fhir-fence:upstream-test";
    let mut o = Options::new(&up.base, &ts);
    o.extra = format!(
        "[upstreams.main.oauth2]\ntoken_endpoint = \"{url}/token\"\nclient_id = \"{fence_id}\"\n\
         client_secret_file = {secret:?}\nresource = \"{resource}\"\nca_file = {ca:?}\n",
        url = idp.url,
        secret = secret.display().to_string(),
        ca = idp.ca.display().to_string(),
    );
    let fence = support::start(o).await;
    let client_token = fence.token(&ts[0].name);
    let read = || {
        let (url, token) = (fence.url("Patient/p1"), client_token.clone());
        async move { get(&url).bearer(&token).send().await }
    };
    let sent = |s: &fake::Seen| s.headers.get("authorization").map(|v| v.to_str().unwrap().to_owned());
    // The distinct tokens the upstream got, in the order it first got them.
    let tokens_seen = || {
        let mut distinct: Vec<String> = Vec::new();
        for token in up.seen().iter().filter_map(sent) {
            if !distinct.contains(&token) {
                distinct.push(token);
            }
        }
        distinct
    };

    // The upstream gets a token the provider issued to fhir-fence's client for this resource —
    // never the client's own.
    let r = read().await;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = sent(&up.last()).expect("an Authorization header");
    let jwt = first.strip_prefix("Bearer ").expect("a bearer token");
    // Signed by a key the provider publishes, for this resource, to fhir-fence's client.
    let c = idp.verify(jwt, resource);
    assert_eq!((c["client_id"].as_str(), c["iss"].as_str()), (Some(&*fence_id), Some(&*idp.url)));
    assert!(!first.contains(&client_token));
    // Reused while it lives: the next requests carry the same token.
    assert_eq!(read().await.status, 200);
    assert_eq!(tokens_seen(), std::slice::from_ref(&first));

    // The upstream stops accepting it: eight reads at once all succeed, sent again with one new
    // token — one fetch however many requests found theirs refused.
    refused.lock().unwrap().push(first.clone());
    for r in futures::future::join_all((0..8).map(|_| read())).await {
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let seen = tokens_seen();
    assert_eq!(seen.len(), 2, "one new token: {seen:?}");
    let second = seen[1].clone();
    assert_ne!(second, first);
    assert_eq!(idp.verify(second.strip_prefix("Bearer ").unwrap(), resource)["client_id"].as_str(), Some(&*fence_id));

    // A refused write is not sent twice (it might have been acted on): 502, and the next
    // request fetches a new token.
    refused.lock().unwrap().push(second.clone());
    let deletes = || up.seen().iter().filter(|s| s.method == "DELETE").count();
    let r = crate::support::client::delete(&fence.url("Patient/p1")).bearer(&client_token).send().await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(deletes(), 1, "sent once");
    assert_eq!(read().await.status, 200);
    let third = sent(&up.last()).unwrap();
    assert!(![&first, &second].contains(&&third), "a new token after the refusal");

    // The provider goes down while the upstream refuses the token: the client gets a bounded
    // 503 with Retry-After (never a 500 or a stall), and a second request the same at once.
    refused.lock().unwrap().push(third);
    let _online = Online(&idp);
    idp.admin("offline");
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let r = read().await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.header("retry-after"), Some("5"));
        assert!(started.elapsed() < std::time::Duration::from_secs(7), "{:?}", started.elapsed());
    }
    let metrics = String::from_utf8_lossy(&get(&format!("{}/metrics", fence.admin)).send().await.raw).into_owned();
    for result in ["ok", "rejected", "failed", "skipped"] {
        let line = format!("fhir_fence_upstream_tokens_total{{result=\"{result}\",upstream=\"main\"}}");
        assert!(metrics.lines().any(|l| l.starts_with(&line)), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn a_kid_reused_for_a_new_key_is_refetched_and_bad_signatures_do_not_flood_the_provider() {
    let _one = PROVIDER.lock().await;
    let idp = Provider::from_env();
    let ts = tenants(1);
    let up = fake::start(|s| {
        Answer::Json(200, searchset(&format!("http://{}/fhir", s.headers["host"].to_str().unwrap()), vec![], None))
    })
    .await;
    let mut o = Options::new(&up.base, &ts);
    // An issuer name of its own: the refresh counter is process-wide.
    o.extra = format!(
        "[issuers.idp-reused]\niss = \"{url}\"\ndiscovery = \"{url}/.well-known/openid-configuration\"\nca_file = {ca:?}\n\
         audience = [\"{AUDIENCE}\"]\nalgorithms = [\"RS256\"]\ntoken_type = \"at+jwt\"\ntenant_claim = \"$.tenant\"\n\
         tenants = [{first:?}]\n",
        url = idp.url,
        ca = idp.ca.display().to_string(),
        first = ts[0].name,
    );
    let fence = support::start(o).await;
    let search = |token: String| {
        let url = fence.url("Patient?name=x");
        async move { get(&url).bearer(&token).send().await }
    };
    let fetches = || async {
        let text = String::from_utf8_lossy(&get(&format!("{}/metrics", fence.admin)).send().await.raw).into_owned();
        let count = |result: &str| {
            let series = format!("fhir_fence_jwks_refreshes_total{{issuer=\"idp-reused\",result=\"{result}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |n| n.parse::<u64>().unwrap())
        };
        count("ok") + count("failed")
    };

    let client = idp.register(&ts[0].name);
    let first = idp.token(&client);
    let r = search(first.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let unseen_old = idp.token(&client);

    // The provider signs with a new key under the same kid: fhir-fence's key for that kid fails
    // the signature, so the keys are fetched again (once), and the token verifies.
    let kids = idp.admin("reuse-kid");
    let second = idp.token(&client);
    assert_eq!(kid(&second), kid(&first), "{kids}");
    let before = fetches().await;
    let r = search(second.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(fetches().await, before + 1, "one refresh");
    // A token of the replaced key, never presented before, no longer verifies.
    assert_eq!(search(unseen_old).await.status, 401);

    // A flood of tokens with a known kid and a bad signature: each is a 401, and they cost the
    // provider at most one fetch per MIN_REFRESH (and at least one: the refresh is tried).
    let parts: Vec<&str> = second.split('.').collect();
    let forged: Vec<String> = (0..20)
        .map(|n| {
            let signature = first.split('.').nth(2).unwrap();
            format!("{}.{}.{}", parts[0], parts[1], if n % 2 == 0 { signature } else { &signature[1..] })
        })
        .collect();
    let before = fetches().await;
    let started = std::time::Instant::now();
    for r in futures::future::join_all(forged.into_iter().map(search)).await {
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let elapsed = started.elapsed();
    let fetched = fetches().await - before;
    let allowed = 1 + (elapsed.as_millis() / fhir_fence::identity::remote::MIN_REFRESH.as_millis()) as u64;
    assert!((1..=allowed).contains(&fetched), "{fetched} fetches in {elapsed:?}");
    assert!(elapsed < fhir_fence::identity::remote::WAIT + std::time::Duration::from_secs(2), "{elapsed:?}");
    // The provider's own tokens still verify.
    assert_eq!(search(second).await.status, 200);
}
