//! `tenant move` under load (issue 19), through the admin API of a running fhir-fence, between
//! the two real HAPI servers: shared (`HAPI_URL`) → dedicated (`HAPI_DEDICATED_URL`) and back.
//! A reader and a writer work through fhir-fence the whole time: no read fails, writes are
//! refused only during the freeze (503 + Retry-After), every write that succeeded is on the
//! tenant's new server afterwards, and the source copy is purged by the separate step.
use crate::lifecycle_state::{admin, records, start_with_more, tenant_file, until, ADMIN_TOKEN};
use crate::support::client::{get, post, put};
use crate::support::{self, tenants, Fence, SYSTEM};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn hapi() -> String {
    support::hapi_url("HAPI_URL", 8090)
}

fn hapi_dedicated() -> String {
    support::hapi_url("HAPI_DEDICATED_URL", 8091)
}

/// How many of the tenant's resources of `rtype` an upstream holds, asked directly, now.
async fn upstream_count(base: &str, rtype: &str, tenant: &str) -> u64 {
    let tag = form_urlencoded::byte_serialize(format!("{SYSTEM}|{tenant}").as_bytes()).collect::<String>();
    let r = get(&format!("{base}/{rtype}?_tag={tag}&_summary=count")).header("cache-control", "no-cache").send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["total"].as_u64().unwrap()
}

/// Runs a data job through the admin API to its end; answers its report.
async fn job(fence: &Fence, tenant: &str, op: &str, args: Value) -> Value {
    let r = admin(fence, "POST", &format!("/tenants/{tenant}/{op}"), Some(ADMIN_TOKEN), Some(&args)).await;
    assert_eq!(r.status, 202, "{op}: {}", r.body);
    let status = r.header("location").unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let s = admin(fence, "GET", &status, Some(ADMIN_TOKEN), None).await;
        assert_eq!(s.status, 200, "{}", s.body);
        match s.body["state"].as_str() {
            Some("running") => {}
            Some("done") => return s.body["report"].clone(),
            _ => panic!("{op} failed: {}", s.body),
        }
        assert!(Instant::now() < deadline, "{op} did not finish: {}", s.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the reader and the writer saw.
#[derive(Default)]
struct Load {
    reads: u64,
    failed_reads: Vec<String>,
    /// Local id → the family name written, for each write that succeeded.
    written: Vec<(String, String)>,
    frozen: u64,
    failed_writes: Vec<String>,
}

/// A reader and a writer through fhir-fence until `stop`.
fn run_load(
    fence: &Fence,
    token: &str,
    stop: Arc<AtomicBool>,
    load: Arc<Mutex<Load>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (read_url, search_url) = (fence.url("Patient/p1"), fence.url("Observation?subject=Patient/p1&_count=5"));
    let (t, s, l) = (token.to_owned(), stop.clone(), load.clone());
    let reader = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            for url in [&read_url, &search_url] {
                let r = get(url).bearer(&t).send().await;
                let mut l = l.lock().unwrap();
                l.reads += 1;
                if r.status != 200 {
                    l.failed_reads.push(format!("{url}: {} {}", r.status, r.body));
                }
            }
        }
    });
    let base = fence.url("");
    let (t, s, l) = (token.to_owned(), stop, load);
    let writer = tokio::spawn(async move {
        let mut i = 0u64;
        while !s.load(Ordering::Relaxed) {
            i += 1;
            let (id, family) = (format!("w{i}"), format!("Written{i}"));
            let body = json!({"resourceType": "Patient", "id": id, "name": [{"family": family}],
                "link": [{"other": {"reference": "Patient/p1"}, "type": "seealso"}]});
            let r = put(&format!("{base}Patient/{id}"), &body).bearer(&t).send().await;
            let mut l = l.lock().unwrap();
            match r.status {
                200 | 201 => l.written.push((id, family)),
                503 if r.header("retry-after") == Some("2") && r.diagnostics().contains("read-only") => l.frozen += 1,
                s => l.failed_writes.push(format!("{s} {}", r.body)),
            }
        }
    });
    vec![reader, writer]
}

