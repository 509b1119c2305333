//! Live configuration: a reload through the admin endpoint, on a file change and on SIGHUP
//! swaps the snapshot whole; a bad config is refused whole and the old one keeps serving;
//! requests in flight finish under the snapshot they began with; a Kubernetes ConfigMap
//! update (the `..data` link swapped) is seen like a file change.
use crate::support::client::{get, request};
use crate::support::fake::{self, stored, Answer};
use crate::support::{self, config_text, tenants, write_config, Options};
use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A fake upstream that serves `Patient/<id>` to any tenant's prefix, and holds `…-slow` until released.
async fn upstream(ts: &[support::T], seen: Arc<Notify>, release: Arc<Notify>) -> fake::Fake {
    let ts = ts.to_vec();
    fake::start(move |s| {
        let id = s.path.rsplit('/').next().unwrap_or("");
        let owner = ts.iter().find_map(|t| Some((t, id.strip_prefix(&format!("{}-", t.prefix))?)));
        let Some((t, local)) = owner else {
            return Answer::Json(404, serde_json::json!({"resourceType": "OperationOutcome"}));
        };
        let body = Answer::Json(200, stored("Patient", &t.prefix, &t.name, local));
        if id.ends_with("-slow") {
            seen.notify_one();
            return Answer::After(release.clone(), Box::new(body));
        }
        body
    })
    .await
}

fn metric(text: &[u8], line_start: &str) -> Option<String> {
    String::from_utf8_lossy(text)
        .lines()
        .find(|l| l.starts_with(line_start))
        .map(|l| l.rsplit(' ').next().unwrap().into())
}

#[tokio::test]
async fn a_bad_config_is_refused_whole_and_the_old_one_keeps_serving() {
    let ts = tenants(2);
    let up = upstream(&ts, Arc::new(Notify::new()), Arc::new(Notify::new())).await;
    let o = Options::new(&up.base, &ts);
    let fence = support::start(o.clone()).await;
    let tok = fence.token(&ts[0].name);

    // A typo'd key, a tenant on an upstream that does not exist, and a moved listener: each refused.
    let good = config_text(&o, fence.ports.0, fence.ports.1);
    let typo = good.replace("[export]\n", "[export]\nmax_line_byte = 5\n");
    let dangling = good.replacen("upstream = \"main\"", "upstream = \"nowhere\"", 1);
    let moved = good.replacen(&format!("127.0.0.1:{}\"", fence.ports.0), "127.0.0.1:1\"", 1);
    for (bad, names) in [(typo, "max_line_byte"), (dangling, "nowhere"), (moved, "server.listen")] {
        std::fs::write(&fence.config_path, bad).unwrap();
        let r = request("POST", &format!("{}/reload", fence.admin)).send().await;
        assert_eq!(r.status, 422, "refused: {}", r.body);
        assert!(r.body["error"].as_str().unwrap().contains(names), "the error names the key: {}", r.body);
        let r = get(&fence.url(&format!("Patient/{}", "p1"))).bearer(&tok).send().await;
        assert_eq!(r.status, 200, "the old configuration keeps serving");
    }
    assert_eq!(*fence.live.generation().borrow(), 0, "nothing was swapped");
    let m = fence.snap().metrics.render();
    assert_eq!(metric(&m, "fhir_fence_config_reloads_total{result=\"failed\"}").as_deref(), Some("3"));

    // A good config afterwards is taken. What must outlive a reload is carried over: limiter
    // state, upstream pools, the process-lifetime sealing key (paging links stay valid), metrics.
    let before = fence.snap();
    std::fs::write(&fence.config_path, good).unwrap();
    let r = request("POST", &format!("{}/reload", fence.admin)).send().await;
    assert_eq!((r.status, r.body["generation"].as_u64()), (200, Some(1)), "{}", r.body);
    let after = fence.snap();
    assert!(!Arc::ptr_eq(&before, &after), "a new snapshot");
    let t = &ts[0].name;
    let kept = |s: &Arc<fhir_fence::state::Snapshot>| s.runtime(t).unwrap().limits.clone();
    assert!(Arc::ptr_eq(&kept(&before), &kept(&after)), "the served tenant's limiter state is kept");
    assert!(Arc::ptr_eq(&before.upstreams["main"], &after.upstreams["main"]), "the upstream pool is kept");
    assert!(Arc::ptr_eq(&before.seals, &after.seals) && Arc::ptr_eq(&before.metrics, &after.metrics));
    let m = after.metrics.render();
    assert_eq!(metric(&m, "fhir_fence_config_reloads_total{result=\"ok\"}").as_deref(), Some("1"));
    assert_eq!(metric(&m, "fhir_fence_config_reloads_total{result=\"failed\"}").as_deref(), Some("3"));
}

