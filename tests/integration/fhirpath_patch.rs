//! FHIRPath Patch end to end against the real HAPI: fhir-fence applies the patch itself
//! (read-modify-write, `fhir::fhirpath_patch`) and must give the tenant the resource HAPI gives
//! for the same patch on a plain resource of its own (issue 21, transparency); the write path
//! keeps it inside the tenant.
use crate::support::client::{get, put, request, Reply};
use crate::support::{self, tenants, Options, SYSTEM};
use serde_json::{json, Value};

fn hapi() -> String {
    crate::support::hapi_url("HAPI_URL", 8090)
}

fn op(kind: &str, path: &str, rest: Value) -> Value {
    let mut parts = vec![json!({"name": "type", "valueCode": kind}), json!({"name": "path", "valueString": path})];
    parts.extend(rest.as_array().unwrap().iter().cloned());
    json!({"name": "operation", "part": parts})
}

fn params(ops: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": ops})
}

fn send(url: &str, body: &Value, token: Option<&str>) -> crate::support::client::Call {
    let call = request("PATCH", url).header("content-type", "application/fhir+json").raw_body(body.to_string());
    match token {
        Some(t) => call.bearer(t),
        None => call,
    }
}

/// The resource as the client sees its content: without `meta`, `id` and `text`.
fn content(r: &Reply) -> Value {
    let mut v = r.body.clone();
    if let Some(o) = v.as_object_mut() {
        for k in ["meta", "id", "text"] {
            o.remove(k);
        }
    }
    v
}

