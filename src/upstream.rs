//! The connection to an upstream FHIR server: pooled HTTP/1.1 (over TLS for an `https://`
//! base, `upstream_link`), JSON only, bounded, timed.
//!
//! Requests are built here from scratch (method, path, an explicit header set), never copied
//! from the client, so nothing the client sent reaches the upstream unless a scope module
//! put it there deliberately.
use crate::config::Upstream as UpstreamConfig;
use crate::fhir::json::{parse_strict, JsonError};
use crate::limits::{Gate, GatePermit};
use crate::upstream_gzip::{self, GzipError};
use crate::upstream_link::Link;
use bytes::Bytes;
use http::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thread_local::ThreadLocal;

pub const FHIR_JSON: &str = "application/fhir+json";

tokio::task_local! {
    /// The microseconds a request has waited on its upstream so far, summed over its exchanges
    /// (see [`timed`]).
    static WAITED: std::cell::Cell<u64>;
}

/// Runs a request's handling, answering with what it waited on upstreams: from each
/// exchange's start (once the tenant's connection cap let it through) to its whole answer (to
/// the head only, for a stream). The audit record carries it, so that fhir-fence's own time is
/// `micros - upstream_micros`.
pub async fn timed<F: std::future::Future>(handling: F) -> (F::Output, u64) {
    WAITED
        .scope(std::cell::Cell::new(0), async move {
            let out = handling.await;
            (out, WAITED.with(std::cell::Cell::get))
        })
        .await
}

/// Adds the time since `started` to the current request's upstream wait, if it is counted.
fn waited_since(started: Instant) {
    let _ = WAITED.try_with(|w| w.set(w.get() + started.elapsed().as_micros() as u64));
}

/// How long an idle upstream connection is kept for reuse.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// One thread's idle connections to one upstream, most recently used last. The lock is never
/// contended (each thread has its own pool); it is there because the pool lives in shared state.
#[derive(Default)]
struct Pool(Mutex<Vec<Idle>>);

struct Idle {
    send: SendRequest<Full<Bytes>>,
    since: Instant,
}

#[derive(Clone)]
pub struct Upstream {
    pub name: String,
    /// The base URL without a trailing slash, e.g. `http://127.0.0.1:8090/fhir`.
    pub base: String,
    /// `host:port` of the base, what connections are opened to.
    address: String,
    /// The `Host` header: the base's host, and its port unless that is the default (as the
    /// base URL spells it, so that the upstream's own links start with `base`).
    host: HeaderValue,
    /// The base's path (`/fhir`), which every request's path starts with.
    base_path: String,
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
    /// TLS and fhir-fence's own credentials for this upstream (`upstream_link`).
    pub link: Arc<Link>,
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
    /// A compressed answer that could not be decoded (`upstream_gzip`).
    #[error("upstream {0} sent a body fhir-fence cannot decode: {1}")]
    Encoding(String, GzipError),
    #[error("the tenant's upstream connections to {0} are all busy")]
    Saturated(String),
    /// fhir-fence could not obtain its own access token for the upstream (`oauth2`).
    #[error("upstream {0}: {1}")]
    Token(String, crate::upstream_token::TokenError),
    /// The upstream answered 401 to fhir-fence's own credentials (a client's never reach it).
    #[error("upstream {0} refused fhir-fence's credentials (401)")]
    CredentialsRefused(String),
    #[error("bad upstream request: {0}")]
    Request(String),
}

impl Upstream {
    /// `cfg.base_url` was checked at load to be an `http(s)://` URL with a host; `link` was
    /// built from the same settings.
    pub fn new(name: &str, cfg: &UpstreamConfig, max_body: usize, link: Arc<Link>) -> Self {
        let base = cfg.base_url.trim_end_matches('/').to_owned();
        let url = url::Url::parse(&base).expect("checked at load");
        let host = url.host_str().unwrap_or("localhost");
        let address = format!("{}:{}", host, url.port_or_known_default().unwrap_or(80));
        // (`host_str` keeps an IPv6 address's brackets, as `connect` needs them.)
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Upstream {
            name: name.to_owned(),
            address,
            host: HeaderValue::from_str(&host).expect("a URL's host is a valid header value"),
            base_path: url.path().trim_end_matches('/').to_owned(),
            base,
            pools: Arc::new(ThreadLocal::new()),
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            pool_size: cfg.pool_size,
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            max_body,
            gate: None,
            link,
        }
    }