#[tokio::test]
async fn suspension_applies_to_the_next_request_while_the_one_in_flight_finishes() {
    let ts = tenants(2);
    let (seen, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let up = upstream(&ts, seen.clone(), release.clone()).await;
    let mut o = Options::new(&up.base, &ts);
    let fence = support::start(o.clone()).await;
    let (a, b) = (fence.token(&ts[0].name), fence.token(&ts[1].name));
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 200, "A's token is now cached");

    let url = fence.url("Patient/p1-slow");
    let (url2, a2) = (url.clone(), a.clone());
    let in_flight = tokio::spawn(async move { get(&url2).bearer(&a2).send().await });
    seen.notified().await; // A's request is upstream, under the old snapshot

    o.tenants[0].suspended = true;
    fence.rewrite_config(&o);
    let r = request("POST", &format!("{}/reload", fence.admin)).send().await;
    assert_eq!(r.status, 200, "{}", r.body);

    let r = get(&fence.url("Patient/p1")).bearer(&a).send().await;
    assert_eq!(r.status, 403, "suspended from the next request on, cached token or not: {}", r.body);
    assert!(r.diagnostics().contains("suspended"), "{}", r.body);
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&b).send().await.status, 200, "B is untouched");

    release.notify_one();
    let r = in_flight.await.unwrap();
    assert_eq!((r.status, r.body["id"].as_str()), (200, Some("p1-slow")), "the request in flight finished whole");
}

#[tokio::test]
async fn a_changed_config_file_is_reloaded_by_itself() {
    let ts = tenants(2);
    let up = upstream(&ts, Arc::new(Notify::new()), Arc::new(Notify::new())).await;
    let mut o = Options::new(&up.base, &ts);
    let fence = support::start(o.clone()).await;
    fhir_fence::live::spawn_triggers(fence.live.clone());
    let a = fence.token(&ts[0].name);
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 200);

    let mut generation = fence.live.generation();
    o.tenants[0].suspended = true;
    fence.rewrite_config(&o);
    tokio::time::timeout(Duration::from_secs(20), generation.wait_for(|g| *g >= 1))
        .await
        .expect("the file change was noticed")
        .unwrap();
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 403);
}

