//! Opaque access tokens, checked at their issuer's RFC 7662 introspection endpoint.
//!
//! - fhir-fence calls as its own client at the provider (`client_secret_basic` or
//!   `client_secret_post`), over verified HTTPS only.
//! - The answer is read as every JSON here (duplicate keys refused, at most [`MAX_BODY`]); only
//!   a 200 whose `active` is the JSON `true` is an active token. What the answer then says
//!   (`exp`, `aud`, `iss`, the tenant) is judged by `verify`, as a JWT's claims are.
//! - A made-up token costs the provider one call: inactive answers are remembered (by the
//!   token's hash) for [`INACTIVE_TTL`]; at most [`MAX_IN_FLIGHT`] calls run at once, and a
//!   request waits at most [`WAIT`] in all, then gets 503 — never a stall, never a 500.
//! - Calls are counted by result (`fhir_fence_introspections_total`).
use super::client_auth::ClientSecret;
use crate::config::{ConfigError, Introspection, Loaded};
use crate::metrics::INTROSPECTIONS;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::{Map, Value};
use std::time::Duration;

/// The longest a request waits for an introspection (a free slot and the call).
pub const WAIT: Duration = Duration::from_secs(5);
/// Calls to the provider running at once, per issuer.
pub const MAX_IN_FLIGHT: usize = 32;
/// How long an inactive answer is remembered.
pub const INACTIVE_TTL: Duration = Duration::from_secs(30);
/// The largest introspection answer read.
pub const MAX_BODY: usize = 64 * 1024;
/// The longest opaque token sent to a provider.
pub const MAX_TOKEN: usize = 4096;
/// The longest `cache_secs` (the verifier remembers no token longer).
pub const MAX_CACHE_SECS: u64 = 300;

/// What the provider said about a token.
pub enum Introspected {
    /// `active: true`, with everything else the answer holds.
    Active(Map<String, Value>),
    Inactive,
}

#[derive(Debug, thiserror::Error)]
pub enum IntrospectError {
    #[error("the token's identity provider could not be asked about it: {0}")]
    Unavailable(String),
}

/// One issuer's introspection endpoint and fhir-fence's credentials there.
pub struct Introspector {
    name: String,
    endpoint: Uri,
    credentials: ClientSecret,
    /// The longest an active answer is reused (never past the token's `exp`).
    pub cache: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    in_flight: tokio::sync::Semaphore,
    inactive: moka::sync::Cache<[u8; 32], ()>,
}

impl Introspector {
    /// Builds (and checks) issuer `name`'s `introspection` section; `ca` is its `ca_file`'s content.
    pub fn build(loaded: &Loaded, name: &str, i: &Introspection, ca: Option<&[u8]>) -> Result<Self, ConfigError> {
        let key = |k: &str| format!("issuers.{name}.introspection.{k}");
        let endpoint = super::remote::https_uri(&i.endpoint).map_err(|e| ConfigError::invalid(key("endpoint"), e))?;
        let table = format!("issuers.{name}.introspection");
        let credentials = ClientSecret::read(loaded, &table, &i.client_id, &i.client_secret_file, i.client_auth)?;
        if !(1..=MAX_CACHE_SECS).contains(&i.cache_secs) {
            return Err(ConfigError::invalid(key("cache_secs"), format!("1 to {MAX_CACHE_SECS}")));
        }
        let tls = super::tls::client_config(&format!("issuers.{name}.ca_file"), ca)?;
        Ok(Introspector {
            name: name.to_owned(),
            endpoint,
            credentials,
            cache: Duration::from_secs(i.cache_secs),
            client: super::tls::https_client(tls),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            inactive: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(INACTIVE_TTL).build(),
        })
    }

    /// Asks the provider about `token` (`hash`: its SHA-256), waiting at most [`WAIT`].
    pub async fn introspect(&self, token: &str, hash: &[u8; 32]) -> Result<Introspected, IntrospectError> {
        if self.inactive.contains_key(hash) {
            INTROSPECTIONS.with_label_values(&[&self.name, "inactive-remembered"]).inc();
            return Ok(Introspected::Inactive);
        }
        let answer = tokio::time::timeout(WAIT, async {
            let _slot = self.in_flight.acquire().await.expect("never closed");
            self.call(token).await
        })
        .await
        .unwrap_or_else(|_| Err(IntrospectError::Unavailable(format!("no answer within {WAIT:?}"))));
        let result = match &answer {
            Ok(Introspected::Active(_)) => "active",
            Ok(Introspected::Inactive) => {
                self.inactive.insert(*hash, ());
                "inactive"
            }
            Err(e) => {
                tracing::warn!(issuer = %self.name, error = %e, "token introspection failed");
                "failed"
            }
        };
        INTROSPECTIONS.with_label_values(&[&self.name, result]).inc();
        answer
    }

    /// The introspection request for `token`, with fhir-fence's client credentials.
    fn request(&self, token: &str) -> Result<Request<Full<Bytes>>, http::Error> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token).append_pair("token_type_hint", "access_token");
        let request = Request::post(self.endpoint.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        let request = self.credentials.apply(request, &mut form);
        request.body(Full::new(Bytes::from(form.finish())))
    }

    async fn call(&self, token: &str) -> Result<Introspected, IntrospectError> {
        let fail = |e: &dyn std::fmt::Display| IntrospectError::Unavailable(format!("{}: {e}", self.endpoint));
        let request = self.request(token).map_err(|e| fail(&e))?;
        let answer = self.client.request(request).await.map_err(|e| fail(&e))?;
        if answer.status() != StatusCode::OK {
            return Err(fail(&format!("answered {}", answer.status())));
        }
        let body = Limited::new(answer.into_body(), MAX_BODY).collect().await.map_err(|e| fail(&*e))?.to_bytes();
        let Ok(Value::Object(answer)) = crate::fhir::json::parse_strict(&body) else {
            return Err(fail(&"the answer is not a JSON object (or repeats a key)"));
        };
        Ok(match answer.get("active") {
            Some(Value::Bool(true)) => Introspected::Active(answer),
            _ => Introspected::Inactive,
        })
    }
}

/// Whether a token may be sent to an introspection endpoint: RFC 6750's `b64token` (the
/// characters a bearer token is made of), at most [`MAX_TOKEN`] long.
pub fn is_opaque_token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && token.len() <= MAX_TOKEN
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_token_characters_are_sent_out() {
        for ok in ["abc", "Zx-._~+/9==", "a.b"] {
            assert!(is_opaque_token(ok), "{ok}");
        }
        for refused in ["", "===", "a b", "a\nb", "ä", "a=b", "a%20"] {
            assert!(!is_opaque_token(refused), "{refused:?}");
        }
        assert!(!is_opaque_token(&"a".repeat(MAX_TOKEN + 1)));
    }
}
