//! Graceful shutdown (what SIGTERM triggers): a request in flight is answered, then the
//! listener closes.
use crate::support::client::get;
use crate::support::fake::{self, stored, Answer};
use crate::support::{self, tenants, Options};
use std::sync::Arc;
use tokio::sync::Notify;

#[tokio::test]
async fn shutdown_drains_the_request_in_flight_then_stops_listening() {
    drains(None).await;
}

/// The same with `fhir-fence serve`'s worker threads: each worker drains its own connections.
#[tokio::test]
async fn shutdown_drains_every_worker() {
    drains(Some(2)).await;
}

async fn drains(workers: Option<usize>) {
    let ts = tenants(1);
    let (seen, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (s2, r2, t2) = (seen.clone(), release.clone(), ts[0].clone());
    let up = fake::start(move |s| {
        if s.path.ends_with("-slow") {
            s2.notify_one();
            return Answer::After(
                r2.clone(),
                Box::new(Answer::Json(200, stored("Patient", &t2.prefix, &t2.name, "slow"))),
            );
        }
        Answer::Json(404, serde_json::json!({"resourceType": "OperationOutcome"}))
    })
    .await;
    let mut fence = support::start(Options { workers, ..Options::new(&up.base, &ts) }).await;
    let (url, tok) = (fence.url("Patient/slow"), fence.token(&ts[0].name));
    let in_flight = tokio::spawn(async move { get(&url).bearer(&tok).send().await });
    seen.notified().await; // the request is upstream now
    fence.shutdown();
    release.notify_one();
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.body["id"].as_str()), (200, Some("slow")), "the in-flight request is answered whole");
    fence.stopped().await;
    let port: u16 = fence.base.rsplit(':').next().unwrap().trim_end_matches("/fhir").parse().unwrap();
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "no new connections after the drain");
}
