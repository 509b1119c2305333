//! Tenant lifecycle (issue 19): the `read-only` freeze (changes 503 + Retry-After, reads keep
//! working), `deleting` answered exactly like `suspended`, tenants kept as files (added,
//! edited and removed in a running server), state changes through the CLI and the admin API
//! (idempotent, recorded in `lifecycle.jsonl`), hybrid placement checked at load, and one
//! fhir-fence routing two tenants to two real HAPI servers, each tenant getting its own
//! upstream's CapabilityStatement.
use crate::support::client::{get, post, put, request, Reply};
use crate::support::{self, tenants, write_config, Fence, Options, T};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn hapi() -> String {
    support::hapi_url("HAPI_URL", 8090)
}

fn hapi_dedicated() -> String {
    support::hapi_url("HAPI_DEDICATED_URL", 8091)
}

pub(crate) const ADMIN_TOKEN: &str = "admin-0123456789abcdef";

/// `[lifecycle]` with a tenants dir, a state dir and the admin token.
fn lifecycle_table(retry_after: u64) -> String {
    format!(
        "[lifecycle]\ntenants_dir = \"tenants\"\nstate_dir = \"state\"\nadmin_token_file = \"admin.token\"\nread_only_retry_after_secs = {retry_after}\n"
    )
}

/// A tenant file's text (the `dev` issuer may assert it).
pub(crate) fn tenant_file(prefix: &str, status: &str, more: &str) -> String {
    format!(
        "prefix = \"{prefix}\"\nupstream = \"main\"\nstatus = \"{status}\"\nissuers = [\"dev\"]\noperations = [\"meta\", \"meta-add\", \"meta-delete\"]\n{more}"
    )
}

/// fhir-fence with `[lifecycle]`: `inline` in the config file, `files` (name, text) in the
/// tenants dir; the file watch runs.
pub(crate) async fn start(upstream: &str, inline: &[T], files: &[(String, String)], retry_after: u64) -> Fence {
    start_with_more(upstream, inline, files, retry_after, "").await
}

