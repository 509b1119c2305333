//! The transparency suite: does sharing an upstream change a tenant's answers?
//!
//! The official HL7 R4 examples (`scripts/fetch-test-data`) are loaded for tenant A twice: on a
//! *dedicated* upstream (a fhir-fence in front holding only A) and, through transactions, on the
//! *shared* one, where tenant B loads the same examples plus extra patients that match the same
//! searches. Then every search below must give A the same status, the same ids (all pages), the
//! same totals — and the same order where `_sort` is given.
//!
//! The upstream is chosen by `FHIR_TEST_UPSTREAM` (`support::Server`): HAPI (`HAPI_URL`,
//! `HAPI_DEDICATED_URL`, the default) or Medplum's FHIR router (`MEDPLUM_URL`,
//! `MEDPLUM_DEDICATED_URL`). A search the server cannot answer must be refused alike on both;
//! where a server's answers cannot be the same for a reason fhir-fence cannot remove, the search
//! is named in that server's exception list ([`exceptions`]) with the reason, and the exception
//! must still hold (a listed search that turns out identical fails the test too).
#[path = "../integration/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use support::client::{self, Reply};
use support::hl7::{close_over_references, examples, in_dependency_order, key, transaction, SEARCHES};
use support::{tenants, Fence, Options, Server};

/// Loads the selection onto the dedicated upstream and returns what it holds. Resource by
/// resource first (retrying those whose references are not there yet), so examples the upstream
/// itself rejects are found and left out; then the reference cycles that only a transaction can
/// write: in one transaction, or, on a server that takes at most `limit` writes in one, in as
/// few as it takes, each cycle whole (`hl7::in_dependency_order`). Those must all load.
async fn load_dedicated(f: &Fence, token: &str, resources: &[Value], limit: Option<usize>) -> Loaded {
    let mut pending = resources.to_vec();
    let mut loaded = vec![];
    loop {
        let before = loaded.len();
        let mut retry = vec![];
        for r in pending {
            let path = format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
            let reply = client::put(&f.url(&path), &r).bearer(token).send().await;
            let why = reply.body["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_owned();
            match reply.status {
                200 | 201 => loaded.push(r),
                422 if why.contains("does not resolve") => retry.push(r),
                other => eprintln!("transparency: {path} left out, the upstream refuses it ({other})"),
            }
        }
        if retry.is_empty() || loaded.len() == before {
            pending = retry;
            break;
        }
        pending = retry;
    }
    // What is left waits on a cycle (or on something left out): keep the closed part.
    let mut all: Vec<Value> = loaded.iter().chain(pending.iter()).cloned().collect();
    close_over_references(&mut all);
    let singly: BTreeSet<String> = loaded.iter().map(key).collect();
    let rest: Vec<Value> = all.into_iter().filter(|r| !singly.contains(&key(r))).collect();
    let groups = match limit {
        None if rest.is_empty() => vec![],
        None => vec![rest],
        Some(limit) => in_dependency_order(&rest, limit),
    };
    let mut together = vec![];
    for group in groups {
        // Each cycle is closed over references and within the server's limit: it must load.
        let r = client::post(&f.base, &transaction(&group)).bearer(token).send().await;
        assert_eq!(r.status, 200, "{} resources in reference cycles did not load: {}", group.len(), r.body);
        together.push(group);
    }
    eprintln!(
        "transparency: {} written one by one, {} in {} transactions",
        loaded.len(),
        together.iter().map(Vec::len).sum::<usize>(),
        together.len()
    );
    Loaded { singly: loaded, together }
}

/// What the dedicated upstream holds: the examples written one by one (in an order where each
/// one's references were already there), then the groups written in one transaction each (the
/// reference cycles and what depends on them).
struct Loaded {
    singly: Vec<Value>,
    together: Vec<Vec<Value>>,
}

impl Loaded {
    fn len(&self) -> usize {
        self.singly.len() + self.together.iter().map(Vec::len).sum::<usize>()
    }

    /// The same set as transactions for the shared upstream: one transaction, or, on a server
    /// that takes at most `limit` writes in one, chunks of the one-by-one order (each chunk's
    /// references are in it or in an earlier one), then the groups as they were written.
    fn transactions(&self, limit: Option<usize>) -> Vec<Value> {
        let Some(limit) = limit else {
            let all: Vec<Value> = self.singly.iter().chain(self.together.iter().flatten()).cloned().collect();
            return vec![transaction(&all)];
        };
        self.singly.chunks(limit).map(transaction).chain(self.together.iter().map(|g| transaction(g))).collect()
    }
}

/// Everything a search answers: status, first-page total, and (type, id, mode) over all pages;
/// for a refusal, its OperationOutcome's issue codes and texts.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    total: Option<u64>,
    entries: Vec<(String, String, String)>,
    refusal: Vec<(String, String)>,
}