    /// An idle connection of this thread that is still open and fresh, if there is one.
    fn checkout(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.pools.get_or(Pool::default).0.lock().ok()?;
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < IDLE_FOR && !c.send.is_closed() {
                return Some(c.send);
            }
        }
        None
    }

    /// Keeps a connection whose exchange is finished for the next request on this thread.
    fn checkin(&self, send: SendRequest<Full<Bytes>>) {
        if send.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.pools.get_or(Pool::default).0.lock() {
            if idle.len() < self.pool_size {
                idle.push(Idle { send, since: Instant::now() });
            }
        }
    }

    /// A new connection (TCP, then TLS for an `https://` base, both within the connect
    /// timeout), driven by a task on this thread's runtime. A TLS failure (an unknown CA, the
    /// wrong name, an expired certificate) is a connect error: 502, and logged with its reason.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, UpstreamError> {
        let failed = |e: &dyn std::fmt::Display| UpstreamError::Connect(self.name.clone(), e.to_string());
        let open = async {
            let stream = tokio::net::TcpStream::connect(&self.address).await.map_err(|e| failed(&e))?;
            let _ = stream.set_nodelay(true);
            match &self.link.tls {
                None => Ok(Stream::Plain(stream)),
                Some((connector, name)) => match connector.connect(name.clone(), stream).await {
                    Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
                    Err(e) => Err(failed(&format!("TLS: {e}"))),
                },
            }
        };
        let stream =
            tokio::time::timeout(self.connect_timeout, open).await.map_err(|_| failed(&"connect timed out"))??;
        let send = match stream {
            Stream::Plain(s) => self.handshake(s).await?,
            Stream::Tls(s) => self.handshake(*s).await?,
        };
        Ok(send)
    }

    /// HTTP/1.1 on an open connection, driven by a task of its own.
    async fn handshake<IO>(&self, io: IO) -> Result<SendRequest<Full<Bytes>>, UpstreamError>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Connect(self.name.clone(), e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(send)
    }

    /// Sends `req` on an idle connection, or a new one. A request that an idle connection
    /// refused before sending anything (it was closed meanwhile) is sent again on a new one;
    /// one that may have reached the upstream never is.
    async fn request(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(http::Response<Incoming>, SendRequest<Full<Bytes>>), UpstreamError> {
        loop {
            let (mut send, reused) = match self.checkout() {
                Some(send) => (send, true),
                None => (self.connect().await?, false),
            };
            // A connection just checked in may not have said it wants the next request yet;
            // one the upstream closed while it was idle says so here.
            if reused && send.ready().await.is_err() {
                continue;
            }
            match send.try_send_request(req).await {
                Ok(resp) => return Ok((resp, send)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::Connect(self.name.clone(), e.into_error().to_string())),
                },
            }
        }
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

    /// One bounded, timed request/response exchange, with fhir-fence's credentials.
    ///
    /// A 401 to them drops a fetched token (the next request fetches a new one) and is an
    /// error, never the client's answer: the client's own credentials never reach the upstream.
    /// Only a `GET` or `HEAD` is sent again, once, with a new token — they change nothing, so a
    /// second send is safe; any other request may have been acted on before the upstream
    /// refused it, and fails (502) rather than risk running twice.
    async fn exchange(
        &self,
        method: Method,
        uri: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes), UpstreamError> {
        let again = (self.link.renews() && is_safe(&method)).then(|| (method.clone(), headers.clone(), body.clone()));
        let (parts, bytes, sent) = self.exchange_once(method, uri, headers, body).await?;
        let Some(sent) = sent.filter(|_| parts.status == StatusCode::UNAUTHORIZED) else {
            return Ok((parts, bytes));
        };
        self.link.refused(&sent);
        if let Some((method, headers, body)) = again {
            let (parts, bytes, sent) = self.exchange_once(method, uri, headers, body).await?;
            let Some(sent) = sent.filter(|_| parts.status == StatusCode::UNAUTHORIZED) else {
                return Ok((parts, bytes));
            };
            self.link.refused(&sent);
        }
        Err(UpstreamError::CredentialsRefused(self.name.clone()))
    }

    /// One exchange as it is sent, with the `Authorization` it carried (if fhir-fence sent one).
    async fn exchange_once(
        &self,
        method: Method,
        uri: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes, Option<HeaderValue>), UpstreamError> {
        let authorization = self.authorization().await?;
        let req = self.build(method, uri, headers, body, authorization.clone())?;
        let _permit = self.enter().await?;
        let started = Instant::now();
        let exchange = async {
            let (resp, send) = self.request(req).await?;
            let (parts, body) = resp.into_parts();
            let collected = Limited::new(body, self.max_body).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    UpstreamError::TooLarge(self.name.clone())
                } else {
                    UpstreamError::Connect(self.name.clone(), e.to_string())
                }
            })?;
            self.checkin(send);
            Ok::<_, UpstreamError>((parts, collected.to_bytes()))
        };
        let answer = tokio::time::timeout(self.request_timeout, exchange).await;
        waited_since(started);
        let (parts, bytes) = answer.map_err(|_| UpstreamError::Timeout(self.name.clone()))??;
        Ok((parts, bytes, authorization))
    }

    /// fhir-fence's own `Authorization` for the next exchange (a token fetched when needed,
    /// before the tenant's gate: fetching holds no upstream connection).
    async fn authorization(&self) -> Result<Option<HeaderValue>, UpstreamError> {
        self.link.authorization().await.map_err(|e| UpstreamError::Token(self.name.clone(), e))
    }

    /// `GET base/path` with `Accept: accept`, answering as soon as the head arrives: the body is
    /// left to the caller to stream (bounded by time per frame there, not by size here), with
    /// the gate's permit, to be held until the body is finished. The connection is not reused
    /// (it is busy until the stream ends, and streams are rare): it closes after the body.
    pub async fn stream(
        &self,
        path: &str,
        accept: &'static str,
        mut headers: HeaderMap,
    ) -> Result<(StatusCode, HeaderMap, Incoming, GatePermit), UpstreamError> {
        headers.insert(ACCEPT, HeaderValue::from_static(accept));
        let uri = self.uri(path);
        // A GET: sent once more with a new token when the upstream refused a fetched one.
        let tries = if self.link.renews() { 2 } else { 1 };
        for _ in 0..tries {
            let authorization = self.authorization().await?;
            let req = self.build(Method::GET, &uri, headers.clone(), Bytes::new(), authorization.clone())?;
            let permit = self.enter().await?;
            let started = Instant::now();
            let head = tokio::time::timeout(self.request_timeout, self.request(req)).await;
            waited_since(started);
            let (resp, _send) = head.map_err(|_| UpstreamError::Timeout(self.name.clone()))??;
            let (parts, body) = resp.into_parts();
            match authorization.filter(|_| parts.status == StatusCode::UNAUTHORIZED) {
                Some(sent) => self.link.refused(&sent),
                None => return Ok((parts.status, parts.headers, body, permit)),
            }
        }
        Err(UpstreamError::CredentialsRefused(self.name.clone()))
    }

    /// Observe mode's pass-through (`observe`): `method base/target` (`target`: the client's
    /// path below the FHIR base, with its query as sent) with exactly `headers` and `body`,
    /// answered as it came — any status, content type and body, bounded by
    /// `server.max_upstream_body_bytes` and timed like every exchange. fhir-fence's own
    /// credentials for the upstream, never the client's.
    pub async fn forward(
        &self,
        method: Method,
        target: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes), UpstreamError> {
        self.exchange(method, &self.uri(target), headers, body).await
    }

    /// The request target (origin form) for `path`, which is relative to the base: "" is the
    /// base itself (transactions), "?…" a query on it.
    fn uri(&self, path: &str) -> String {
        if path.is_empty() || path.starts_with('?') {
            let root = if self.base_path.is_empty() { "/" } else { self.base_path.as_str() };
            [root, path].concat()
        } else {
            [self.base_path.as_str(), "/", path].concat()
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
    /// callers that can check it without a tree (`outbound::fastbundle`); [`Upstream::parse`]
    /// finishes it otherwise.
    pub async fn get_raw(&self, path: &str, mut headers: HeaderMap) -> Result<RawAnswer, UpstreamError> {
        headers.insert(ACCEPT, HeaderValue::from_static(FHIR_JSON));
        self.send_raw(Method::GET, &self.uri(path), headers, Bytes::new()).await
    }

    /// An exchange whose answer fhir-fence reads whole: asked for gzip (`upstream_gzip`) and
    /// decoded, bounded by `max_upstream_body_bytes` once decoded too.
    async fn send_raw(
        &self,
        method: Method,
        uri: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<RawAnswer, UpstreamError> {
        headers.insert(ACCEPT_ENCODING, upstream_gzip::ACCEPT_GZIP);
        let (parts, bytes) = self.exchange(method, uri, headers, body).await?;
        let bytes = upstream_gzip::decode(&parts.headers, bytes, self.max_body).map_err(|e| match e {
            GzipError::TooLarge => UpstreamError::TooLarge(self.name.clone()),
            e => UpstreamError::Encoding(self.name.clone(), e),
        })?;
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

    /// A request with exactly `headers`, the upstream's `Host` and fhir-fence's `authorization`.
    fn build(
        &self,
        method: Method,
        uri: &str,
        mut headers: HeaderMap,
        body: Bytes,
        authorization: Option<HeaderValue>,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        headers.insert(http::header::HOST, self.host.clone());
        if let Some(authorization) = authorization {
            headers.insert(http::header::AUTHORIZATION, authorization);
        }
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|e| UpstreamError::Request(e.to_string()))?;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

/// Whether a request may be sent twice: it changes nothing on the server (RFC 9110 §9.2.1).
fn is_safe(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// A connection to an upstream, plain or TLS.
enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
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
