//! `GET metadata`: a CapabilityStatement trimmed to what fhir-fence lets through.
//!
//! A caller with credentials (a token, or a client certificate that identifies its tenant) is
//! identified first and gets its own tenant's upstream's statement; an anonymous caller
//! (clients discover the server before they log in) gets one that holds for every upstream in
//! use: the resource types all of them serve, per type the interactions and search parameters
//! all of them declare, the system interactions all of them offer. Both are served from the
//! statements read at start-up (`Snapshot::capabilities`), so they cost no upstream call.
use crate::answer::checked_response;
use crate::error::Error;
use crate::outbound::Checked;
use crate::scope::ScopeError;
use crate::state::Snapshot;
use crate::tenancy::Tenant;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// `GET metadata`: `tenant`'s upstream's CapabilityStatement, or (anonymous) the one every
/// upstream in use satisfies, reduced to what fhir-fence lets through.
pub(crate) async fn metadata(snap: &Snapshot, tenant: Option<&Tenant>) -> Result<Response<Full<Bytes>>, Error> {
    let cs = match tenant {
        Some(t) => statement(snap, &t.upstream).await?,
        None => {
            let mut used: BTreeSet<&str> = snap.upstreams_in_use.iter().map(String::as_str).collect();
            if used.is_empty() {
                used = snap.loaded.config.upstreams.keys().map(String::as_str).collect();
            }
            let mut statements = Vec::with_capacity(used.len());
            for u in used {
                statements.push(statement(snap, u).await?);
            }
            intersection(statements)
        }
    };
    Ok(checked_response(StatusCode::OK, Checked::authored(trim(snap, cs)), HeaderMap::new(), ""))
}

async fn statement(snap: &Snapshot, upstream: &str) -> Result<Value, Error> {
    let caps = snap.capabilities(upstream).await.ok_or(ScopeError::CapabilitiesUnavailable)?;
    Ok(caps.statement.clone())
}

/// The statement reduced to what fhir-fence offers (operations, includes and conditional
/// interactions removed; interactions to the allow-list), with fhir-fence's own implementation.
fn trim(snap: &Snapshot, mut cs: Value) -> Value {
    const OFFERED: &[&str] =
        &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];
    const OFFERED_SYSTEM: &[&str] = &["history-system", "search-system"];
    if let Some(Value::Object(imp)) = cs.get_mut("implementation") {
        imp.insert("url".into(), Value::String(snap.public_base.clone()));
        imp.insert("description".into(), Value::String("FHIR server behind fhir-fence (tenant-isolated)".into()));
    }
    for rest in cs.get_mut("rest").and_then(Value::as_array_mut).into_iter().flatten() {
        let Some(rest) = rest.as_object_mut() else { continue };
        rest.remove("operation");
        if let Some(Value::Array(i)) = rest.get_mut("interaction") {
            i.retain(|x| x.get("code").and_then(Value::as_str).is_some_and(|c| OFFERED_SYSTEM.contains(&c)));
        }
        for res in rest.get_mut("resource").and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(res) = res.as_object_mut() else { continue };
            res.remove("operation");
            res.remove("searchInclude");
            res.remove("searchRevInclude");
            res.remove("conditionalCreate");
            res.remove("conditionalUpdate");
            res.remove("conditionalDelete");
            if let Some(Value::Array(i)) = res.get_mut("interaction") {
                i.retain(|x| x.get("code").and_then(Value::as_str).is_some_and(|c| OFFERED.contains(&c)));
            }
        }
    }
    cs
}

/// One statement that holds for every one of `statements`: the first one's, keeping of its
/// server `rest` entry only the resource types every statement serves, per type the
/// interactions and search parameters (name and type) every statement declares for it, and the
/// system interactions and compartments every statement declares. One statement is returned as
/// it is; a composed one has no `id` (it is no single server's).
pub(crate) fn intersection(statements: Vec<Value>) -> Value {
    let mut iter = statements.into_iter();
    let Some(mut base) = iter.next() else { return Value::Null };
    let others: Vec<Value> = iter.collect();
    if others.is_empty() {
        return base;
    }
    let other_rests: Vec<Option<&Map<String, Value>>> = others.iter().map(server_rest).collect();
    if let Value::Object(cs) = &mut base {
        cs.remove("id");
    }
    let Some(rest) = server_rest_mut(&mut base) else { return base };
    keep_codes(rest.get_mut("interaction"), |code| {
        other_rests.iter().all(|r| r.is_some_and(|r| codes(r.get("interaction")).contains(code)))
    });
    if let Some(Value::Array(compartments)) = rest.get_mut("compartment") {
        compartments.retain(|c| {
            other_rests
                .iter()
                .all(|r| r.and_then(|r| r.get("compartment")).and_then(Value::as_array).is_some_and(|o| o.contains(c)))
        });
    }
    if let Some(Value::Array(resources)) = rest.get_mut("resource") {
        resources.retain_mut(|res| {
            let Some(rtype) = res.get("type").and_then(Value::as_str).map(str::to_owned) else { return false };
            let theirs: Vec<&Value> =
                other_rests.iter().filter_map(|r| r.and_then(|r| resource_of(r, &rtype))).collect();
            if theirs.len() != other_rests.len() {
                return false;
            }
            keep_codes(res.get_mut("interaction"), |code| {
                theirs.iter().all(|o| codes(o.get("interaction")).contains(code))
            });
            if let Some(Value::Array(params)) = res.get_mut("searchParam") {
                params.retain(|p| {
                    let key = param_key(p);
                    key.is_some() && theirs.iter().all(|o| params_of(o).contains(&key))
                });
            }
            true
        });
    }
    base
}