#[tokio::test]
async fn a_tenant_moves_to_a_dedicated_server_and_back_under_load() {
    let ts = tenants(1);
    let name = format!("{}m", ts[0].name);
    let prefix = format!("m{}", &ts[0].prefix[1..]);
    let files = [(name.clone(), tenant_file(&prefix, "active", ""))];
    let more = format!("[upstreams.dedicated]\nbase_url = \"{}\"\nrequest_timeout_ms = 60000\n", hapi_dedicated());
    let fence = start_with_more(&hapi(), &ts, &files, 2, &more).await;
    let token = fence.token(&name);

    // The tenant's data: patients, and observations referring to them.
    let mut entries = Vec::new();
    for i in 1..=30 {
        let p = json!({"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": format!("Moved{i}")}]});
        let o = json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
            "code": {"text": "weight"}, "subject": {"reference": format!("Patient/p{i}")}});
        for r in [p, o] {
            let url = format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
            entries.push(json!({"resource": r, "request": {"method": "PUT", "url": url}}));
        }
    }
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let w = post(&fence.url(""), &tx).bearer(&token).send().await;
    assert_eq!(w.status, 200, "{}", w.body);

    // Every patient id written so far (the writer of each round starts again at w1).
    let mut ids: std::collections::BTreeSet<String> = (1..=30).map(|i| format!("p{i}")).collect();
    for (to, isolation, from, from_base, to_base) in [
        ("dedicated", "dedicated", "main", hapi(), hapi_dedicated()),
        ("main", "shared", "dedicated", hapi_dedicated(), hapi()),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let load = Arc::new(Mutex::new(Load::default()));
        let tasks = run_load(&fence, &token, stop.clone(), load.clone());
        until("the writer has written", || async { (load.lock().unwrap().written.len() >= 3).then_some(()) }).await;
        let report = job(&fence, &name, "move", json!({"to": to, "isolation": isolation})).await;
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["verified"], true, "{report}");
        assert_eq!(fence.snap().tenants[&name].upstream, to);
        // Writes succeed again once the move is done.
        let after = load.lock().unwrap().written.len();
        until("writes succeed after the switch", || async {
            (load.lock().unwrap().written.len() >= after + 3).then_some(())
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let load = std::mem::take(&mut *load.lock().unwrap());
        println!(
            "move to {to}: {} reads, {} writes, {} refused while frozen, freeze {} s, report {report}",
            load.reads,
            load.written.len(),
            load.frozen,
            report["freeze_secs"]
        );
        assert!(load.failed_reads.is_empty(), "reads failed: {:?}", load.failed_reads);
        assert!(load.failed_writes.is_empty(), "writes failed other than by the freeze: {:?}", load.failed_writes);
        assert!(load.reads > 0 && !load.written.is_empty());

        // Every write that succeeded is on the new server, as written.
        for (id, family) in &load.written {
            let r = get(&fence.url(&format!("Patient/{id}"))).bearer(&token).send().await;
            assert_eq!((r.status, r.body["name"][0]["family"].as_str()), (200, Some(family.as_str())), "{id}");
        }
        let direct = get(&format!("{to_base}/Patient/{prefix}-p1")).send().await;
        assert_eq!(direct.status, 200, "the data is on {to}: {}", direct.body);
        ids.extend(load.written.iter().map(|(id, _)| id.clone()));
        let patients = ids.len() as u64;
        assert_eq!(upstream_count(&to_base, "Patient", &name).await, patients);
        assert_eq!(upstream_count(&to_base, "Observation", &name).await, 30);

        // The source copy stays until the separate purge, which removes it all.
        assert!(upstream_count(&from_base, "Observation", &name).await > 0);
        let purged = job(&fence, &name, "purge", json!({"moved_from": from})).await;
        assert_eq!(purged["ok"], true, "{purged}");
        assert_eq!(upstream_count(&from_base, "Patient", &name).await, 0);
        assert_eq!(upstream_count(&from_base, "Observation", &name).await, 0);
        // …and the tenant's data is untouched by it.
        assert_eq!(upstream_count(&to_base, "Patient", &name).await, patients);
    }
    // A purge of where the tenant lives now is refused (it is no move's source).
    let r = admin(
        &fence,
        "POST",
        &format!("/tenants/{name}/purge"),
        Some(ADMIN_TOKEN),
        Some(&json!({"moved_from": "main"})),
    )
    .await;
    let id = r.body["job"].as_str().unwrap().to_owned();
    let status = until("the refused purge ends", || {
        let (fence, id) = (&fence, id.clone());
        async move {
            let s = admin(fence, "GET", &format!("/jobs/{id}"), Some(ADMIN_TOKEN), None).await;
            (s.body["state"] != "running").then_some(s.body)
        }
    })
    .await;
    assert_eq!(status["state"], "failed", "{status}");
    assert!(status["error"].as_str().unwrap().contains("no finished move"), "{status}");
    let moves =
        records(&fence).into_iter().filter(|l| l["operation"] == "move" && l["tenant"] == name.as_str()).count();
    assert!(moves >= 2, "each switch and each move's run is in the lifecycle record");
}