#[tokio::test]
async fn fhirpath_patch_gives_what_hapi_gives_inside_the_tenant() {
    let ts = tenants(2);
    let f = support::start(Options::new(&hapi(), &ts)).await;
    let (a, b) = (f.token(&ts[0].name), f.token(&ts[1].name));
    let plain = format!("zzfp-{}", uuid::Uuid::new_v4().simple());
    let start = |id: &str| {
        json!({"resourceType": "Patient", "id": id, "active": true, "name": [{"family": "Start", "given": ["x"]}],
            "identifier": [{"system": "urn:s1", "value": "1"}, {"system": "urn:s2", "value": "2"}]})
    };
    assert_eq!(put(&f.url("Patient/p1"), &start("p1")).bearer(&a).send().await.status, 201);
    assert_eq!(put(&f.url("Patient/p1"), &start("p1")).bearer(&b).send().await.status, 201);
    let r = put(&format!("{}/Patient/{plain}", hapi()), &start(&plain)).send().await;
    assert_eq!(r.status, 201, "{}", r.body);
    let org = json!({"resourceType": "Organization", "id": "b-org", "name": "B only"});
    assert_eq!(put(&f.url("Organization/b-org"), &org).bearer(&b).send().await.status, 201);

    let steps = [
        (
            "replace a family name",
            params(vec![op("replace", "Patient.name[0].family", json!([{"name": "value", "valueString": "Patched"}]))]),
        ),
        (
            "add a telecom",
            params(vec![op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "telecom"},
            {"name": "value", "valueContactPoint": {"system": "phone", "value": "555"}}]),
            )]),
        ),
        (
            "insert an identifier at 0",
            params(vec![op(
                "insert",
                "Patient.identifier",
                json!([{"name": "index", "valueInteger": 0},
            {"name": "value", "valueIdentifier": {"system": "urn:s0", "value": "0"}}]),
            )]),
        ),
        ("delete by where()", params(vec![op("delete", "Patient.identifier.where(system = 'urn:s1')", json!([]))])),
        (
            "move",
            params(vec![op(
                "move",
                "Patient.identifier",
                json!([{"name": "source", "valueInteger": 1},
            {"name": "destination", "valueInteger": 0}]),
            )]),
        ),
        (
            "a choice element and a backbone element from parts",
            params(vec![
                op(
                    "add",
                    "Patient",
                    json!([{"name": "name", "valueString": "multipleBirth"}, {"name": "value", "valueInteger": 2}]),
                ),
                op("replace", "Patient.multipleBirth", json!([{"name": "value", "valueBoolean": true}])),
                op(
                    "add",
                    "Patient",
                    json!([{"name": "name", "valueString": "contact"}, {"name": "value", "part": [
                {"name": "name", "valueHumanName": {"family": "Contact"}},
                {"name": "relationship", "valueCodeableConcept": {"text": "friend"}}]}]),
                ),
                op("delete", "Patient.name[0].given", json!([])),
            ]),
        ),
        ("delete of nothing", params(vec![op("delete", "Patient.gender", json!([]))])),
    ];
    for (what, body) in &steps {
        let ours = send(&f.url("Patient/p1"), body, Some(&a)).send().await;
        let theirs = send(&format!("{}/Patient/{plain}", hapi()), body, None).send().await;
        assert_eq!((ours.status, theirs.status), (200, 200), "{what}: {} / {}", ours.body, theirs.body);
        assert_eq!(content(&ours), content(&theirs), "{what}: fhir-fence and HAPI differ");
        assert_eq!(ours.body["meta"]["versionId"], theirs.body["meta"]["versionId"], "{what}");
    }
    // What A wrote, read back; B's p1 untouched.
    let mine = get(&f.url("Patient/p1")).bearer(&a).send().await;
    assert_eq!(mine.body["name"][0]["family"], "Patched");
    let r = get(&f.url("Patient/p1")).bearer(&b).send().await;
    assert_eq!(
        (r.body["name"][0]["family"].as_str(), r.body["meta"]["versionId"].as_str()),
        (Some("Start"), Some("1"))
    );

    // Patches that do not apply: 400 `processing`, as HAPI answers them.
    for (what, body) in [
        (
            "several elements where one is needed",
            params(vec![op(
                "replace",
                "Patient.identifier",
                json!([{"name": "value", "valueIdentifier": {"value": "z"}}]),
            )]),
        ),
        (
            "an index out of range",
            params(vec![op(
                "insert",
                "Patient.identifier",
                json!([{"name": "index", "valueInteger": 9},
            {"name": "value", "valueIdentifier": {"value": "z"}}]),
            )]),
        ),
        ("an unknown type", params(vec![op("bogus", "Patient", json!([]))])),
        (
            "nothing to replace",
            params(vec![op("replace", "Patient.birthDate", json!([{"name": "value", "valueDate": "2000-01-01"}]))]),
        ),
    ] {
        let ours = send(&f.url("Patient/p1"), &body, Some(&a)).send().await;
        let theirs = send(&format!("{}/Patient/{plain}", hapi()), &body, None).send().await;
        assert_eq!((ours.status, theirs.status), (400, 400), "{what}: {} / {}", ours.body, theirs.body);
        assert_eq!(ours.body["issue"][0]["code"], "processing", "{what}");
    }
    let unsupported = params(vec![op("delete", "Patient.name.where(family.startsWith('P'))", json!([]))]);
    let r = send(&f.url("Patient/p1"), &unsupported, Some(&a)).send().await;
    assert_eq!(r.status, 422);
    assert!(r.diagnostics().contains("not supported by fhir-fence"), "{}", r.body);

    // If-Match: the version read is what is patched; a stale one is the upstream's 409.
    let replace = params(vec![op("replace", "Patient.active", json!([{"name": "value", "valueBoolean": false}]))]);
    let stale = send(&f.url("Patient/p1"), &replace, Some(&a)).header("if-match", "W/\"1\"").send().await;
    let stale_hapi =
        send(&format!("{}/Patient/{plain}", hapi()), &replace, None).header("if-match", "W/\"1\"").send().await;
    assert_eq!((stale.status, stale_hapi.status), (409, 409), "{}", stale.body);
    let current = mine.body["meta"]["versionId"].as_str().unwrap().to_owned();
    let r = send(&f.url("Patient/p1"), &replace, Some(&a)).header("if-match", &format!("W/\"{current}\"")).send().await;
    assert_eq!((r.status, r.body["active"].as_bool()), (200, Some(false)), "{}", r.body);

    // Inside the tenant: another tenant's resource, references and tenant codings.
    let r = send(&f.url("Patient/p1"), &replace, Some(&b)).send().await;
    assert_eq!(r.status, 200, "B patches its own p1");
    // Each refused by the write path, for what the patched resource holds (not by the patch).
    let refusals = [
        (
            "a reference to B's Organization",
            params(vec![op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "managingOrganization"},
            {"name": "value", "valueReference": {"reference": "Organization/b-org"}}]),
            )]),
            "does not resolve",
        ),
        (
            "the same, built from parts",
            params(vec![op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "contact"},
            {"name": "value", "part": [{"name": "organization", "valueReference": {"reference": "Organization/b-org"}}]}]),
            )]),
            "does not resolve",
        ),
        (
            "B's tenant coding",
            params(vec![op(
                "add",
                "Patient.meta",
                json!([{"name": "name", "valueString": "tag"},
            {"name": "value", "valueCoding": {"system": SYSTEM, "code": ts[1].name}}]),
            )]),
            "another tenant",
        ),
        (
            "a canonical naming a Questionnaire nobody has",
            params(vec![op(
                "add",
                "Patient",
                json!([{"name": "name", "valueString": "extension"},
            {"name": "value", "part": [{"name": "url", "valueUri": "http://x"}, {"name": "value", "valueCanonical": "Questionnaire/nope"}]}]),
            )]),
            "Questionnaire/nope",
        ),
    ];
    for (what, body, why) in refusals {
        let r = send(&f.url("Patient/p1"), &body, Some(&a)).send().await;
        assert_eq!(r.status, 422, "{what}: {}", r.body);
        assert!(r.diagnostics().contains(why), "{what}: {}", r.body);
    }
    let r = send(
        &f.url("Patient/p1"),
        &params(vec![op("replace", "Patient.id", json!([{"name": "value", "valueString": "other"}]))]),
        Some(&a),
    )
    .send()
    .await;
    assert_eq!(r.status, 400, "the id cannot change: {}", r.body);
    let raw = get(&format!("{}/Patient/{}-p1", hapi(), ts[0].prefix)).send().await;
    assert_eq!(raw.body["meta"]["tag"], json!([{"system": SYSTEM, "code": ts[0].name}]), "still A's");
    assert!(raw.body.get("managingOrganization").is_none());

    // Conditional FHIRPath Patch.
    let r = send(
        &f.url("Patient?identifier=urn:s2|2"),
        &params(vec![op(
            "add",
            "Patient",
            json!([
        {"name": "name", "valueString": "gender"}, {"name": "value", "valueCode": "other"}]),
        )]),
        Some(&a),
    )
    .send()
    .await;
    assert_eq!((r.status, r.body["gender"].as_str()), (200, Some("other")), "{}", r.body);

    // Bodies that are not a FHIRPath Patch.
    let r = send(&f.url("Patient/p1"), &json!({"resourceType": "Patient"}), Some(&a)).send().await;
    assert_eq!(r.status, 400);
    assert!(r.diagnostics().contains("must be a Parameters resource"), "{}", r.body);
    let r = send(
        &f.url("Patient/p1"),
        &json!({"resourceType": "Parameters", "parameter": [{"name": "operation",
        "part": [{"name": "type", "valueCode": ["delete"]}]}]}),
        Some(&a),
    )
    .send()
    .await;
    assert_eq!(r.status, 400, "the typed gate judges the Parameters: {}", r.body);
    let r = request("PATCH", &f.url("Patient/p1"))
        .header("content-type", "application/xml-patch+xml")
        .raw_body("<diff/>")
        .bearer(&a)
        .send()
        .await;
    assert_eq!(r.status, 415);
}