fn server_rest(cs: &Value) -> Option<&Map<String, Value>> {
    cs.get("rest")?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .find(|r| r.get("mode").and_then(Value::as_str) == Some("server"))
}

fn server_rest_mut(cs: &mut Value) -> Option<&mut Map<String, Value>> {
    cs.get_mut("rest")?
        .as_array_mut()?
        .iter_mut()
        .filter_map(Value::as_object_mut)
        .find(|r| r.get("mode").and_then(Value::as_str) == Some("server"))
}

fn resource_of<'a>(rest: &'a Map<String, Value>, rtype: &str) -> Option<&'a Value> {
    rest.get("resource")?.as_array()?.iter().find(|r| r.get("type").and_then(Value::as_str) == Some(rtype))
}

/// The `code`s of an `interaction` list.
fn codes(list: Option<&Value>) -> BTreeSet<&str> {
    list.and_then(Value::as_array).into_iter().flatten().filter_map(|i| i.get("code").and_then(Value::as_str)).collect()
}

fn keep_codes(list: Option<&mut Value>, keep: impl Fn(&str) -> bool) {
    if let Some(Value::Array(list)) = list {
        list.retain(|i| i.get("code").and_then(Value::as_str).is_some_and(&keep));
    }
}

/// A search parameter as (name, type).
fn param_key(p: &Value) -> Option<(&str, &str)> {
    Some((p.get("name")?.as_str()?, p.get("type")?.as_str()?))
}

fn params_of(res: &Value) -> BTreeSet<Option<(&str, &str)>> {
    res.get("searchParam").and_then(Value::as_array).into_iter().flatten().map(param_key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cs(id: &str, system: &[&str], resources: Value) -> Value {
        let system: Vec<Value> = system.iter().map(|c| json!({"code": c})).collect();
        json!({"resourceType": "CapabilityStatement", "id": id, "rest": [
            {"mode": "client", "resource": []},
            {"mode": "server", "interaction": system, "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"], "resource": resources}
        ]})
    }

    fn res(rtype: &str, interactions: &[&str], params: &[(&str, &str)]) -> Value {
        let i: Vec<Value> = interactions.iter().map(|c| json!({"code": c})).collect();
        let p: Vec<Value> = params.iter().map(|(n, t)| json!({"name": n, "type": t})).collect();
        json!({"type": rtype, "interaction": i, "searchParam": p})
    }

    #[test]
    fn one_statement_is_itself() {
        let a = cs("a", &["history-system"], json!([res("Patient", &["read"], &[("name", "string")])]));
        assert_eq!(intersection(vec![a.clone()]), a);
    }

    #[test]
    fn the_intersection_holds_for_every_statement() {
        let a = cs(
            "a",
            &["history-system", "search-system"],
            json!([
                res(
                    "Patient",
                    &["read", "create", "delete"],
                    &[("name", "string"), ("birthdate", "date"), ("x", "token")]
                ),
                res("Observation", &["read"], &[("code", "token")]),
                res("Basic", &["read"], &[]),
            ]),
        );
        let b = cs(
            "b",
            &["history-system"],
            json!([
                res("Observation", &["read", "search-type"], &[("code", "token")]),
                res("Patient", &["read", "create"], &[("name", "string"), ("x", "string"), ("gender", "token")]),
            ]),
        );
        let both = intersection(vec![a.clone(), b.clone()]);
        assert!(both.get("id").is_none(), "a composed statement is no single server's");
        let rest = server_rest(&both).unwrap();
        assert_eq!(codes(rest.get("interaction")), BTreeSet::from(["history-system"]));
        let types: Vec<&str> =
            rest["resource"].as_array().unwrap().iter().map(|r| r["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["Patient", "Observation"], "Basic is served by one upstream only");
        let patient = resource_of(rest, "Patient").unwrap();
        assert_eq!(codes(patient.get("interaction")), BTreeSet::from(["read", "create"]));
        // `x` differs in type: not the same parameter.
        assert_eq!(params_of(patient), BTreeSet::from([Some(("name", "string"))]));
        assert_eq!(codes(resource_of(rest, "Observation").unwrap().get("interaction")), BTreeSet::from(["read"]));
        assert_eq!(rest["compartment"], json!(["http://hl7.org/fhir/CompartmentDefinition/patient"]));
        // Symmetric in what it offers.
        let other = intersection(vec![b, a]);
        let r2 = server_rest(&other).unwrap();
        assert_eq!(params_of(resource_of(r2, "Patient").unwrap()), params_of(patient));
    }

    #[test]
    fn a_statement_without_a_server_rest_leaves_nothing() {
        let a = cs("a", &["history-system"], json!([res("Patient", &["read"], &[("name", "string")])]));
        let b = json!({"resourceType": "CapabilityStatement", "rest": []});
        let both = intersection(vec![a, b]);
        let rest = server_rest(&both).unwrap();
        assert_eq!(rest["resource"], json!([]));
        assert_eq!(rest["interaction"], json!([]));
    }
}
