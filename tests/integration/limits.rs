//! Per-tenant limits against the fake upstream: one tenant over its rate gets 429 with the
//! rate-limit headers while another is served; weights; the in-flight cap under a slow
//! upstream; the upstream connection cap; the listener's connection cap; shadow mode counts
//! but never refuses.
use crate::support::client::get;
use crate::support::fake::{self, stored, Answer};
use crate::support::{self, tenants, Options};
use std::sync::Arc;

/// Serves `Patient/{prefix}-p1` for every tenant; `…-slow` hangs after signalling `slow`.
async fn upstream(slow: Arc<tokio::sync::Notify>) -> fake::Fake {
    fake::start(move |s| {
        if s.path.ends_with("-slow") {
            slow.notify_one();
            return Answer::Hang;
        }
        let id = s.path.rsplit('/').next().unwrap_or_default();
        match id.split_once('-') {
            Some((prefix, "p1")) if s.path.starts_with("/fhir/Patient/") => {
                let tag = prefix.to_owned();
                Answer::Json(200, stored("Patient", prefix, &tag, "p1"))
            }
            _ => Answer::Json(200, fake::searchset("http://x/fhir", vec![], None)),
        }
    })
    .await
}

#[tokio::test]
async fn a_tenant_over_its_limit_gets_429_while_another_is_served() {
    let mut ts = tenants(2);
    // Tenant names equal prefixes here, so the fake's stored resources carry the right tag.
    ts[0].limits = "rate_per_second = 1\nburst = 3\nweights = { search = 2, export = 3 }".into();
    let up = upstream(Arc::default()).await;
    let fence = support::start(Options::new(&up.base, &ts)).await;
    let (a, b) = (fence.token(&ts[0].name), fence.token(&ts[1].name));
    // Burst 3: a read (1) and a search (weight 2) fit; the next read does not.
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 200);
    assert_eq!(get(&fence.url("Patient?name=x")).bearer(&a).send().await.status, 200);
    let r = get(&fence.url("Patient/p1")).bearer(&a).send().await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["issue"][0]["code"], "throttled");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(r.header("ratelimit-policy"), Some("\"tenant\";q=3;w=3"));
    assert!(r.header("ratelimit").unwrap().starts_with("\"tenant\";r=0;t="));
    // The other tenant, at the same moment, is not affected.
    for _ in 0..10 {
        assert_eq!(get(&fence.url("Patient/p1")).bearer(&b).send().await.status, 200);
    }
    // A request that can never fit the burst says so.
    let mut big = tenants(1);
    big[0].limits = "rate_per_second = 1\nburst = 4\nweights = { export = 4 }".into();
    let fence2 = support::start(Options::new(&up.base, &big)).await;
    let r = get(&fence2.url("Patient?name=x")).bearer(&fence2.token(&big[0].name)).send().await;
    assert_eq!(r.status, 429, "search weight 5 > burst 4: {}", r.body);
    assert!(r.diagnostics().contains("more than the tenant's burst"));

    let m = String::from_utf8(fence.snap().metrics.render()).unwrap();
    let line = format!(r#"fhir_fence_rate_limited_total{{limit="rate",mode="enforced",tenant="{}"}} 1"#, ts[0].name);
    assert!(m.lines().any(|l| l == line), "{m}");
}

#[tokio::test]
async fn the_in_flight_cap_holds_under_a_slow_upstream() {
    let mut ts = tenants(2);
    ts[0].limits = "max_in_flight = 1\nin_flight_status = 503".into();
    let slow = Arc::new(tokio::sync::Notify::new());
    let up = upstream(slow.clone()).await;
    let mut o = Options::new(&up.base, &ts);
    o.request_timeout_ms = 500;
    let fence = Arc::new(support::start(o).await);
    let (a, b) = (fence.token(&ts[0].name), fence.token(&ts[1].name));
    let (f2, a2) = (fence.clone(), a.clone());
    let first = tokio::spawn(async move { get(&f2.url("Patient/slow")).bearer(&a2).send().await.status });
    slow.notified().await; // the first request holds A's only slot, upstream
    let r = get(&fence.url("Patient/p1")).bearer(&a).send().await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&b).send().await.status, 200, "B has its own slots");
    assert_eq!(first.await.unwrap(), 504, "the slow request times out upstream");
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 200, "the slot is free again");
}

#[tokio::test]
async fn the_upstream_connection_cap_holds_one_tenant_to_its_share() {
    let mut ts = tenants(2);
    ts[0].limits = "upstream_connections = 1\nupstream_wait_ms = 50".into();
    let slow = Arc::new(tokio::sync::Notify::new());
    let up = upstream(slow.clone()).await;
    let mut o = Options::new(&up.base, &ts);
    o.request_timeout_ms = 2_000;
    let fence = Arc::new(support::start(o).await);
    let (a, b) = (fence.token(&ts[0].name), fence.token(&ts[1].name));
    let (f2, a2) = (fence.clone(), a.clone());
    let first = tokio::spawn(async move { get(&f2.url("Patient/slow")).bearer(&a2).send().await.status });
    slow.notified().await; // A's only upstream connection is busy
    let r = get(&fence.url("Patient/p1")).bearer(&a).send().await;
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")), "{}", r.body);
    assert!(r.diagnostics().contains("upstream connections"), "{}", r.body);
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&b).send().await.status, 200, "B is not held back");
    assert_eq!(first.await.unwrap(), 504, "the slow request times out upstream and frees the connection");
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 200);
    let m = String::from_utf8(fence.snap().metrics.render()).unwrap();
    let line = format!("fhir_fence_refused_total{{reason=\"upstream-connections\",tenant=\"{}\"}} 1", ts[0].name);
    assert!(m.contains(&line), "{m}");
}

