//! Listeners: the public FHIR listener and the admin listener, HTTP/1.1, with graceful shutdown.
use crate::connection::Slot;
use crate::{admin, live::Live, pipeline};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntGauge;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Slow clients may not hold a connection open without sending their headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves both listeners on the current runtime until `shutdown` resolves, then drains
/// in-flight requests. (`fhir-fence serve` spreads the public listener over worker threads
/// instead: `workers.rs`.)
pub async fn run(
    live: Arc<Live>,
    public: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = watch::channel(false);
    tokio::join!(
        serve_public(live.clone(), public, until(stopped.clone())),
        serve_admin(live, admin_listener, until(stopped)),
        async {
            shutdown.await;
            let _ = stop.send(true);
        },
    );
}

/// Resolves once `stop` says true (or its sender is gone).
pub async fn until(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves FHIR clients on `public` until `shutdown` resolves, then drains its connections
/// (30 s at most).
pub async fn serve_public(live: Arc<Live>, public: TcpListener, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = public.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // Answers go out as soon as they are written (no Nagle wait for the client's ACK).
                let _ = stream.set_nodelay(true);
                // The connection cap is read from the current config, so a reload changes it.
                let Some(open) = Open::claim(&live) else {
                    tokio::spawn(refuse_connection(stream));
                    continue;
                };
                // TLS as the config says when the connection is accepted; the handshake runs in
                // the connection's own task, so a slow one holds up no other client.
                let tls = live.snapshot().tls.clone();
                let (live, watcher) = (live.clone(), graceful.watcher());
                tokio::spawn(async move {
                    match tls {
                        None => serve_connection(live, stream, Slot::default(), watcher).await,
                        Some(tls) => match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let peer = crate::listener_tls::peer_names(stream.get_ref().1);
                                serve_connection(live, stream, Slot::with_peer(peer), watcher).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        },
                    }
                    drop(open);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drain(graceful).await;
}

/// Serves one client connection (plain or TLS) until it closes or the drain ends it. `slot` is
/// what the connection carries between its requests: the tenant it counts against, and the
/// names of its client certificate.
async fn serve_connection<IO>(live: Arc<Live>, io: IO, slot: Slot, watcher: hyper_util::server::graceful::Watcher)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let slot = Arc::new(slot);
    // Each request takes the snapshot current when it arrives and keeps it to the end.
    let service = service_fn(move |req| {
        let (snap, slot) = (live.snapshot(), slot.clone());
        async move {
            let serving = snap.clone();
            let _counted = serving.in_flight.enter();
            Ok::<_, Infallible>(pipeline::handle(snap, req, &slot).await)
        }
    });
    if let Err(e) = watcher.watch(builder().serve_connection(TokioIo::new(io), service)).await {
        tracing::debug!(error = %e, "public connection ended with an error");
    }
}

/// Serves the admin endpoints (health, metrics, reload) until `shutdown` resolves.
pub async fn serve_admin(live: Arc<Live>, admin_listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = admin_listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let live = live.clone();
                let service = service_fn(move |req| {
                    let live = live.clone();
                    async move { Ok::<_, Infallible>(admin::handle(live, req).await) }
                });
                let conn = graceful.watch(builder().serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drain(graceful).await;
}

async fn drain(graceful: GracefulShutdown) {
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await.is_err() {
        tracing::warn!("drain timed out; closing remaining connections");
    }
}

/// One open client connection, counted against `server.max_connections` until dropped.
struct Open(IntGauge);

impl Open {
    fn claim(live: &Live) -> Option<Open> {
        let snap = live.snapshot();
        let gauge = snap.metrics.connections_open.clone();
        if gauge.get() >= snap.loaded.config.server.max_connections as i64 {
            snap.metrics.connections_refused.with_label_values(&["public"]).inc();
            return None;
        }
        gauge.inc();
        Some(Open(gauge))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Answers one request on a connection over the cap with 503 and closes it, so the client
/// learns why instead of waiting in the accept queue.
async fn refuse_connection(stream: tokio::net::TcpStream) {
    let service = service_fn(|_req| async {
        let e = crate::error::Error::Overloaded;
        Ok::<_, Infallible>(e.into_response("-"))
    });
    let mut b = builder();
    b.keep_alive(false);
    let _ = b.serve_connection(TokioIo::new(stream), service).await;
}

fn builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    b
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
