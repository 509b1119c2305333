//! The AuditEvent sink against the real HAPI: each tenant reads its own audit trail through
//! fhir-fence like any other resource — its own requests, by correlation id, and never
//! another tenant's.
use crate::support::client::{delete, get, post, put};
use crate::support::{self, tenants, Options};
use serde_json::Value;
use std::time::Duration;

fn hapi() -> String {
    crate::support::hapi_url("HAPI_URL", 8090)
}

/// The correlation ids on the AuditEvents a search answered.
fn correlations(bundle: &Value) -> Vec<String> {
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .flat_map(|e| e["resource"]["extension"].as_array().cloned().unwrap_or_default())
        .filter(|x| x["url"].as_str().is_some_and(|u| u.ends_with("/correlation-id")))
        .filter_map(|x| x["valueString"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn each_tenant_reads_its_own_audit_trail_through_fhir_fence() {
    let ts = tenants(2);
    let mut o = Options::new(&hapi(), &ts);
    o.audit_fhir = Some("batch = 3\nflush_ms = 100".into());
    let fence = support::start(o).await;
    let (a, b) = (fence.token(&ts[0].name), fence.token(&ts[1].name));
    let snap = fence.snap();
    let mut written = snap.audit.fhir().expect("the AuditEvent sink is configured").written();

    let mark = |t: &str, i: usize| format!("{t}-audit-{i}-{}", uuid::Uuid::new_v4().simple());
    let mut a_marks = vec![];
    for i in 0..4 {
        let m = mark("a", i);
        let r = get(&fence.url(&format!("Patient/missing-{i}"))).bearer(&a).header("x-request-id", &m).send().await;
        assert_eq!(r.status, 404);
        a_marks.push(m);
    }
    let b_mark = mark("b", 0);
    let r = get(&fence.url("Patient?name=nobody")).bearer(&b).header("x-request-id", &b_mark).send().await;
    assert_eq!(r.status, 200);
    tokio::time::timeout(Duration::from_secs(30), written.wait_for(|n| *n >= 5))
        .await
        .unwrap_or_else(|_| {
            panic!("the AuditEvents were not written: {}", String::from_utf8_lossy(&snap.metrics.render()))
        })
        .unwrap();

    let trail = |tok: String| {
        let url = fence.url("AuditEvent?_count=200");
        async move {
            let r = get(&url).bearer(&tok).send().await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.body
        }
    };
    let a_trail = trail(a.clone()).await;
    let seen_a = correlations(&a_trail);
    for m in &a_marks {
        assert!(seen_a.contains(m), "A's own request {m} is in its trail: {seen_a:?}");
    }
    assert!(!seen_a.contains(&b_mark), "B's request never shows in A's trail");
    let seen_b = correlations(&trail(b.clone()).await);
    assert!(seen_b.contains(&b_mark));
    assert!(a_marks.iter().all(|m| !seen_b.contains(m)), "A's requests never show in B's trail");

    // An AuditEvent reads like any resource of the tenant: local id, no tenant coding, local references.
    let event = a_trail["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| correlations(&serde_json::json!({"entry": [{"resource": r}]})).contains(&a_marks[0]))
        .unwrap()
        .clone();
    let id = event["id"].as_str().unwrap();
    assert!(id.starts_with("audit-"), "{event}");
    assert_eq!(event["entity"][0]["what"]["type"], "Patient", "{event}");
    assert_eq!(event["entity"][0]["what"]["identifier"]["value"], "missing-0", "{event}");
    assert_eq!((event["outcome"].as_str(), event["action"].as_str()), (Some("4"), Some("R")));
    assert!(event["meta"].get("tag").is_none(), "the tenant coding is stripped on the way out: {event}");
    let r = get(&fence.url(&format!("AuditEvent/{id}"))).bearer(&a).send().await;
    assert_eq!(r.status, 200);
    let r = get(&fence.url(&format!("AuditEvent/{id}"))).bearer(&b).send().await;
    assert_eq!(r.status, 404, "B cannot read A's AuditEvent");

    // The trail is read-only for the tenant: no create, update, patch, delete, meta change or
    // transaction entry touches it, and the event is still there afterwards.
    let url = fence.url(&format!("AuditEvent/{id}"));
    let attempts = [
        post(&fence.url("AuditEvent"), &event).bearer(&a).send().await,
        put(&url, &event).bearer(&a).send().await,
        delete(&url).bearer(&a).send().await,
        delete(&fence.url("AuditEvent?_id=x")).bearer(&a).send().await,
        post(
            &fence.base,
            &serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"request": {"method": "DELETE", "url": format!("AuditEvent/{id}")}}]}),
        )
        .bearer(&a)
        .send()
        .await,
        post(
            &fence.base,
            &serde_json::json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"resource": event.clone(), "request": {"method": "PUT", "url": format!("AuditEvent/{id}")}}]}),
        )
        .bearer(&a)
        .send()
        .await,
    ];
    for (i, r) in attempts.iter().enumerate() {
        let refused =
            r.status == 403 || r.body["entry"][0]["response"]["status"].as_str().is_some_and(|s| s.starts_with("403"));
        assert!(refused, "attempt {i} must be refused: {} {}", r.status, r.body);
        assert!(r.raw.windows(11).any(|w| w == b"audit trail"), "attempt {i} says why: {}", r.body);
    }
    let r = get(&url).bearer(&a).send().await;
    assert_eq!((r.status, r.body["id"].as_str()), (200, Some(id)), "the event is untouched");
}
