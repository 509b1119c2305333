//! The access token fhir-fence presents to an upstream that wants one it obtains itself:
//! OAuth2 client credentials (RFC 6749 §4.4) at the upstream's authorization server
//! (`upstreams.NAME.oauth2`), sent as `Authorization: Bearer …` by `upstream.rs`.
//!
//! - One token per upstream, cached (in the upstream's `Link`, so it survives reloads that leave
//!   the upstream alone). From [`RENEW_AT`] of its lifetime the next request starts one
//!   background renewal and carries on with the current token; a token is never sent in its last
//!   tenth (at most [`MARGIN`]), where it could expire on the way.
//! - Single-flight: however many requests find no usable token, one fetch runs and they wait
//!   for it, at most [`WAIT`] in all. Fetches are at least [`MIN_INTERVAL`] apart (an upstream
//!   refusing every fresh token costs the authorization server one fetch per interval, not one
//!   per request). A failed fetch backs off (1 s doubling to 30 s): requests meanwhile are
//!   answered at once with the failure, never a stall, never a flood of retries.
//! - The upstream answering 401 to a token drops it (`rejected`): the next request fetches a
//!   new one (`upstream.rs` decides which requests are sent again).
//! - The client secret and the tokens are never logged: their header values are marked
//!   sensitive and no `Debug` shows them; an error names the endpoint, the status and the OAuth
//!   `error` code only.
//! - Counted: `fhir_fence_upstream_tokens_total{upstream, result}`.
use crate::config::{ConfigError, Loaded, UpstreamOAuth2};
use crate::identity::client_auth::ClientSecret;
use crate::metrics::UPSTREAM_TOKENS;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a request waits for a token (the fetch in flight and its own).
pub const WAIT: Duration = Duration::from_secs(5);
/// The longest one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Fetches are at least this far apart.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The share of a token's lifetime after which it is renewed in the background.
pub const RENEW_AT: f64 = 0.8;
/// A token is not sent in the last tenth of its lifetime, nor in its last `MARGIN`.
pub const MARGIN: Duration = Duration::from_secs(5);
/// The lifetime assumed when the answer has no `expires_in` (a 401 drops the token earlier).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// The longest lifetime taken from an answer.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The largest token answer read.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The authorization server could not be reached, or did not answer in time.
    #[error("the token endpoint {0} could not be reached: {1}")]
    Unreachable(String, String),
    /// It answered, but with no token fhir-fence can use (a refusal, a malformed answer).
    #[error("the token endpoint {0} gave no usable token: {1}")]
    Refused(String, String),
}

impl TokenError {
    /// Whether asking again shortly may work (503 to the client; otherwise 502).
    pub fn transient(&self) -> bool {
        matches!(self, TokenError::Unreachable(..))
    }
}

/// A token and when it is due for renewal and stops being sent.
struct Token {
    authorization: HeaderValue,
    renew_at: Instant,
    usable_until: Instant,
}

/// The fetch state, held by the one fetch in flight.
#[derive(Default)]
struct Attempts {
    last: Option<Instant>,
    failures: u32,
    /// The last failure and until when it stands (the back-off).
    failed: Option<(TokenError, Instant)>,
}

pub struct UpstreamToken {
    /// The upstream's config name (metrics, logs).
    name: String,
    endpoint: Uri,
    credentials: ClientSecret,
    scope: Option<String>,
    resource: Option<String>,
    audience: Option<String>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    current: ArcSwapOption<Token>,
    fetching: tokio::sync::Mutex<Attempts>,
    /// Set while a background renewal runs (no second one is started).
    renewing: AtomicBool,
}