/// A search's answer over all its pages: by the `next` links, or, on a server that gives none
/// (Medplum's router), by `_offset` in steps of the query's `_count` until a page has fewer
/// matches than that.
async fn answer(f: &Fence, token: &str, query: &str, ordered: bool, server: Server) -> Answer {
    // A system search is the base itself with a query.
    let url = |q: &str| if q.starts_with('?') { format!("{}{q}", f.base) } else { f.url(q) };
    let mut r: Reply = client::get(&url(query)).bearer(token).send().await;
    let (status, total) = (r.status, r.body["total"].as_u64());
    let refusal = match status {
        200 => vec![],
        _ => r.body["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                let text = i["diagnostics"].as_str().or(i["details"]["text"].as_str()).unwrap_or_default();
                // A withheld upstream refusal names its log line, different every time.
                let text = text.split("correlation id").next().unwrap_or_default();
                (i["code"].as_str().unwrap_or_default().to_owned(), text.to_owned())
            })
            .collect(),
    };
    let count = query
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("_count="))
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|c| *c > 0 && !server.pages_by_links());
    let mut entries = vec![];
    for page in 1..=50 {
        if page > 1 && r.status != 200 {
            entries.push(("a later page is refused".to_owned(), r.status.to_string(), String::new()));
        }
        for e in r.body["entry"].as_array().into_iter().flatten() {
            let res = &e["resource"];
            let id = match res["id"].as_str() {
                Some(id) => id.to_owned(),
                None => e["request"]["url"].as_str().unwrap_or_default().to_owned(),
            };
            let version = res["meta"]["versionId"].as_str().unwrap_or_default();
            let mode = e["search"]["mode"].as_str().unwrap_or(version).to_owned();
            entries.push((res["resourceType"].as_str().unwrap_or_default().to_owned(), id, mode));
        }
        let next = r.body["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str());
        let matches =
            r.body["entry"].as_array().into_iter().flatten().filter(|e| e["search"]["mode"] == "match").count();
        match (next, count) {
            (Some(n), _) => r = client::get(n).bearer(token).send().await,
            (None, Some(c)) if r.status == 200 && matches == c => {
                r = client::get(&url(&format!("{query}&_offset={}", page * c))).bearer(token).send().await
            }
            _ => break,
        }
    }
    if !ordered {
        entries.sort();
    }
    Answer { status, total, entries, refusal }
}

/// Searches over what the examples do not hold, for the refusals a server may answer: a system
/// search (neither HAPI nor Medplum's router declares one: 501) and a `Binary` search (Medplum's
/// router cannot search `Binary` by the tenant tag: 501; HAPI: an empty Bundle).
const MORE_SEARCHES: &[&str] = &["?_type=Patient&family=Chalmers", "Binary"];

/// Searches whose answers on this server differ between a shared and a dedicated upstream for
/// a reason fhir-fence cannot remove, each with that reason (docs/transparency.md). Every other
/// search must be identical, and every search listed here must still differ.
fn exceptions(server: Server) -> &'static [(&'static str, &'static str)] {
    match server {
        Server::Hapi => &[],
        Server::Medplum => &[],
        Server::Helios => &[],
    }
}

