//! Tenants at scale (issue 20): a few thousand tenants as tenant files start, reload and serve
//! (the last one too), and `/metrics` holds to `metrics.tenant_labels`: with `top 2` only the
//! first two tenants to send a request have series of their own, with `none` no tenant does,
//! and everything else is summed under `tenant="other"`. (The 10 000-tenant figures are
//! `bench/tenants-at-scale`'s, in docs/performance.md: performance goals are no timed test.)
use crate::support::client::{get, request, Reply};
use crate::support::fake::{self, stored, Answer, Fake};
use crate::support::{self, tenants, Fence, Options, T};
use std::collections::BTreeSet;

/// Tenants defined as files besides the two of the config file.
const FILES: usize = 3000;

/// Starts fhir-fence with the two tenants of `ts` in its config file, `FILES` more in
/// `tenants_dir` (names `{run}f0001`…, each its own prefix, asserted by the `dev` issuer), and
/// `tenant_labels`. The fake upstream answers every tenant's `Patient/p1`.
async fn start(ts: &[T], tenant_labels: &str) -> (Fence, Fake, Vec<String>) {
    let run = ts[0].name[1..8].to_owned();
    let files: Vec<String> = (1..=FILES).map(|n| format!("f{run}{n:04}")).collect();
    let up = fake::start(|s| {
        let Some(prefix) = s.path.strip_prefix("/fhir/Patient/").and_then(|id| id.strip_suffix("-p1")) else {
            return Answer::Json(404, serde_json::json!({"resourceType": "OperationOutcome"}));
        };
        // Every tenant here is named as its prefix.
        Answer::Json(200, stored("Patient", prefix, prefix, "p1"))
    })
    .await;
    let mut o = Options::new(&up.base, ts);
    o.extra = format!("[lifecycle]\ntenants_dir = \"tenants\"\n\n[metrics]\ntenant_labels = \"{tenant_labels}\"\n");
    let names = files.clone();
    let fence = support::start_with(o, move |text| {
        let path = support::write_config(text);
        let dir = path.parent().unwrap().join("tenants");
        std::fs::create_dir_all(&dir).unwrap();
        for name in &names {
            let file = format!("prefix = \"{name}\"\nupstream = \"main\"\nstatus = \"active\"\nissuers = [\"dev\"]\n");
            std::fs::write(dir.join(format!("{name}.toml")), file).unwrap();
        }
        path
    })
    .await;
    (fence, up, files)
}

async fn read_p1(fence: &Fence, tenant: &str) -> Reply {
    get(&fence.url("Patient/p1")).bearer(&fence.token(tenant)).send().await
}

async fn metrics(fence: &Fence) -> String {
    String::from_utf8(get(&format!("{}/metrics", fence.admin)).send().await.raw.to_vec()).unwrap()
}

/// The `tenant` label values of a metric family in the text, with the value of each series
/// (`interaction="read",status="200"` for the request counter).
fn series(text: &str, family: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix(family)?.strip_prefix('{'))
        .filter_map(|l| {
            let tenant = l.split("tenant=\"").nth(1)?.split('"').next()?.to_owned();
            Some((tenant, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn thousands_of_tenant_files_serve_reload_and_top_n_bounds_the_labels() {
    let ts = tenants(2);
    let (fence, _up, files) = start(&ts, "top 2").await;
    assert_eq!(fence.snap().tenants.len(), FILES + 2);
    let last = files.last().unwrap();
    // The first two tenants to send a request get their own series: a file tenant and a
    // config-file tenant; then the last file tenant, another one, and the other config tenant.
    let order = [files[0].as_str(), ts[0].name.as_str(), last.as_str(), files[1].as_str(), ts[1].name.as_str()];
    for t in order {
        let r = read_p1(&fence, t).await;
        assert_eq!((r.status, r.body["id"].as_str()), (200, Some("p1")), "{t}: {:?}", r.body);
    }
    assert_eq!(read_p1(&fence, last).await.status, 200, "the last tenant again");
    // A reload with every tenant file read again keeps serving, and keeps the labels.
    let generation = *fence.live.generation().borrow();
    let reloaded = request("POST", &format!("{}/reload", fence.admin)).send().await;
    assert_eq!(reloaded.status, 200, "{:?}", reloaded.body);
    assert_eq!(*fence.live.generation().borrow(), generation + 1);
    assert_eq!(read_p1(&fence, last).await.status, 200, "the last tenant after the reload");

    let text = metrics(&fence).await;
    let requests = series(&text, "fhir_fence_requests_total");
    let named: BTreeSet<&str> = requests.iter().map(|(t, _)| t.as_str()).collect();
    let expected: BTreeSet<&str> = [files[0].as_str(), ts[0].name.as_str(), "other"].into();
    assert_eq!(named, expected, "top 2: the first two tenants seen and other, nothing else:\n{text}");
    let count = |t: &str| requests.iter().filter(|(n, _)| n == t).map(|(_, v)| v).sum::<f64>();
    assert_eq!((count(&files[0]), count(&ts[0].name)), (1.0, 1.0));
    assert_eq!(count("other"), 5.0, "the last tenant (3 reads), files[1] and the second config tenant");
    for family in ["fhir_fence_request_duration_seconds_count", "fhir_fence_in_flight"] {
        let values: BTreeSet<String> = series(&text, family).into_iter().map(|(t, _)| t).collect();
        assert_eq!(values.iter().map(String::as_str).collect::<BTreeSet<_>>(), expected, "{family}");
    }
    let other_latency = series(&text, "fhir_fence_request_duration_seconds_count");
    assert!(other_latency.contains(&("other".to_owned(), 5.0)), "{other_latency:?}");
    assert!(!text.contains(last.as_str()), "the last tenant has no series of its own");
}

#[tokio::test]
async fn tenant_labels_none_counts_every_tenant_under_other() {
    let ts = tenants(2);
    let (fence, _up, files) = start(&ts, "none").await;
    for t in [ts[0].name.as_str(), files[0].as_str(), files[FILES - 1].as_str()] {
        assert_eq!(read_p1(&fence, t).await.status, 200, "{t}");
    }
    // A refusal is counted under other too (a tenant with no such resource: 404).
    let r = get(&fence.url("Patient/nothing")).bearer(&fence.token(&files[7])).send().await;
    assert_eq!(r.status, 404);
    let text = metrics(&fence).await;
    let requests = series(&text, "fhir_fence_requests_total");
    assert!(requests.iter().all(|(t, _)| t == "other"), "{requests:?}");
    assert_eq!(requests.iter().map(|(_, v)| v).sum::<f64>(), 4.0);
    assert_eq!(series(&text, "fhir_fence_refused_total"), [("other".to_owned(), 1.0)]);
    assert!(!text.contains(&ts[0].name) && !text.contains(&files[0]), "no tenant name appears:\n{text}");
}
