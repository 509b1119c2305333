//! The isolation probe suite: two tenants share the real HAPI with overlapping data (same
//! local ids, same identifiers, references between their own resources, a marker string in
//! every resource). Then the probes: every row of the threat catalogue that fhir-fence covers
//! today, each asserting the documented status *and* that nothing of the other tenant (its
//! marker, its id prefix) appears anywhere in the answer, body or headers.
#[path = "../integration/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use support::client::{self, Reply};
use support::{tenants, Fence, Options, Server, SYSTEM};

const ALPHA: &str = "ALPHA-SECRET";
const BRAVO: &str = "BRAVO-SECRET";

/// The upstream under test (`FHIR_TEST_UPSTREAM`, HAPI by default): the probes run through
/// fhir-fence in front of it, and its own state is read around fhir-fence.
fn hapi() -> String {
    Server::selected().url()
}

/// The same ids and identifiers for both tenants; `marker` in every resource.
fn dataset(marker: &str) -> Vec<(String, Value)> {
    let mut v = vec![
        (
            "Organization/o1".into(),
            json!({"resourceType": "Organization", "id": "o1", "name": "Shared Org", "alias": [marker]}),
        ),
        (
            "Practitioner/dr1".into(),
            json!({"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Same", "given": [marker]}]}),
        ),
        (
            "Patient/p1".into(),
            json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Same", "given": [marker]}],
            "identifier": [{"system": "urn:mrn", "value": "same"}], "managingOrganization": {"reference": "Organization/o1"},
            "generalPractitioner": [{"reference": "Practitioner/dr1"}]}),
        ),
        (
            "Patient/p2".into(),
            json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Other", "given": [marker]}],
            "identifier": [{"system": "urn:mrn", "value": "same-2"}]}),
        ),
        (
            "Encounter/e1".into(),
            json!({"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": "Patient/p1"}, "serviceProvider": {"reference": "Organization/o1"}}),
        ),
        (
            "Observation/ob1".into(),
            json!({"resourceType": "Observation", "id": "ob1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}], "text": "glucose"},
            "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"}, "note": [{"text": marker}]}),
        ),
    ];
    if marker == BRAVO {
        // Resources only the other tenant has.
        for (id, mrn) in
            [("b-ref", "b-unique"), ("b-two", "b-unique2"), ("b-three", "b-unique3"), ("b-four", "b-unique4")]
        {
            v.push((
                format!("Patient/{id}"),
                json!({"resourceType": "Patient", "id": id, "name": [{"family": "Bravo", "given": [marker]}],
                "identifier": [{"system": "urn:mrn", "value": mrn}]}),
            ));
        }
        v.push((
            "Organization/b-org".into(),
            json!({"resourceType": "Organization", "id": "b-org", "name": "Bravo Org", "alias": [marker]}),
        ));
        v.push((
            "Observation/b-obs".into(),
            json!({"resourceType": "Observation", "id": "b-obs", "status": "final",
            "code": {"text": "bravo only"}, "subject": {"reference": "Patient/b-ref"}, "note": [{"text": marker}]}),
        ));
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(format!("%PDF-1.4 {marker}"));
        v.push((
            "Binary/b-bin".into(),
            json!({"resourceType": "Binary", "id": "b-bin", "contentType": "application/pdf", "data": data}),
        ));
    }
    v
}

struct Probe {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
    /// Acceptable statuses.
    expect: Vec<u16>,
    /// `true` when the other tenant (B) sends it.
    as_b: bool,
    /// What the upstream must serve for the probe to mean anything (skipped where it does not).
    needs: Option<Need>,
    /// Acceptable statuses on another server where they differ (what it does not serve is
    /// refused by fhir-fence or by it; nothing else changes).
    elsewhere: Vec<(Server, Vec<u16>)>,
}

/// Upstream features some probes need (`Server`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Paging links, so that fhir-fence issues page tokens.
    Links,
    /// Bulk Data export.
    Export,
}

fn probe(name: &'static str, method: &'static str, path: impl Into<String>, expect: &[u16]) -> Probe {
    Probe {
        name,
        method,
        path: path.into(),
        headers: vec![],
        body: None,
        expect: expect.to_vec(),
        as_b: false,
        needs: None,
        elsewhere: vec![],
    }
}

