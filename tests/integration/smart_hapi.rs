//! SMART scopes after the tenant rule, against the real HAPI (`scripts/hapi`): `user/` and
//! `system/` scopes give the tenant's data per type and permission, `patient/` scopes narrow
//! reads and searches to the launch patient's compartment (as HAPI's compartment search
//! decides it), and what a token's scopes do not allow is 403 naming the missing scope.
use crate::support::client::{delete, get, post, put, request};
use crate::support::{self, fixture, tenants, Fence, Options};
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const AUD: &str = "urn:fhir-fence:smart-test";

fn hapi() -> String {
    support::hapi_url("HAPI_URL", 8090)
}

/// A token of the `smart` issuer (HS256, `scopes = "smart-v2"`) for `tenant`.
fn token(tenant: &str, scope: &str, patient: Option<&str>) -> String {
    let secret: Vec<u8> =
        std::fs::read(fixture("dev-hs256.secret")).unwrap().into_iter().filter(|b| *b != b'\n').collect();
    let now = get_current_timestamp();
    let mut claims = json!({"iss": "https://issuer.test/smart", "aud": AUD, "sub": "u", "exp": now + 300,
        "tenant": tenant, "scope": scope});
    if let Some(p) = patient {
        claims["patient"] = json!(p);
    }
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&secret)).unwrap()
}

fn ids(bundle: &Value) -> Vec<String> {
    let mut v: Vec<String> = bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap(),
                        e["resource"]["id"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn start() -> (Fence, Vec<support::T>) {
    let ts = tenants(2);
    let mut o = Options::new(&hapi(), &ts);
    o.extra = format!(
        "[issuers.smart]\niss = \"https://issuer.test/smart\"\naudience = [\"{AUD}\"]\nalgorithms = [\"HS256\"]\n\
         secret_file = {:?}\ntenant_claim = \"$.tenant\"\ntenants = [{:?}, {:?}]\nscopes = \"smart-v2\"\n",
        fixture("dev-hs256.secret"),
        ts[0].name,
        ts[1].name
    );
    (support::start(o).await, ts)
}

/// Writes `resources` as `tenant` with a token that may (the tenant rule's dev issuer).
async fn seed(f: &Fence, tenant: &str, resources: &[Value]) {
    let t = f.token(tenant);
    for r in resources {
        let url = f.url(&format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()));
        let reply = put(&url, r).bearer(&t).send().await;
        assert!(reply.status == 201 || reply.status == 200, "{url}: {}", reply.body);
    }
}

fn with(mut resource: Value, key: &str, value: Value) -> Value {
    resource[key] = value;
    resource
}

fn obs(id: &str, subject: &str, performer: Option<&str>) -> Value {
    let mut o = json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "x"},
        "subject": {"reference": format!("Patient/{subject}")}});
    if let Some(p) = performer {
        o["performer"] = json!([{"reference": p}]);
    }
    o
}

