//! Replays a recording once per tenant, concurrently, and checks every answer.
//!
//! Each tenant's copy runs the exchanges in order (later ones depend on earlier writes); the
//! tenants run at the same time, so their data share the server while the checks run. Every
//! resource a tenant writes carries a marker coding unique to the run and tenant; an answer to
//! one tenant that holds another's marker, or an id the server assigned to another, is an
//! isolation failure.
use super::compare::{self, Rule};
use super::format::{Body, Exchange};
use super::ids::{type_and_id, Ids};
use super::MARKER_SYSTEM;
use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What to replay, where, as whom.
pub struct Plan {
    pub exchanges: Vec<Exchange>,
    /// The FHIR base URL to replay against, without a trailing `/`.
    pub target: String,
    /// Tenant name and bearer token, one replay each.
    pub tenants: Vec<(String, String)>,
    pub rules: Vec<Rule>,
    /// Makes this run's markers unique.
    pub run_id: String,
}

/// A check's verdict for one exchange and tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "lowercase")]
pub enum Check {
    Pass,
    Fail(String),
    /// Not applicable (no recorded answer, or an expected refusal).
    Skipped,
}

impl Check {
    pub fn failed(&self) -> bool {
        matches!(self, Check::Fail(_))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub exchange: String,
    pub tenant: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub isolation: Check,
    pub transparency: Check,
    pub refusal: Check,
}

/// What every tenant has written so far, for the other tenants' isolation checks.
#[derive(Default)]
struct Written {
    /// `Type/id` the server assigned, per tenant.
    ids: HashMap<String, HashSet<(String, String)>>,
}

pub fn marker(run_id: &str, tenant: &str) -> String {
    format!("ffreplay-{run_id}-{tenant}")
}

/// Replays the plan; one outcome per exchange and tenant, tenants in the plan's order, each
/// tenant's in the recording's order.
pub async fn run(plan: Arc<Plan>) -> Vec<Outcome> {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let written = Arc::new(Mutex::new(Written::default()));
    let markers: Vec<(String, String)> =
        plan.tenants.iter().map(|(t, _)| (t.clone(), marker(&plan.run_id, t))).collect();
    let replays: Vec<_> = (0..plan.tenants.len())
        .map(|i| {
            let (plan, client, written) = (plan.clone(), client.clone(), written.clone());
            let foreign: Vec<(String, String)> =
                markers.iter().filter(|(t, _)| *t != plan.tenants[i].0).cloned().collect();
            tokio::spawn(async move {
                let (tenant, token) = &plan.tenants[i];
                replay_tenant(&plan, &client, tenant, token, marker(&plan.run_id, tenant), foreign, written).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for r in replays {
        out.extend(r.await.expect("a replay task panicked"));
    }
    out
}

async fn replay_tenant(
    plan: &Plan,
    client: &Client<HttpConnector, Full<Bytes>>,
    tenant: &str,
    token: &str,
    own_marker: String,
    foreign_markers: Vec<(String, String)>,
    written: Arc<Mutex<Written>>,
) -> Vec<Outcome> {
    let mut ids = Ids::default();
    let mut links = Links::default();
    let mut out = Vec::with_capacity(plan.exchanges.len());
    for x in &plan.exchanges {
        let rtype = x.request.path.split('/').next().filter(|s| !s.is_empty());
        // A page link the recording followed is replaced by the replay's own link.
        let (path, query) = match links.replayed_for(&x.request.method, &x.request.path, &x.request.query, &plan.target)
        {
            Some(pq) => pq,
            None => (ids.map_path(&x.request.path), ids.map_query(&x.request.query, rtype)),
        };
        let mut body = x.request.body();
        if let Some(v) = &mut body.body {
            ids.map_body(v, true);
            mark(&x.request.method, &x.request.path, v, &own_marker);
        }
        let answer = send(client, &plan.target, x, &path, &query, &body, token, &ids).await;
        let outcome = match answer {
            Err(e) => Outcome {
                exchange: x.id.clone(),
                tenant: tenant.to_owned(),
                method: x.request.method.clone(),
                path: x.request.path.clone(),
                status: 0,
                isolation: Check::Pass,
                transparency: if x.response.is_some() { Check::Fail(e.clone()) } else { Check::Skipped },
                refusal: if x.expect.is_some() { Check::Fail(e) } else { Check::Skipped },
            },
            Ok((status, headers, raw)) => {
                let replayed = Body::from_bytes(&raw);
                learn(&mut ids, x, &headers, replayed.body.as_ref());
                if let (Some(r), Some(b)) = (x.response.as_ref().and_then(|r| r.body.as_ref()), replayed.body.as_ref())
                {
                    links.learn(r, b);
                }
                let fresh = ids.take_fresh();
                if !fresh.is_empty() {
                    written.lock().expect("not poisoned").ids.entry(tenant.to_owned()).or_default().extend(fresh);
                }
                let isolation = isolation(&raw, &headers, replayed.body.as_ref(), tenant, &foreign_markers, &written);
                let refusal = match &x.expect {
                    None => Check::Skipped,
                    Some(e) => {
                        let oo = replayed.body.as_ref().and_then(|b| b.get("resourceType"))
                            == Some(&json!("OperationOutcome"));
                        if status == e.status && oo {
                            Check::Pass
                        } else {
                            Check::Fail(format!("expected {} with an OperationOutcome, got {status}", e.status))
                        }
                    }
                };
                let transparency = match (&x.response, &x.expect) {
                    (Some(r), None) => match compare::difference(
                        (r.status, r.body.as_ref(), r.text()),
                        (status, replayed.body.as_ref(), replayed.text()),
                        &ids,
                        &plan.rules,
                        !x.request.query.split('&').any(|p| p.starts_with("_sort")),
                    ) {
                        None => Check::Pass,
                        Some(d) => Check::Fail(d),
                    },
                    _ => Check::Skipped,
                };
                Outcome {
                    exchange: x.id.clone(),
                    tenant: tenant.to_owned(),
                    method: x.request.method.clone(),
                    path: x.request.path.clone(),
                    status,
                    isolation,
                    transparency,
                    refusal,
                }
            }
        };
        out.push(outcome);
    }
    out
}

/// Page links (`next`, `previous`, …) of recorded answers, paired with the replay's by relation:
/// a recorded request that follows a recorded link follows the replay's link instead (its
/// query holds the server's paging state, which differs between runs).
#[derive(Default)]
struct Links(Vec<(url::Url, url::Url)>);

impl Links {
    fn learn(&mut self, recorded: &Value, replayed: &Value) {
        let rels = |b: &Value| -> Vec<(String, url::Url)> {
            b.get("link")
                .and_then(Value::as_array)
                .map(|ls| {
                    ls.iter()
                        .filter_map(|l| {
                            let rel = l.get("relation")?.as_str()?;
                            (rel != "self").then_some(())?;
                            Some((rel.to_owned(), url::Url::parse(l.get("url")?.as_str()?).ok()?))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let theirs = rels(replayed);
        for (rel, rec) in rels(recorded) {
            if let Some((_, rep)) = theirs.iter().find(|(r, _)| *r == rel) {
                self.0.retain(|(r, _)| *r != rec);
                self.0.push((rec, rep.clone()));
            }
        }
    }

    /// The replay's path and query (relative to `target`) for a request that follows a link: a
    /// `GET` with a query (a page link always carries its paging state; a `first` link without
    /// one is the search itself, and a transaction `POST` to the base is no page).
    fn replayed_for(&self, method: &str, path: &str, query: &str, target: &str) -> Option<(String, String)> {
        if method != "GET" || query.is_empty() {
            return None;
        }
        let (_, rep) = self.0.iter().rev().find(|(rec, _)| {
            rec.query().unwrap_or_default() == query
                && (rec.path().trim_end_matches('/').ends_with(&format!("/{path}")) || path.is_empty())
        })?;
        let target_path = url::Url::parse(target).ok()?.path().trim_end_matches('/').to_owned();
        let rel = rep.path().strip_prefix(&target_path)?.trim_start_matches('/').to_owned();
        Some((rel, rep.query().unwrap_or_default().to_owned()))
    }
}

/// Adds the tenant's marker coding to every resource the request writes.
fn mark(method: &str, path: &str, v: &mut Value, marker: &str) {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let writes = match (method, segs.len()) {
        ("POST", 1) | ("PUT", 1) | ("PUT", 2) => v.get("resourceType").and_then(Value::as_str) == Some(segs[0]),
        _ => false,
    };
    if writes {
        tag(v, marker);
    }
    let is_bundle_post = method == "POST" && segs.is_empty() && v.get("resourceType") == Some(&json!("Bundle"));
    if is_bundle_post {
        if let Some(entries) = v.get_mut("entry").and_then(Value::as_array_mut) {
            for e in entries {
                let m = e.pointer("/request/method").and_then(Value::as_str).unwrap_or_default().to_owned();
                if m == "POST" || m == "PUT" {
                    if let Some(r) = e.get_mut("resource") {
                        tag(r, marker);
                    }
                }
            }
        }
    }
}

fn tag(resource: &mut Value, marker: &str) {
    let Some(obj) = resource.as_object_mut() else { return };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(json!({"system": MARKER_SYSTEM, "code": marker}));
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    target: &str,
    x: &Exchange,
    path: &str,
    query: &str,
    body: &Body,
    token: &str,
    ids: &Ids,
) -> Result<(u16, http::HeaderMap, Bytes), String> {
    let method = Method::from_bytes(x.request.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut uri = format!("{target}/{path}");
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(query);
    }
    let mut req = Request::builder().method(method).uri(&uri);
    for (k, v) in &x.request.headers {
        let v = if k == "if-none-exist" { ids.map_query(v, path.split('/').next()) } else { v.clone() };
        req = req.header(k.as_str(), v);
    }
    let auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    req = req.header(http::header::AUTHORIZATION, auth);
    let req = req.body(Full::new(Bytes::from(body.to_bytes()))).map_err(|e| format!("{uri}: {e}"))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{uri}: {e}"))?;
        let (parts, b) = resp.into_parts();
        let raw = b.collect().await.map_err(|e| format!("{uri}: {e}"))?.to_bytes();
        Ok::<_, String>((parts.status.as_u16(), parts.headers, raw))
    };
    tokio::time::timeout(Duration::from_secs(120), exchange).await.map_err(|_| format!("{uri}: no answer in 120 s"))?
}

/// Learns the server-assigned ids of this exchange: `Location`, transaction-response entries,
/// or the created resource's id.
fn learn(ids: &mut Ids, x: &Exchange, headers: &http::HeaderMap, replayed: Option<&Value>) {
    let Some(rec) = &x.response else { return };
    let loc = headers.get(http::header::LOCATION).and_then(|v| v.to_str().ok());
    if let (Some(a), Some(b)) = (rec.headers.get("location"), loc) {
        ids.learn_locations(a, b);
    }
    let (Some(a), Some(b)) = (rec.body.as_ref(), replayed) else { return };
    if a.get("resourceType") == Some(&json!("Bundle")) && b.get("resourceType") == Some(&json!("Bundle")) {
        let kind = a.get("type").and_then(Value::as_str);
        if matches!(kind, Some("transaction-response" | "batch-response")) {
            let (ea, eb) = (entries(a), entries(b));
            for (x, y) in ea.iter().zip(eb.iter()) {
                let l = |e: &Value| e.pointer("/response/location").and_then(Value::as_str).map(str::to_owned);
                if let (Some(p), Some(q)) = (l(x), l(y)) {
                    ids.learn_locations(&p, &q);
                }
            }
        }
    } else if x.request.method == "POST" && rec.status == 201 {
        let id = |v: &Value| Some((v.get("resourceType")?.as_str()?.to_owned(), v.get("id")?.as_str()?.to_owned()));
        if let (Some((t1, i1)), Some((t2, i2))) = (id(a), id(b)) {
            if t1 == t2 {
                ids.learn(&t1, &i1, &i2);
            }
        }
    }
}

fn entries(b: &Value) -> Vec<Value> {
    b.get("entry").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// Another tenant's marker anywhere in the answer (body or headers), or an id the server
/// assigned to another tenant, is a leak. The failure names the resources that carry it.
fn isolation(
    raw: &[u8],
    headers: &http::HeaderMap,
    body: Option<&Value>,
    tenant: &str,
    foreign_markers: &[(String, String)],
    written: &Mutex<Written>,
) -> Check {
    let header_text: String = headers.values().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join("\n");
    let mut found: BTreeSet<String> = BTreeSet::new();
    for (other, m) in foreign_markers {
        let in_body = memchr::memmem::find(raw, m.as_bytes()).is_some();
        if in_body || header_text.contains(m.as_str()) {
            let carriers = body.map(|b| carriers_of(b, m)).unwrap_or_default();
            let named = if carriers.is_empty() { "the answer".to_owned() } else { carriers.join(", ") };
            found.insert(format!("{named} written by tenant {other} (marker {m})"));
        }
    }
    let w = written.lock().expect("not poisoned");
    let mut refs = BTreeSet::new();
    if let Some(b) = body {
        references(b, &mut refs);
    }
    for l in headers.get_all(http::header::LOCATION) {
        if let Some((t, i)) = l.to_str().ok().and_then(type_and_id) {
            refs.insert((t.to_owned(), i.to_owned()));
        }
    }
    for (other, theirs) in w.ids.iter().filter(|(t, _)| t.as_str() != tenant) {
        for r in refs.iter().filter(|r| theirs.contains(*r)) {
            found.insert(format!("{}/{} assigned to tenant {other}", r.0, r.1));
        }
    }
    if found.is_empty() {
        Check::Pass
    } else {
        Check::Fail(found.into_iter().collect::<Vec<_>>().join("; "))
    }
}

/// `Type/id` of every resource in `v` whose tags hold `marker`.
fn carriers_of(v: &Value, marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, marker: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                let tagged = m
                    .get("meta")
                    .and_then(|meta| meta.get("tag"))
                    .and_then(Value::as_array)
                    .is_some_and(|tags| tags.iter().any(|t| t.get("code").and_then(Value::as_str) == Some(marker)));
                if tagged {
                    let t = m.get("resourceType").and_then(Value::as_str).unwrap_or("?");
                    let id = m.get("id").and_then(Value::as_str).unwrap_or("?");
                    out.push(format!("{t}/{id}"));
                }
                m.values().for_each(|x| walk(x, marker, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, marker, out)),
            _ => {}
        }
    }
    walk(v, marker, &mut out);
    out
}

/// Every resource `Type/id` and every `Type/id` string in a body.
fn references(v: &Value, out: &mut BTreeSet<(String, String)>) {
    match v {
        Value::Object(m) => {
            if let (Some(Value::String(t)), Some(Value::String(i))) = (m.get("resourceType"), m.get("id")) {
                out.insert((t.clone(), i.clone()));
            }
            m.values().for_each(|x| references(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| references(x, out)),
        Value::String(s) => {
            if let Some((t, i)) = type_and_id(s) {
                out.insert((t.to_owned(), i.to_owned()));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::Links;
    use serde_json::json;

    #[test]
    fn only_gets_with_a_query_follow_a_recorded_link() {
        let mut links = Links::default();
        let bundle = |base: &str, first: &str, next: &str| {
            json!({"resourceType": "Bundle", "link": [
                {"relation": "first", "url": format!("{base}/{first}")},
                {"relation": "next", "url": format!("{base}/{next}")}]})
        };
        links.learn(
            &bundle("http://rec:1", "Patient", "Patient?_cursor=abc"),
            &bundle("http://fence:2/fhir", "?_page=one", "?_page=two"),
        );
        // The recorded next link is followed through the replay's.
        assert_eq!(
            links.replayed_for("GET", "Patient", "_cursor=abc", "http://fence:2/fhir"),
            Some((String::new(), "_page=two".to_owned()))
        );
        // A first link without a query is the search itself; a POST to the base is no page.
        assert_eq!(links.replayed_for("GET", "Patient", "", "http://fence:2/fhir"), None);
        assert_eq!(links.replayed_for("POST", "", "", "http://fence:2/fhir"), None);
    }
}