/// [`start`] with `more` config text (more upstreams) after `[lifecycle]`.
pub(crate) async fn start_with_more(
    upstream: &str,
    inline: &[T],
    files: &[(String, String)],
    retry_after: u64,
    more: &str,
) -> Fence {
    let mut o = Options::new(upstream, inline);
    o.extra = lifecycle_table(retry_after) + more;
    let files = files.to_vec();
    let fence = support::start_with(o, move |text| {
        let path = write_config(text);
        let dir = path.parent().unwrap();
        std::fs::create_dir_all(dir.join("tenants")).unwrap();
        std::fs::write(dir.join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
        for (name, text) in &files {
            std::fs::write(dir.join("tenants").join(format!("{name}.toml")), text).unwrap();
        }
        path
    })
    .await;
    fhir_fence::live::spawn_triggers(fence.live.clone());
    fence
}

fn dir(fence: &Fence) -> PathBuf {
    fence.config_path.parent().unwrap().to_path_buf()
}

/// Polls `f` until it returns `Some`, for at most 20 s.
pub(crate) async fn until<F, Fut, R>(what: &str, mut f: F) -> R
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<R>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = f().await {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the serving snapshot has tenant `name` in `status` (`None`: no such tenant).
async fn until_status(fence: &Fence, name: &str, status: Option<&str>) {
    until(&format!("{name} is {status:?}"), || async {
        let snap = fence.snap();
        (snap.tenants.get(name).map(|t| t.status.as_str()) == status).then_some(())
    })
    .await
}

pub(crate) fn records(fence: &Fence) -> Vec<Value> {
    let text = std::fs::read_to_string(dir(fence).join("state/lifecycle.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn bundle(kind: &str, entries: Value) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

fn assert_read_only(r: &Reply, what: &str, retry_after: &str) {
    assert_eq!(r.status, 503, "{what}: {}", r.body);
    assert_eq!(r.header("retry-after"), Some(retry_after), "{what}");
    assert_eq!(r.body["resourceType"], "OperationOutcome", "{what}");
    assert!(r.diagnostics().contains("read-only"), "{what}: {}", r.body);
}

#[tokio::test]
async fn a_read_only_tenant_reads_but_every_change_is_503_with_retry_after() {
    let ts = tenants(2);
    let name = format!("{}f", ts[1].name);
    let prefix = ts[1].prefix.clone();
    let files = [(name.clone(), tenant_file(&prefix, "active", ""))];
    let fence = start(&hapi(), &ts[..1], &files, 7).await;
    let tok = fence.token(&name);
    let p =
        put(&fence.url("Patient/p1"), &json!({"resourceType": "Patient", "id": "p1", "identifier": [{"value": "x"}]}))
            .bearer(&tok)
            .send()
            .await;
    assert!(matches!(p.status, 200 | 201), "{}", p.body);

    let done = fhir_fence::lifecycle::change::apply(
        &fence.config_path,
        &name,
        fhir_fence::lifecycle::change::Operation::ReadOnly,
        "test",
    )
    .unwrap();
    assert_eq!(done.result, "changed");
    until_status(&fence, &name, Some("read-only")).await;

    let patient = json!({"resourceType": "Patient", "active": true});
    let patch = json!([{"op": "replace", "path": "/active", "value": false}]);
    let changes = [
        ("create", post(&fence.url("Patient"), &patient)),
        ("conditional create", post(&fence.url("Patient"), &patient).header("if-none-exist", "identifier=x")),
        ("update", put(&fence.url("Patient/p1"), &json!({"resourceType": "Patient", "id": "p1"}))),
        ("conditional update", put(&fence.url("Patient?identifier=x"), &json!({"resourceType": "Patient"}))),
        (
            "patch",
            request("PATCH", &fence.url("Patient/p1"))
                .header("content-type", "application/json-patch+json")
                .raw_body(patch.to_string()),
        ),
        ("delete", request("DELETE", &fence.url("Patient/p1"))),
        ("conditional delete", request("DELETE", &fence.url("Patient?identifier=x"))),
        (
            "$meta-add",
            post(
                &fence.url("Patient/p1/$meta-add"),
                &json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [{"system": "http://example.org/t", "code": "x"}]}}]}),
            ),
        ),
        (
            "transaction with a write",
            post(
                &fence.base,
                &bundle(
                    "transaction",
                    json!([
                        {"request": {"method": "GET", "url": "Patient/p1"}},
                        {"resource": patient, "request": {"method": "POST", "url": "Patient"}}
                    ]),
                ),
            ),
        ),
    ];
    for (what, call) in changes {
        assert_read_only(&call.bearer(&tok).send().await, what, "7");
    }

    // Reads, searches and read-only Bundles keep working.
    assert_eq!(get(&fence.url("Patient/p1")).bearer(&tok).send().await.status, 200);
    let s = get(&fence.url("Patient?identifier=x")).bearer(&tok).send().await;
    assert_eq!((s.status, s.body["total"].as_u64()), (200, Some(1)), "{}", s.body);
    let t = post(&fence.base, &bundle("transaction", json!([{"request": {"method": "GET", "url": "Patient/p1"}}])))
        .bearer(&tok)
        .send()
        .await;
    assert_eq!(t.status, 200, "a transaction that only reads: {}", t.body);
    // A batch: the write entry gets its 503, the read entry its 200.
    let b = post(
        &fence.base,
        &bundle(
            "batch",
            json!([
                {"request": {"method": "GET", "url": "Patient/p1"}},
                {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
                {"request": {"method": "DELETE", "url": "Patient/p1"}}
            ]),
        ),
    )
    .bearer(&tok)
    .send()
    .await;
    assert_eq!(b.status, 200, "{}", b.body);
    let statuses: Vec<&str> =
        b.body["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["200 OK", "503 Service Unavailable", "503 Service Unavailable"], "{}", b.body);
    let outcome = &b.body["entry"][1]["response"]["outcome"];
    assert!(outcome.to_string().contains("read-only"), "{outcome}");

    // The other (inline, active) tenant is not frozen.
    let other = fence.token(&ts[0].name);
    let w = post(&fence.url("Patient"), &patient).bearer(&other).send().await;
    assert_eq!(w.status, 201, "{}", w.body);

    // Resumed, the same tenant writes again.
    fhir_fence::lifecycle::change::apply(
        &fence.config_path,
        &name,
        fhir_fence::lifecycle::change::Operation::Resume,
        "test",
    )
    .unwrap();
    until_status(&fence, &name, Some("active")).await;
    let w = request("DELETE", &fence.url("Patient/p1")).bearer(&tok).send().await;
    assert_eq!(w.status, 200, "{}", w.body);
}

#[tokio::test]
async fn a_deleting_tenant_is_answered_byte_for_byte_like_a_suspended_one() {
    let ts = tenants(3);
    let (suspended, deleting) = (format!("{}s", ts[1].name), format!("{}d", ts[2].name));
    let files = [
        (suspended.clone(), tenant_file(&ts[1].prefix, "suspended", "")),
        (deleting.clone(), tenant_file(&ts[2].prefix, "deleting", "deleted_at = \"2025-01-31T12:00:00Z\"\n")),
    ];
    let fence = start(&hapi(), &ts[..1], &files, 5).await;
    for path in ["Patient/p1", "Patient?name=x", "metadata"] {
        let s = get(&fence.url(path)).bearer(&fence.token(&suspended)).send().await;
        let d = get(&fence.url(path)).bearer(&fence.token(&deleting)).send().await;
        assert_eq!(s.status, 403, "{path}: {}", s.body);
        assert_eq!((d.status, &d.raw), (s.status, &s.raw), "{path}: the state is no oracle");
        assert_eq!(d.header("content-type"), s.header("content-type"));
    }
    let w =
        post(&fence.url("Patient"), &json!({"resourceType": "Patient"})).bearer(&fence.token(&deleting)).send().await;
    assert_eq!(w.status, 403);
    // The helper the purge uses: deleted_at + the grace (7 days by default).
    let snap = fence.snap();
    let at =
        fhir_fence::lifecycle::purge_allowed_at(&snap.loaded.config.tenants[&deleting], &snap.loaded.config.lifecycle);
    assert_eq!(at.map(fhir_fence::lifecycle::rfc3339).as_deref(), Some("2025-02-07T12:00:00Z"));
}

#[tokio::test]
async fn tenant_files_added_edited_and_removed_change_who_may_call() {
    let ts = tenants(2);
    let name = format!("{}n", ts[1].name);
    let fence = start(&hapi(), &ts[..1], &[], 5).await;
    let file = dir(&fence).join("tenants").join(format!("{name}.toml"));
    let search = fence.url("Patient?_count=1");

    // Added: the tenant may call (its token minted once the snapshot knows it).
    std::fs::write(&file, tenant_file(&ts[1].prefix, "active", "")).unwrap();
    until_status(&fence, &name, Some("active")).await;
    let tok = fence.token(&name);
    assert_eq!(get(&search).bearer(&tok).send().await.status, 200);
    // A file that is not `.toml`, and the lifecycle record's directory, are no tenants.
    std::fs::write(dir(&fence).join("tenants").join("notes.txt"), "prefix = 1").unwrap();
    // Edited: suspended.
    std::fs::write(&file, tenant_file(&ts[1].prefix, "suspended", "")).unwrap();
    until(&format!("{name} is refused"), || async {
        (get(&search).bearer(&tok).send().await.status == 403).then_some(())
    })
    .await;
    // Removed: unknown.
    std::fs::remove_file(&file).unwrap();
    until(&format!("{name} is unknown"), || async {
        (get(&search).bearer(&tok).send().await.status == 401).then_some(())
    })
    .await;
    assert!(!fence.snap().tenants.contains_key(&name));
    // The inline tenant served throughout.
    assert_eq!(get(&search).bearer(&fence.token(&ts[0].name)).send().await.status, 200);
}

/// `fhir-fence tenant --config C ARGS…`: exit code and the JSON line it printed.
fn cli(config: &Path, args: &[&str]) -> (i32, Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhir-fence"))
        .args(["tenant", "--config"])
        .arg(config)
        .args(args)
        .env("USER", "tester")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {stdout:?} {:?}", out.stderr));
    (out.status.code().unwrap(), value)
}

#[tokio::test]
async fn the_cli_creates_suspends_resumes_deletes_and_undeletes_with_a_record_of_each() {
    let ts = tenants(2);
    let name = format!("{}c", ts[1].name);
    let fence = start(&hapi(), &ts[..1], &[], 5).await;
    let c = fence.config_path.clone();
    let search = fence.url("Patient?_count=1");

    let (code, out) = cli(&c, &["create", &name, "--prefix", &ts[1].prefix, "--upstream", "main", "--issuer", "dev"]);
    assert_eq!((code, out["result"].as_str(), out["to"].as_str()), (0, Some("changed"), Some("active")), "{out}");
    until_status(&fence, &name, Some("active")).await;
    let tok = fence.token(&name);
    assert_eq!(get(&search).bearer(&tok).send().await.status, 200, "the running server took the new tenant");

    // A taken name or prefix is refused before anything is written.
    let (code, out) = cli(&c, &["create", &format!("{name}x"), "--prefix", &ts[0].prefix, "--upstream", "main"]);
    assert_eq!(code, 1, "{out}");
    assert!(out["error"].as_str().unwrap().contains("prefix"), "{out}");
    let (code, out) = cli(&c, &["create", &name, "--prefix", "other", "--upstream", "main"]);
    assert_eq!(code, 1, "{out}");
    assert!(out["error"].as_str().unwrap().contains("exists"), "{out}");
    assert!(!dir(&fence).join("tenants").join(format!("{name}x.toml")).exists());

    let (code, out) = cli(&c, &["suspend", &name]);
    assert_eq!((code, out["from"].as_str(), out["to"].as_str()), (0, Some("active"), Some("suspended")), "{out}");
    // Idempotent: the same change again says so and records nothing.
    let (code, out) = cli(&c, &["suspend", &name]);
    assert_eq!((code, out["result"].as_str()), (0, Some("unchanged")), "{out}");
    until(&format!("{name} is refused"), || async {
        (get(&search).bearer(&tok).send().await.status == 403).then_some(())
    })
    .await;
    let (code, _) = cli(&c, &["resume", &name]);
    assert_eq!(code, 0);
    until(&format!("{name} is served"), || async {
        (get(&search).bearer(&tok).send().await.status == 200).then_some(())
    })
    .await;
    let (code, out) = cli(&c, &["delete", &name]);
    assert_eq!((code, out["to"].as_str()), (0, Some("deleting")), "{out}");
    let (code, out) = cli(&c, &["show", &name]);
    assert_eq!((code, out["status"].as_str()), (0, Some("deleting")), "{out}");
    assert!(
        out["deleted_at"].as_str().is_some_and(|a| a.ends_with('Z')) && out["purge_allowed_at"].is_string(),
        "{out}"
    );
    // A deleting tenant is only undeleted.
    let (code, out) = cli(&c, &["resume", &name]);
    assert_eq!(code, 1, "{out}");
    assert!(out["error"].as_str().unwrap().contains("undelete"), "{out}");
    let (code, out) = cli(&c, &["undelete", &name]);
    assert_eq!((code, out["from"].as_str(), out["to"].as_str()), (0, Some("deleting"), Some("suspended")), "{out}");
    // A tenant of the config file is not managed here.
    let (code, out) = cli(&c, &["suspend", &ts[0].name]);
    assert_eq!(code, 1, "{out}");
    assert!(out["error"].as_str().unwrap().contains("move it to tenants_dir"), "{out}");

    let lines = records(&fence);
    let seen: Vec<(&str, &str, Option<&str>, &str)> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["who"], "cli:tester");
            assert_eq!(l["tenant"], name.as_str());
            assert!(l["at"].as_str().unwrap().ends_with('Z'));
            (l["operation"].as_str().unwrap(), l["to"].as_str().unwrap(), l["from"].as_str(), "")
        })
        .collect();
    let expected = [
        ("create", "active", None, ""),
        ("suspend", "suspended", Some("active"), ""),
        ("resume", "active", Some("suspended"), ""),
        ("delete", "deleting", Some("active"), ""),
        ("undelete", "suspended", Some("deleting"), ""),
    ];
    assert_eq!(seen, expected);
    let (code, out) = cli(&c, &["list"]);
    assert_eq!(code, 0);
    assert_eq!(out["name"], name.as_str(), "the last listed tenant (by name): {out}");

    // Retired (its file removed): neither its name nor its prefix is given again, since its
    // deleted versions stay on the upstream under the prefix and its tokens were sealed under
    // the name. A hidden name (a file the tenants directory ignores) is no tenant name.
    std::fs::remove_file(dir(&fence).join("tenants").join(format!("{name}.toml"))).unwrap();
    until_status(&fence, &name, None).await;
    for args in [
        vec!["create", name.as_str(), "--prefix", "fresh1", "--upstream", "main"],
        vec!["create", "brand-new", "--prefix", ts[1].prefix.as_str(), "--upstream", "main"],
    ] {
        let (code, out) = cli(&c, &args);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out["error"].as_str().unwrap().contains("never reused"), "{out}");
    }
    for bad in [".hidden", ".."] {
        let (code, out) = cli(&c, &["create", bad, "--prefix", "fresh2", "--upstream", "main"]);
        assert_eq!(code, 1, "{bad}: {out}");
        assert!(!dir(&fence).join("tenants").join(format!("{bad}.toml")).exists());
    }
}