#[tokio::test]
async fn connections_over_the_listener_cap_get_503() {
    let ts = tenants(1);
    let up = upstream(Arc::default()).await;
    let mut o = Options::new(&up.base, &ts);
    o.server_extra = "max_connections = 1".into();
    let fence = support::start(o).await;
    let tok = fence.token(&ts[0].name);
    let port = fence.ports.0;
    let held = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let r = get(&fence.url("Patient/p1")).bearer(&tok).send().await;
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")), "{}", r.body);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let snap = fence.snap();
    assert_eq!(snap.metrics.connections_refused.with_label_values(&["public"]).get(), 1);
    drop(held);
    // The server notices the close on its own schedule; wait for it, then a connection fits again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while snap.metrics.connections_open.get() > 0 {
        assert!(std::time::Instant::now() < deadline, "the closed connection was never released");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&tok).send().await.status, 200);
}

#[tokio::test]
async fn shadow_mode_counts_but_never_refuses() {
    let mut ts = tenants(1);
    ts[0].limits = "rate_per_second = 1\nburst = 1\nshadow = true".into();
    let up = upstream(Arc::default()).await;
    let fence = support::start(Options::new(&up.base, &ts)).await;
    let a = fence.token(&ts[0].name);
    for _ in 0..5 {
        assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 200);
    }
    let m = String::from_utf8(fence.snap().metrics.render()).unwrap();
    let line = format!(r#"fhir_fence_rate_limited_total{{limit="rate",mode="shadow",tenant="{}"}} 4"#, ts[0].name);
    assert!(m.lines().any(|l| l == line), "{m}");
}

/// Sends a request's headers and the first bytes of a body it promises to be much longer, on a
/// connection of its own, and returns the connection (to read the answer from later).
async fn trickle(port: u16, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "PUT /fhir/Patient/slowbody HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: application/fhir+json\r\ncontent-length: 100000\r\n\r\n{{\"resourceType\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// The status of the answer on a connection (read until the server closes it).
async fn status_on(mut s: tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "no answer within 20 s");
    let text = String::from_utf8_lossy(&buf);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// A tenant trickling request bodies through more connections than the listener admits holds
/// only its own connection slots (`limits.max_connections`): its other connections are refused
/// at once (503, closed), its trickles end in 408, and another tenant is served meanwhile.
#[tokio::test]
async fn a_slow_body_flood_costs_only_the_senders_own_connections() {
    let mut ts = tenants(2);
    ts[0].limits = "max_connections = 3".into();
    let up = upstream(Arc::default()).await;
    let mut o = Options::new(&up.base, &ts);
    o.server_extra = "max_connections = 10\nbody_timeout_ms = 2000\nmin_body_bytes_per_sec = 1000".into();
    let fence = support::start(o).await;
    let (a, b) = (fence.token(&ts[0].name), fence.token(&ts[1].name));
    let mut conns = Vec::new();
    for _ in 0..14 {
        conns.push(trickle(fence.ports.0, &a).await);
    }
    // Every connection A may not keep is answered 503 and closed at once; three are kept.
    let mut kept = Vec::new();
    let mut refused = 0;
    for c in conns {
        let readable = tokio::time::timeout(std::time::Duration::from_millis(500), c.readable()).await;
        match readable {
            Ok(_) => {
                assert_eq!(status_on(c).await, 503);
                refused += 1;
            }
            Err(_) => kept.push(c),
        }
    }
    assert_eq!((kept.len(), refused), (3, 11), "A keeps exactly its three connections");
    let snap = fence.snap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while snap.metrics.connections_open.get() > 3 {
        assert!(std::time::Instant::now() < deadline, "refused connections were never closed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // B is served while A's three trickles hold their connections.
    for _ in 0..5 {
        assert_eq!(get(&fence.url("Patient/p1")).bearer(&b).send().await.status, 200);
    }
    // A's trickles end in 408 once their grace is spent at under 1000 bytes per second.
    for c in kept {
        assert_eq!(status_on(c).await, 408);
    }
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 200, "A's slots are free again");
}

/// A JSON Patch that doubles the document with every `copy` is refused (413) before the document
/// outgrows the body limit; the process goes on serving.
#[tokio::test]
async fn a_patch_bomb_is_refused_before_it_grows() {
    let ts = tenants(1);
    let up = upstream(Arc::default()).await;
    let fence = support::start(Options::new(&up.base, &ts)).await;
    let tok = fence.token(&ts[0].name);
    let mut ops = vec![serde_json::json!({"op": "add", "path": "/name", "value": [{"text": "x".repeat(1000)}]})];
    ops.extend((0..40).map(|_| serde_json::json!({"op": "copy", "from": "/name", "path": "/name/-"})));
    let r = crate::support::client::request("PATCH", &fence.url("Patient/p1"))
        .bearer(&tok)
        .header("content-type", "application/json-patch+json")
        .raw_body(serde_json::to_vec(&ops).unwrap())
        .send()
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&tok).send().await.status, 200);
}
