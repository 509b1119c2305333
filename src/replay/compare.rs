//! Transparency: does the replayed answer say what the recorded one said?
//!
//! Both bodies are normalised first: the replay's server-assigned ids are mapped back to the
//! recording's ([`Ids`]), the replay's own marker tag is removed, and everything an ignore rule
//! names is removed from both (what legitimately differs between two runs: versions,
//! timestamps, link URLs, …). Then status and bodies must be equal.
use super::ids::Ids;
use super::MARKER_SYSTEM;
use serde_json::{Map, Value};

/// What differs between two runs of the same traffic on any FHIR server.
pub const DEFAULT_IGNORE: &[&str] = &[
    "*.meta.versionId",
    "*.meta.lastUpdated",
    "*.meta.source",
    "Bundle.id",
    "Bundle.timestamp",
    "Bundle.link.url",
    "Bundle.entry.fullUrl",
    "Bundle.entry.response.etag",
    "Bundle.entry.response.lastModified",
    "OperationOutcome.issue.diagnostics",
];

/// An ignore rule: `Type.path.to.key` (or `*.path`) removes that key from every resource of
/// that type anywhere in a body (entries, contained resources, outcomes); arrays on the way
/// are walked through.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    rtype: String,
    path: Vec<String>,
}

impl Rule {
    pub fn parse(s: &str) -> Result<Rule, String> {
        let mut parts = s.split('.');
        let rtype = parts.next().unwrap_or_default().to_owned();
        let path: Vec<String> = parts.map(str::to_owned).collect();
        let ok_type = rtype == "*" || rtype.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        if !ok_type || path.is_empty() || path.iter().any(|p| p.is_empty()) {
            return Err(format!("ignore rule {s:?}: expected Type.path or *.path"));
        }
        Ok(Rule { rtype, path })
    }
}

pub fn rules(extra: &[String]) -> Result<Vec<Rule>, String> {
    DEFAULT_IGNORE.iter().map(|s| Rule::parse(s)).chain(extra.iter().map(|s| Rule::parse(s))).collect()
}

