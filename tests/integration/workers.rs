//! The worker layout of `fhir-fence serve` (`workers.rs`): one thread per worker, each with its
//! own socket on the one public port and its own upstream connections.
use crate::support::client::get;
use crate::support::fake::{self, stored, Answer};
use crate::support::{self, tenants, Options};
use std::time::Duration;

#[test]
fn the_worker_sockets_share_one_port() {
    let sockets = fhir_fence::workers::bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
    let ports: Vec<u16> = sockets.iter().map(|s| s.local_addr().unwrap().port()).collect();
    assert_eq!(ports.len(), 3);
    assert!(ports.iter().all(|p| *p == ports[0] && *p != 0), "{ports:?}");
    // A socket of another process-wide bind without SO_REUSEPORT cannot join them.
    assert!(std::net::TcpListener::bind(("127.0.0.1", ports[0])).is_err());
}

/// The kernel spreads connections over the workers' sockets; a worker that did not serve its
/// socket would leave its share of these connections unanswered.
#[tokio::test]
async fn every_connection_is_answered_whichever_worker_accepts_it() {
    let ts = tenants(2);
    let t2 = ts.clone();
    let up = fake::start(move |s| {
        for t in &t2 {
            if let Some(local) = s.path.strip_prefix(&format!("/fhir/Patient/{}-", t.prefix)) {
                return Answer::Json(200, stored("Patient", &t.prefix, &t.name, local));
            }
        }
        Answer::Json(404, serde_json::json!({"resourceType": "OperationOutcome"}))
    })
    .await;
    let mut fence = support::start(Options { workers: Some(3), ..Options::new(&up.base, &ts) }).await;
    let calls = (0..48).map(|i| {
        let t = &ts[i % 2];
        let (url, tok, name) = (fence.url(&format!("Patient/p{i}")), fence.token(&t.name), t.name.clone());
        tokio::spawn(async move { (i, name, get(&url).bearer(&tok).send().await) })
    });
    let answers = tokio::time::timeout(Duration::from_secs(30), futures_join(calls.collect())).await;
    let answers = answers.expect("every connection was answered");
    for (i, tenant, r) in answers {
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.body["id"], format!("p{i}"), "request {i}");
        assert_eq!(r.body["meta"].get("tag"), None, "request {i} of {tenant}: the tenant coding is stripped");
    }
    fence.shutdown();
    fence.stopped().await;
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