impl UpstreamToken {
    /// Builds (and checks) upstream `name`'s `oauth2` table.
    pub fn build(loaded: &Loaded, name: &str, o: &UpstreamOAuth2) -> Result<Self, ConfigError> {
        let table = format!("upstreams.{name}.oauth2");
        let key = |k: &str| format!("{table}.{k}");
        let endpoint = crate::identity::remote::https_uri(&o.token_endpoint)
            .map_err(|e| ConfigError::invalid(key("token_endpoint"), e))?;
        let credentials = ClientSecret::read(loaded, &table, &o.client_id, &o.client_secret_file, o.client_auth)?;
        if let Some(scope) = &o.scope {
            // RFC 6749 §3.3: scope-tokens of %x21 / %x23-5B / %x5D-7E, separated by single spaces.
            let token =
                |t: &str| !t.is_empty() && t.bytes().all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) && b != 0x5c);
            if !scope.split(' ').all(token) {
                return Err(ConfigError::invalid(
                    key("scope"),
                    "scope tokens separated by single spaces (RFC 6749 §3.3)",
                ));
            }
        }
        if let Some(resource) = &o.resource {
            // RFC 8707 §2: an absolute URI without a fragment.
            let ok = url::Url::parse(resource).is_ok_and(|u| u.fragment().is_none());
            if !ok {
                return Err(ConfigError::invalid(key("resource"), "an absolute URI without a fragment (RFC 8707)"));
            }
        }
        if o.audience.as_ref().is_some_and(|a| a.is_empty() || a.chars().any(char::is_control)) {
            return Err(ConfigError::invalid(key("audience"), "a non-empty value without control characters"));
        }
        let ca = o.ca_file.as_ref().map(|p| loaded.read_file(&key("ca_file"), p)).transpose()?;
        let tls = crate::identity::tls::client_config(&key("ca_file"), ca.as_deref())?;
        Ok(UpstreamToken {
            name: name.to_owned(),
            endpoint,
            credentials,
            scope: o.scope.clone(),
            resource: o.resource.clone(),
            audience: o.audience.clone(),
            client: crate::identity::tls::https_client(tls),
            current: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(Attempts::default()),
            renewing: AtomicBool::new(false),
        })
    }

    /// The `Authorization` value to send now: the cached token (renewed in the background when
    /// due), else one fetched now — waited for at most [`WAIT`].
    pub async fn authorization(self: &Arc<Self>) -> Result<HeaderValue, TokenError> {
        if let Some(token) = self.usable() {
            if Instant::now() >= token.renew_at {
                self.renew_in_background();
            }
            return Ok(token.authorization.clone());
        }
        match tokio::time::timeout(WAIT, self.fetch_or_wait()).await {
            Ok(answer) => answer,
            Err(_) => Err(TokenError::Unreachable(self.endpoint.to_string(), format!("no token within {WAIT:?}"))),
        }
    }

    /// The upstream refused `sent` (401): it is not sent again (the next request fetches a new
    /// token). A token other than the current one (replaced meanwhile) changes nothing.
    pub fn rejected(&self, sent: &HeaderValue) {
        let current = self.current.load();
        if current.as_ref().is_some_and(|t| t.authorization == sent) {
            self.current.compare_and_swap(&*current, None);
            UPSTREAM_TOKENS.with_label_values(&[&self.name, "rejected"]).inc();
            tracing::warn!(upstream = %self.name, "the upstream refused fhir-fence's access token; a new one will be fetched");
        }
    }

    fn usable(&self) -> Option<Arc<Token>> {
        self.current.load_full().filter(|t| Instant::now() < t.usable_until)
    }

    /// One fetch however many requests wait: a request that waited for another's fetch takes
    /// its token, or — inside the back-off after a failure — its error.
    async fn fetch_or_wait(&self) -> Result<HeaderValue, TokenError> {
        let mut attempts = self.fetching.lock().await;
        if let Some(token) = self.usable() {
            return Ok(token.authorization.clone());
        }
        if let Some((error, until)) = &attempts.failed {
            if Instant::now() < *until {
                UPSTREAM_TOKENS.with_label_values(&[&self.name, "skipped"]).inc();
                return Err(error.clone());
            }
        }
        if let Some(last) = attempts.last {
            // The token fetched just now was refused already: wait for the interval's end
            // (the lock keeps this single-flight).
            if let Some(rest) = MIN_INTERVAL.checked_sub(last.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
        self.fetch_locked(&mut attempts).await.map(|t| t.authorization.clone())
    }

    /// Fetches a token while holding the fetch lock, and records the outcome.
    async fn fetch_locked(&self, attempts: &mut Attempts) -> Result<Arc<Token>, TokenError> {
        attempts.last = Some(Instant::now());
        let fetched = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(answer) => answer,
            Err(_) => {
                Err(TokenError::Unreachable(self.endpoint.to_string(), format!("timed out after {FETCH_TIMEOUT:?}")))
            }
        };
        match fetched {
            Ok(token) => {
                attempts.failures = 0;
                attempts.failed = None;
                UPSTREAM_TOKENS.with_label_values(&[&self.name, "ok"]).inc();
                tracing::info!(upstream = %self.name, "fetched an access token for the upstream");
                let token = Arc::new(token);
                self.current.store(Some(token.clone()));
                Ok(token)
            }
            Err(e) => {
                attempts.failures = attempts.failures.saturating_add(1);
                let pause =
                    Duration::from_secs(1 << attempts.failures.min(6).saturating_sub(1)).min(Duration::from_secs(30));
                attempts.failed = Some((e.clone(), Instant::now() + pause));
                UPSTREAM_TOKENS.with_label_values(&[&self.name, "failed"]).inc();
                tracing::warn!(upstream = %self.name, error = %e, failures = attempts.failures, "could not obtain an access token for the upstream");
                Err(e)
            }
        }
    }

    /// A renewal nobody waits for (the token is due), at most one at a time, none inside a
    /// back-off or the interval after a fetch.
    fn renew_in_background(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        runtime.spawn(async move {
            let _ = tokio::time::timeout(WAIT, async {
                let mut attempts = this.fetching.lock().await;
                let due = this.current.load().as_ref().is_none_or(|t| Instant::now() >= t.renew_at);
                let backing_off = attempts.failed.as_ref().is_some_and(|(_, until)| Instant::now() < *until);
                let too_soon = attempts.last.is_some_and(|l| l.elapsed() < MIN_INTERVAL);
                if due && !backing_off && !too_soon {
                    let _ = this.fetch_locked(&mut attempts).await;
                }
            })
            .await;
            this.renewing.store(false, Ordering::Release);
        });
    }

    /// The token request (`grant_type=client_credentials`, with `scope`, `resource` and `audience` when
    /// configured, and fhir-fence's client credentials).
    fn request(&self) -> Result<Request<Full<Bytes>>, http::Error> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        if let Some(resource) = &self.resource {
            form.append_pair("resource", resource);
        }
        if let Some(audience) = &self.audience {
            form.append_pair("audience", audience);
        }
        let request = Request::post(self.endpoint.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        let request = self.credentials.apply(request, &mut form);
        request.body(Full::new(Bytes::from(form.finish())))
    }

    async fn fetch(&self) -> Result<Token, TokenError> {
        let endpoint = self.endpoint.to_string();
        let unreachable = |e: &dyn std::fmt::Display| TokenError::Unreachable(endpoint.clone(), e.to_string());
        let refused = |e: &dyn std::fmt::Display| TokenError::Refused(endpoint.clone(), e.to_string());
        let request = self.request().map_err(|e| refused(&e))?;
        let started = Instant::now();
        let answer = self.client.request(request).await.map_err(|e| unreachable(&e))?;
        let status = answer.status();
        let body = Limited::new(answer.into_body(), MAX_BODY).collect().await.map_err(|e| unreachable(&*e))?.to_bytes();
        let Ok(Value::Object(body)) = crate::fhir::json::parse_strict(&body) else {
            return Err(refused(&format!("answered {status} with no JSON object (or one repeating a key)")));
        };
        if status != StatusCode::OK {
            // RFC 6749 §5.2: the `error` code is safe to show; its description is not read.
            let code = body
                .get("error")
                .and_then(Value::as_str)
                .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_graphic()));
            let shown = code.map(|c| format!(" ({c})")).unwrap_or_default();
            return Err(if status.is_server_error() {
                unreachable(&format!("answered {status}{shown}"))
            } else {
                refused(&format!("answered {status}{shown}"))
            });
        }
        parse_answer(&body, started).map_err(|e| refused(&e))
    }
}