/// The first difference between the recorded and the replayed answer, if any. `unordered`:
/// the request did not ask for an order (no `_sort`), so a searchset's entries are compared
/// as a collection — FHIR leaves their order to the server.
pub fn difference(
    recorded: (u16, Option<&Value>, Option<&str>),
    replayed: (u16, Option<&Value>, Option<&str>),
    ids: &Ids,
    rules: &[Rule],
    unordered: bool,
) -> Option<String> {
    if recorded.0 != replayed.0 {
        let why = replayed
            .1
            .filter(|b| b.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome"))
            .and_then(|b| b.pointer("/issue/0/diagnostics"))
            .and_then(Value::as_str)
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        return Some(format!("status {} recorded, {} replayed{why}", recorded.0, replayed.0));
    }
    match (recorded.1, replayed.1) {
        (Some(a), Some(b)) => {
            let mut a = normalise(a.clone(), None, rules);
            let mut b = normalise(b.clone(), Some(ids), rules);
            if unordered {
                sort_entries(&mut a);
                sort_entries(&mut b);
            }
            first_difference(&a, &b, "")
        }
        (None, None) => (recorded.2 != replayed.2).then(|| "the text bodies differ".to_owned()),
        (Some(_), None) => Some("a JSON body was recorded, the replay's is not JSON".into()),
        (None, Some(_)) => Some("the replay answered JSON where the recording has none".into()),
    }
}

/// The body with ids mapped back (replayed side only), markers and ignored keys removed.
pub fn normalise(mut v: Value, ids: Option<&Ids>, rules: &[Rule]) -> Value {
    if let Some(ids) = ids {
        ids.map_body(&mut v, false);
    }
    walk(&mut v, rules);
    v
}

/// A searchset's entries in a canonical order, for comparing them as a collection: by their
/// text with every object's keys sorted, so the order members happen to be written in (a server's
/// `fullUrl, resource, search`; what is left once ignored members are removed) never decides it.
fn sort_entries(v: &mut Value) {
    if v.get("type").and_then(Value::as_str) != Some("searchset") {
        return;
    }
    if let Some(entries) = v.get_mut("entry").and_then(Value::as_array_mut) {
        entries.sort_by_cached_key(canonical_text);
    }
}

/// `v` as JSON text with the keys of every object in sorted order.
fn canonical_text(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

fn walk(v: &mut Value, rules: &[Rule]) {
    match v {
        Value::Object(m) => {
            let rtype = m.get("resourceType").and_then(Value::as_str).map(str::to_owned);
            m.values_mut().for_each(|x| walk(x, rules));
            if let Some(rtype) = rtype {
                for r in rules.iter().filter(|r| r.rtype == "*" || r.rtype == rtype) {
                    remove(m, &r.path);
                }
                strip_marker(m);
                if rtype == "Bundle" {
                    relative_locations(m);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| walk(x, rules)),
        _ => {}
    }
}

/// `entry.response.location` as `Type/id[/_history/v]`: servers may answer it relative or
/// absolute (HAPI: relative; fhir-fence: on its public base).
fn relative_locations(m: &mut Map<String, Value>) {
    let Some(Value::Array(entries)) = m.get_mut("entry") else { return };
    for e in entries {
        if let Some(Value::String(loc)) = e.pointer_mut("/response/location") {
            if let Some((t, id)) = super::ids::type_and_id(loc) {
                if let Some(at) = loc.rfind(&format!("/{t}/{id}")) {
                    *loc = loc[at + 1..].to_owned();
                }
            }
        }
    }
}

fn remove(m: &mut Map<String, Value>, path: &[String]) {
    let Some((head, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        m.remove(head);
        return;
    }
    match m.get_mut(head) {
        Some(Value::Object(inner)) => remove(inner, rest),
        Some(Value::Array(items)) => {
            for item in items {
                if let Value::Object(inner) = item {
                    remove(inner, rest);
                }
            }
        }
        _ => {}
    }
}

/// Removes the replay's marker coding, and `meta` / `meta.tag` left empty (on both sides, so a
/// recorded `meta` holding only ignored keys compares equal to none).
fn strip_marker(m: &mut Map<String, Value>) {
    let Some(Value::Object(meta)) = m.get_mut("meta") else { return };
    if let Some(Value::Array(tags)) = meta.get_mut("tag") {
        tags.retain(|t| t.get("system").and_then(Value::as_str) != Some(MARKER_SYSTEM));
        if tags.is_empty() {
            meta.remove("tag");
        }
    }
    if meta.is_empty() {
        m.remove("meta");
    }
}

fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let here = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match y.get(k) {
                    None => return Some(format!("{here}: recorded, missing in the replay")),
                    Some(vb) => {
                        if let Some(d) = first_difference(va, vb, &here) {
                            return Some(d);
                        }
                    }
                }
            }
            y.keys().find(|k| !x.contains_key(*k)).map(|k| {
                let here = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                format!("{here}: in the replay, not recorded")
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{at}: {} items recorded, {} replayed", x.len(), y.len()));
            }
            x.iter().zip(y).enumerate().find_map(|(i, (va, vb))| first_difference(va, vb, &format!("{at}[{i}]")))
        }
        _ => (a != b).then(|| format!("{at}: {} recorded, {} replayed", short(a), short(b))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}…", &s[..s.char_indices().nth(80).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_links_and_markers_are_ignored_but_content_is_not() {
        let mut ids = Ids::default();
        ids.learn("Patient", "123", "9f1c");
        let rules = rules(&[]).unwrap();
        let recorded = json!({"resourceType": "Bundle", "id": "x", "link": [{"relation": "self", "url": "http://a/fhir/Patient"}],
            "entry": [{"fullUrl": "http://a/fhir/Patient/123", "resource": {"resourceType": "Patient", "id": "123",
                "meta": {"versionId": "1", "lastUpdated": "2020"}, "managingOrganization": {"reference": "Organization/o1"}}}]});
        let replayed = json!({"resourceType": "Bundle", "id": "y", "link": [{"relation": "self", "url": "http://b/fhir/Patient"}],
            "entry": [{"fullUrl": "http://b/fhir/Patient/9f1c", "resource": {"resourceType": "Patient", "id": "9f1c",
                "meta": {"versionId": "3", "tag": [{"system": MARKER_SYSTEM, "code": "m"}]},
                "managingOrganization": {"reference": "Organization/o1"}}}]});
        assert_eq!(difference((200, Some(&recorded), None), (200, Some(&replayed), None), &ids, &rules, false), None);
        let mut changed = replayed.clone();
        changed["entry"][0]["resource"]["managingOrganization"]["reference"] = json!("Organization/o2");
        assert_eq!(
            difference((200, Some(&recorded), None), (200, Some(&changed), None), &ids, &rules, false).unwrap(),
            "entry[0].resource.managingOrganization.reference: \"Organization/o1\" recorded, \"Organization/o2\" replayed"
        );
        assert!(difference((200, None, None), (404, None, None), &ids, &rules, false).unwrap().starts_with("status"));
        // Without `_sort`, a searchset's order is the server's business.
        let two = |a: &str, b: &str| {
            json!({"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": {"resourceType": "Patient", "id": a}}, {"resource": {"resourceType": "Patient", "id": b}}]})
        };
        assert!(difference((200, Some(&two("a", "b")), None), (200, Some(&two("b", "a")), None), &ids, &rules, false)
            .is_some());
        assert_eq!(
            difference((200, Some(&two("a", "b")), None), (200, Some(&two("b", "a")), None), &ids, &rules, true),
            None
        );
    }

    #[test]
    fn a_collection_is_compared_whatever_order_its_members_are_written_in() {
        // Found in the conformance run: HAPI writes `fullUrl, resource, search`; once `fullUrl`
        // was removed, an entry's text began with `search` on one side and `resource` on the
        // other, and the two sides sorted differently.
        let rules = rules(&[]).unwrap();
        let entry = |mode: &str, t: &str, full: bool| {
            let mut e = serde_json::Map::new();
            if full {
                e.insert("fullUrl".into(), json!(format!("http://a/fhir/{t}/1")));
            }
            e.insert("resource".into(), json!({"resourceType": t, "id": "1"}));
            e.insert("search".into(), json!({"mode": mode}));
            Value::Object(e)
        };
        let bundle = |entries: Vec<Value>| json!({"resourceType": "Bundle", "type": "searchset", "entry": entries});
        let recorded = bundle(vec![entry("match", "Observation", true), entry("include", "Patient", true)]);
        let replayed = bundle(vec![entry("match", "Observation", false), entry("include", "Patient", false)]);
        let ids = Ids::default();
        assert_eq!(difference((200, Some(&recorded), None), (200, Some(&replayed), None), &ids, &rules, true), None);
    }

    #[test]
    fn rules_are_checked() {
        assert!(Rule::parse("patient.id").is_err());
        assert!(Rule::parse("Patient").is_err());
        assert!(Rule::parse("Patient..id").is_err());
        assert!(Rule::parse("*.text.div").is_ok());
    }
}
