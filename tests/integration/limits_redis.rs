//! Limits and export cancellations across replicas (`limits.backend = "redis"`, `[redis]`):
//! three fhir-fence replicas on one fake upstream share a real `redis-server` (Debian's, started
//! here on a unix socket of the test's own so that the test decides when it dies and comes back).
//! One tenant floods all three: its accepted count stays within the stated tolerance of its one
//! global limit (`rate × window + burst + replicas × batch`; per-replica limits would admit about
//! three times as much), while another tenant is answered throughout. Redis stopped: service goes
//! on under `fail = "local"`, counted; Redis back: global limiting resumes. `fail = "closed"`
//! refuses instead. An export cancelled on one replica is gone on another.
use crate::export_fake::{exporting_upstream, kickoff, line, manifest, standard_manifest};
use crate::support::client::{delete, get};
use crate::support::fake::{self, stored, Answer};
use crate::support::{self, tenants, Fence, Options, T};
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `redis-server` of this test's own, on a unix socket in a temporary directory.
struct RedisServer {
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl RedisServer {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("ff-redis-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = RedisServer { dir, child: None };
        r.restart().await;
        r
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Starts it (again, empty: no persistence) and waits until it answers PING.
    async fn restart(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(self.url().as_str()) {
                if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                    if redis::cmd("PING").query_async::<String>(&mut c).await.is_ok() {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not answer on {}", self.url());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it (SIGKILL: no goodbye to the clients) and waits until it is gone.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Serves `Patient/{prefix}-p1` for every tenant.
async fn upstream() -> fake::Fake {
    fake::start(|s| {
        let id = s.path.rsplit('/').next().unwrap_or_default();
        match id.split_once('-') {
            Some((prefix, "p1")) => Answer::Json(200, stored("Patient", prefix, prefix, "p1")),
            _ => Answer::Json(404, serde_json::json!({"resourceType": "OperationOutcome"})),
        }
    })
    .await
}

/// `[limits]` and `[redis]` for the replicas. The timeout is the longest allowed: with the whole
/// suite running on two cores a debug build can miss 5 ms (a lease then falls back and the local
/// limiters admit more), and this test judges the limit, not the latency. A dead Redis is seen at
/// once anyway (the connection fails, it does not time out).
fn shared(redis: &RedisServer, fail: &str) -> String {
    format!(
        "[limits]\nbackend = \"redis\"\n\n[redis]\nurl = {:?}\ntimeout_ms = 1000\nbatch = {BATCH}\nfail = \"{fail}\"\n",
        redis.url()
    )
}

const RATE: u64 = 20;
const BURST: u64 = 20;
const BATCH: u64 = 2;
const REPLICAS: u64 = 3;

/// The most a tenant may be admitted over `secs` across the replicas: the GCRA's own bound plus
/// what each replica may hold leased from before the window.
fn global_bound(secs: u64) -> u64 {
    RATE * secs + BURST + REPLICAS * BATCH
}

async fn replicas(o: &Options, n: usize) -> Vec<Fence> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(support::start(o.clone()).await);
    }
    out
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    refused: u64,
    /// Any other status of the flooding tenant, or any non-200 of the quiet one.
    odd: Vec<u16>,
    quiet_ok: u64,
}

/// For `window`: two clients per replica send the flooding tenant's reads as fast as answered,
/// while the quiet tenant reads from each replica in turn.
async fn flood(fences: &[Fence], loud: &T, quiet: &T, window: Duration) -> Tally {
    let end = Instant::now() + window;
    let (ok, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let odd = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for f in fences {
        for _ in 0..2 {
            let (url, tok) = (f.url("Patient/p1"), f.token(&loud.name));
            let (ok, refused, odd) = (ok.clone(), refused.clone(), odd.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    match get(&url).bearer(&tok).send().await.status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => refused.fetch_add(1, Ordering::Relaxed),
                        s => {
                            odd.lock().unwrap().push(s);
                            0
                        }
                    };
                }
            }));
        }
    }
    let quiet: Vec<(String, String)> = fences.iter().map(|f| (f.url("Patient/p1"), f.token(&quiet.name))).collect();
    let mut quiet_ok = 0;
    'outer: while Instant::now() < end {
        for (url, tok) in &quiet {
            let s = get(url).bearer(tok).send().await.status;
            if s == 200 {
                quiet_ok += 1;
            } else {
                odd.lock().unwrap().push(s);
            }
            if Instant::now() >= end {
                break 'outer;
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let odd = odd.lock().unwrap().clone();
    Tally { ok: ok.load(Ordering::Relaxed), refused: refused.load(Ordering::Relaxed), odd, quiet_ok }
}

/// A replica's `/metrics` text.
async fn metrics(f: &Fence) -> String {
    String::from_utf8(get(&format!("{}/metrics", f.admin)).send().await.raw.to_vec()).unwrap()
}

/// The sum of a metric's series in `text`.
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls every replica's `fhir_fence_redis_up` until it is `up` (the supervisor's probe).
async fn wait_redis_up(fences: &[Fence], up: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for f in fences {
        while sum(&metrics(f).await, "fhir_fence_redis_up") != up {
            assert!(Instant::now() < deadline, "fhir_fence_redis_up never became {up}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_flooding_three_replicas_gets_its_global_limit_and_redis_can_fail_and_return() {
    let mut redis = RedisServer::start().await;
    let mut ts = tenants(2);
    ts[0].limits = format!("rate_per_second = {RATE}\nburst = {BURST}\nweights = {{ export = 10 }}");
    let (loud, quiet) = (ts[0].clone(), ts[1].clone());
    let up = upstream().await;
    let mut o = Options::new(&up.base, &ts);
    o.extra = shared(&redis, "local");
    let fences = replicas(&o, REPLICAS as usize).await;

    // One global limit: within the tolerance over 3 s, though each replica alone would admit
    // rate × 3 + burst (80) and the three together about 240.
    let t = flood(&fences, &loud, &quiet, Duration::from_secs(3)).await;
    assert!(t.odd.is_empty(), "every answer is 200 or 429: {:?}", t.odd);
    assert!(t.refused > t.ok, "the flood is over the limit: {t:?}");
    assert!(t.ok <= global_bound(3), "admitted {} > the global bound {}: {t:?}", t.ok, global_bound(3));
    assert!(t.ok >= 50, "the tenant is limited, not shut out: {t:?}");
    assert!(t.quiet_ok >= 6, "the other tenant is answered throughout: {t:?}");
    for f in &fences {
        assert_eq!(sum(&metrics(f).await, "fhir_fence_limit_backend_fallback_total"), 0.0);
    }

    // Redis gone: every request is still answered, each replica limits on its own (so more than
    // the global bound gets through), and the fallback is counted.
    redis.stop();
    let t = flood(&fences, &loud, &quiet, Duration::from_secs(2)).await;
    assert!(t.odd.is_empty(), "every answer is 200 or 429 without Redis: {:?}", t.odd);
    assert!(t.ok > global_bound(2), "replicas fell back to their own limits: {t:?}");
    assert!(t.quiet_ok >= 6, "{t:?}");
    let mut fallbacks = 0.0;
    for f in &fences {
        let m = metrics(f).await;
        fallbacks += sum(&m, "fhir_fence_limit_backend_fallback_total");
        assert_eq!(sum(&m, "fhir_fence_redis_up"), 0.0, "{m}");
    }
    assert!(fallbacks >= t.ok as f64 - (REPLICAS * BATCH) as f64, "fallback decisions counted: {fallbacks} for {t:?}");

    // Redis back (empty): once every replica's probe has seen it, the one limit holds again.
    redis.restart().await;
    wait_redis_up(&fences, 1.0).await;
    let before: f64 = {
        let mut n = 0.0;
        for f in &fences {
            n += sum(&metrics(f).await, "fhir_fence_limit_backend_fallback_total");
        }
        n
    };
    let t = flood(&fences, &loud, &quiet, Duration::from_secs(3)).await;
    assert!(t.odd.is_empty(), "{:?}", t.odd);
    assert!(t.ok <= global_bound(3), "global limiting resumed: admitted {}: {t:?}", t.ok);
    assert!(t.ok >= 50, "{t:?}");
    let mut after = 0.0;
    for f in &fences {
        after += sum(&metrics(f).await, "fhir_fence_limit_backend_fallback_total");
    }
    assert_eq!(after, before, "no decision fell back once Redis answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_a_limited_tenant_while_redis_is_down() {
    let mut redis = RedisServer::start().await;
    let mut ts = tenants(2);
    ts[0].limits = format!("rate_per_second = {RATE}\nburst = {BURST}\nweights = {{ export = 10 }}");
    let up = upstream().await;
    let mut o = Options::new(&up.base, &ts);
    o.extra = shared(&redis, "local");
    let fence = support::start(o.clone()).await;
    let (a, b) = (fence.token(&ts[0].name), fence.token(&ts[1].name));
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 200);

    // A reload that leaves [redis] alone keeps the connection and the tenant's lease; one that
    // changes it (here: fail = "closed") makes a new store.
    let reload = |o: &Options| {
        fence.rewrite_config(o);
        crate::support::client::request("POST", &format!("{}/reload", fence.admin)).send()
    };
    let before = fence.snap();
    o.tenants[1].limits = "max_in_flight = 5".into();
    assert_eq!(reload(&o).await.status, 200);
    let after = fence.snap();
    assert!(Arc::ptr_eq(before.shared.as_ref().unwrap(), after.shared.as_ref().unwrap()));
    let (was, is) = (before.runtime(&ts[0].name).unwrap(), after.runtime(&ts[0].name).unwrap());
    assert!(Arc::ptr_eq(&was.limits, &is.limits), "the lease is kept");
    o.extra = shared(&redis, "closed");
    assert_eq!(reload(&o).await.status, 200);
    let closed = fence.snap();
    assert!(!Arc::ptr_eq(after.shared.as_ref().unwrap(), closed.shared.as_ref().unwrap()));
    drop((before, after, closed));
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 200);

    redis.stop();
    // What the replica still holds leased is spent first; then every request is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let r = get(&fence.url("Patient/p1")).bearer(&a).send().await;
        if r.status != 200 {
            break r;
        }
        assert!(Instant::now() < deadline, "a limited tenant was never refused without Redis");
    };
    assert_eq!((refused.status, refused.header("retry-after")), (503, Some("1")), "{}", refused.body);
    assert_eq!(refused.body["resourceType"], "OperationOutcome");
    assert!(refused.diagnostics().contains("redis.fail = \"closed\""), "{}", refused.body);
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&b).send().await.status, 200, "an unlimited tenant needs no Redis");
    let m = metrics(&fence).await;
    assert!(sum(&m, "fhir_fence_limit_backend_fallback_total") >= 1.0, "{m}");

    redis.restart().await;
    wait_redis_up(std::slice::from_ref(&fence), 1.0).await;
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&a).send().await.status, 200, "served again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_cancelled_on_one_replica_is_gone_on_another() {
    let mut redis = RedisServer::start().await;
    let ts = tenants(1);
    let a = ts[0].clone();
    let files: Arc<dyn Fn(&str) -> Answer + Send + Sync> = Arc::new(move |_| {
        let l = line("Observation", &a.prefix, &a.name, "o1", "") + "\n";
        Answer::Chunks(200, "application/fhir+ndjson", Box::new(std::iter::once(Bytes::from(l))))
    });
    let up = fake::start(exporting_upstream(files, standard_manifest())).await;
    // Any replica opens any replica's handles: one sealing key for all.
    let dir = std::env::temp_dir().join(format!("fhir-fence-keys-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("paging.key");
    std::fs::write(
        &key_file,
        format!("{}\n", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32])),
    )
    .unwrap();
    let mut o = Options::new(&up.base, &ts);
    o.extra = format!("[paging]\nkey_file = {key_file:?}\n\n[redis]\nurl = {:?}\ntimeout_ms = 1000\n", redis.url());
    let fences = replicas(&o, 2).await;
    let (one, two) = (&fences[0], &fences[1]);
    let (tok1, tok2) = (one.token(&ts[0].name), two.token(&ts[0].name));
    let (status1, m) = manifest(one, &tok1).await;
    let file1 = m["output"][0]["url"].as_str().unwrap().to_owned();
    let on_two = |url: &str| url.replacen(&one.base, &two.base, 1);
    let (status2, file2) = (on_two(&status1), on_two(&file1));
    // Replica 2 serves the job and its file before the cancel…
    assert_eq!(get(&status2).bearer(&tok2).send().await.status, 200);
    assert_eq!(get(&file2).bearer(&tok2).header("accept", "application/fhir+ndjson").send().await.status, 200);
    let r = delete(&status1).bearer(&tok1).send().await;
    assert_eq!(r.status, 202, "{}", r.body);
    // …and neither after it, nor does replica 1.
    for (url, tok) in [(&status2, &tok2), (&file2, &tok2), (&status1, &tok1), (&file1, &tok1)] {
        let r = get(url).bearer(tok).send().await;
        assert_eq!(r.status, 404, "{url}: {}", r.body);
        assert_eq!(r.body["resourceType"], "OperationOutcome");
    }

    // Without Redis, a replica that cannot know whether a job was cancelled refuses (503),
    // and a cancel that cannot be shared is not made.
    let r = kickoff(&one.url("$export?_type=Observation"), &tok1).send().await;
    let fresh = on_two(r.header("content-location").unwrap());
    redis.stop();
    let r = get(&fresh).bearer(&tok2).send().await;
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")), "{}", r.body);
    assert!(r.diagnostics().contains("cancelled cannot be checked"), "{}", r.body);
    let deletes = || up.seen().iter().filter(|s| s.method == "DELETE").count();
    let before = deletes();
    let r = delete(&fresh).bearer(&tok2).send().await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(deletes(), before, "the upstream job is not cancelled when the cancel cannot be shared");
    // A job known cancelled stays refused locally without asking.
    assert_eq!(get(&status1).bearer(&tok1).send().await.status, 404);
    redis.restart().await;
    wait_redis_up(&fences, 1.0).await;
    assert_eq!(get(&fresh).bearer(&tok2).send().await.status, 200, "checked again once Redis answers");
    let _ = std::fs::remove_dir_all(&dir);
}
