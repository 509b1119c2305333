//! fhir-fence in front of a second, independent FHIR implementation (issue 22): Medplum's FHIR
//! router over its in-memory repository (`scripts/medplum`, `MEDPLUM_URL`). Two tenants share it
//! as they share HAPI: same ids, each sees only its own, references stay inside, and what this
//! server cannot scope (it has no `_tag` search on `Binary`) is refused, not guessed at.
use crate::support::client::{get, post, put, request, Reply};
use crate::support::{self, tenants, Options, SYSTEM};
use serde_json::{json, Value};

fn medplum() -> String {
    support::hapi_url("MEDPLUM_URL", 8097)
}

fn ids(r: &Reply) -> Vec<String> {
    let mut ids: Vec<String> = r.body["entry"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap_or(""),
                e["resource"]["id"].as_str().unwrap_or("")
            )
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn two_tenants_share_a_medplum_server_without_seeing_each_other() {
    let ts = tenants(2);
    let f = support::start(Options::new(&medplum(), &ts)).await;
    let (a, b) = (f.token(&ts[0].name), f.token(&ts[1].name));
    let (ta, tb) = (ts[0].name.as_str(), ts[1].name.as_str());

    // The same ids for both tenants.
    for (token, who) in [(&a, "Alpha"), (&b, "Bravo")] {
        let p = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": who}]});
        let r = put(&f.url("Patient/p1"), &p).bearer(token).send().await;
        assert!(matches!(r.status, 200 | 201), "{who}: {} {}", r.status, r.body);
        assert_eq!(r.body["id"], "p1", "{}", r.body);
        let o = json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": who},
            "subject": {"reference": "Patient/p1"}});
        let r = put(&f.url("Observation/o1"), &o).bearer(token).send().await;
        assert!(matches!(r.status, 200 | 201), "{who}: {} {}", r.status, r.body);
    }
    let org = json!({"resourceType": "Organization", "id": "b-org", "name": "Bravo only"});
    assert!(put(&f.url("Organization/b-org"), &org).bearer(&b).send().await.status < 300);

    // Each reads its own; another tenant's id is 404 like an id nobody has.
    let r = get(&f.url("Patient/p1")).bearer(&a).send().await;
    assert_eq!((r.status, r.body["name"][0]["family"].as_str()), (200, Some("Alpha")), "{}", r.body);
    assert_eq!(get(&f.url("Organization/b-org")).bearer(&a).send().await.status, 404);
    assert_eq!(get(&f.url("Organization/nobody")).bearer(&a).send().await.status, 404);

    // Upstream, each resource carries its tenant's prefix and tag.
    let up = get(&format!("{}/Patient/{}-p1", medplum(), ts[0].prefix)).send().await;
    assert_eq!(up.status, 200, "{}", up.body);
    let tags = up.body["meta"]["tag"].as_array().cloned().unwrap_or_default();
    assert!(tags.iter().any(|t| t["system"] == SYSTEM && t["code"] == ta), "{}", up.body);

    // Searches, `_include` and `_revinclude` see only the caller's.
    let r = get(&f.url("Patient")).bearer(&a).send().await;
    assert_eq!((r.status, ids(&r)), (200, vec!["Patient/p1".to_owned()]), "{}", r.body);
    assert!(!r.raw.windows(5).any(|w| w == b"Bravo"), "{}", r.body);
    let r = get(&f.url("Observation?subject=Patient/p1&_include=Observation:subject")).bearer(&a).send().await;
    assert_eq!((r.status, ids(&r)), (200, vec!["Observation/o1".to_owned(), "Patient/p1".to_owned()]), "{}", r.body);
    assert!(!r.raw.windows(5).any(|w| w == b"Bravo"), "{}", r.body);
    let r = get(&f.url("Patient?_revinclude=Observation:subject")).bearer(&b).send().await;
    assert_eq!(ids(&r), vec!["Observation/o1".to_owned(), "Patient/p1".to_owned()], "{}", r.body);
    assert!(!r.raw.windows(5).any(|w| w == b"Alpha"), "{}", r.body);
    let r = get(&f.url(&format!("Patient?_tag={SYSTEM}|{tb}"))).bearer(&a).send().await;
    assert!(r.status >= 400 || ids(&r).is_empty(), "the tenant parameter cannot be widened: {}", r.body);

    // A transaction with `urn:uuid` references: created inside the tenant, references resolved.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:2b8f4c8e-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "tx"},
            "subject": {"reference": "urn:uuid:2b8f4c8e-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let r = post(&f.url(""), &tx).bearer(&a).send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    let created: Vec<&str> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["location"].as_str().unwrap_or_default())
        .collect();
    assert!(created.iter().all(|l| l.starts_with(&f.base)), "{created:?}");
    let r = get(&f.url("Observation?code:text=tx&_include=Observation:subject")).bearer(&a).send().await;
    assert_eq!(r.body["entry"].as_array().map(Vec::len), Some(2), "{}", r.body);
    assert_eq!(get(&f.url("Observation?code:text=tx")).bearer(&b).send().await.body["entry"], Value::Null);

    // A reference to another tenant's resource is refused; so is its tenant coding.
    let foreign = json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization/b-org"}});
    assert_eq!(post(&f.url("Patient"), &foreign).bearer(&a).send().await.status, 422);
    let coded = json!({"resourceType": "Patient", "meta": {"tag": [{"system": SYSTEM, "code": tb}]}});
    assert_eq!(post(&f.url("Patient"), &coded).bearer(&a).send().await.status, 422);

    // History and vread of one's own resource; an update with the version read.
    let v1 = get(&f.url("Patient/p1")).bearer(&a).send().await;
    let version = v1.body["meta"]["versionId"].as_str().unwrap().to_owned();
    let updated = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Alpha"}], "gender": "female"});
    let r = put(&f.url("Patient/p1"), &updated).bearer(&a).header("if-match", &format!("W/\"{version}\"")).send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(&f.url("Patient/p1/_history")).bearer(&a).send().await;
    assert_eq!(r.body["entry"].as_array().map(Vec::len), Some(2), "{}", r.body);
    let r = get(&f.url(&format!("Patient/p1/_history/{version}"))).bearer(&a).send().await;
    assert_eq!((r.status, r.body.get("gender")), (200, None), "{}", r.body);
    assert_eq!(get(&f.url(&format!("Patient/p1/_history/{version}"))).bearer(&b).send().await.status, 404);

    // Patch (applied by fhir-fence, written back pinned).
    let r = request("PATCH", &f.url("Patient/p1"))
        .bearer(&a)
        .header("content-type", "application/json-patch+json")
        .raw_body(json!([{"op": "replace", "path": "/gender", "value": "other"}]).to_string())
        .send()
        .await;
    assert_eq!((r.status, r.body["gender"].as_str()), (200, Some("other")), "{}", r.body);

    // Binary: written and read by id; its searches cannot carry the tenant scope here.
    let bin = json!({"resourceType": "Binary", "id": "b1", "contentType": "text/plain", "data": "QWxwaGE="});
    let r = put(&f.url("Binary/b1"), &bin).bearer(&a).send().await;
    assert!(matches!(r.status, 200 | 201), "{}", r.body);
    let r = get(&f.url("Binary/b1")).bearer(&a).header("accept", "application/fhir+json").send().await;
    assert_eq!((r.status, r.body["data"].as_str()), (200, Some("QWxwaGE=")), "{}", r.body);
    assert_eq!(get(&f.url("Binary/b1")).bearer(&b).send().await.status, 404);
    let r = get(&f.url("Binary")).bearer(&a).send().await;
    assert_eq!(r.status, 501, "{}", r.body);
    assert!(r.diagnostics().contains("Binary"), "{}", r.body);

    // Paging: the router gives no links; `_offset` pages, inside the tenant.
    for n in 0..3 {
        let p = json!({"resourceType": "Patient", "name": [{"family": format!("Page{n}")}]});
        assert!(post(&f.url("Patient"), &p).bearer(&b).send().await.status < 300);
    }
    let mut seen = vec![];
    for offset in 0..5 {
        let r = get(&f.url(&format!("Patient?_count=1&_offset={offset}&_sort=family"))).bearer(&b).send().await;
        assert_eq!(r.status, 200, "{}", r.body);
        seen.extend(ids(&r));
    }
    assert_eq!(seen.len(), 4, "B's four Patients, one per page: {seen:?}");
    // No Bulk export on this server: refused, with an OperationOutcome.
    let r = get(&f.url("$export?_type=Patient")).bearer(&a).header("prefer", "respond-async").send().await;
    assert!(r.status >= 400 && r.body["resourceType"] == "OperationOutcome", "{} {}", r.status, r.body);

    // Delete: gone for its tenant, the other tenant's p1 untouched.
    let r = request("DELETE", &f.url("Observation/o1")).bearer(&a).send().await;
    assert!(r.status < 300, "{} {}", r.status, r.body);
    assert!(matches!(get(&f.url("Observation/o1")).bearer(&a).send().await.status, 404 | 410));
    let r = get(&f.url("Observation/o1")).bearer(&b).send().await;
    assert_eq!((r.status, r.body["code"]["text"].as_str()), (200, Some("Bravo")), "{}", r.body);
    let r = get(&f.url("Patient/p1")).bearer(&b).send().await;
    assert_eq!((r.body["name"][0]["family"].as_str(), r.body.get("gender")), (Some("Bravo"), None), "{}", r.body);
}
