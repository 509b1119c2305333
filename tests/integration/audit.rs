//! The audit trail: one JSON record per request with the tenant and what was asked, written
//! off the request path, never a resource body.
use crate::support::client::{get, put};
use crate::support::fake::{self, stored, Answer};
use crate::support::{self, tenants, Options};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test]
async fn every_request_leaves_one_record_with_the_tenant_and_no_body() {
    let ts = tenants(1);
    let t = ts[0].clone();
    let t2 = t.clone();
    let up = fake::start(move |s| match s.method.as_str() {
        "PUT" => {
            let mut body = s.body.clone().unwrap();
            body["meta"]["versionId"] = json!("1");
            Answer::Json(201, body)
        }
        _ if s.path.ends_with("-p1") => Answer::Json(200, stored("Patient", &t2.prefix, &t2.name, "p1")),
        _ => Answer::Json(404, json!({"resourceType": "OperationOutcome"})),
    })
    .await;
    let dir = std::env::temp_dir().join(format!("fhir-fence-audit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("audit.jsonl");
    let mut o = Options::new(&up.base, &ts);
    o.audit_file = Some(file.clone());
    let fence = support::start(o).await;
    let tok = fence.token(&t.name);

    let patient = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "SECRET-MARKER"}]});
    let created = put(&fence.url("Patient/p1"), &patient).bearer(&tok).send().await;
    assert_eq!(created.status, 201, "{}", created.body);
    let read = get(&fence.url("Patient/p1")).bearer(&tok).send().await;
    assert_eq!(read.status, 200);
    let refused = get(&fence.url("Patient/p2")).bearer(&tok).send().await;
    assert_eq!(refused.status, 404);
    let anonymous = get(&fence.url("Patient/p1")).send().await;
    assert_eq!(anonymous.status, 401);

    // The writer works off the request path: wait (bounded) for the four lines to land.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.lines().count() >= 4 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 4, "{text}");
    assert!(!text.contains("SECRET-MARKER"), "no resource body in the audit trail: {text}");
    let by_correlation = |r: &crate::support::client::Reply| {
        let c = r.header("x-request-id").unwrap();
        records
            .iter()
            .find(|rec| rec["correlation"] == c)
            .unwrap_or_else(|| panic!("no record for {c}: {text}"))
            .clone()
    };
    let c = by_correlation(&created);
    assert_eq!(
        (
            c["type"].as_str(),
            c["tenant"].as_str(),
            c["interaction"].as_str(),
            c["resource_type"].as_str(),
            c["id"].as_str()
        ),
        (Some("audit"), Some(t.name.as_str()), Some("update"), Some("Patient"), Some("p1"))
    );
    assert_eq!(
        (c["status"].as_u64(), c["outcome"].as_str(), c["method"].as_str()),
        (Some(201), Some("success"), Some("PUT"))
    );
    assert_eq!(c["subject"], "tester");
    let r = by_correlation(&read);
    assert!(r["bytes"].as_u64().unwrap() > 0 && r["micros"].as_u64().is_some());
    // The read waited on the upstream for part of its time; the unauthenticated request never did.
    let (micros, waited) = (r["micros"].as_u64().unwrap(), r["upstream_micros"].as_u64().unwrap());
    assert!(waited > 0 && waited <= micros, "upstream {waited} of {micros} µs");
    let f = by_correlation(&refused);
    assert_eq!(
        (f["status"].as_u64(), f["outcome"].as_str(), f["id"].as_str()),
        (Some(404), Some("refused"), Some("p2"))
    );
    let a = by_correlation(&anonymous);
    assert_eq!((a["tenant"].clone(), a["outcome"].as_str()), (Value::Null, Some("refused")));
    assert_eq!(a["upstream_micros"], 0);
    let _ = std::fs::remove_dir_all(dir);
}
