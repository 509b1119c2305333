//! The connection to an upstream FHIR server: pooled HTTP/1.1, JSON only, bounded, timed.
//!
//! Requests are built here from scratch (method, path, an explicit header set), never copied
//! from the client, so nothing the client sent reaches the upstream unless a scope module
//! put it there deliberately.
use crate::config::Upstream as UpstreamConfig;
use crate::fhir::json::{parse_strict, JsonError};
use crate::limits::{Gate, GatePermit};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use thread_local::ThreadLocal;

pub const FHIR_JSON: &str = "application/fhir+json";

type Pool = Client<HttpConnector, Full<Bytes>>;

#[derive(Clone)]
pub struct Upstream {
    pub name: String,
    /// The base URL without a trailing slash, e.g. `http://127.0.0.1:8090/fhir`.
    pub base: String,
    /// One connection pool per thread: a pooled connection is driven by a task on the runtime
    /// that opened it, so a worker that reused another thread's connection would hand every
    /// exchange across threads (see `workers.rs`). Each pool keeps up to `pool_size` idle connections.
    pools: Arc<ThreadLocal<Pool>>,
    connect_timeout: Duration,
    pool_size: usize,
    request_timeout: Duration,
    max_body: usize,
    /// The tenant's cap on upstream connections, in a tenant's view of the upstream ([`Upstream::gated`]).
    gate: Option<Gate>,
}

/// An upstream answer whose body, if any, is strictly parsed JSON.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Option<Value>,
}

/// An upstream answer whose body (JSON, if any) is not parsed yet.
pub struct RawAnswer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {0} could not be reached: {1}")]
    Connect(String, String),
    #[error("upstream {0} did not answer in time")]
    Timeout(String),
    #[error("upstream {0} sent a body larger than the configured limit")]
    TooLarge(String),
    #[error("upstream {0} answered with content type {1:?}, not FHIR JSON")]
    NotJson(String, String),
    #[error("upstream {0} sent JSON fhir-fence cannot accept: {1}")]
    BadJson(String, JsonError),
    #[error("the tenant's upstream connections to {0} are all busy")]
    Saturated(String),
    #[error("bad upstream request: {0}")]
    Request(String),
}

impl Upstream {
    pub fn new(name: &str, cfg: &UpstreamConfig, max_body: usize) -> Self {
        Upstream {
            name: name.to_owned(),
            base: cfg.base_url.trim_end_matches('/').to_owned(),
            pools: Arc::new(ThreadLocal::new()),
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            pool_size: cfg.pool_size,
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            max_body,
            gate: None,
        }
    }