/// A Kubernetes ConfigMap volume: each key is a link through `..data`, which links to a
/// timestamped directory holding the files. The kubelet updates it by writing a new timestamped
/// directory, renaming a new link over `..data` (one atomic step) and removing the old
/// directory; the key's own link never changes. The watcher sees that swap and reloads.
#[tokio::test]
async fn a_kubernetes_configmap_update_is_reloaded_by_itself() {
    let ts = tenants(2);
    let up = upstream(&ts, Arc::new(Notify::new()), Arc::new(Notify::new())).await;
    let mut o = Options::new(&up.base, &ts);
    let volume = std::env::temp_dir().join(format!("fhir-fence-configmap-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&volume).unwrap();
    let fence = support::start_with(o.clone(), |text| {
        configmap::project(&volume, "..2026_11_30_10_00_00.000000001", text);
        std::os::unix::fs::symlink("..data/fence.toml", volume.join("fence.toml")).unwrap();
        volume.join("fence.toml")
    })
    .await;
    fhir_fence::live::spawn_triggers(fence.live.clone());
    let a = fence.token(&ts[0].name);
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 200);

    let mut generation = fence.live.generation();
    o.tenants[0].suspended = true;
    configmap::project(&volume, "..2026_11_30_10_05_00.000000002", &config_text(&o, fence.ports.0, fence.ports.1));
    std::fs::remove_dir_all(volume.join("..2026_11_30_10_00_00.000000001")).unwrap();
    tokio::time::timeout(Duration::from_secs(20), generation.wait_for(|g| *g >= 1))
        .await
        .expect("the ConfigMap update was noticed")
        .unwrap();
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 403, "the new config serves");
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&fence.token(&ts[1].name)).send().await.status, 200);

    // A second update is seen too (the watch survives the swap of the directory it reads through).
    o.tenants[0].suspended = false;
    configmap::project(&volume, "..2026_11_30_10_10_00.000000003", &config_text(&o, fence.ports.0, fence.ports.1));
    tokio::time::timeout(Duration::from_secs(20), generation.wait_for(|g| *g >= 2))
        .await
        .expect("the second ConfigMap update was noticed")
        .unwrap();
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 200);
    let _ = std::fs::remove_dir_all(&volume);
}

/// What the kubelet's atomic writer does to a ConfigMap volume.
mod configmap {
    use std::path::Path;

    /// Writes `fence.toml` into the new directory `stamp`, then points `..data` at it by
    /// renaming a fresh link over it.
    pub fn project(volume: &Path, stamp: &str, text: &str) {
        std::fs::create_dir(volume.join(stamp)).unwrap();
        std::fs::write(volume.join(stamp).join("fence.toml"), text).unwrap();
        std::os::unix::fs::symlink(stamp, volume.join("..data_tmp")).unwrap();
        std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    }
}

/// The binary reloads on SIGHUP (its log says so), and `fhir-fence check` agrees with a reload.
#[tokio::test]
async fn the_binary_reloads_on_sighup() {
    let ts = tenants(1);
    let up = upstream(&ts, Arc::new(Notify::new()), Arc::new(Notify::new())).await;
    let mut o = Options::new(&up.base, &ts);
    let (pp, ap) = (support::free_port(), support::free_port());
    let path = write_config(&config_text(&o, pp, ap));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fhir-fence"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    wait_for(&mut lines, &["upstream capabilities loaded"]).await.expect("fhir-fence started");
    let token = std::process::Command::new(env!("CARGO_BIN_EXE_fhir-fence"))
        .args(["token", "--issuer", "dev", "--tenant", &ts[0].name, "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let url = format!("http://127.0.0.1:{pp}/fhir/Patient/p1");
    assert_eq!(get(&url).bearer(&token).send().await.status, 200);

    o.tenants[0].suspended = true;
    std::fs::write(&path, config_text(&o, pp, ap)).unwrap();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    // (The file watcher may reload first; the SIGHUP reload is logged with its trigger either way.)
    wait_for(&mut lines, &["configuration reloaded", "SIGHUP"]).await.expect("reloaded after SIGHUP");
    assert_eq!(get(&url).bearer(&token).send().await.status, 403, "the tenant is suspended now");
    let _ = child.kill();
    let _ = child.wait();
}

/// The first log line containing every one of `what` (30 s at most).
async fn wait_for(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    what: &[&str],
) -> Result<String, tokio::time::error::Elapsed> {
    let found = async {
        while let Some(l) = lines.recv().await {
            if what.iter().all(|w| l.contains(w)) {
                return l;
            }
        }
        panic!("fhir-fence exited before logging {what:?}");
    };
    tokio::time::timeout(Duration::from_secs(30), found).await
}
