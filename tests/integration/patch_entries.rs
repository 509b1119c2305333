//! PATCH entries of transactions and batches against the real HAPI (issue 21): JSON Patch in a
//! `Binary` and FHIRPath Patch as `Parameters`, applied by fhir-fence to the caller's resource
//! and written pinned to the version read. What the tenant gets back must be what HAPI gives
//! for the same Bundle on plain resources; the result stays inside the tenant, another
//! tenant's resource cannot be patched, and a transaction that patches and writes one resource
//! is refused before anything is sent.
use crate::support::client::{get, post, put, Reply};
use crate::support::{self, tenants, Options, SYSTEM};
use base64::Engine;
use serde_json::{json, Value};

fn hapi() -> String {
    crate::support::hapi_url("HAPI_URL", 8090)
}

fn json_patch(ops: Value) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(ops.to_string());
    json!({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data})
}

fn bundle(kind: &str, entries: Vec<(&str, &str, Value)>) -> Value {
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|(method, url, resource)| json!({"resource": resource, "request": {"method": method, "url": url}}))
        .collect();
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

/// Each response entry's status and outcome codes, the parts a client reads.
fn responses(r: &Reply) -> Vec<(String, Vec<String>)> {
    r.body["entry"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|e| {
            let codes = e["response"]["outcome"]["issue"][0]["details"]["coding"]
                .as_array()
                .map(|cs| cs.iter().filter_map(|c| c["code"].as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            (e["response"]["status"].as_str().unwrap_or_default().to_owned(), codes)
        })
        .collect()
}

/// The resource's content as the client sees it: without `meta`, `id` and `text`.
fn content(r: &Reply) -> Value {
    let mut v = r.body.clone();
    for k in ["meta", "id", "text"] {
        v.as_object_mut().map(|o| o.remove(k));
    }
    v
}

#[tokio::test]
async fn patch_entries_give_what_hapi_gives_and_stay_in_the_tenant() {
    let ts = tenants(2);
    let f = support::start(Options::new(&hapi(), &ts)).await;
    let (a, b) = (f.token(&ts[0].name), f.token(&ts[1].name));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let patient =
        |id: &str| json!({"resourceType": "Patient", "id": id, "gender": "male", "name": [{"family": "Start"}]});
    let plain = [format!("zzpe-{run}-1"), format!("zzpe-{run}-2")];
    for id in &plain {
        assert_eq!(put(&format!("{}/Patient/{id}", hapi()), &patient(id)).send().await.status, 201);
    }
    for id in ["p1", "p2"] {
        assert_eq!(put(&f.url(&format!("Patient/{id}")), &patient(id)).bearer(&a).send().await.status, 201);
    }
    assert_eq!(put(&f.url("Patient/p1"), &patient("p1")).bearer(&b).send().await.status, 201);
    let org = json!({"resourceType": "Organization", "id": "b-org", "name": "B only"});
    assert_eq!(put(&f.url("Organization/b-org"), &org).bearer(&b).send().await.status, 201);
    let gender = json!([{"op": "replace", "path": "/gender", "value": "female"}]);

    // A transaction: a JSON Patch and a FHIRPath Patch, on two resources; then a batch of two
    // more. (A batch's write entries carry the resource, not HAPI's outcome codes:
    // `docs/transparency.md`; so only their statuses are compared.)
    let birth_date = |kind: &str, date: &str| {
        let mut part = vec![json!({"name": "type", "valueCode": kind})];
        part.extend(match kind {
            "add" => {
                [json!({"name": "path", "valueString": "Patient"}), json!({"name": "name", "valueString": "birthDate"})]
                    .to_vec()
            }
            _ => [json!({"name": "path", "valueString": "Patient.birthDate"})].to_vec(),
        });
        part.push(json!({"name": "value", "valueDate": date}));
        json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": part}]})
    };
    let rounds = [
        (
            "transaction",
            json!([{"op": "replace", "path": "/gender", "value": "female"}]),
            birth_date("add", "1970-01-01"),
        ),
        ("batch", json!([{"op": "replace", "path": "/gender", "value": "other"}]), birth_date("replace", "1980-02-02")),
    ];
    for (kind, gender, birth) in rounds {
        let entries = |ids: [&str; 2]| {
            bundle(
                kind,
                vec![
                    ("PATCH", &format!("Patient/{}", ids[0]), json_patch(gender.clone())),
                    ("PATCH", &format!("Patient/{}", ids[1]), birth.clone()),
                ],
            )
        };
        let ours = post(&f.url(""), &entries(["p1", "p2"])).bearer(&a).send().await;
        let theirs = post(&hapi(), &entries([&plain[0], &plain[1]])).send().await;
        assert_eq!((ours.status, theirs.status), (200, 200), "{kind}: {} / {}", ours.body, theirs.body);
        let (mut mine, mut its) = (responses(&ours), responses(&theirs));
        if kind == "batch" {
            mine.iter_mut().chain(its.iter_mut()).for_each(|(_, codes)| codes.clear());
        }
        assert_eq!(mine, its, "{kind}: {} / {}", ours.body, theirs.body);
        for (mine, its) in [("p1", &plain[0]), ("p2", &plain[1])] {
            let ours = get(&f.url(&format!("Patient/{mine}"))).bearer(&a).send().await;
            let theirs = get(&format!("{}/Patient/{its}", hapi())).send().await;
            assert_eq!(content(&ours), content(&theirs), "{kind}: Patient/{mine}");
            assert_eq!(ours.body["meta"]["versionId"], theirs.body["meta"]["versionId"], "{kind}: Patient/{mine}");
        }
    }
    assert_eq!(ours_gender(&f, &b).await, "male", "B's p1 is untouched by A's patches");

    // A patch that would point A's Patient at B's Organization, or give it B's tenant coding:
    // the whole transaction is refused and nothing changes.
    let before = get(&f.url("Patient/p2")).bearer(&a).send().await.body["meta"]["versionId"].clone();
    for (what, ops) in [
        (
            "a foreign reference",
            json!([{"op": "add", "path": "/managingOrganization", "value": {"reference": "Organization/b-org"}}]),
        ),
        (
            "a foreign tenant coding",
            json!([{"op": "add", "path": "/meta/tag", "value": [{"system": SYSTEM, "code": ts[1].name}]}]),
        ),
    ] {
        let tx = bundle(
            "transaction",
            vec![("PATCH", "Patient/p2", json_patch(gender.clone())), ("PATCH", "Patient/p1", json_patch(ops))],
        );
        let r = post(&f.url(""), &tx).bearer(&a).send().await;
        assert_eq!(r.status, 422, "{what}: {}", r.body);
    }
    let after = get(&f.url("Patient/p2")).bearer(&a).send().await.body["meta"]["versionId"].clone();
    assert_eq!(before, after, "nothing of a refused transaction is written");

    // B's resource is not A's to patch: the same answer as an id nobody has.
    let foreign = bundle(
        "transaction",
        vec![("PATCH", "Organization/b-org", json_patch(json!([{"op": "remove", "path": "/name"}])))],
    );
    let nobody = bundle(
        "transaction",
        vec![("PATCH", "Organization/nobody", json_patch(json!([{"op": "remove", "path": "/name"}])))],
    );
    let (r1, r2) =
        (post(&f.url(""), &foreign).bearer(&a).send().await, post(&f.url(""), &nobody).bearer(&a).send().await);
    assert_eq!((r1.status, r2.status), (404, 404), "{} / {}", r1.body, r2.body);
    assert_eq!(r1.diagnostics().replace("b-org", "X"), r2.diagnostics().replace("nobody", "X"));
    // In a batch, that entry alone fails.
    let batch = bundle(
        "batch",
        vec![
            ("PATCH", "Organization/b-org", json_patch(json!([{"op": "remove", "path": "/name"}]))),
            ("PATCH", "Patient/p2", json_patch(json!([{"op": "replace", "path": "/gender", "value": "other"}]))),
        ],
    );
    let r = post(&f.url(""), &batch).bearer(&a).send().await;
    let statuses: Vec<String> = responses(&r).into_iter().map(|(s, _)| s).collect();
    assert_eq!(statuses, ["404 Not Found", "200 OK"], "{}", r.body);
    let org = get(&f.url("Organization/b-org")).bearer(&b).send().await;
    assert_eq!(org.body["name"], "B only", "B's Organization is untouched");

    // One resource patched by one entry and written by another: refused, nothing sent.
    let twice = bundle(
        "transaction",
        vec![("PATCH", "Patient/p2", json_patch(gender.clone())), ("PUT", "Patient/p2", patient("p2"))],
    );
    let r = post(&f.url(""), &twice).bearer(&a).send().await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.diagnostics().contains("patched by one entry"), "{}", r.body);
    // A conditional patch entry, as HAPI names it.
    let conditional = bundle("transaction", vec![("PATCH", "Patient?_id=p2", json_patch(gender.clone()))]);
    let r = post(&f.url(""), &conditional).bearer(&a).send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    let codes = responses(&r);
    assert!(codes[0].1[0].starts_with("SUCCESSFUL_CONDITIONAL_PATCH"), "{codes:?}");
    // The patch is not a Binary holding JSON Patch nor Parameters: 400.
    let wrong = bundle("transaction", vec![("PATCH", "Patient/p2", patient("p2"))]);
    assert_eq!(post(&f.url(""), &wrong).bearer(&a).send().await.status, 400);
}

async fn ours_gender(f: &support::Fence, token: &str) -> String {
    let r = get(&f.url("Patient/p1")).bearer(token).send().await;
    r.body["gender"].as_str().unwrap_or_default().to_owned()
}

/// The resources a Bundle's patches produce are bounded together by one body's worth
/// (`server.max_body_bytes`): small patch documents cannot make a transaction hold, or a batch
/// answer with, many bodies' worth (found by the attacker run of 2026-12-01).
#[tokio::test]
async fn the_patched_resources_of_a_bundle_share_one_body_limit() {
    let ts = tenants(1);
    let f = support::start(Options { max_body_bytes: 64 * 1024, ..Options::new(&hapi(), &ts) }).await;
    let a = f.token(&ts[0].name);
    for id in ["big1", "big2", "big3", "big4"] {
        let p = json!({"resourceType": "Patient", "id": id});
        assert_eq!(put(&f.url(&format!("Patient/{id}")), &p).bearer(&a).send().await.status, 201);
    }
    // Each patch (7 KB in the Bundle) makes its resource 25 KB: two fit in 64 KiB, three do not.
    let grow = || {
        let mut ops = vec![json!({"op": "add", "path": "/address", "value": [{"text": "w".repeat(5_000)}]})];
        ops.extend((0..4).map(|_| json!({"op": "copy", "from": "/address/0", "path": "/address/-"})));
        json_patch(Value::Array(ops))
    };
    let entries = |n: usize, kind: &str| {
        let ids = ["big1", "big2", "big3", "big4"];
        bundle(kind, ids[..n].iter().map(|id| ("PATCH", &*format!("Patient/{id}").leak(), grow())).collect())
    };
    let r = post(&f.url(""), &entries(2, "transaction")).bearer(&a).send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(&f.url(""), &entries(3, "transaction")).bearer(&a).send().await;
    assert_eq!(r.status, 413, "{}", r.body);
    // A batch runs its entries one by one: once its patched resources exceed the limit (75 KB
    // after three), later PATCH entries are refused.
    let r = post(&f.url(""), &entries(4, "batch")).bearer(&a).send().await;
    let statuses: Vec<String> = responses(&r).into_iter().map(|(s, _)| s).collect();
    assert_eq!(statuses[..3], ["200 OK", "200 OK", "200 OK"], "{}", r.body);
    assert!(statuses[3].starts_with("413"), "{statuses:?}");
    // A resource written by one entry cannot be patched by a later one.
    let twice = bundle(
        "transaction",
        vec![
            ("PUT", "Patient/big1", json!({"resourceType": "Patient", "id": "big1"})),
            ("PATCH", "Patient/big1", grow()),
        ],
    );
    let r = post(&f.url(""), &twice).bearer(&a).send().await;
    assert_eq!(r.status, 400, "{}", r.body);
}