impl Probe {
    fn json(mut self, body: Value) -> Self {
        self.headers.push(("content-type", "application/fhir+json".into()));
        self.body = Some(body.to_string());
        self
    }
    fn raw(mut self, content_type: &str, body: &str) -> Self {
        self.headers.push(("content-type", content_type.to_owned()));
        self.body = Some(body.to_owned());
        self
    }
    fn header(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    fn by_b(mut self) -> Self {
        self.as_b = true;
        self
    }
    fn on_medplum(self, expect: &[u16]) -> Self {
        self.on(Server::Medplum, expect)
    }
    fn on(mut self, server: Server, expect: &[u16]) -> Self {
        self.elsewhere.push((server, expect.to_vec()));
        self
    }
    fn needs(mut self, need: Need) -> Self {
        self.needs = Some(need);
        self
    }
}

/// Polls an export's status URL until its manifest is ready (the Bulk Data protocol; bounded).
async fn finished(status_url: &str, token: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        let r = client::get(status_url).bearer(token).send().await;
        match r.status {
            200 => return r.body,
            202 => assert!(std::time::Instant::now() < deadline, "export {status_url} not finished in time"),
            other => panic!("export {status_url} polled: {other} {}", r.body),
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

async fn send(f: &Fence, token: &str, p: &Probe) -> Reply {
    let url = if p.path.starts_with("http") { p.path.clone() } else { format!("{}{}", f.base, p.path) };
    let mut call = client::request(p.method, &url).bearer(token);
    for (k, v) in &p.headers {
        call = call.header(k, v);
    }
    if let Some(b) = &p.body {
        call = call.raw_body(b.clone());
    }
    call.send().await
}

#[tokio::test]
async fn isolation_probes() {
    let ts = tenants(2);
    let f = support::start(Options::new(&hapi(), &ts)).await;
    let (a, b) = (f.token(&ts[0].name), f.token(&ts[1].name));
    for (token, marker) in [(&a, ALPHA), (&b, BRAVO)] {
        for (path, body) in dataset(marker) {
            let r = client::put(&f.url(&path), &body).bearer(token).send().await;
            assert!(r.status == 201 || r.status == 200, "loading {path}: {}", r.body);
        }
    }
    // A's first version of p1 (HAPI numbers versions, Medplum's router names them by UUID).
    let a_first = client::get(&f.url("Patient/p1")).bearer(&a).send().await.body["meta"]["versionId"]
        .as_str()
        .unwrap()
        .to_owned();
    // A's history of its own resource lists the version it wrote (the Helios FHIR Server records
    // a create as `POST Patient`, with no id: the version's resource proves it A's).
    let history = client::get(&f.url("Patient/p1/_history")).bearer(&a).send().await;
    let versions = history.body["entry"].as_array().cloned().unwrap_or_default();
    assert!(
        !versions.is_empty() && versions.iter().all(|e| e["resource"]["id"] == "p1"),
        "A's history of Patient/p1: {}",
        history.body
    );
    // A paging token of A's, for B to try.
    let page = client::get(&f.url("Patient?_count=1")).bearer(&a).send().await;
    let server = Server::selected();
    let a_next = page.body["link"].as_array().and_then(|ls| ls.iter().find(|l| l["relation"] == "next"));
    let a_next = a_next.and_then(|l| l["url"].as_str()).map(str::to_owned);
    assert_eq!(a_next.is_some(), server.pages_by_links(), "{}", page.body);
    let a_next = a_next.unwrap_or_default();
    // An export job of B's, for A to poll and cancel.
    let b_export =
        client::get(&f.url("$export?_type=Patient")).bearer(&b).header("prefer", "respond-async").send().await;
    assert_eq!(b_export.status == 202, server.exports(), "{}", b_export.body);
    let b_job = b_export.header("content-location").unwrap_or_default().to_owned();
    let (ta, tb, pb) = (ts[0].name.clone(), ts[1].name.clone(), ts[1].prefix.clone());
    let obs = |subject: &str| json!({"resourceType": "Observation", "status": "final", "code": {"text": "t"}, "subject": {"reference": subject}});
    let patch_ops = |ops: Value| ops.to_string();
    let fp = |ops: Vec<Value>| json!({"resourceType": "Parameters", "parameter": ops});
    let fp_op = |kind: &str, path: &str, rest: Value| {
        let mut parts = vec![json!({"name": "type", "valueCode": kind}), json!({"name": "path", "valueString": path})];
        parts.extend(rest.as_array().unwrap().iter().cloned());
        json!({"name": "operation", "part": parts})
    };
    let meta_param = |code: &str| json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [{"system": SYSTEM, "code": code}]}}]});
    let tx = |entries: Value| json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let batch = |entries: Value| json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    // A JSON Patch as a Bundle entry carries it: a Binary holding the document.
    let jp_binary = |ops: Value| {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(ops.to_string());
        json!({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data})
    };

    let probes = vec![
        // 1 read / vread / HEAD / conditional read
        probe("read foreign", "GET", "/Patient/b-ref", &[404]),
        probe("read foreign observation", "GET", "/Observation/b-obs", &[404]),
        probe("vread foreign", "GET", "/Patient/b-ref/_history/1", &[404]),
        probe("head foreign", "HEAD", "/Patient/b-ref", &[404]),
        probe("read own shared id", "GET", "/Patient/p1", &[200]),
        probe("vread own", "GET", format!("/Patient/p1/_history/{a_first}"), &[200]),
        probe("read guessed upstream id", "GET", format!("/Patient/{pb}-b-ref"), &[404]),
        probe("conditional read foreign", "GET", "/Patient/b-ref", &[404]).header("if-none-match", "W/\"1\""),
        probe("conditional read own", "GET", "/Patient/p1", &[200, 304]).header("if-none-match", "W/\"1\""),
        probe("modified-since foreign", "GET", "/Patient/b-ref", &[404]).header("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT"),
        // 2 history
        probe("instance history foreign", "GET", "/Patient/b-ref/_history", &[404]),
        probe("instance history own", "GET", "/Patient/p1/_history", &[200]),
        probe("type history", "GET", "/Patient/_history", &[200]).on_medplum(&[501]),
        probe("type history paged", "GET", "/Observation/_history?_count=1", &[200]).on_medplum(&[501]),
        probe("system history", "GET", "/_history?_count=100", &[200]).on_medplum(&[501]),
        probe("history since", "GET", "/Patient/_history?_since=2020-01-01T00:00:00Z", &[200]).on_medplum(&[501]),
        // 3 system and compartment search
        probe("system search", "GET", "?_type=Patient", &[501]),
        probe("system search POST", "POST", "/_search", &[501]).raw("application/x-www-form-urlencoded", "_type=Patient"),
        probe("compartment of foreign", "GET", "/Patient/b-ref/Observation", &[404, 501]),
        probe("compartment wildcard", "GET", "/Patient/p1/*", &[501]),
        // 4 POST _search
        probe("form search", "POST", "/Patient/_search", &[200]).raw("application/x-www-form-urlencoded", "family=Same"),
        probe("form search include", "POST", "/Observation/_search", &[200]).raw("application/x-www-form-urlencoded", "_include=Observation:subject"),
        probe("form search tag smuggle", "POST", "/Patient/_search", &[400]).raw("application/x-www-form-urlencoded", &format!("_tag={SYSTEM}%7C{tb}")),
        probe("form search format smuggle", "POST", "/Patient/_search", &[400]).raw("application/x-www-form-urlencoded", "_format=xml"),
        probe("form search json body", "POST", "/Patient/_search", &[415]).json(json!({"family": "Same"})),
        // 5 includes
        probe("include", "GET", "/Observation?_include=Observation:subject", &[200]),
        probe("include iterate", "GET", "/Observation?_include=Observation:subject&_include:iterate=Patient:organization", &[200]),
        probe("revinclude", "GET", "/Patient?_revinclude=Observation:subject", &[200]),
        probe("revinclude encounter", "GET", "/Patient?_revinclude=Encounter:subject", &[200]),
        probe("include wildcard", "GET", "/Patient?_include=*", &[400]),
        probe("include too deep", "GET", "/Patient?_include:iterate=Patient:organization,Patient:general-practitioner,Observation:subject", &[400]),
        // 6 chains, _has, _filter, _list, _query
        // (Medplum's router cannot chain a reference with several target types: its own 400.)
        probe("chain", "GET", "/Observation?subject.family=Bravo", &[200]).on_medplum(&[400]),
        probe("typed chain", "GET", "/Observation?subject:Patient.identifier=urn:mrn%7Cb-unique", &[200]),
        probe("two-hop chain", "GET", "/Encounter?subject:Patient.organization.name=Bravo%20Org", &[200]),
        probe("has", "GET", "/Patient?_has:Observation:subject:code=http://loinc.org%7C2339-0", &[200]),
        probe("has by foreign id", "GET", "/Patient?_has:Observation:subject:_id=b-obs", &[200]),
        probe("nested has", "GET", "/Patient?_has:Observation:subject:_has:Encounter:subject:status=finished", &[400]),
        probe("filter", "GET", "/Patient?_filter=family%20eq%20Bravo", &[400]),
        probe("list", "GET", "/Patient?_list=l1", &[400]),
        probe("query", "GET", "/Patient?_query=everything", &[400]),
        probe("source", "GET", "/Patient?_source=x", &[400]),
        // 7 contained
        probe("contained", "GET", "/Patient?_contained=true", &[400]),
        probe("contained type", "GET", "/Patient?_containedType=contained", &[400]),
        // 8 _summary / _elements
        probe("elements", "GET", "/Patient?_elements=name", &[200]),
        probe("elements exclude", "GET", "/Patient?_elements:exclude=meta", &[400]),
        probe("summary true", "GET", "/Patient?_summary=true", &[200]),
        probe("summary text", "GET", "/Patient?_summary=text", &[200]),
        probe("summary data", "GET", "/Patient?_summary=data", &[200]),
        // 8a counts
        probe("summary count", "GET", "/Patient?_summary=count", &[200]),
        probe("count zero", "GET", "/Patient?_count=0", &[200]),
        probe("total accurate", "GET", "/Patient?_total=accurate", &[200]),
        // search values that name the other tenant
        probe("search by foreign id", "GET", "/Patient?_id=b-ref", &[200]),
        probe("search by guessed upstream id", "GET", format!("/Patient?_id={pb}-b-ref"), &[200]),
        probe("search by identifier", "GET", "/Patient?identifier=urn:mrn%7Cb-unique", &[200]),
        probe("search shared identifier", "GET", "/Patient?identifier=urn:mrn%7Csame", &[200]),
        probe("reference search foreign", "GET", "/Observation?subject=Patient/b-ref", &[200]),
        probe("reference search typed", "GET", "/Patient?organization:Organization=b-org", &[200]),
        probe("reference search absolute upstream", "GET", format!("/Observation?subject={}/Patient/{pb}-b-ref", hapi()), &[400]),
        probe("tag smuggle", "GET", format!("/Patient?_tag={SYSTEM}%7C{tb}"), &[400]),
        probe("security smuggle", "GET", format!("/Patient?_security={SYSTEM}%7C{tb}"), &[400]),
        probe("tag not", "GET", format!("/Patient?_tag:not={SYSTEM}%7C{ta}"), &[400]),
        // Servers trim search values (Helios: Unicode whitespace too) before matching them.
        probe("tag smuggle behind a no-break space", "GET", format!("/Patient?_tag=%C2%A0{SYSTEM}%7C{tb}"), &[400]),
        probe("tag not behind a space", "GET", format!("/Patient?_tag:not=%20{SYSTEM}%7C{ta}"), &[400]),
        probe("security smuggle before a tab", "GET", format!("/Patient?_security={SYSTEM}%7C{tb}%09"), &[400]),
        probe("token not", "GET", "/Patient?_id:not=p1", &[200]),
        probe("missing", "GET", "/Patient?organization:missing=true", &[200]),
        probe("sort", "GET", "/Patient?_sort=-_lastUpdated", &[200]),
        probe("unknown parameter", "GET", "/Patient?nonsense=1", &[400]),
        // 9 paging
        probe("page token of another tenant", "GET", a_next.clone(), &[404]).by_b().needs(Need::Links),
        probe("page token tampered", "GET", format!("{a_next}A"), &[404]).needs(Need::Links),
        probe("raw upstream paging", "GET", "?_getpages=00000000-0000-0000-0000-000000000000", &[400, 404, 501]),
        probe("own page token", "GET", a_next.clone(), &[200]).needs(Need::Links),
        // 10 formats
        probe("xml accept", "GET", "/Patient/p1", &[406]).header("accept", "application/fhir+xml"),
        probe("format param", "GET", "/Patient/p1?_format=xml", &[400]),
        probe("html format", "GET", "/Patient?_format=html", &[400]),
        probe("xml body", "POST", "/Patient", &[415]).raw("application/fhir+xml", "<Patient xmlns=\"http://hl7.org/fhir\"/>"),
        probe("gzip body", "POST", "/Patient", &[415]).json(json!({"resourceType": "Patient"})).header("content-encoding", "gzip"),
        probe("duplicate keys", "POST", "/Patient", &[400]).raw("application/fhir+json", &format!("{{\"resourceType\":\"Patient\",\"meta\":{{\"tag\":[{{\"system\":\"{SYSTEM}\",\"code\":\"{tb}\"}}]}},\"meta\":{{}}}}")),
        // 11 error text
        probe("delete referenced own", "DELETE", "/Organization/o1", &[200, 409]),
        // 12 create
        probe("create with foreign tag", "POST", "/Patient", &[422]).json(json!({"resourceType": "Patient", "meta": {"tag": [{"system": SYSTEM, "code": tb}]}})),
        probe("create with foreign security", "POST", "/Patient", &[422]).json(json!({"resourceType": "Patient", "meta": {"security": [{"system": SYSTEM, "code": tb}]}})),
        probe("contained with tenant coding", "POST", "/Patient", &[422]).json(json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "c1", "meta": {"tag": [{"system": SYSTEM, "code": tb}]}}]})),
        probe("create minimal", "POST", "/Patient", &[201]).json(json!({"resourceType": "Patient"})).header("prefer", "return=minimal"),
        // 13 update
        probe("update foreign id lands in own namespace", "PUT", "/Patient/b-two", &[201, 200]).json(json!({"resourceType": "Patient", "id": "b-two"})),
        probe("update with guessed upstream id", "PUT", format!("/Patient/{pb}-b-two"), &[201, 200, 400]).json(json!({"resourceType": "Patient", "id": format!("{pb}-b-two")})),
        probe("snapshot header", "PUT", "/Patient/p2", &[200]).json(json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Other", "given": [ALPHA]}], "identifier": [{"system": "urn:mrn", "value": "same-2"}]})).header("x-meta-snapshot-mode", "TAG"),
        // 14 conditional
        probe("conditional create on foreign identifier", "POST", "/Patient", &[201]).json(json!({"resourceType": "Patient"})).header("if-none-exist", "identifier=urn:mrn|b-unique"),
        probe("conditional update on foreign identifier", "PUT", "/Patient?identifier=urn:mrn%7Cb-unique3", &[201]).json(json!({"resourceType": "Patient"})),
        probe("conditional patch on foreign identifier", "PATCH", "/Patient?identifier=urn:mrn%7Cb-unique4", &[404]).raw("application/json-patch+json", "[]"),
        probe("conditional delete on foreign identifier", "DELETE", "/Patient?identifier=urn:mrn%7Cb-unique2", &[200]),
        probe("conditional delete everything", "DELETE", "/Patient?_lastUpdated=gt2000-01-01", &[412, 200]),
        // 15 delete
        probe("delete foreign", "DELETE", "/Observation/b-obs", &[404, 200]),
        probe("delete cascade", "DELETE", "/Patient/p2?_cascade=delete", &[400]),
        probe("delete with x-cascade", "DELETE", "/Practitioner/none", &[404, 200]).header("x-cascade", "delete"),
        // 16 patch
        probe("patch foreign", "PATCH", "/Patient/b-ref", &[404]).raw("application/json-patch+json", "[]"),
        probe("patch adds foreign tag", "PATCH", "/Patient/p1", &[422]).raw("application/json-patch+json", &patch_ops(json!([{"op": "add", "path": "/meta/tag", "value": [{"system": SYSTEM, "code": tb}]}]))),
        probe("patch points at foreign", "PATCH", "/Patient/p1", &[422]).raw("application/json-patch+json", &patch_ops(json!([{"op": "replace", "path": "/managingOrganization/reference", "value": "Organization/b-org"}]))),
        probe("patch moves id", "PATCH", "/Patient/p1", &[400]).raw("application/json-patch+json", &patch_ops(json!([{"op": "replace", "path": "/id", "value": "b-ref"}]))),
        // FHIRPath Patch: applied by fhir-fence, the result written like any update
        probe("fhirpath patch that is not Parameters", "PATCH", "/Patient/p1", &[400]).json(json!({"resourceType": "Patient"})),
        probe("fhirpath patch foreign", "PATCH", "/Patient/b-ref", &[404]).json(fp(vec![fp_op("replace", "Patient.name[0].family", json!([{"name": "value", "valueString": "x"}]))])),
        probe("fhirpath patch on a foreign identifier", "PATCH", "/Patient?identifier=urn:mrn%7Cb-unique4", &[404]).json(fp(vec![fp_op("delete", "Patient.name", json!([]))])),
        probe("fhirpath patch points at foreign", "PATCH", "/Patient/p1", &[422]).json(fp(vec![fp_op("replace", "Patient.managingOrganization.reference", json!([{"name": "value", "valueString": "Organization/b-org"}]))])),
        probe("fhirpath patch adds a foreign reference", "PATCH", "/Patient/p1", &[422]).json(fp(vec![fp_op("add", "Patient", json!([{"name": "name", "valueString": "generalPractitioner"}, {"name": "value", "valueReference": {"reference": "Organization/b-org"}}]))])),
        probe("fhirpath patch adds a foreign reference from parts", "PATCH", "/Patient/p1", &[422]).json(fp(vec![fp_op("add", "Patient", json!([{"name": "name", "valueString": "contact"}, {"name": "value", "part": [{"name": "organization", "valueReference": {"reference": "Organization/b-org"}}]}]))])),
        probe("fhirpath patch adds foreign tag", "PATCH", "/Patient/p1", &[422]).json(fp(vec![fp_op("add", "Patient.meta", json!([{"name": "name", "valueString": "tag"}, {"name": "value", "valueCoding": {"system": SYSTEM, "code": tb}}]))])),
        probe("fhirpath patch replaces the tenant tag", "PATCH", "/Patient/p1", &[422]).json(fp(vec![fp_op("replace", "Patient.meta", json!([{"name": "value", "valueMeta": {"tag": [{"system": SYSTEM, "code": tb}]}}]))])),
        probe("fhirpath patch moves id", "PATCH", "/Patient/p1", &[400]).json(fp(vec![fp_op("replace", "Patient.id", json!([{"name": "value", "valueString": "b-ref"}]))])),
        probe("fhirpath patch on another type's path", "PATCH", "/Patient/p1", &[400]).json(fp(vec![fp_op("delete", "Organization.name", json!([]))])),
        probe("fhirpath patch bomb of operations", "PATCH", "/Patient/p1", &[413, 422]).json(fp((0..1001).map(|_| fp_op("delete", "Patient.gender", json!([]))).collect())),
        // a value that fits in the body (64 KiB) but not, with what p1 holds, in the patched resource
        probe("fhirpath patch bomb of a value", "PATCH", "/Patient/p1", &[413]).json({
            let with = |n: usize| fp(vec![fp_op("add", "Patient", json!([{"name": "name", "valueString": "address"}, {"name": "value", "valueAddress": {"text": "w".repeat(n)}}]))]);
            with(65_536 - with(0).to_string().len() - 8)
        }),
        probe("xml patch", "PATCH", "/Patient/p1", &[415]).raw("application/xml-patch+xml", "<diff/>"),
        // 17 references
        probe("reference foreign", "POST", "/Observation", &[422]).json(obs("Patient/b-ref")),
        probe("reference guessed upstream id", "POST", "/Observation", &[422]).json(obs(&format!("Patient/{pb}-b-ref"))),
        probe("reference absolute upstream", "POST", "/Observation", &[422]).json(obs(&format!("{}/Patient/{pb}-b-ref", hapi()))),
        probe("reference versioned foreign", "POST", "/Observation", &[422]).json(obs("Patient/b-ref/_history/1")),
        probe("reference conditional", "POST", "/Observation", &[422]).json(obs("Patient?identifier=urn:mrn|b-unique")),
        probe("reference urn outside bundle", "POST", "/Observation", &[422]).json(obs("urn:uuid:9a0e3f4e-1b0d-4a44-9e62-7f2c3d1b9c11")),
        probe("reference in extension", "POST", "/Patient", &[422]).json(json!({"resourceType": "Patient", "extension": [{"url": "http://x", "valueReference": {"reference": "Organization/b-org"}}]})),
        probe("reference in contained", "POST", "/Patient", &[422]).json(json!({"resourceType": "Patient", "contained": [{"resourceType": "Observation", "id": "c", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/b-ref"}}]})),
        probe("reference in Parameters-like nesting", "POST", "/Basic", &[422]).json(json!({"resourceType": "Basic", "code": {"text": "x"}, "subject": {"reference": "Patient/b-ref"}})),
        // 18 transactions and batches
        probe("transaction with foreign reference", "POST", "", &[422]).json(tx(json!([
            {"resource": {"resourceType": "Patient", "id": "tx-p"}, "request": {"method": "PUT", "url": "Patient/tx-p"}},
            {"resource": obs("Patient/b-ref"), "request": {"method": "POST", "url": "Observation"}}]))),
        probe("transaction reading foreign", "POST", "", &[200, 404, 400]).json(tx(json!([{"request": {"method": "GET", "url": "Patient/b-ref"}}]))),
        probe("transaction conditional reference to foreign", "POST", "", &[400, 404, 412, 422]).json(tx(json!([
            {"resource": obs("Patient?identifier=urn:mrn|b-unique"), "request": {"method": "POST", "url": "Observation"}}]))),
        probe("transaction search", "POST", "", &[200]).json(tx(json!([{"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|same"}}]))),
        probe("transaction ifNoneExist foreign", "POST", "", &[200]).json(tx(json!([
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|b-unique4"}}]))),
        probe("transaction foreign tag", "POST", "", &[422]).json(tx(json!([
            {"resource": {"resourceType": "Patient", "meta": {"tag": [{"system": SYSTEM, "code": tb}]}}, "request": {"method": "POST", "url": "Patient"}}]))),
        // an :iterate after an include over a canonical (resolved by URL across tenants) would walk
        // on from the other tenant's resource (found by the attacker run of 2026-12-01)
        probe("iterate after a canonical include", "GET", "/Library?_include=Library:composed-of&_include:iterate=Library:derived-from", &[400]),
        probe("canonical include after an iterate", "GET", "/Library?_include:iterate=Library:derived-from&_include=Library:composed-of", &[400]),
        probe("iterate after a canonical revinclude", "GET", "/Questionnaire?_revinclude=QuestionnaireResponse:questionnaire&_include:iterate=QuestionnaireResponse:subject", &[400]),
        probe("offset in a conditional reference", "POST", "", &[400, 422]).json(tx(json!([
            {"resource": obs("Patient?identifier=urn:mrn|same&_offset=1"), "request": {"method": "POST", "url": "Observation"}}]))),
        probe("transaction patch entry on foreign", "POST", "", &[404]).json(tx(json!([
            {"resource": jp_binary(json!([{"op": "remove", "path": "/name"}])), "request": {"method": "PATCH", "url": "Patient/b-ref"}}]))),
        probe("transaction patch entry points at foreign", "POST", "", &[422]).json(tx(json!([
            {"resource": jp_binary(json!([{"op": "add", "path": "/managingOrganization", "value": {"reference": "Organization/b-org"}}])), "request": {"method": "PATCH", "url": "Patient/p1"}}]))),
        probe("transaction patch entry adds foreign tag", "POST", "", &[422]).json(tx(json!([
            {"resource": fp(vec![fp_op("add", "Patient.meta", json!([{"name": "name", "valueString": "tag"}, {"name": "value", "valueCoding": {"system": SYSTEM, "code": tb}}]))]), "request": {"method": "PATCH", "url": "Patient/p1"}}]))),
        probe("transaction patch entry moves id", "POST", "", &[400]).json(tx(json!([
            {"resource": jp_binary(json!([{"op": "replace", "path": "/id", "value": "b-ref"}])), "request": {"method": "PATCH", "url": "Patient/p1"}}]))),
        probe("transaction conditional patch entry on a foreign identifier", "POST", "", &[404]).json(tx(json!([
            {"resource": fp(vec![fp_op("delete", "Patient.name", json!([]))]), "request": {"method": "PATCH", "url": "Patient?identifier=urn:mrn|b-unique4"}}]))),
        probe("batch patch entry on foreign", "POST", "", &[200]).json(batch(json!([
            {"resource": jp_binary(json!([{"op": "remove", "path": "/name"}])), "request": {"method": "PATCH", "url": "Patient/b-ref"}}]))),
        probe("transaction operation entry", "POST", "", &[400]).json(tx(json!([{"request": {"method": "POST", "url": "Patient/$expunge"}}]))),
        probe("batch reading foreign", "POST", "", &[200]).json(batch(json!([
            {"request": {"method": "GET", "url": "Patient/b-ref"}}, {"request": {"method": "GET", "url": "Observation?subject=Patient/b-ref"}}]))),
        probe("batch nested bundle", "POST", "", &[400]).json(batch(json!([{"request": {"method": "POST", "url": ""}}]))),
        // Binary and attachments
        probe("binary raw foreign", "GET", "/Binary/b-bin", &[404]).header("accept", "text/plain"),
        probe("binary json foreign", "GET", "/Binary/b-bin", &[404]),
        probe("binary raw foreign as pdf", "GET", "/Binary/b-bin", &[404]).header("accept", "application/pdf"),
        probe("binary raw upload no content type", "POST", "/Binary", &[415]).raw("", "x"),
        probe("binary security context foreign", "POST", "/Binary", &[422]).json(json!({"resourceType": "Binary", "contentType": "text/plain", "securityContext": {"reference": "Patient/b-ref"}})),
        probe("attachment to foreign binary", "POST", "/DocumentReference", &[422]).json(json!({"resourceType": "DocumentReference", "status": "current", "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/b-bin"}}]})),
        probe("attachment to upstream", "POST", "/DocumentReference", &[422]).json(json!({"resourceType": "DocumentReference", "status": "current", "content": [{"attachment": {"contentType": "text/plain", "url": format!("{}/Binary/{pb}-b-bin", hapi())}}]})),
        // (Medplum's router answers a PUT that creates with 200.)
        probe("binary raw upload over foreign id", "PUT", "/Binary/b-bin", &[201]).raw("application/pdf", "%PDF-1.4 alpha").on_medplum(&[200]),
        probe("binary raw upload with upstream id", "PUT", format!("/Binary/{pb}-b-bin"), &[201, 400]).raw("application/pdf", "%PDF-1.4 alpha").on_medplum(&[200, 400]),
        // subscriptions and server-wide resources
        probe("subscription without allowed destination", "POST", "/Subscription", &[422]).json(json!({"resourceType": "Subscription", "status": "requested", "reason": "x", "criteria": "Observation?", "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/x"}})),
        probe("subscription payload search extension", "POST", "/Subscription", &[422]).json(json!({"resourceType": "Subscription", "status": "requested", "reason": "x", "criteria": "Observation?", "extension": [{"url": "http://hapifhir.io/fhir/StructureDefinition/subscription-payload-search-criteria", "valueString": "Patient?"}], "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/x"}})),
        probe("search parameter write", "POST", "/SearchParameter", &[403]).json(json!({"resourceType": "SearchParameter", "status": "active"})),
        probe("value set write", "PUT", "/ValueSet/vs1", &[403]).json(json!({"resourceType": "ValueSet", "id": "vs1", "status": "active"})),
        probe("trigger subscription", "POST", "/Subscription/s1/$trigger-subscription", &[403]),
        // operations
        probe("everything foreign", "GET", "/Patient/b-ref/$everything", &[404]),
        probe("everything own", "GET", "/Patient/p1/$everything", &[200]).on_medplum(&[501]),
        probe("everything type level", "GET", "/Patient/$everything", &[403]),
        probe("meta foreign", "GET", "/Patient/b-ref/$meta", &[404]),
        probe("meta type level", "GET", "/Patient/$meta", &[403]),
        probe("meta-add tenant coding", "POST", "/Patient/p1/$meta-add", &[422]).json(meta_param(&tb)),
        probe("meta-delete tenant coding", "POST", "/Patient/p1/$meta-delete", &[422]).json(meta_param(&ta)),
        probe("expunge", "POST", "/Patient/p1/$expunge", &[403]),
        probe("graphql", "GET", "/$graphql?query=%7BPatientList%7Bid%7D%7D", &[403]),
        probe("resource counts", "GET", "/$get-resource-counts", &[403]),
        // Bulk Data export
        probe("export without respond-async", "GET", "/$export", &[400]),
        probe("export own", "GET", "/$export?_type=Patient", &[202]).header("prefer", "respond-async").needs(Need::Export),
        probe("export widening filter", "GET", "/$export?_type=Patient&_typeFilter=Patient%3F_id%3Db-ref&_typeFilter=Patient%3F_lastUpdated%3Dgt2000", &[202]).header("prefer", "respond-async").needs(Need::Export),
        probe("export foreign patient", "GET", "/Patient/b-ref/$export", &[404]).header("prefer", "respond-async"),
        probe("export foreign group", "GET", "/Group/b-ref/$export", &[404]).header("prefer", "respond-async"),
        probe("export server-wide type", "GET", "/$export?_type=ValueSet", &[400]).header("prefer", "respond-async"),
        probe("export filter result parameter", "GET", "/$export?_type=Patient&_typeFilter=Patient%3F_revinclude%3D*", &[400]).header("prefer", "respond-async"),
        probe("export other format", "GET", "/$export?_outputFormat=application%2Fcsv", &[400]).header("prefer", "respond-async"),
        probe("export upstream poll endpoint", "GET", "/$export-poll-status?_jobId=1", &[403]),
        probe("export status of another tenant", "GET", b_job.clone(), &[404]).needs(Need::Export),
        probe("export cancel of another tenant", "DELETE", b_job.clone(), &[404]).needs(Need::Export),
        probe("export status forged", "GET", "/_export/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &[404]),
        probe("export file forged", "GET", "/_export-file/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &[404]),
        probe("validate foreign reference", "POST", "/Observation/$validate", &[422]).json(obs("Patient/b-ref")),
        probe("validate foreign instance", "GET", "/Patient/b-ref/$validate", &[404]),
        probe("validate own", "POST", "/Observation/$validate", &[200]).json(obs("Patient/p1")).on_medplum(&[501]),
        probe("unknown operation", "GET", "/Patient/p1/$frobnicate", &[501]),
        // path and header tricks
        probe("double slash", "GET", "//Patient/b-ref", &[400]),
        probe("encoded slash", "GET", "/Patient/b-ref%2F_history", &[400]),
        probe("dot segment", "GET", "/Patient/./b-ref", &[400]),
        probe("dot dot", "GET", "/Patient/x/../b-ref", &[400]),
        probe("matrix param", "GET", "/Patient/b-ref;jsessionid=1", &[400]),
        probe("lower-case type", "GET", "/patient/b-ref", &[400]),
        probe("method override", "GET", "/Patient/b-ref", &[400]).header("x-http-method-override", "DELETE"),
        probe("tenant header ignored", "GET", "/Patient?family=Bravo", &[200]).header("x-tenant-id", tb.clone()),
        probe("no body on GET", "GET", "/Patient/p1", &[400]).raw("application/fhir+json", "{}"),
    ];
    assert!(probes.len() >= 80, "{} probes", probes.len());

    let forbidden = [BRAVO.to_owned(), format!("{pb}-"), tb.clone()];
    let mut failures = vec![];
    let served = |p: &&Probe| match p.needs {
        Some(Need::Links) => server.pages_by_links(),
        Some(Need::Export) => server.exports(),
        None => true,
    };
    let probes: Vec<&Probe> = probes.iter().filter(served).collect();
    for p in &probes {
        let (token, other_markers): (&str, Vec<String>) =
            if p.as_b { (&b, vec![ALPHA.to_owned(), format!("{}-", ts[0].prefix)]) } else { (&a, forbidden.to_vec()) };
        let r = send(&f, token, p).await;
        let expect = p.elsewhere.iter().find(|(s, _)| *s == server).map_or(&p.expect, |(_, there)| there);
        if !expect.contains(&r.status) {
            failures.push(format!(
                "{}: {} {} → {} (expected {:?}): {}",
                p.name,
                p.method,
                p.path,
                r.status,
                expect,
                String::from_utf8_lossy(&r.raw)
            ));
        }
        let request_text = format!("{}{}", p.path, p.body.clone().unwrap_or_default());
        let headers_text: String =
            r.headers.iter().map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or(""))).collect();
        let answer = format!("{headers_text}{}", String::from_utf8_lossy(&r.raw));
        for m in &other_markers {
            // A marker the probe itself sent may be echoed (e.g. in a self link); only data markers count then.
            if request_text.contains(m.as_str()) && m != BRAVO && m != ALPHA {
                continue;
            }
            if answer.contains(m.as_str()) {
                failures.push(format!("{}: the answer shows the other tenant's {m:?}: {answer}", p.name));
            }
        }
        // Every refusal is an OperationOutcome (HEAD answers have no body at all).
        if r.status >= 400 && p.method != "HEAD" && r.body["resourceType"] != "OperationOutcome" {
            failures.push(format!("{}: a {} without an OperationOutcome", p.name, r.status));
        }
    }
    // B's export survived A's attempts to cancel it.
    if server.exports() {
        let r = client::get(&b_job).bearer(&b).send().await;
        if r.status != 200 && r.status != 202 {
            failures.push(format!("B's export job is gone after A's probes: {} {}", r.status, r.body));
        }
        // Both tenants' exports run to their end on this server (manifest and file URLs in the
        // upstream's own forms): A's files hold exactly what A's own searches find (A may name its
        // resources like B's upstream ids: that is A's data), and B's files answer A 404.
        let kick = client::get(&f.url("$export?_type=Patient,Observation"))
            .bearer(&a)
            .header("prefer", "respond-async")
            .send()
            .await;
        let a_manifest = finished(kick.header("content-location").unwrap_or_default(), &a).await;
        let b_manifest = finished(&b_job, &b).await;
        let mut exported = BTreeSet::new();
        for file in a_manifest["output"].as_array().into_iter().flatten() {
            let r = client::get(file["url"].as_str().unwrap_or_default()).bearer(&a).send().await;
            let text = String::from_utf8_lossy(&r.raw);
            if r.status != 200 || text.contains(BRAVO) {
                failures.push(format!("A's export file answered {}: {text}", r.status));
            }
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap_or_default();
                exported.insert(format!(
                    "{}/{}",
                    v["resourceType"].as_str().unwrap_or("?"),
                    v["id"].as_str().unwrap_or("?")
                ));
            }
        }
        let mut searched = BTreeSet::new();
        for t in ["Patient", "Observation"] {
            let r = client::get(&f.url(&format!("{t}?_count=1000&_elements=id"))).bearer(&a).send().await;
            for e in r.body["entry"].as_array().into_iter().flatten() {
                searched.insert(format!("{t}/{}", e["resource"]["id"].as_str().unwrap_or("?")));
            }
        }
        if exported.is_empty() || exported != searched {
            failures.push(format!("A's export holds {exported:?}, A's searches find {searched:?}"));
        }
        let b_files = b_manifest["output"].as_array().cloned().unwrap_or_default();
        if b_files.is_empty() {
            failures.push(format!("B's export holds none of B's resources: {b_manifest}"));
        }
        for file in b_files {
            let r = client::get(file["url"].as_str().unwrap_or_default()).bearer(&a).send().await;
            if r.status != 404 {
                failures.push(format!("B's export file answered A {}: {}", r.status, String::from_utf8_lossy(&r.raw)));
            }
        }
    }
    // The other tenant's data is untouched by everything A did.
    for path in [
        "Patient/b-ref",
        "Patient/b-two",
        "Patient/b-three",
        "Patient/b-four",
        "Observation/b-obs",
        "Organization/b-org",
        "Binary/b-bin",
        "Patient/p1",
        "Patient/p2",
    ] {
        let r = client::get(&f.url(path)).bearer(&b).send().await;
        if r.status != 200 || !String::from_utf8_lossy(&r.raw).contains(BRAVO) {
            failures.push(format!("B's {path} changed or vanished: {} {}", r.status, r.body));
        }
    }
    let r = client::get(&f.url("Patient/b-two")).bearer(&a).send().await;
    assert_eq!(r.status, 200, "A's own b-two exists separately");
    assert!(failures.is_empty(), "{} of {} probes failed:\n{}", failures.len(), probes.len(), failures.join("\n"));
    eprintln!("{} isolation probes passed", probes.len());
}

/// What the upstream itself holds of B: every resource's version, the number of resources under
/// B's tag per type, and what points at B's resources. Read on HAPI directly, around fhir-fence.
async fn upstream_state(pb: &str, tb: &str) -> Vec<String> {
    let mut state = vec![];
    for path in ["Patient/b-ref", "Organization/b-org", "Questionnaire/b-q"] {
        let (t, id) = path.split_once('/').unwrap();
        let r = client::get(&format!("{}/{t}/{pb}-{id}", hapi())).send().await;
        state.push(format!("{path}: {} v{}", r.status, r.body["meta"]["versionId"]));
    }
    for t in ["Patient", "Organization", "Questionnaire", "Observation", "QuestionnaireResponse"] {
        let r = client::get(&format!("{}/{t}?_tag={SYSTEM}%7C{tb}&_summary=count", hapi())).send().await;
        state.push(format!("{t} tagged {tb}: {}", r.body["total"]));
    }
    for (t, param, target) in [
        ("Observation", "subject", "Patient/b-ref"),
        ("Patient", "organization", "Organization/b-org"),
        ("QuestionnaireResponse", "questionnaire", "Questionnaire/b-q"),
    ] {
        let (tt, id) = target.split_once('/').unwrap();
        let r = client::get(&format!("{}/{t}?{param}={tt}/{pb}-{id}&_summary=count", hapi())).send().await;
        state.push(format!("{t}.{param} -> {target}: {}", r.body["total"]));
    }
    state
}

/// The parser gap (issue 15): shapes HAPI's lenient parser reads as references or tags — JSON
/// arrays, nested arrays, numbers, nulls, bare objects, `_element` extensions, contained edge
/// cases — and the oracles around canonicals and `Bundle.total`. Each probe asserts its status
/// and that nothing of B reaches A; afterwards the upstream itself, read directly, shows B's data
/// untouched, nothing of A's pointing at it, and B's delete still works (no stored link blocks it).
#[tokio::test]
async fn parser_gap_probes() {
    let mut ts = tenants(2);
    ts[0].destinations = vec!["http://127.0.0.1:9099/".into()];
    let f = support::start(Options::new(&hapi(), &ts)).await;
    let (a, b) = (f.token(&ts[0].name), f.token(&ts[1].name));
    let (tb, pb) = (ts[1].name.clone(), ts[1].prefix.clone());
    let q_url = format!("http://example.org/fhir/Questionnaire/{pb}-secret-form");
    for (path, body) in [
        (
            "Patient/b-ref",
            json!({"resourceType": "Patient", "id": "b-ref", "name": [{"given": [BRAVO]}], "identifier": [{"system": "urn:mrn", "value": "b-unique"}]}),
        ),
        ("Organization/b-org", json!({"resourceType": "Organization", "id": "b-org", "name": BRAVO})),
        (
            "Questionnaire/b-q",
            json!({"resourceType": "Questionnaire", "id": "b-q", "url": q_url, "status": "active", "item": [{"linkId": BRAVO, "type": "string", "required": true}]}),
        ),
    ] {
        let r = client::put(&f.url(path), &body).bearer(&b).send().await;
        assert!(r.status == 201 || r.status == 200, "loading {path}: {}", r.body);
    }
    let nobody_url = "http://example.org/fhir/Questionnaire/nobody-else".to_owned();
    for (path, body) in [
        ("Patient/p1", json!({"resourceType": "Patient", "id": "p1", "name": [{"given": [ALPHA]}]})),
        // A's own Questionnaires: one with the url B's has too, one with a url nobody else has.
        ("Questionnaire/a-q", json!({"resourceType": "Questionnaire", "id": "a-q", "url": q_url, "status": "active"})),
        (
            "Questionnaire/a-q2",
            json!({"resourceType": "Questionnaire", "id": "a-q2", "url": nobody_url, "status": "active"}),
        ),
    ] {
        let r = client::put(&f.url(path), &body).bearer(&a).send().await;
        assert!(r.status == 201 || r.status == 200, "loading {path}: {}", r.body);
    }
    let b_only_url = format!("http://example.org/fhir/Questionnaire/{pb}-b-only");
    let r = client::put(&f.url("Questionnaire/b-q2"), &json!({"resourceType": "Questionnaire", "id": "b-q2", "url": b_only_url, "status": "active", "item": [{"linkId": BRAVO, "type": "string", "required": true}]})).bearer(&b).send().await;
    assert!(r.status == 201 || r.status == 200, "{}", r.body);
    let before = upstream_state(&pb, &tb).await;

    let up = |t: &str, id: &str| format!("{t}/{pb}-{id}");
    let obs = |subject: Value| json!({"resourceType": "Observation", "status": "final", "code": {"text": "t"}, "subject": subject});
    let tx = |kind: &str, entries: Value| json!({"resourceType": "Bundle", "type": kind, "entry": entries});
    let qr = |questionnaire: Value| json!({"resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": questionnaire});
    let tag = |coding: Value| json!({"resourceType": "Patient", "meta": {"tag": coding}});
    let patch = |ops: Value| ops.to_string();
    let probes = vec![
        // references written as arrays (single writes, PUT, PATCH, batch, transaction, canonicals)
        probe("reference as array", "POST", "/Observation", &[400]).json(obs(json!({"reference": [up("Patient", "b-ref")]}))),
        probe("reference as nested array", "POST", "/Observation", &[400]).json(obs(json!({"reference": [[up("Patient", "b-ref")]]}))),
        probe("conditional reference as array", "POST", "/Observation", &[400]).json(obs(json!({"reference": ["Patient?identifier=urn:mrn|b-unique"]}))),
        probe("Reference as array", "POST", "/Observation", &[400]).json(obs(json!([{"reference": up("Patient", "b-ref")}]))),
        probe("reference as array in PUT", "PUT", "/Observation/o-arr", &[400]).json({let mut o = obs(json!({"reference": [up("Patient", "b-ref")]})); o["id"] = json!("o-arr"); o}),
        probe("reference as array through FHIRPath Patch", "PATCH", "/Patient/p1", &[400]).json(json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.managingOrganization"}, {"name": "value", "valueReference": {"reference": [up("Organization", "b-org")]}}]}]})),
        probe("canonical through FHIRPath Patch", "PATCH", "/Patient/p1", &[422]).json(json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "extension"}, {"name": "value", "part": [{"name": "url", "valueUri": "http://x"}, {"name": "value", "valueCanonical": "Questionnaire/b-q"}]}]}]})),
        probe("reference as array through PATCH", "PATCH", "/Patient/p1", &[422]).raw("application/json-patch+json", &patch(json!([{"op": "add", "path": "/managingOrganization", "value": {"reference": [up("Organization", "b-org")]}}]))),
        probe("reference as array in a batch entry", "POST", "", &[400]).json(tx("batch", json!([{"resource": obs(json!({"reference": [up("Patient", "b-ref")]})), "request": {"method": "POST", "url": "Observation"}}]))),
        probe("reference as array in a transaction entry", "POST", "", &[400]).json(tx("transaction", json!([{"resource": obs(json!({"reference": ["Patient?identifier=urn:mrn|b-unique"]})), "request": {"method": "POST", "url": "Observation"}}]))),
        probe("request url as array in a transaction", "POST", "", &[400]).json(tx("transaction", json!([{"request": {"method": "GET", "url": [up("Patient", "b-ref")]}}]))),
        probe("canonical as nested array", "POST", "/QuestionnaireResponse", &[400]).json(qr(json!([[up("Questionnaire", "b-q")]]))),
        probe("canonical as array", "POST", "/QuestionnaireResponse", &[400]).json(qr(json!([q_url]))),
        // canonical URLs the upstream resolves server-wide
        probe("canonical naming B's definition", "POST", "/QuestionnaireResponse", &[422]).json(qr(json!(b_only_url))),
        probe("canonical naming nobody's definition", "POST", "/QuestionnaireResponse", &[422]).json(qr(json!("http://example.org/fhir/Questionnaire/none"))),
        probe("canonical naming B's definition in a transaction", "POST", "", &[422]).json(tx("transaction", json!([{"resource": qr(json!(b_only_url)), "request": {"method": "POST", "url": "QuestionnaireResponse"}}]))),
        probe("canonical through PATCH", "PATCH", "/Patient/p1", &[422]).raw("application/json-patch+json", &patch(json!([{"op": "add", "path": "/extension", "value": [{"url": "http://x", "valueCanonical": "Questionnaire/b-q"}]}]))),
        probe("validate against B's definition", "POST", "/QuestionnaireResponse/$validate", &[422]).json(qr(json!(b_only_url))),
        probe("validate against a same-url definition", "POST", "/QuestionnaireResponse/$validate", &[422]).json(qr(json!(q_url))),
        // other JSON kinds where a string belongs
        probe("reference as number", "POST", "/Observation", &[400]).json(obs(json!({"reference": 7}))),
        probe("reference as boolean", "POST", "/Observation", &[400]).json(obs(json!({"reference": true}))),
        probe("reference as object", "POST", "/Observation", &[400]).json(obs(json!({"reference": {"reference": up("Patient", "b-ref")}}))),
        probe("reference null", "POST", "/Observation", &[400]).json(obs(json!({"reference": null}))),
        probe("reference empty", "POST", "/Observation", &[400]).json(obs(json!({"reference": ""}))),
        // primitive extensions and unknown elements
        probe("_reference carrying a foreign reference", "POST", "/Observation", &[422]).json(obs(json!({"_reference": {"extension": [{"url": "http://x", "valueReference": {"reference": "Patient/b-ref"}}]}}))),
        probe("_reference as array", "POST", "/Observation", &[400]).json(obs(json!({"_reference": [up("Patient", "b-ref")]}))),
        probe("_reference as string", "POST", "/Observation", &[400]).json(obs(json!({"_reference": up("Patient", "b-ref")}))),
        probe("unknown element beside reference", "POST", "/Observation", &[400]).json(obs(json!({"reference": "Patient/p1", "referenceX": up("Patient", "b-ref")}))),
        probe("two choice variants", "POST", "/Observation", &[400]).json({let mut o = obs(json!({"reference": "Patient/p1"})); o["valueString"] = json!("a"); o["valueReference"] = json!({"reference": up("Patient", "b-ref")}); o}),
        // tenant codings of other shapes
        probe("coding system as array", "POST", "/Patient", &[400]).json(tag(json!([{"system": [SYSTEM], "code": tb}]))),
        probe("coding code as array", "POST", "/Patient", &[400]).json(tag(json!([{"system": SYSTEM, "code": [tb]}]))),
        probe("meta.tag as nested arrays", "POST", "/Patient", &[400]).json(tag(json!([[{"system": SYSTEM, "code": tb}]]))),
        probe("meta.tag as a bare object", "POST", "/Patient", &[400]).json(tag(json!({"system": SYSTEM, "code": tb}))),
        probe("meta.security as a bare object", "POST", "/Patient", &[400]).json(json!({"resourceType": "Patient", "meta": {"security": {"system": SYSTEM, "code": tb}}})),
        probe("meta-add with system as array", "POST", "/Patient/p1/$meta-add", &[400]).json(json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [{"system": [SYSTEM], "code": tb}]}}]})),
        probe("meta-add with tag as object", "POST", "/Patient/p1/$meta-add", &[400]).json(json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"security": {"system": SYSTEM, "code": tb}}}]})),
        // contained edge cases
        probe("contained with reference as array", "POST", "/Patient", &[400]).json(json!({"resourceType": "Patient", "contained": [{"resourceType": "Observation", "id": "c", "status": "final", "code": {"text": "x"}, "subject": {"reference": [up("Patient", "b-ref")]}}]})),
        probe("contained inside contained", "POST", "/Patient", &[400]).json(json!({"resourceType": "Patient", "contained": [{"resourceType": "Group", "id": "g", "type": "person", "actual": true, "contained": [{"resourceType": "Observation", "id": "c", "status": "final", "code": {"text": "x"}, "subject": {"reference": up("Patient", "b-ref")}}]}]})),
        probe("contained without resourceType", "POST", "/Patient", &[400]).json(json!({"resourceType": "Patient", "contained": [{"id": "c", "subject": {"reference": up("Patient", "b-ref")}}]})),
        probe("contained as a bare object", "POST", "/Patient", &[400]).json(json!({"resourceType": "Patient", "contained": {"resourceType": "Observation", "id": "c", "status": "final", "code": {"text": "x"}, "subject": {"reference": up("Patient", "b-ref")}}})),
        // operations that read a body
        probe("validate Parameters with reference as array", "POST", "/Observation/$validate", &[400]).json(json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": obs(json!({"reference": [up("Patient", "b-ref")]}))}]})),
        // canonicals the upstream reads its own way (found by an independent attacker)
        probe("validate a canonical naming another type", "POST", "/QuestionnaireResponse/$validate", &[422]).json(qr(json!(up("ValueSet", "b-q")))),
        probe("canonical naming another type", "POST", "/QuestionnaireResponse", &[422]).json(qr(json!("StructureDefinition/b-q"))),
        probe("canonical with a leading slash", "POST", "/Library", &[422]).json(json!({"resourceType": "Library", "status": "active", "type": {"text": "x"}, "relatedArtifact": [{"type": "depends-on", "resource": format!("/{}", up("Patient", "b-ref"))}]})),
        probe("canonical as a bare id", "POST", "/Library", &[422]).json(json!({"resourceType": "Library", "status": "active", "type": {"text": "x"}, "relatedArtifact": [{"type": "depends-on", "resource": up("Patient", "b-ref")}]})),
        probe("canonical naming the upstream", "POST", "/Library", &[422]).json(json!({"resourceType": "Library", "status": "active", "type": {"text": "x"}, "relatedArtifact": [{"type": "depends-on", "resource": format!("{}/{}", hapi(), up("Patient", "b-ref"))}]})),
        probe("definition url as a decoy literal", "PUT", "/Library/decoy", &[422]).json(json!({"resourceType": "Library", "id": "decoy", "url": format!("/{}", up("Library", "b-lib")), "status": "active", "type": {"text": "x"}})),
        probe("definition url naming the upstream", "PUT", "/Library/decoy", &[422]).json(json!({"resourceType": "Library", "id": "decoy", "url": format!("{}/{}", hapi(), up("Library", "b-lib")), "status": "active", "type": {"text": "x"}})),
        probe("definition squatting a shared url", "PUT", "/Questionnaire/squat", &[422]).json(json!({"resourceType": "Questionnaire", "id": "squat", "url": "http://hl7.org/fhir/Questionnaire/phq-9", "status": "active"})),
        // white space HAPI keeps (uri) or trims (code) (found by an independent attacker)
        probe("definition squatting a shared url behind a space", "PUT", "/Questionnaire/squat", &[400]).json(json!({"resourceType": "Questionnaire", "id": "squat", "url": " http://hl7.org/fhir/Questionnaire/phq-9", "status": "active"})),
        probe("canonical naming B's definition behind a space", "POST", "/QuestionnaireResponse", &[400]).json(qr(json!(format!(" {b_only_url}")))),
        probe("B's tenant code padded with spaces", "POST", "/Patient", &[400]).json(tag(json!([{"system": SYSTEM, "code": format!(" {tb} ")}]))),
        probe("B's tenant code padded through meta-add", "POST", "/Patient/p1/$meta-add", &[400]).json(json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [{"system": SYSTEM, "code": format!("{tb}\t")}]}}]})),
        // a JSON Patch whose copies never grow the document but keep the worker busy
        probe("patch of busy work", "PATCH", "/Patient/p1", &[422]).raw("application/json-patch+json", &patch(Value::Array(
            [json!({"op": "add", "path": "/name/-", "value": {"text": "w".repeat(10_000)}}), json!({"op": "add", "path": "/name/-", "value": {"text": "z"}})]
                .into_iter()
                .chain((0..100).map(|_| json!({"op": "copy", "from": "/name/1/text", "path": "/name/2/text"})))
                .collect(),
        ))),
        // a Subscription endpoint the upstream's HTTP client would read differently
        probe("subscription endpoint with a numeric host", "POST", "/Subscription", &[422]).json(json!({"resourceType": "Subscription", "status": "requested", "reason": "x", "criteria": "Observation?", "channel": {"type": "rest-hook", "endpoint": "http://0x7f.0.0.1:9099/x"}})),
        probe("subscription endpoint with a default port", "POST", "/Subscription", &[422]).json(json!({"resourceType": "Subscription", "status": "requested", "reason": "x", "criteria": "Observation?", "channel": {"type": "rest-hook", "endpoint": "HTTP://127.0.0.1:9099/x"}})),
        probe("subscription endpoint as array", "POST", "/Subscription", &[400]).json(json!({"resourceType": "Subscription", "status": "requested", "reason": "x", "criteria": "Observation?", "channel": {"type": "rest-hook", "endpoint": ["http://127.0.0.1:9099/x"]}})),
        // JSON Patch that doubles the document
        probe("patch bomb", "PATCH", "/Patient/p1", &[413]).raw("application/json-patch+json", &patch(Value::Array((0..40).map(|_| json!({"op": "copy", "from": "/name", "path": "/name/-"})).collect()))),
    ];
    let forbidden = [BRAVO.to_owned(), format!("{pb}-"), tb.clone()];
    let mut failures = vec![];
    for p in &probes {
        let r = send(&f, &a, p).await;
        if !p.expect.contains(&r.status) {
            failures.push(format!("{}: {} → {} (expected {:?}): {}", p.name, p.method, r.status, p.expect, r.body));
        }
        if r.body["resourceType"] != "OperationOutcome" {
            failures.push(format!("{}: a {} without an OperationOutcome", p.name, r.status));
        }
        let request_text = format!("{}{}", p.path, p.body.clone().unwrap_or_default());
        let answer = String::from_utf8_lossy(&r.raw);
        for m in &forbidden {
            if answer.contains(m.as_str()) && !(request_text.contains(m.as_str()) && m != BRAVO) {
                failures.push(format!("{}: the answer shows B's {m:?}: {answer}", p.name));
            }
        }
    }

    // `Bundle.total` is no oracle: an `_include` through a canonical URL that B's Questionnaire
    // has too (the upstream resolves it server-wide) answers exactly like one only A has.
    let mut totals = vec![];
    for url in [q_url.clone(), nobody_url.clone()] {
        let r = client::put(&f.url("QuestionnaireResponse/qr-probe"), &json!({"resourceType": "QuestionnaireResponse", "id": "qr-probe", "status": "completed", "questionnaire": url})).bearer(&a).send().await;
        assert!(r.status == 200 || r.status == 201, "{}", r.body);
        let r = client::get(
            &f.url("QuestionnaireResponse?_id=qr-probe&_include=QuestionnaireResponse:questionnaire&_total=accurate"),
        )
        .bearer(&a)
        .send()
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!String::from_utf8_lossy(&r.raw).contains(BRAVO), "B's Questionnaire reached A: {}", r.body);
        totals.push((r.body.get("total").cloned(), r.body["entry"].as_array().map(Vec::len)));
    }
    if totals[0] != totals[1] {
        failures.push(format!("an include of B's canonical answers differently from an unknown one: {totals:?}"));
    }
    let r = client::delete(&f.url("QuestionnaireResponse/qr-probe")).bearer(&a).send().await;
    assert_eq!(r.status, 200, "{}", r.body);

    let after = upstream_state(&pb, &tb).await;
    if before != after {
        failures.push(format!("the upstream's view of B changed:\nbefore {before:?}\nafter  {after:?}"));
    }
    // No stored link of A's blocks B's own delete.
    let r = client::delete(&f.url("Patient/b-ref")).bearer(&b).send().await;
    if r.status != 200 {
        failures.push(format!("B cannot delete its own Patient: {} {}", r.status, r.body));
    }
    assert!(failures.is_empty(), "{} of {} probes failed:\n{}", failures.len(), probes.len(), failures.join("\n"));
    eprintln!("{} parser-gap probes passed", probes.len());
}