pub(crate) async fn admin(fence: &Fence, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
    let mut call = request(method, &format!("{}{path}", fence.admin));
    if let Some(b) = body {
        call = call.header("content-type", "application/json").raw_body(b.to_string());
    }
    if let Some(t) = token {
        call = call.bearer(t);
    }
    call.send().await
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_answers_after_the_change_is_live() {
    let ts = tenants(2);
    let name = format!("{}a", ts[1].name);
    let fence = start(&hapi(), &ts[..1], &[], 5).await;
    let tenant_jwt = fence.token(&ts[0].name);
    for token in [None, Some("wrong-token-0123456789"), Some(tenant_jwt.as_str()), Some(&ADMIN_TOKEN[1..])] {
        let r = admin(&fence, "GET", "/tenants", token, None).await;
        assert_eq!(r.status, 401, "{token:?}: {}", r.body);
        assert!(r.body["error"].is_string());
    }
    let r = admin(&fence, "GET", "/tenants", Some(ADMIN_TOKEN), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["tenants"][0]["defined_in"], "config");

    let table = json!({"prefix": ts[1].prefix, "upstream": "main", "status": "active", "issuers": ["dev"]});
    let r = admin(&fence, "PUT", &format!("/tenants/{name}"), Some(ADMIN_TOKEN), Some(&table)).await;
    assert_eq!((r.status, r.body["result"].as_str()), (201, Some("changed")), "{}", r.body);
    // Live when the answer came: no waiting.
    let tok = fence.token(&name);
    let search = fence.url("Patient?_count=1");
    assert_eq!(get(&search).bearer(&tok).send().await.status, 200);
    let r = admin(&fence, "PUT", &format!("/tenants/{name}"), Some(ADMIN_TOKEN), Some(&table)).await;
    assert_eq!((r.status, r.body["result"].as_str()), (200, Some("unchanged")), "{}", r.body);
    let bad = json!({"prefix": ts[1].prefix, "upstream": "main", "status": "active", "colour": "red"});
    let r = admin(&fence, "PUT", &format!("/tenants/{name}z"), Some(ADMIN_TOKEN), Some(&bad)).await;
    assert_eq!(r.status, 400, "unknown keys refused: {}", r.body);

    let op = |o: &str| format!("/tenants/{name}/{o}");
    let r = admin(&fence, "POST", &op("suspend"), Some(ADMIN_TOKEN), None).await;
    assert_eq!((r.status, r.body["to"].as_str()), (200, Some("suspended")), "{}", r.body);
    assert_eq!(get(&search).bearer(&tok).send().await.status, 403);
    let r = admin(&fence, "POST", &op("read-only"), Some(ADMIN_TOKEN), None).await;
    assert_eq!(r.body["to"], "read-only");
    assert_eq!(get(&search).bearer(&tok).send().await.status, 200);
    let w = post(&fence.url("Patient"), &json!({"resourceType": "Patient"})).bearer(&tok).send().await;
    assert_read_only(&w, "create", "5");
    let r = admin(&fence, "POST", &op("resume"), Some(ADMIN_TOKEN), None).await;
    assert_eq!(r.body["to"], "active");
    let r = admin(&fence, "POST", &op("delete"), Some(ADMIN_TOKEN), None).await;
    assert_eq!(r.body["to"], "deleting");
    assert_eq!(get(&search).bearer(&tok).send().await.status, 403);
    let r = admin(&fence, "GET", &format!("/tenants/{name}"), Some(ADMIN_TOKEN), None).await;
    assert_eq!(
        (r.body["status"].as_str(), r.body["defined_in"].as_str()),
        (Some("deleting"), Some("file")),
        "{}",
        r.body
    );
    let r = admin(&fence, "POST", &op("undelete"), Some(ADMIN_TOKEN), None).await;
    assert_eq!((r.status, r.body["to"].as_str()), (200, Some("suspended")), "{}", r.body);
    let r = admin(&fence, "POST", &op("undelete"), Some(ADMIN_TOKEN), None).await;
    assert_eq!(r.body["result"], "unchanged");

    // Refusals.
    let r = admin(&fence, "POST", &format!("/tenants/{}/suspend", ts[0].name), Some(ADMIN_TOKEN), None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = admin(&fence, "POST", "/tenants/nobody/suspend", Some(ADMIN_TOKEN), None).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = admin(&fence, "POST", &op("explode"), Some(ADMIN_TOKEN), None).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let ops: Vec<String> = records(&fence).iter().map(|l| format!("{}:{}", l["operation"], l["who"])).collect();
    assert_eq!(ops.len(), 6, "{ops:?}");
    assert!(ops.iter().all(|o| o.ends_with(":\"admin-api\"")), "{ops:?}");

    // Without admin_token_file the endpoints do not exist.
    let plain = support::start(Options::new(&hapi(), &ts[..1])).await;
    let r = request("GET", &format!("{}/tenants", plain.admin)).bearer(ADMIN_TOKEN).send().await;
    assert_eq!(r.status, 404);
}

/// `fhir-fence check` on a config with tenant files: `Err(stderr)` when refused.
fn check(config: &str, files: &[(&str, &str)]) -> Result<(), String> {
    let path = write_config(config);
    let tdir = path.parent().unwrap().join("tenants");
    std::fs::create_dir_all(&tdir).unwrap();
    for (name, text) in files {
        std::fs::write(tdir.join(format!("{name}.toml")), text).unwrap();
    }
    support::check_path(&path)
}

#[test]
fn validation_refuses_dedicated_on_a_shared_upstream_and_duplicates() {
    let mut ts = tenants(2);
    let base = |ts: &[T], extra: &str| {
        let mut o = Options::new("http://127.0.0.1:9/fhir", ts);
        o.extra = format!("[lifecycle]\ntenants_dir = \"tenants\"\n{extra}");
        support::config_text(&o, 1, 2)
    };
    assert_eq!(check(&base(&ts, ""), &[]), Ok(()));
    // Dedicated on an upstream another tenant uses: both tenants and the upstream named.
    ts[1].extra = "isolation = \"dedicated\"\n".into();
    let e = check(&base(&ts, ""), &[]).unwrap_err();
    assert!(e.contains(&ts[0].name) && e.contains(&ts[1].name) && e.contains("\"main\""), "{e}");
    // Alone on its upstream, it is fine.
    let mut alone = ts.clone();
    alone[1].upstream = "own".into();
    let own = "[upstreams.own]\nbase_url = \"http://127.0.0.1:10/fhir\"\n";
    assert_eq!(check(&base(&alone, own), &[]), Ok(()));
    // …until a tenant file joins it there.
    let joiner = format!("prefix = \"zz{}\"\nupstream = \"own\"\nstatus = \"active\"\n", &ts[1].prefix[1..6]);
    let e = check(&base(&alone, own), &[("joiner", &joiner)]).unwrap_err();
    assert!(e.contains("joiner") && e.contains(&ts[1].name) && e.contains("\"own\""), "{e}");

    // Observe mode only on a legacy upstream, and a legacy upstream only for observing tenants.
    ts[1].extra = "enforcement = \"observe\"\n".into();
    let e = check(&base(&ts, ""), &[]).unwrap_err();
    assert!(e.contains("enforcement") && e.contains("legacy"), "{e}");
    let mut legacy = ts.clone();
    legacy[1].upstream = "old".into();
    let old = "[upstreams.old]\nbase_url = \"http://127.0.0.1:11/fhir\"\nlegacy = true\n";
    assert_eq!(check(&base(&legacy, old), &[]), Ok(()));
    // A legacy upstream that is an enforced one under a second name: refused.
    for alias in ["http://127.0.0.1:9/fhir", "http://localhost:9/other", "http://[::1]:9/fhir/"] {
        let aliased = format!("[upstreams.old]\nbase_url = \"{alias}\"\nlegacy = true\n");
        let e = check(&base(&legacy, &aliased), &[]).unwrap_err();
        assert!(e.contains("upstreams.old.base_url") && e.contains("same server"), "{alias}: {e}");
    }
    legacy[1].extra.clear();
    let e = check(&base(&legacy, old), &[]).unwrap_err();
    assert!(e.contains(&format!("tenants.{}.upstream", ts[1].name)) && e.contains("legacy"), "{e}");

    ts[1].extra.clear();
    // A name both inline and in a file: both places named.
    let same = format!("prefix = \"zz{}\"\nupstream = \"main\"\nstatus = \"active\"\n", &ts[1].prefix[1..6]);
    let e = check(&base(&ts, ""), &[(&ts[0].name, &same)]).unwrap_err();
    assert!(
        e.contains(&format!("tenants.{}", ts[0].name))
            && e.contains("config file")
            && e.contains(&format!("{}.toml", ts[0].name)),
        "{e}"
    );
    // A prefix used inline and in a file.
    let taken = format!("prefix = \"{}\"\nupstream = \"main\"\nstatus = \"active\"\n", ts[0].prefix);
    let e = check(&base(&ts, ""), &[("other", &taken)]).unwrap_err();
    assert!(e.contains("prefix"), "{e}");
    // A bad file name, an unknown key, deleting without deleted_at.
    let ok = format!("prefix = \"zz{}\"\nupstream = \"main\"\nstatus = \"active\"\n", &ts[1].prefix[1..6]);
    assert!(check(&base(&ts, ""), &[("bad_name", &ok)]).unwrap_err().contains("tenant names"));
    assert!(check(&base(&ts, ""), &[("x", &format!("{ok}colour = 1\n"))]).unwrap_err().contains("colour"));
    let deleting = ok.replace("active", "deleting");
    assert!(check(&base(&ts, ""), &[("x", &deleting)]).unwrap_err().contains("deleted_at"));
    // state_dir inside tenants_dir.
    let e = check(&base(&ts, "state_dir = \"tenants/state\"\n"), &[]).unwrap_err();
    assert!(e.contains("lifecycle.state_dir"), "{e}");
}

/// Reads `metadata` straight from a HAPI server.
async fn upstream_statement(base: &str) -> Value {
    let r = get(&format!("{base}/metadata")).send().await;
    assert_eq!(r.status, 200);
    r.body
}

fn resource_types(cs: &Value) -> Vec<String> {
    let rest = cs["rest"].as_array().unwrap().iter().find(|r| r["mode"] == "server").unwrap();
    rest["resource"].as_array().unwrap().iter().map(|r| r["type"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn one_fence_routes_two_tenants_to_two_hapi_servers_each_with_its_own_metadata() {
    let mut ts = tenants(2);
    ts[1].upstream = "dedicated".into();
    ts[1].extra = "isolation = \"dedicated\"\n".into();
    let mut o = Options::new(&hapi(), &ts);
    o.extra = format!("[upstreams.dedicated]\nbase_url = \"{}\"\n", hapi_dedicated());
    let fence = support::start(o).await;
    let (a, b) = (fence.token(&ts[0].name), fence.token(&ts[1].name));

    // Each tenant writes and reads its own data, on its own server.
    for (tok, t, server) in [(&a, &ts[0], hapi()), (&b, &ts[1], hapi_dedicated())] {
        let w = put(
            &fence.url("Patient/p1"),
            &json!({"resourceType": "Patient", "id": "p1", "name": [{"family": t.name}]}),
        )
        .bearer(tok)
        .send()
        .await;
        assert!(matches!(w.status, 200 | 201), "{}", w.body);
        let r = get(&fence.url("Patient/p1")).bearer(tok).send().await;
        assert_eq!((r.status, r.body["name"][0]["family"].as_str()), (200, Some(t.name.as_str())), "{}", r.body);
        // Stored on its own server, under its prefix.
        let direct = get(&format!("{server}/Patient/{}-p1", t.prefix)).send().await;
        assert_eq!(direct.status, 200, "{server}: {}", direct.body);
    }
    // Neither server holds the other's.
    assert_eq!(get(&format!("{}/Patient/{}-p1", hapi_dedicated(), ts[0].prefix)).send().await.status, 404);
    assert_eq!(get(&format!("{}/Patient/{}-p1", hapi(), ts[1].prefix)).send().await.status, 404);

    // `metadata`: each tenant its own upstream's statement (HAPI gives each server's its own id).
    // HAPI makes a new statement (a new id) when its cache expires, while fhir-fence keeps the
    // one it read first: each id fhir-fence serves must be one its own server has served, and
    // neither the other server's.
    let ma = get(&fence.url("metadata")).bearer(&a).send().await;
    let mb = get(&fence.url("metadata")).bearer(&b).send().await;
    assert_eq!((ma.status, mb.status), (200, 200));
    let (shared, dedicated) = (upstream_statement(&hapi()).await, upstream_statement(&hapi_dedicated()).await);
    assert_ne!(shared["id"], dedicated["id"]);
    assert_ne!(ma.body["id"], mb.body["id"], "each tenant its own server's statement");
    assert_ne!(ma.body["id"], dedicated["id"], "tenant A: not the dedicated server's statement");
    assert_ne!(mb.body["id"], shared["id"], "tenant B: not the shared server's statement");
    let same_server = |served: &Value, direct: &Value| {
        served["id"] == direct["id"]
            || served["software"] == direct["software"] && served["fhirVersion"] == direct["fhirVersion"]
    };
    assert!(same_server(&ma.body, &shared), "tenant A: the shared server's statement: {}", ma.body["id"]);
    assert!(same_server(&mb.body, &dedicated), "tenant B: the dedicated server's statement: {}", mb.body["id"]);
    for m in [&ma, &mb] {
        assert_eq!(m.body["implementation"]["url"], fence.base.as_str(), "trimmed as before");
    }
    // Anonymous: the one statement both satisfy (composed: no single server's id).
    let anon = get(&fence.url("metadata")).send().await;
    assert_eq!(anon.status, 200);
    assert!(anon.body.get("id").is_none(), "{}", anon.body["id"]);
    let mut both: Vec<String> = resource_types(&shared);
    both.retain(|t| resource_types(&dedicated).contains(t));
    assert_eq!(resource_types(&anon.body), both);
    // A bad token is refused here as anywhere.
    let r = get(&fence.url("metadata")).bearer("not-a-token").send().await;
    assert_eq!(r.status, 401);
}
