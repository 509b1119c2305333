//! `fhir-fence webhook`: the mutating admission webhook. The API server posts an
//! `AdmissionReview` for each Pod created in a selected namespace; the answer (`admission.rs`)
//! adds the sidecar `inject` would add. It is its own small HTTPS server, separate from the
//! proxy: TLS from `server_cert` (files re-read on change, so cert-manager's renewals need no
//! restart), HTTP/1.1, `POST /mutate` and `GET /healthz` only, bodies bounded, each connection
//! and request bounded in time. Its errors become responses here, in [`answer`], and nowhere
//! else (they are Kubernetes' JSON, not FHIR's OperationOutcome).
use super::admission;
use crate::server_cert::ServerCert;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The largest review read: an object may be 1.5 MiB in etcd, and an update's review carries it
/// twice (object and oldObject).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// The API server waits `timeoutSeconds` (at most 30 s) for the whole answer: the request head
/// and the body each get 10 s, the drain 30 s. The TLS handshake gets 3 s: the API server's
/// takes milliseconds, and a connection that sends nothing must not hold a slot for long.
const HANDSHAKE: Duration = Duration::from_secs(3);
const READ: Duration = Duration::from_secs(10);
const DRAIN: Duration = Duration::from_secs(30);
/// Connections served at once (the API server keeps a few open; beyond this, new connections
/// are closed at once).
const MAX_CONNECTIONS: usize = 1024;

/// Serves reviews on `listener` until `shutdown` resolves, then drains (at most 30 s).
pub async fn serve(
    listener: TcpListener,
    cert: Arc<ServerCert>,
    image: Arc<str>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), crate::server_cert::CertError> {
    let acceptor = TlsAcceptor::from(Arc::new(cert.server_config(&[b"http/1.1"])?));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue }; // dropped: closed
                let (acceptor, image) = (acceptor.clone(), image.clone());
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _slot = slot;
                    let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "webhook: TLS handshake timed out"),
                    };
                    let service = service_fn(move |req| {
                        let image = image.clone();
                        async move { Ok::<_, Infallible>(answer(req, &image).await) }
                    });
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(READ);
                    let _ = watcher.watch(builder.serve_connection(TokioIo::new(tls), service)).await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("webhook: drain timed out; closing remaining connections");
    }
    Ok(())
}

/// One request's response: the review's answer, or why there is none.
async fn answer(req: Request<Incoming>, image: &str) -> Response<Full<Bytes>> {
    let json = |status: StatusCode, body: &serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON"))));
        *r.status_mut() = status;
        r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
        r
    };
    let error = |status: StatusCode, message: String| {
        tracing::info!(status = status.as_u16(), %message, "webhook: request refused");
        json(status, &serde_json::json!({"error": message}))
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::POST, "/mutate") => {}
        (_, "/mutate" | "/healthz") => {
            return error(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not served here", req.method()))
        }
        (_, path) => return error(StatusCode::NOT_FOUND, format!("{path}: the webhook serves POST /mutate")),
    }
    let media = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if media.split(';').next().map(str::trim) != Some("application/json") {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "an AdmissionReview is application/json".into());
    }
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("a review is at most {MAX_BODY} bytes"));
    }
    let body = match tokio::time::timeout(READ, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, format!("body unreadable or over {MAX_BODY} bytes: {e}"))
        }
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time".into()),
    };
    match admission::review(&body, image) {
        Ok(review) => {
            let r = &review["response"];
            tracing::info!(uid = %r["uid"], allowed = %r["allowed"], patched = r.get("patch").is_some(), "webhook: reviewed");
            json(StatusCode::OK, &review)
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}
