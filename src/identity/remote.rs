//! An issuer's keys from its identity provider: the OpenID discovery document's `jwks_uri` (or
//! a `jwks_uri` given directly), fetched over HTTPS and cached, so a provider that rotates its
//! signing keys needs no config change.
//!
//! - A token whose `kid` is cached verifies without waiting for anything.
//! - An unknown `kid` triggers one refresh: single-flight (one fetch however many requests
//!   wait), at most one per [`MIN_REFRESH`] (a flood of made-up kids cannot flood the
//!   provider: a request inside the interval waits for its end, so a key rotated in just after
//!   a fetch is still found), with a jittered back-off after failures (a request inside a
//!   back-off is answered at once); the request waits at most [`WAIT`] in all, then gets
//!   401 — never 500, never a stall. The discovery document is read once; its `jwks_uri` is
//!   kept until a fetch from it fails.
//! - A known `kid` whose key does not verify a token's signature triggers the same refresh
//!   (a provider may reuse a kid for a new key), under the same limits: a flood of tokens with
//!   bad signatures costs the provider at most one fetch per [`MIN_REFRESH`], like a flood of
//!   made-up kids.
//! - Keys are refreshed in the background once older than [`MAX_AGE`]. While the provider
//!   cannot be reached, the cached keys keep verifying for the issuer's grace
//!   (`keys_grace_secs`) after the last successful fetch; past it, nothing verifies (fail
//!   closed: a key the provider may have revoked long ago is not trusted forever).
//! - Refreshes and their failures are counted (`fhir_fence_jwks_refreshes_total`).
use super::jwks::{parse_jwks, JwksKey, Strictness};
use crate::metrics::JWKS_REFRESHES;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest one fetch from the provider may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a request with an unknown `kid` waits in all (for the lock, the next refresh
/// slot and the fetch).
pub const WAIT: Duration = Duration::from_secs(5);
/// Refreshes are at least this far apart; after failures the pause doubles, up to five minutes.
pub const MIN_REFRESH: Duration = Duration::from_secs(2);
/// Keys older than this are refreshed in the background on the next use.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// The largest discovery document or JWKS accepted.
const MAX_BODY: usize = 256 * 1024;

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A discovery document: its `issuer` must equal the configured `iss`; its `jwks_uri` is used.
    Discovery(Uri),
    Jwks(Uri),
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}: {1}")]
    Fetch(String, String),
    #[error("{0} answered {1}")]
    Status(String, StatusCode),
    #[error("the discovery document is not usable: {0}")]
    Discovery(String),
    #[error("the JWKS is not usable: {0}")]
    Jwks(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

type Https = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The keys of one issuer, shared by every snapshot whose issuer settings are the same.
pub struct RemoteKeys {
    /// The issuer's config name (metrics, logs).
    name: String,
    iss: String,
    source: Source,
    grace: Duration,
    client: Https,
    keys: ArcSwap<Fetched>,
    /// Held by the one refresh in flight; the others wait on it.
    refresh: tokio::sync::Mutex<Attempts>,
    /// Set while a background refresh runs (no second one is started).
    background: Mutex<bool>,
    /// The discovery document's `jwks_uri`, once read (dropped when a fetch from it fails).
    jwks_uri: Mutex<Option<Uri>>,
}

/// The keys and when they were fetched (`None`: never).
struct Fetched {
    keys: Vec<JwksKey>,
    at: Option<Instant>,
}

#[derive(Default)]
struct Attempts {
    last: Option<Instant>,
    failures: u32,
}

impl RemoteKeys {
    pub fn new(name: &str, iss: &str, source: Source, tls: rustls::ClientConfig, grace: Duration) -> Self {
        let client = super::tls::https_client(tls);
        RemoteKeys {
            name: name.to_owned(),
            iss: iss.to_owned(),
            source,
            grace,
            client,
            keys: ArcSwap::from_pointee(Fetched { keys: Vec::new(), at: None }),
            refresh: tokio::sync::Mutex::new(Attempts::default()),
            background: Mutex::new(false),
            jwks_uri: Mutex::new(None),
        }
    }

    /// Calls `f` with the cached keys while they may be used (fetched, and within the grace of
    /// the last successful fetch); starts a background refresh when they are old.
    pub fn with_keys<T>(self: &Arc<Self>, f: impl FnOnce(&[JwksKey]) -> Option<T>) -> Option<T> {
        let fetched = self.keys.load();
        let at = fetched.at?;
        let age = at.elapsed();
        if age > MAX_AGE {
            self.refresh_in_background();
        }
        if age > MAX_AGE + self.grace {
            return None;
        }
        f(&fetched.keys)
    }

    /// For an unknown `kid`, or a known one whose key does not verify the signature: one
    /// refresh (single-flight, rate-limited, backed off after failures), waited for at most
    /// [`WAIT`] in all. Answers whether the keys were fetched again.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        tokio::time::timeout(WAIT, self.refresh()).await.unwrap_or(false)
    }

    async fn refresh(&self) -> bool {
        let before = self.keys.load().at;
        let mut attempts = self.refresh.lock().await;
        // Another request's refresh finished while this one waited: use its keys.
        if self.keys.load().at != before {
            return true;
        }
        if let Some(last) = attempts.last {
            let pause = self.pause(attempts.failures);
            let elapsed = last.elapsed();
            if elapsed < pause {
                if attempts.failures > 0 {
                    JWKS_REFRESHES.with_label_values(&[&self.name, "skipped"]).inc();
                    return false;
                }
                // Just after a fetch: wait for the interval's end (the lock keeps this single-flight).
                tokio::time::sleep(pause - elapsed).await;
            }
        }
        attempts.last = Some(Instant::now());
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(Ok(keys)) => {
                attempts.failures = 0;
                self.store(keys);
                true
            }
            Ok(Err(e)) => self.failed(&mut attempts, &e.to_string()),
            Err(_) => self.failed(&mut attempts, &RemoteError::Timeout(FETCH_TIMEOUT).to_string()),
        }
    }

    /// How long after an attempt the next may start: [`MIN_REFRESH`]; after failures doubled
    /// per failure up to five minutes, with up to a quarter of jitter (so replicas do not retry
    /// in step).
    fn pause(&self, failures: u32) -> Duration {
        if failures == 0 {
            return MIN_REFRESH;
        }
        let base = MIN_REFRESH.saturating_mul(1 << failures.min(9)).min(Duration::from_secs(300));
        let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * base.as_millis() as u64 / 4 / 255;
        base + Duration::from_millis(jitter)
    }

    fn failed(&self, attempts: &mut Attempts, why: &str) -> bool {
        attempts.failures = attempts.failures.saturating_add(1);
        JWKS_REFRESHES.with_label_values(&[&self.name, "failed"]).inc();
        tracing::warn!(issuer = %self.name, error = why, failures = attempts.failures, "could not refresh the issuer's keys");
        false
    }

    fn store(&self, keys: Vec<JwksKey>) {
        JWKS_REFRESHES.with_label_values(&[&self.name, "ok"]).inc();
        tracing::info!(issuer = %self.name, keys = keys.len(), "fetched the issuer's keys");
        self.keys.store(Arc::new(Fetched { keys, at: Some(Instant::now()) }));
    }

    /// Starts fetching the keys (when running inside the server), so the first token need not wait.
    pub fn prefetch(self: &Arc<Self>) {
        self.refresh_in_background();
    }

    /// A refresh nobody waits for (keys getting old), at most one at a time.
    fn refresh_in_background(self: &Arc<Self>) {
        {
            let mut running = self.background.lock().expect("not poisoned");
            if *running {
                return;
            }
            *running = true;
        }
        let backing_off = self
            .refresh
            .try_lock()
            .is_ok_and(|a| a.failures > 0 && a.last.is_some_and(|last| last.elapsed() < self.pause(a.failures)));
        let Ok(runtime) = tokio::runtime::Handle::try_current().map_err(drop).and_then(|r| match backing_off {
            true => Err(()),
            false => Ok(r),
        }) else {
            *self.background.lock().expect("not poisoned") = false;
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            this.refresh_for_unknown_kid().await;
            *this.background.lock().expect("not poisoned") = false;
        });
    }

    /// The keys from the provider: through the discovery document when there is one (read once;
    /// again after a fetch from its `jwks_uri` failed).
    async fn fetch(&self) -> Result<Vec<JwksKey>, RemoteError> {
        let cached = self.jwks_uri.lock().expect("not poisoned").clone();
        let jwks_uri = match (&self.source, cached) {
            (Source::Jwks(uri), _) => uri.clone(),
            (Source::Discovery(_), Some(uri)) => uri,
            (Source::Discovery(uri), None) => {
                let doc: Value = serde_json::from_slice(&self.get(uri).await?)
                    .map_err(|e| RemoteError::Discovery(format!("not JSON: {e}")))?;
                if doc.get("issuer").and_then(Value::as_str) != Some(self.iss.as_str()) {
                    return Err(RemoteError::Discovery(format!("its issuer is not {:?}", self.iss)));
                }
                let jwks = doc.get("jwks_uri").and_then(Value::as_str).unwrap_or_default();
                let jwks = https_uri(jwks).map_err(RemoteError::Discovery)?;
                *self.jwks_uri.lock().expect("not poisoned") = Some(jwks.clone());
                jwks
            }
        };
        let fetched = match self.get(&jwks_uri).await {
            Ok(bytes) => parse_jwks(&bytes, Strictness::Provider).map_err(RemoteError::Jwks),
            Err(e) => Err(e),
        };
        if fetched.is_err() {
            *self.jwks_uri.lock().expect("not poisoned") = None;
        }
        fetched
    }

    async fn get(&self, uri: &Uri) -> Result<Bytes, RemoteError> {
        let fail = |e: &dyn std::fmt::Display| RemoteError::Fetch(uri.to_string(), e.to_string());
        let request = Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| fail(&e))?;
        let answer = self.client.request(request).await.map_err(|e| fail(&e))?;
        if answer.status() != StatusCode::OK {
            return Err(RemoteError::Status(uri.to_string(), answer.status()));
        }
        let body = Limited::new(answer.into_body(), MAX_BODY).collect().await.map_err(|e| fail(&*e))?;
        Ok(body.to_bytes())
    }
}

