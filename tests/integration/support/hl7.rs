//! The official HL7 R4 examples (`scripts/fetch-test-data`) as test data: the clinical types,
//! the selection whose references stay inside it, and searches over them. Shared by the
//! transparency suite and the conformance replay.
use serde_json::{json, Value};
use std::collections::HashSet;

/// Clinical types loaded from the examples (definitional resources are left out).
pub const TYPES: &[&str] = &[
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Encounter",
    "Observation",
    "Condition",
    "Procedure",
    "MedicationRequest",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationStatement",
    "AllergyIntolerance",
    "Immunization",
    "DiagnosticReport",
    "CarePlan",
    "CareTeam",
    "Goal",
    "ServiceRequest",
    "Specimen",
    "Device",
    "RelatedPerson",
    "Coverage",
    "Appointment",
    "Group",
    "Substance",
    "RiskAssessment",
    "NutritionOrder",
    "FamilyMemberHistory",
    "Flag",
    "EpisodeOfCare",
];

pub const SEARCHES: &[&str] = &[
    "Patient",
    "Patient?family=Chalmers",
    "Patient?gender=male",
    "Patient?gender=female&_sort=birthdate,_id",
    "Patient?birthdate=ge1970-01-01",
    "Patient?_sort=family,-birthdate,_id",
    "Patient?identifier=urn:oid:1.2.36.146.595.217.0.1%7C12345",
    "Patient?name=pet",
    "Patient?name:exact=Peter",
    "Patient?_summary=count",
    "Patient?_count=3",
    "Patient?organization=Organization/1",
    "Patient?_revinclude=Observation:subject",
    "Patient?_elements=name,gender",
    "Patient?_has:Observation:subject:code=http://loinc.org%7C29463-7",
    "Observation",
    "Observation?subject=Patient/example",
    "Observation?code=http://loinc.org%7C29463-7",
    "Observation?status=final&_sort=-date,_id",
    "Observation?_include=Observation:subject",
    "Observation?subject.family=Chalmers",
    "Observation?subject:Patient.name=Peter",
    "Observation?value-quantity=gt100",
    "Observation?category=vital-signs",
    "Observation?_count=10",
    "Observation?_total=accurate&_count=1",
    "Condition",
    "Condition?patient=example",
    "Encounter?subject=Patient/example",
    "Encounter?_include=Encounter:subject&_include:iterate=Patient:organization",
    "Practitioner?family=Careful",
    "Organization?name=Health",
    "MedicationRequest?_include=MedicationRequest:medication",
    "Procedure?subject=Patient/example",
    "DiagnosticReport?_sort=_id",
    "AllergyIntolerance?patient=Patient/example",
    "Immunization",
    "CarePlan?subject=Patient/example",
    "Patient/example/_history",
    "Patient/_history",
];

/// The examples whose references (all relative literals) stay inside the selection.
pub fn examples() -> Vec<Value> {
    let dir = format!("{}/hl7-r4-examples/package", super::test_data_dir().display());
    let mut all: Vec<Value> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e} (run scripts/fetch-test-data)"))
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter(|r| r["resourceType"].as_str().is_some_and(|t| TYPES.contains(&t)))
        .filter(|r| r["id"].as_str().is_some_and(|id| id.len() <= 40))
        .collect();
    all.sort_by_key(|r| format!("{}/{}", r["resourceType"], r["id"]));
    close_over_references(&mut all);
    all
}

fn refs_ok(v: &Value, present: &HashSet<String>) -> bool {
    match v {
        Value::Object(m) => m.iter().all(|(k, v)| match (k.as_str(), v) {
            ("reference", Value::String(r)) => {
                r.starts_with('#') || {
                    let parts: Vec<&str> = r.split('/').collect();
                    parts.len() == 2 && present.contains(r.as_str())
                }
            }
            // Attachments pointing elsewhere are refused by design; leave those examples out.
            ("url", Value::String(_)) if m.contains_key("contentType") => false,
            _ => refs_ok(v, present),
        }),
        Value::Array(a) => a.iter().all(|v| refs_ok(v, present)),
        _ => true,
    }
}