#[tokio::test]
async fn a_tenant_sees_the_same_answers_on_a_shared_and_a_dedicated_upstream() {
    let server = Server::selected();
    let ts = tenants(2);
    let options = |upstream: &str, tenants: &[support::T]| {
        let mut o = Options::new(upstream, tenants);
        o.max_body_bytes = 16 << 20;
        o
    };
    let shared = support::start(options(&server.url(), &ts)).await;
    let dedicated = support::start(options(&server.dedicated_url(), &ts[..1])).await;
    let (a_shared, a_dedicated, b) =
        (shared.token(&ts[0].name), dedicated.token(&ts[0].name), shared.token(&ts[1].name));

    let selected = examples();
    let loaded = load_dedicated(&dedicated, &a_dedicated, &selected, server.max_transaction_writes()).await;
    eprintln!("transparency ({server:?}): {} examples selected, {} loaded", selected.len(), loaded.len());
    assert!(loaded.len() >= 60, "only {} of {} selected examples loaded", loaded.len(), selected.len());

    // A loads the same set on the shared upstream in one transaction (or as few as the server
    // takes); B the same examples (same ids, same content) plus patients that match A's searches.
    for (who, token) in [("A", &a_shared), ("B", &b)] {
        for bundle in loaded.transactions(server.max_transaction_writes()) {
            let r = client::post(&shared.base, &bundle).bearer(token).send().await;
            assert_eq!(r.status, 200, "{who}'s transaction: {}", String::from_utf8_lossy(&r.raw));
        }
    }
    for i in 0..5 {
        let p = json!({"resourceType": "Patient", "id": format!("b-extra-{i}"), "gender": "male", "birthDate": "1980-01-01",
            "name": [{"family": "Chalmers", "given": ["Peter"]}], "managingOrganization": {"reference": "Organization/1"}});
        let r = client::put(&shared.url(&format!("Patient/b-extra-{i}")), &p).bearer(&b).send().await;
        assert!(r.status == 201 || r.status == 200, "{}", r.body);
    }

    let exceptions = exceptions(server);
    let mut differences = vec![];
    let mut excepted = vec![];
    let mut non_empty = 0;
    let mut refused_alike = 0;
    let searches: Vec<&str> = SEARCHES.iter().chain(MORE_SEARCHES).copied().collect();
    for q in &searches {
        let q = *q;
        let ordered = q.contains("_sort");
        let on_shared = answer(&shared, &a_shared, q, ordered, server).await;
        let on_dedicated = answer(&dedicated, &a_dedicated, q, ordered, server).await;
        if on_shared.status == 200 && !on_shared.entries.is_empty() || on_shared.total.is_some_and(|t| t > 0) {
            non_empty += 1;
        }
        // Type history cannot count (other tenants share it): compare what it lists.
        let comparable = |a: &Answer| {
            let listed = if q.ends_with("/_history") {
                a.entries.iter().map(|(t, id, _)| (t.clone(), id.clone())).collect::<BTreeSet<_>>()
            } else {
                a.entries.iter().map(|(t, id, m)| (t.clone(), format!("{id}|{m}"))).collect()
            };
            let total = if q.ends_with("/_history") { None } else { a.total };
            (a.status, total, listed, a.refusal.clone())
        };
        let difference = if ordered && on_shared.entries != on_dedicated.entries {
            Some(format!(
                "{q}: order differs\n shared: {:?}\n dedicated: {:?}",
                on_shared.entries, on_dedicated.entries
            ))
        } else if comparable(&on_shared) != comparable(&on_dedicated) {
            Some(format!("{q}:\n shared: {on_shared:?}\n dedicated: {on_dedicated:?}"))
        } else {
            None
        };
        match (difference, exceptions.iter().find(|(e, _)| *e == q)) {
            (Some(d), Some((_, why))) => {
                eprintln!("transparency ({server:?}): excepted, {why}:\n{d}");
                excepted.push(q);
            }
            (Some(d), None) => differences.push(d),
            (None, Some(_)) => differences.push(format!("{q}: listed as an exception on {server:?}, but identical")),
            (None, None) => {}
        }
        if on_shared.status != 200 && on_shared.status == on_dedicated.status {
            refused_alike += 1;
            eprintln!("transparency ({server:?}): {q} → {} on both: {:?}", on_shared.status, on_shared.refusal);
        }
        eprintln!(
            "transparency ({server:?}): {q} → {} total {:?}, {} entries (dedicated: {} total {:?}, {} entries)",
            on_shared.status,
            on_shared.total,
            on_shared.entries.len(),
            on_dedicated.status,
            on_dedicated.total,
            on_dedicated.entries.len()
        );
    }
    eprintln!(
        "transparency ({server:?}): {} examples loaded, {} searches, {} with results, {} identical ({} of them refused alike), {} excepted, {} differences",
        loaded.len(),
        searches.len(),
        non_empty,
        searches.len() - excepted.len() - differences.len(),
        refused_alike,
        excepted.len(),
        differences.len()
    );
    assert!(SEARCHES.len() >= 30);
    assert!(non_empty >= 25, "only {non_empty} searches returned anything");
    assert!(
        differences.is_empty(),
        "{} of {} searches differ:\n{}",
        differences.len(),
        searches.len(),
        differences.join("\n")
    );
}