/// An `https://` URL, or why not: keys are never fetched in the clear.
pub fn https_uri(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(format!("{s:?} is not an https:// URL"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grace rule itself (an end-to-end test would wait `MAX_AGE`, five minutes): keys
    /// fetched `age` ago verify while `age` is within `MAX_AGE` + the grace, never after.
    #[test]
    fn keys_stop_verifying_once_the_grace_after_the_last_fetch_is_over() {
        let grace = Duration::from_secs(60);
        let tls = super::super::tls::client_config("ca_file", None).unwrap();
        let source = Source::Jwks("https://idp.test/jwks".parse().unwrap());
        let remote = Arc::new(RemoteKeys::new("grace-test", "https://idp.test", source, tls, grace));
        let jwks = include_bytes!("../../fixtures/keys/rs256-jwks.json");
        let usable = |age: Option<Duration>| {
            let at = age.map(|a| Instant::now().checked_sub(a).expect("the clock has run for minutes"));
            let keys = parse_jwks(jwks, Strictness::File).unwrap();
            remote.keys.store(Arc::new(Fetched { keys, at }));
            remote.with_keys(|keys| Some(keys.len())).is_some()
        };
        assert!(!usable(None), "never fetched");
        assert!(usable(Some(Duration::ZERO)));
        assert!(usable(Some(MAX_AGE + grace - Duration::from_secs(1))), "old, but within the grace");
        assert!(!usable(Some(MAX_AGE + grace + Duration::from_secs(1))), "past the grace: fail closed");
    }
}
