//! Prometheus metrics on the admin listener: per-tenant series after traffic, refusals by
//! reason, blocked entries and export lines, upstream timeouts, in-flight back to zero.
use crate::support::client::get;
use crate::support::fake::{self, searchset, stored, Answer};
use crate::support::{self, tenants, Options};

#[tokio::test]
async fn metrics_show_per_tenant_series_after_traffic() {
    let ts = tenants(2);
    let (a, b) = (ts[0].clone(), ts[1].clone());
    let (a2, b2) = (a.clone(), b.clone());
    let up = fake::start(move |s| {
        let base = format!("http://{}/fhir", s.headers["host"].to_str().unwrap());
        if s.path == format!("/fhir/Patient/{}-p1", a2.prefix) {
            Answer::Json(200, stored("Patient", &a2.prefix, &a2.name, "p1"))
        } else if s.path == "/fhir/Patient" {
            let entries =
                vec![stored("Patient", &a2.prefix, &a2.name, "p1"), stored("Patient", &b2.prefix, &b2.name, "p9")];
            Answer::Json(200, searchset(&base, entries, None))
        } else if s.path.ends_with("-slow") {
            Answer::Hang
        } else {
            Answer::Json(404, serde_json::json!({"resourceType": "OperationOutcome"}))
        }
    })
    .await;
    let mut o = Options::new(&up.base, &ts);
    o.request_timeout_ms = 300;
    let fence = support::start(o).await;
    let (ta, tb) = (fence.token(&a.name), fence.token(&b.name));
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&ta).send().await.status, 200);
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&tb).send().await.status, 404);
    assert_eq!(get(&fence.url("Patient/p1")).send().await.status, 401);
    let r = get(&fence.url("Patient?name=x")).bearer(&ta).send().await;
    assert_eq!((r.status, r.body["entry"].as_array().map(Vec::len)), (200, Some(1)));
    assert_eq!(get(&fence.url("Patient/slow")).bearer(&ta).send().await.status, 504);

    let m = get(&format!("{}/metrics", fence.admin)).send().await;
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(m.raw.to_vec()).unwrap();
    let (na, nb) = (&a.name, &b.name);
    for line in [
        format!(r#"fhir_fence_requests_total{{interaction="read",status="200",tenant="{na}"}} 1"#),
        format!(r#"fhir_fence_requests_total{{interaction="read",status="404",tenant="{nb}"}} 1"#),
        format!(r#"fhir_fence_requests_total{{interaction="search-type",status="200",tenant="{na}"}} 1"#),
        r#"fhir_fence_requests_total{interaction="-",status="401",tenant="-"} 1"#.to_owned(),
        r#"fhir_fence_refused_total{reason="unauthenticated",tenant="-"} 1"#.to_owned(),
        format!(r#"fhir_fence_refused_total{{reason="not-found",tenant="{nb}"}} 1"#),
        format!(r#"fhir_fence_entries_dropped_total{{tenant="{na}"}} 1"#),
        format!(r#"fhir_fence_upstream_errors_total{{kind="timeout",tenant="{na}"}} 1"#),
        format!(r#"fhir_fence_request_duration_seconds_count{{tenant="{na}"}} 3"#),
        format!(r#"fhir_fence_in_flight{{tenant="{na}"}} 0"#),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains(&format!(r#"fhir_fence_entries_dropped_total{{tenant="{nb}"}}"#)));
}