#[tokio::test]
async fn scopes_narrow_what_the_tenant_rule_allows() {
    let (f, ts) = start().await;
    let (a, b) = (ts[0].name.as_str(), ts[1].name.as_str());
    seed(
        &f,
        a,
        &[
            json!({"resourceType": "Patient", "id": "p1"}),
            json!({"resourceType": "Patient", "id": "p2"}),
            json!({"resourceType": "Practitioner", "id": "d1"}),
            obs("o1", "p1", None),
            obs("o2", "p2", None),
            obs("o3", "p2", Some("Patient/p1")),
            obs("o7", "p2", None),
            json!({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}),
        ],
    )
    .await;
    // o4 is p1's and points at p2's o2; o7 was p2's in its first version and is p1's now.
    let mut o4 = obs("o4", "p1", None);
    o4["hasMember"] = json!([{"reference": "Observation/o2"}]);
    seed(&f, a, &[o4, obs("o7", "p1", None)]).await;
    seed(&f, b, &[json!({"resourceType": "Patient", "id": "p1"}), obs("b1", "p1", None)]).await;
    let status = |url: &str, t: &str| {
        let (url, t) = (f.url(url), t.to_owned());
        async move { get(&url).bearer(&t).send().await }
    };

    // patient/ scopes: searches and reads of Patient/p1's resources only — by their `patient`
    // parameter, so o3 (p1 only its performer) is not found either: narrower, never wider.
    let tp = token(a, "launch/patient patient/Observation.rs patient/Patient.r", Some("p1"));
    let r = status("Observation", &tp).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ids(&r.body), ["Observation/o1", "Observation/o4", "Observation/o7"]);
    let r = status("Observation?status=final&_count=50", &tp).await;
    assert_eq!(ids(&r.body), ["Observation/o1", "Observation/o4", "Observation/o7"]);
    // An old version that was another patient's is not hers (the answer is checked again).
    assert_eq!(status("Observation/o7/_history/2", &tp).await.status, 200);
    assert_eq!(status("Observation/o7/_history/1", &tp).await.status, 404);
    let r = status("Observation/o7/_history", &tp).await;
    let versions: Vec<&str> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["2"], "{}", r.body);
    // The client's own patient parameter can only narrow further.
    assert_eq!(ids(&status("Observation?patient=p2", &tp).await.body), Vec::<String>::new());
    assert_eq!(status("Observation/o1", &tp).await.status, 200);
    assert_eq!(status("Observation/o3", &tp).await.status, 404);
    assert_eq!(status("Observation/o2", &tp).await.status, 404, "outside the compartment: as if absent");
    assert_eq!(status("Observation/o2/_history", &tp).await.status, 404);
    assert_eq!(status("Patient/p1", &tp).await.status, 200);
    assert_eq!(status("Patient/p2", &tp).await.status, 404);
    // HAPI JPA serves no compartment searches (501, as for any caller); another patient's is 403.
    assert_eq!(status("Patient/p1/Observation", &tp).await.status, 501);
    let r = status("Patient/p2/Observation", &tp).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.diagnostics().contains("Patient/p1"), "{}", r.diagnostics());
    // What the scopes do not name is 403, naming what is missing.
    for (url, missing) in [
        ("Condition/c1", "patient/Condition.r, user/Condition.r or system/Condition.r"),
        ("Practitioner/d1", "patient/Practitioner.r, user/Practitioner.r or system/Practitioner.r"),
        ("Patient?_id=p1", "Patient.s"),
        ("Observation?_include=Observation:performer:Practitioner", "user/Practitioner.r or system/Practitioner.r"),
        ("Observation?subject:Patient.name=x", "user/Patient.s"),
        ("Observation/_history", "user/Observation.s or system/Observation.s"),
        ("?_type=Observation", "user/Observation.s"),
    ] {
        let r = status(url, &tp).await;
        assert_eq!(r.status, 403, "{url}: {}", r.body);
        assert!(r.diagnostics().contains(missing), "{url}: {}", r.diagnostics());
    }
    let r = post(&f.url("Observation"), &obs("n1", "p1", None)).bearer(&tp).send().await;
    assert_eq!(r.status, 403, "{}", r.body);
    // The tenant rule comes first: the same scopes for tenant b see b's Patient/p1 only.
    let tb = token(b, "patient/Observation.rs", Some("p1"));
    assert_eq!(ids(&status("Observation", &tb).await.body), ["Observation/b1"]);
    // Without a launch patient, patient/ scopes allow nothing.
    let r = status("Observation", &token(a, "patient/Observation.rs", None)).await;
    assert_eq!(r.status, 403);
    assert!(r.diagnostics().contains("patient launch context"), "{}", r.diagnostics());

    // v1's patient/*.read: every type inside the compartment; Patient searches find p1 only.
    let v1 = token(a, "patient/*.read", Some("p1"));
    let r = status("Practitioner/d1", &v1).await;
    assert_eq!(r.status, 403, "Practitioner is no member of the Patient compartment: {}", r.body);
    assert!(r.diagnostics().contains("cannot be narrowed"), "{}", r.diagnostics());
    assert_eq!(status("Condition/c1", &v1).await.status, 200);
    assert_eq!(ids(&status("Patient", &v1).await.body), ["Patient/p1"]);
    assert_eq!(ids(&status("Condition", &v1).await.body), ["Condition/c1"]);
    // $everything follows o4's hasMember to p2's o2, and finds o3 by its performer: the answer
    // is checked again, and keeps only what is p1's.
    let r = status("Patient/p1/$everything", &v1).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let everything = ids(&r.body);
    assert!(everything.contains(&"Observation/o1".to_owned()), "{everything:?}");
    for foreign in ["Observation/o2", "Observation/o3", "Patient/p2"] {
        assert!(!everything.contains(&foreign.to_owned()), "{foreign} in {everything:?}");
    }
    // A modifier on the narrowing parameter would undo it (HAPI drops _id with _id:not).
    let r = status("Patient?_id:not=p1,zzz", &v1).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(status("Patient/p2/$everything", &v1).await.status, 403);

    // patient/ writes: the patient's own resources only — by the Patient references at the
    // type's patient elements (all of them the launch patient's, at least one), and the
    // resource an update or delete replaces must be the patient's too.
    let tw = token(a, "patient/*.cruds", Some("p1"));
    let write = |method: &'static str, url: &str, body: Value| {
        let (url, tw) = (f.url(url), tw.clone());
        async move {
            let call = request(method, &url).header("content-type", "application/fhir+json");
            call.raw_body(body.to_string()).bearer(&tw).send().await
        }
    };
    let absolute = format!("{}/Patient/p1", f.base);
    for (method, url, body, expected) in [
        ("POST", "Observation", obs("w1", "p1", None), 201),
        ("POST", "Observation", obs("w2", "p2", None), 403),
        ("POST", "Observation", obs("w3", "p1", Some("Patient/p2")), 403), // no Patient named may be another
        ("POST", "Observation", obs("w3", "p1", Some("Practitioner/d1")), 201),
        ("PUT", "Observation/w4", obs("w4", "p1", None), 201),
        ("PUT", "Observation/o1", obs("o1", "p1", None), 200),
        ("PUT", "Observation/o1", obs("o1", "p2", None), 403),
        ("PUT", "Observation/o2", obs("o2", "p1", None), 403),
        ("PUT", "Patient/p1", json!({"resourceType": "Patient", "id": "p1", "active": true}), 200),
        ("PUT", "Patient/p2", json!({"resourceType": "Patient", "id": "p2", "active": true}), 403),
        ("POST", "Patient", json!({"resourceType": "Patient"}), 403),
        ("POST", "Patient", json!({"resourceType": "Patient", "id": "p1"}), 403),
        // Her data may not be tied to another patient's (o2 is p2's, o1 hers), nor to a
        // member of the compartment named by a search.
        (
            "POST",
            "Observation",
            with(obs("w5", "p1", None), "hasMember", json!([{"reference": "Observation/o2"}])),
            403,
        ),
        (
            "POST",
            "Observation",
            with(obs("w5", "p1", None), "hasMember", json!([{"reference": "Observation/o1"}])),
            201,
        ),
        (
            "POST",
            "Observation",
            with(obs("w6", "p1", None), "encounter", json!({"reference": "Encounter?status=x"})),
            403,
        ),
        // A version of a member may have been another patient's: only current versions are hers.
        (
            "POST",
            "Observation",
            with(obs("w7", "p1", None), "hasMember", json!([{"reference": "Observation/o7/_history/1"}])),
            403,
        ),
        (
            "PUT",
            "Patient/p1",
            json!({"resourceType": "Patient", "id": "p1", "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}]}),
            403,
        ),
        (
            "PUT",
            "Patient/p1",
            json!({"resourceType": "Patient", "id": "p1", "generalPractitioner": [{"reference": "Practitioner/d1"}]}),
            200,
        ),
        (
            "POST",
            "Observation",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": absolute}}),
            201,
        ),
        ("POST", "Observation", json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}), 403),
        (
            "POST",
            "Appointment",
            json!({"resourceType": "Appointment", "status": "proposed", "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "Patient/p2"}, "status": "accepted"}]}),
            403,
        ),
        (
            "POST",
            "Appointment",
            json!({"resourceType": "Appointment", "status": "proposed", "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/d1"}, "status": "accepted"}]}),
            201,
        ),
    ] {
        let r = write(method, url, body).await;
        assert_eq!(r.status, expected, "{method} {url}: {}", r.body);
    }
    let r = request("PATCH", &f.url("Observation/o1"))
        .header("content-type", "application/json-patch+json")
        .raw_body(r#"[{"op":"replace","path":"/status","value":"amended"}]"#)
        .bearer(&tw)
        .send()
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(delete(&f.url("Observation/o2")).bearer(&tw).send().await.status, 404);
    assert_eq!(delete(&f.url("Observation/w4")).bearer(&tw).send().await.status, 200);
    // A deleted resource of another patient is not taken over by an update of its id.
    seed(&f, a, &[obs("o8", "p2", None)]).await;
    assert_eq!(delete(&f.url("Observation/o8")).bearer(&f.token(a)).send().await.status, 200);
    assert_eq!(write("PUT", "Observation/o8", obs("o8", "p1", None)).await.status, 403);
    assert_eq!(get(&f.url("Observation/o2")).bearer(&f.token(a)).send().await.status, 200, "o2 untouched");

    // A Subscription delivers everything its criteria find, about every patient: their type
    // needs user/ or system/ scopes.
    let ts = token(a, "user/Subscription.cru patient/Observation.rs", Some("p1"));
    let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "x",
        "criteria": "Observation?code=x", "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:1/"}});
    let r = post(&f.url("Subscription"), &sub).bearer(&ts).send().await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.diagnostics().contains("user/Observation.rs or system/Observation.rs"), "{}", r.diagnostics());
    // The fixed parameters passed on are checked here (HAPI answers $everything?_count=abc 500).
    for url in
        ["Patient/p1/$everything?_count=abc", "Patient/p1/_history?_since=2020", "Observation/_history?_count=-1"]
    {
        let r = get(&f.url(url)).bearer(&f.token(a)).send().await;
        assert_eq!(r.status, 400, "{url}: {}", r.body);
    }

    // Batch entries are judged one by one; a transaction as a whole.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/o1"}},
        {"request": {"method": "GET", "url": "Observation/o2"}},
        {"request": {"method": "GET", "url": "Condition/c1"}}]});
    let r = post(&f.url(""), &batch).bearer(&tp).send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    let statuses: Vec<&str> =
        r.body["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["200 OK", "404 Not Found", "403 Forbidden"]);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Observation/o1"}}]});
    assert_eq!(post(&f.url(""), &tx).bearer(&tp).send().await.status, 403);

    // user/ scopes: the tenant's data of the types and permissions named.
    let tu = token(a, "user/Observation.rs", None);
    assert_eq!(
        ids(&status("Observation?_id=o1,o2,o3", &tu).await.body),
        ["Observation/o1", "Observation/o2", "Observation/o3"]
    );
    assert_eq!(status("Observation/o2", &tu).await.status, 200);
    let r = post(&f.url("Observation"), &obs("n1", "p1", None)).bearer(&tu).send().await;
    assert_eq!(r.status, 403);
    assert!(r.diagnostics().contains("user/Observation.c or system/Observation.c"), "{}", r.diagnostics());
    let tw = token(a, "system/Observation.cu", None);
    let r = post(&f.url("Observation"), &obs("n1", "p1", None)).bearer(&tw).send().await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = get(&f.url("Observation/o1")).bearer(&token(a, "openid fhirUser", None)).send().await;
    assert_eq!(r.status, 403, "no data scope, no data");

    // Searches hidden in other places need their scopes too: If-None-Exist criteria, a
    // transaction's conditional reference, an export's _typeFilter and its kickoff body.
    let tc = token(a, "user/Observation.cs", None);
    let r = post(&f.url("Observation"), &obs("n2", "p1", None))
        .header("if-none-exist", "subject:Patient.name=Secreta")
        .bearer(&tc)
        .send()
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let mut conditional = obs("n3", "p1", None);
    conditional["subject"]["reference"] = json!("Patient?name=Secreta");
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": conditional, "request": {"method": "POST", "url": "Observation"}}]});
    let r = post(&f.url(""), &tx).bearer(&tc).send().await;
    assert_eq!(r.status, 403, "{}", r.body);
    let te = token(a, "system/Patient.rs system/Observation.rs", None);
    let r = get(&f.url("$export?_type=Observation&_typeFilter=Observation%3Fsubject:Patient.name%3DSecreta"))
        .header("prefer", "respond-async")
        .bearer(&token(a, "system/Observation.rs", None))
        .send()
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let kickoff = json!({"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Condition"}]});
    let r = post(&f.url("$export?_type=Patient"), &kickoff).header("prefer", "respond-async").bearer(&te).send().await;
    assert_eq!(r.status, 403, "{}", r.body);
    // A write's answer carries no resource the token may not read: a conditional create that
    // finds p2's o2 answers without it, in a batch or a transaction too.
    let r =
        post(&f.url("Observation"), &obs("n4", "p1", None)).header("if-none-exist", "_id=o2").bearer(&tc).send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.raw.windows(2).any(|w| w == b"p2"), "{}", String::from_utf8_lossy(&r.raw));
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": obs("n5", "p1", None), "request": {"method": "POST", "url": "Observation", "ifNoneExist": "_id=o2"}},
        {"request": {"method": "GET", "url": "Observation?_id=o2"}}]});
    let r =
        post(&f.url(""), &tx).bearer(&token(a, "user/Observation.c patient/Observation.rs", Some("p1"))).send().await;
    assert_eq!(r.status, 403, "a transaction entry patient/ scopes would narrow: {}", r.body);
    let r = post(&f.url(""), &tx).bearer(&tc).send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["entry"][0].get("resource").is_none(), "{}", r.body);
    assert_eq!(r.body["entry"][1]["resource"]["entry"].as_array().map(Vec::len), Some(1), "s shows search results");

    // An export job is the grant's that started it: another token of the client (here: no
    // client id either) cannot follow it.
    let r = get(&f.url("$export?_type=Patient")).header("prefer", "respond-async").bearer(&te).send().await;
    assert_eq!(r.status, 202, "{}", r.body);
    let job = r.header("content-location").unwrap().to_owned();
    assert!(matches!(get(&job).bearer(&te).send().await.status, 200 | 202));
    assert_eq!(get(&job).bearer(&token(a, "openid", None)).send().await.status, 404);

    // A page opens only for the grant whose search made it.
    let r = status("Observation?_count=1", &tu).await;
    let next = r.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(get(&next).bearer(&tu).send().await.status, 200);
    assert_eq!(get(&next).bearer(&token(a, "user/Observation.rs user/Patient.r", None)).send().await.status, 404);
    assert_eq!(get(&next).bearer(&tp).send().await.status, 404);

    // A resource moved to another patient stops being the launch patient's at once.
    seed(&f, a, &[obs("o1", "p2", None)]).await;
    assert_eq!(status("Observation/o1", &tp).await.status, 404);
}
