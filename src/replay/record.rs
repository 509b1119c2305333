//! `fhir-fence record`: a pass-through recorder in front of a plain FHIR server (no tenancy).
//!
//! Everything is forwarded as it came (the client's `Host` too, so the server's absolute URLs
//! — paging links, `Location` — point back at the recorder and the client's next request is
//! recorded as well). Each finished exchange is appended to the traffic file as one line, with
//! only the headers the format keeps: credentials and cookies are never written.
use super::format::{self, Exchange, Seen};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Bodies above this are refused (413) rather than half-recorded.
const MAX_BODY: usize = 256 << 20;

/// Headers that belong to one connection, not to the exchange.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

struct Recorder {
    upstream: String,
    /// The upstream's base path (`/fhir`): stripped from request paths to make them relative.
    base_path: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// An upstream that has not answered by then gets the client a 504 (not recorded), rather
    /// than a recording session that hangs.
    timeout: Duration,
    out: Mutex<Box<dyn Write + Send>>,
    seq: AtomicU64,
}

/// Records until `shutdown` resolves; returns the number of exchanges written.
pub async fn serve(
    listener: TcpListener,
    upstream: &str,
    timeout: Duration,
    out: Box<dyn Write + Send>,
    shutdown: impl Future<Output = ()>,
) -> Result<u64, String> {
    let upstream = upstream.trim_end_matches('/').to_owned();
    let url = url::Url::parse(&upstream).map_err(|e| format!("--upstream {upstream}: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!("--upstream {upstream}: only http:// upstreams can be recorded"));
    }
    let rec = Arc::new(Recorder {
        base_path: url.path().trim_end_matches('/').to_owned(),
        upstream,
        client: Client::builder(TokioExecutor::new()).build_http(),
        timeout,
        out: Mutex::new(out),
        seq: AtomicU64::new(0),
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let rec = rec.clone();
                let service = service_fn(move |req| {
                    let rec = rec.clone();
                    async move { Ok::<_, Infallible>(rec.exchange(req).await) }
                });
                let conn = graceful.watch(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), graceful.shutdown()).await;
    Ok(rec.seq.load(Ordering::SeqCst))
}

impl Recorder {
    async fn exchange(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match self.forward(req).await {
            Ok(r) => r,
            Err((status, why)) => {
                tracing::warn!(error = %why, "not recorded");
                let oo = serde_json::json!({"resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "exception", "diagnostics": format!("fhir-fence record: {why}")}]});
                let mut r = Response::new(Full::new(Bytes::from(oo.to_string())));
                *r.status_mut() = status;
                r.headers_mut()
                    .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/fhir+json"));
                r
            }
        }
    }

    async fn forward(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, (StatusCode, String)> {
        let (parts, body) = req.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| (StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")))?
            .to_bytes();
        let path = parts.uri.path();
        let relative = path.strip_prefix(&self.base_path).unwrap_or(path).trim_start_matches('/').to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let mut uri = format!("{}/{relative}", self.upstream);
        if !query.is_empty() {
            uri = format!("{uri}?{query}");
        }
        let mut up = Request::builder().method(parts.method.clone()).uri(&uri);
        for (k, v) in parts.headers.iter().filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str())) {
            up = up.header(k, v);
        }
        let up = up.body(Full::new(body.clone())).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(up))
            .await
            .map_err(|_| (StatusCode::GATEWAY_TIMEOUT, format!("{uri}: no answer in {:?}", self.timeout)))?
            .map_err(|e| (StatusCode::BAD_GATEWAY, format!("{uri}: {e}")))?;
        let (rparts, rbody) = resp.into_parts();
        let rbytes = Limited::new(rbody, MAX_BODY)
            .collect()
            .await
            .map_err(|e| (StatusCode::BAD_GATEWAY, format!("{uri}: answer body: {e}")))?
            .to_bytes();
        let n = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let header_pairs = |h: &http::HeaderMap| {
            h.iter().filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))).collect::<Vec<_>>()
        };
        let (qh, rh) = (header_pairs(&parts.headers), header_pairs(&rparts.headers));
        let x = Exchange::observed(
            format!("{n:06}"),
            parts.method.as_str(),
            relative,
            query,
            &qh,
            &body,
            Some(Seen { status: rparts.status.as_u16(), headers: &rh, body: &rbytes }),
        );
        {
            let mut out = self.out.lock().map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "writer poisoned".into()))?;
            format::write_line(&mut *out, &x)
                .and_then(|_| out.flush())
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write the traffic file: {e}")))?;
        }
        let mut r = Response::new(Full::new(rbytes));
        *r.status_mut() = rparts.status;
        for (k, v) in rparts.headers.iter().filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str())) {
            r.headers_mut().append(k, v.clone());
        }
        Ok(r)
    }
}