    /// This thread's connection pool, made on first use.
    fn pool(&self) -> &Pool {
        self.pools.get_or(|| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(self.connect_timeout));
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(self.pool_size)
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector)
        })
    }

    /// A tenant's view of this upstream: the same connection pool, behind the tenant's gate.
    pub fn gated(&self, gate: Gate) -> Upstream {
        Upstream { gate: Some(gate), ..self.clone() }
    }

    /// Passes the tenant's gate (if any), holding a permit for as long as the exchange runs.
    async fn enter(&self) -> Result<GatePermit, UpstreamError> {
        match &self.gate {
            Some(g) => g.enter().await.map_err(|()| UpstreamError::Saturated(self.name.clone())),
            None => Ok(None),
        }
    }

    /// Sends a request whose answer body does not matter (it is read, bounded, and dropped):
    /// only the status is used, so its content type is not checked.
    pub async fn status_of(
        &self,
        method: Method,
        path: &str,
        mut headers: HeaderMap,
    ) -> Result<StatusCode, UpstreamError> {
        headers.insert(ACCEPT, HeaderValue::from_static(FHIR_JSON));
        Ok(self.exchange(method, &self.uri(path), headers, Bytes::new()).await?.0.status)
    }

    /// One bounded, timed request/response exchange.
    async fn exchange(
        &self,
        method: Method,
        uri: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes), UpstreamError> {
        let req = build(method, uri, headers, body)?;
        let _permit = self.enter().await?;
        let exchange = async {
            let resp =
                self.pool().request(req).await.map_err(|e| UpstreamError::Connect(self.name.clone(), e.to_string()))?;
            let (parts, body) = resp.into_parts();
            let collected = Limited::new(body, self.max_body).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    UpstreamError::TooLarge(self.name.clone())
                } else {
                    UpstreamError::Connect(self.name.clone(), e.to_string())
                }
            })?;
            Ok::<_, UpstreamError>((parts, collected.to_bytes()))
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(self.name.clone()))?
    }

    /// `GET base/path` with `Accept: accept`, answering as soon as the head arrives: the body is
    /// left to the caller to stream (bounded by time per frame there, not by size here), with
    /// the gate's permit, to be held until the body is finished.
    pub async fn stream(
        &self,
        path: &str,
        accept: &'static str,
        mut headers: HeaderMap,
    ) -> Result<(StatusCode, HeaderMap, Incoming, GatePermit), UpstreamError> {
        headers.insert(ACCEPT, HeaderValue::from_static(accept));
        let req = build(Method::GET, &self.uri(path), headers, Bytes::new())?;
        let permit = self.enter().await?;
        let resp = tokio::time::timeout(self.request_timeout, self.pool().request(req))
            .await
            .map_err(|_| UpstreamError::Timeout(self.name.clone()))?
            .map_err(|e| UpstreamError::Connect(self.name.clone(), e.to_string()))?;
        let (parts, body) = resp.into_parts();
        Ok((parts.status, parts.headers, body, permit))
    }

    /// `path` is relative to the base: "" is the base itself (transactions), "?…" a query on it.
    fn uri(&self, path: &str) -> String {
        if path.is_empty() || path.starts_with('?') {
            format!("{}{}", self.base, path)
        } else {
            format!("{}/{}", self.base, path)
        }
    }

    /// How long a streamed body may stay silent before it counts as a timeout.
    pub fn idle_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends `method base/path` with only the given headers (plus `Accept: application/fhir+json`),
    /// and parses the answer as FHIR JSON. An empty body is `None`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        mut headers: HeaderMap,
        body: Option<&Value>,
    ) -> Result<Answer, UpstreamError> {
        let uri = self.uri(path);
        headers.insert(ACCEPT, HeaderValue::from_static(FHIR_JSON));
        let bytes = match body {
            Some(b) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/fhir+json; charset=utf-8"));
                Bytes::from(serde_json::to_vec(b).map_err(|e| UpstreamError::Request(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let raw = self.send_raw(method, &uri, headers, bytes).await?;
        self.parse(raw)
    }

    /// `GET base/path` answered with its body unparsed (but checked to be JSON, if any), for
    /// callers that can check it without a tree (`scope::fastbundle`); [`Upstream::parse`]
    /// finishes it otherwise.
    pub async fn get_raw(&self, path: &str, mut headers: HeaderMap) -> Result<RawAnswer, UpstreamError> {
        headers.insert(ACCEPT, HeaderValue::from_static(FHIR_JSON));
        self.send_raw(Method::GET, &self.uri(path), headers, Bytes::new()).await
    }

    async fn send_raw(
        &self,
        method: Method,
        uri: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<RawAnswer, UpstreamError> {
        let (parts, bytes) = self.exchange(method, uri, headers, body).await?;
        if !bytes.is_empty() {
            let mime = media_type(&parts.headers);
            if !media_type_is(mime, &[FHIR_JSON, "application/json"]) {
                return Err(UpstreamError::NotJson(self.name.clone(), mime.to_ascii_lowercase()));
            }
        }
        Ok(RawAnswer { status: parts.status, headers: parts.headers, bytes })
    }

    /// Parses a raw answer's body strictly. An empty body is `None`.
    pub fn parse(&self, raw: RawAnswer) -> Result<Answer, UpstreamError> {
        let body = if raw.bytes.is_empty() {
            None
        } else {
            Some(parse_strict(&raw.bytes).map_err(|e| UpstreamError::BadJson(self.name.clone(), e))?)
        };
        Ok(Answer { status: raw.status, headers: raw.headers, body })
    }
}

/// A request with exactly `headers` (nothing added by the client library but `Host`).
fn build(method: Method, uri: &str, headers: HeaderMap, body: Bytes) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(body))
        .map_err(|e| UpstreamError::Request(e.to_string()))?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// The media type of an answer (`Content-Type` without parameters; "" if none).
pub fn media_type(headers: &HeaderMap) -> &str {
    let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    ct.split(';').next().unwrap_or("").trim()
}

/// True when `mime` is one of `types` (media types compare case-insensitively).
pub fn media_type_is(mime: &str, types: &[&str]) -> bool {
    types.iter().any(|t| mime.eq_ignore_ascii_case(t))
}