/// A token answer (RFC 6749 §5.1) as a token fhir-fence can send: a bearer `access_token` of
/// RFC 6750 characters; its lifetime from `expires_in`, counted from `started` (when the
/// request left, so the token is never thought younger than it is).
fn parse_answer(body: &serde_json::Map<String, Value>, started: Instant) -> Result<Token, String> {
    let token = body.get("access_token").and_then(Value::as_str).ok_or("no access_token")?;
    let token68 = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    if token.is_empty() || token.len() > 16 * 1024 || !token.bytes().all(token68) {
        return Err("the access_token is not a bearer token (RFC 6750 characters)".into());
    }
    match body.get("token_type").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        // A DPoP or otherwise bound token needs a proof fhir-fence does not make.
        _ => return Err("the token_type is not Bearer".into()),
    }
    let lifetime = match body.get("expires_in") {
        None => DEFAULT_LIFETIME,
        Some(v) => Duration::from_secs(v.as_u64().filter(|s| *s > 0).ok_or("expires_in is not a positive integer")?),
    }
    .min(MAX_LIFETIME);
    let (renew_after, usable_for) = schedule(lifetime);
    let mut authorization = HeaderValue::from_str(&format!("Bearer {token}")).expect("checked characters");
    authorization.set_sensitive(true);
    Ok(Token { authorization, renew_at: started + renew_after, usable_until: started + usable_for })
}