/// Drops, until nothing changes, every resource with a reference outside the set.
pub fn close_over_references(all: &mut Vec<Value>) {
    loop {
        let present: HashSet<String> = all
            .iter()
            .map(|r| format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()))
            .collect();
        let before = all.len();
        all.retain(|r| refs_ok(r, &present));
        if all.len() == before {
            return;
        }
    }
}

pub fn transaction(resources: &[Value]) -> Value {
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            let url = format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
            json!({"resource": r, "request": {"method": "PUT", "url": url}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// `resources` in groups to write one transaction each, in order, on a server that takes at most
/// `limit` writes in a transaction: every reference cycle (a strongly connected component of
/// "names", by [`literals`]) whole in one group, and every group after the groups it names.
/// Panics if a cycle alone is larger than `limit`.
pub fn in_dependency_order(resources: &[Value], limit: usize) -> Vec<Vec<Value>> {
    let index: std::collections::HashMap<String, usize> =
        resources.iter().enumerate().map(|(i, r)| (key(r), i)).collect();
    let names: Vec<Vec<usize>> = resources
        .iter()
        .map(|r| {
            let mut out = vec![];
            literals(r, &mut out);
            out.iter().filter_map(|n| index.get(n).copied()).collect()
        })
        .collect();
    // Tarjan: components come out after every component they name.
    struct Walk<'a> {
        names: &'a [Vec<usize>],
        order: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        components: Vec<Vec<usize>>,
    }
    fn visit(w: &mut Walk, v: usize) {
        w.order[v] = Some(w.next);
        w.low[v] = w.next;
        w.next += 1;
        w.stack.push(v);
        w.on_stack[v] = true;
        for &u in &w.names[v] {
            match w.order[u] {
                None => {
                    visit(w, u);
                    w.low[v] = w.low[v].min(w.low[u]);
                }
                Some(o) if w.on_stack[u] => w.low[v] = w.low[v].min(o),
                Some(_) => {}
            }
        }
        if Some(w.low[v]) == w.order[v] {
            let mut component = vec![];
            while let Some(u) = w.stack.pop() {
                w.on_stack[u] = false;
                component.push(u);
                if u == v {
                    break;
                }
            }
            w.components.push(component);
        }
    }
    let n = resources.len();
    let mut w = Walk {
        names: &names,
        order: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: vec![],
        next: 0,
        components: vec![],
    };
    for v in 0..n {
        if w.order[v].is_none() {
            visit(&mut w, v);
        }
    }
    let mut groups: Vec<Vec<Value>> = vec![];
    for component in w.components {
        assert!(
            component.len() <= limit,
            "a reference cycle of {} resources: more than one transaction takes",
            component.len()
        );
        match groups.last_mut() {
            Some(g) if g.len() + component.len() <= limit => g.extend(component.iter().map(|&i| resources[i].clone())),
            _ => groups.push(component.iter().map(|&i| resources[i].clone()).collect()),
        }
    }
    groups
}

/// Examples plain HAPI refuses as invalid (HAPI-0931: a reference to a type the element does
/// not allow), left out of [`instance_examples`].
const HAPI_REFUSES: &[&str] = &["DeviceUseStatement/example", "Observation/clinical-gender"];

/// Stored Bundles larger than this (the spec's definition Bundles, 2 to 35 MB) are left out.
const MAX_EXAMPLE_BYTES: u64 = 1_000_000;

/// Every instance example a tenant may write (not the server-wide definitional types), as
/// far as it can be created on any server: left out are examples HAPI refuses
/// ([`HAPI_REFUSES`], Bundles of a type it does not store), the spec's multi-megabyte definition
/// Bundles, attachments pointing elsewhere, Subscriptions (refused by fhir-fence by design:
/// only a tenant's allowed destinations) and canonical URLs naming definitions elsewhere
/// ([`refused_canonicals`], refused by design too), and, until nothing
/// changes, every example naming a resource outside the set — by `reference`, or by any string
/// that is a relative literal of a resource type (HAPI resolves canonicals such as `library`
/// written that way like references), absolute and versioned ones included.
pub fn instance_examples() -> Vec<Value> {
    let dir = format!("{}/hl7-r4-examples/package", super::test_data_dir().display());
    let mut all: Vec<Value> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e} (run scripts/fetch-test-data)"))
        .filter_map(|e| e.ok())
        .filter(|e| e.metadata().is_ok_and(|m| m.len() <= MAX_EXAMPLE_BYTES))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter(|r| {
            let (Some(t), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str()) else { return false };
            let stored_bundle =
                t != "Bundle" || ["document", "collection", "message"].contains(&r["type"].as_str().unwrap_or(""));
            // Subscriptions deliver to hosts fhir-fence allows per tenant only (tested elsewhere).
            !fhir_fence::fhir::server_wide::is_server_wide(t)
                && t != "Subscription"
                && stored_bundle
                && !HAPI_REFUSES.contains(&format!("{t}/{id}").as_str())
        })
        .filter(|r| {
            let mut elsewhere = false;
            let _ = fhir_fence::fhir::reference::for_each_attachment_url_mut(&mut r.clone(), &mut |u: &mut String| {
                elsewhere |= !u.starts_with("Binary/");
                Ok::<_, ()>(())
            });
            !elsewhere
        })
        .filter(|r| !refused_canonicals(r))
        .collect();
    all.sort_by_key(|r| format!("{}/{}", r["resourceType"], r["id"]));
    loop {
        let present: HashSet<String> = all.iter().map(key).collect();
        let before = all.len();
        all.retain(|r| {
            let mut names = vec![];
            let whole = literals(r, &mut names);
            whole && names.iter().all(|n| present.contains(n))
        });
        if all.len() == before {
            return all;
        }
    }
}

/// `Type/id` of a resource.
/// Whether fhir-fence refuses `r`'s canonicals by design when a tenant writes it
/// (`scope::canonicals`): a canonical naming, by URL, a definition a tenant could write (a
/// Library, a Questionnaire…) that is neither the tenant's own nor under the shared base the
/// tests configure (`http://hl7.org/fhir/`; the examples point such URLs at hosts nobody
/// serves), a canonical of another form (a bare id), or a definition whose own `url` is under
/// that shared base (shared definitions are the operator's).
fn refused_canonicals(r: &Value) -> bool {
    const SHARED: &str = "http://hl7.org/fhir/";
    let mut refused = r["url"].as_str().is_some_and(|u| u.starts_with(SHARED));
    fhir_fence::fhir::shape::Model::r4().for_each_canonical(r, &mut |c, targets| {
        let shared = c.starts_with('#') || c.starts_with(SHARED) || fhir_fence::fhir::canonical::literal(c).is_some();
        refused |= fhir_fence::fhir::canonical::form_problem(c, targets).is_some()
            || !shared && targets.iter().any(|t| !fhir_fence::fhir::server_wide::is_server_wide(t));
    });
    refused
}

pub fn key(r: &Value) -> String {
    format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())
}

/// Collects every `Type/id` a resource names (`reference`s and literal-shaped strings); false
/// when it names something in a form that cannot be created alongside it (an absolute, `urn:`,
/// versioned or conditional reference).
pub fn literals(v: &Value, out: &mut Vec<String>) -> bool {
    match v {
        Value::Object(m) => m.iter().all(|(k, x)| match (k.as_str(), x) {
            ("reference", Value::String(r)) if r.starts_with('#') => true,
            ("reference", Value::String(r)) => {
                let plain = r.split('/').count() == 2 && fhir_fence::fhir::reference::literal(r).is_some();
                out.push(r.clone());
                plain
            }
            _ => literals(x, out),
        }),
        Value::Array(a) => a.iter().all(|x| literals(x, out)),
        Value::String(s) => match fhir_fence::fhir::canonical::literal(s) {
            Some((l, rest)) if l.version.is_none() && rest.is_empty() => {
                out.push(s.clone());
                true
            }
            Some(_) => false,
            None => true,
        },
        _ => true,
    }
}