/// For a token living `lifetime`: after how long it is renewed in the background, and for how
/// long it is sent at all (never in its last tenth, nor its last [`MARGIN`]).
fn schedule(lifetime: Duration) -> (Duration, Duration) {
    let usable = lifetime.saturating_sub((lifetime / 10).min(MARGIN));
    (lifetime.mul_f64(RENEW_AT).min(usable), usable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_ahead_and_never_sent_about_to_expire() {
        let s = |secs: u64| {
            let (renew, usable) = schedule(Duration::from_secs(secs));
            (renew.as_millis(), usable.as_millis())
        };
        assert_eq!(s(3600), (2_880_000, 3_595_000));
        assert_eq!(s(300), (240_000, 295_000));
        assert_eq!(s(10), (8_000, 9_000));
        assert_eq!(s(1), (800, 900));
    }

    #[test]
    fn only_bearer_answers_are_tokens() {
        let parse = |v: Value| parse_answer(v.as_object().unwrap(), Instant::now()).map(|t| t.authorization);
        let ok = parse(serde_json::json!({"access_token": "abc.def-_~+/=", "token_type": "bearer", "expires_in": 60}));
        assert_eq!(ok.unwrap().to_str().unwrap(), "Bearer abc.def-_~+/=");
        assert!(
            parse(serde_json::json!({"access_token": "abc", "token_type": "Bearer"})).is_ok(),
            "expires_in optional"
        );
        for refused in [
            serde_json::json!({"token_type": "Bearer"}),
            serde_json::json!({"access_token": "", "token_type": "Bearer"}),
            serde_json::json!({"access_token": "a b", "token_type": "Bearer"}),
            serde_json::json!({"access_token": "a\r\nX-Evil: 1", "token_type": "Bearer"}),
            serde_json::json!({"access_token": "abc", "token_type": "DPoP"}),
            serde_json::json!({"access_token": "abc"}),
            serde_json::json!({"access_token": "abc", "token_type": "Bearer", "expires_in": "60"}),
            serde_json::json!({"access_token": "abc", "token_type": "Bearer", "expires_in": 0}),
            serde_json::json!({"access_token": "abc", "token_type": "Bearer", "expires_in": -5}),
        ] {
            assert!(parse(refused.clone()).is_err(), "{refused}");
        }
    }

    #[test]
    fn the_secret_is_never_shown() {
        let parse = |v: Value| parse_answer(v.as_object().unwrap(), Instant::now()).unwrap();
        let token = parse(serde_json::json!({"access_token": "s3cr3t", "token_type": "Bearer"}));
        assert!(token.authorization.is_sensitive());
        assert!(!format!("{:?}", token.authorization).contains("s3cr3t"));
    }
}
