//! A move's catch-up: what changed in a tenant on its source upstream since a moment, found in
//! the upstream's history (`_history?_since=`, every type in one feed, deletes included), read
//! again as it is now and made so on the target. This is what keeps a move's write freeze short:
//! the bulk is copied while the tenant keeps writing, and only the changes since are copied
//! while it is frozen.
//!
//! The history feed is the whole upstream's: an entry is the tenant's only if its id carries the
//! tenant's prefix (`{prefix}-`, which no other tenant's ids can start with), and a resource is
//! copied only if its current version passes the outbound gate for the tenant (coding *and*
//! prefix, references inside the tenant), exactly as `export` takes it. Anything else counts as
//! absent, so it is deleted from the target if an earlier pass put it there.
use super::progress::Progress;
use super::restore::{plan, prepare_all, put_entry, send_transaction, Outside, TRANSACTION};
use super::scan::{self, status_error, Scan};
use super::{DataError, Job};
use crate::outbound;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A resource as the upstream names it: its type and its upstream id (`{prefix}-{local}`).
pub type Key = (String, String);

/// Reads in flight at once.
const READS: usize = 8;

/// The tenant's resources with a history entry at or after `since` (RFC 3339) on `job`'s upstream.
pub async fn changed_since(job: &Job, since: &str, progress: &Progress) -> Result<BTreeSet<Key>, DataError> {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("_since", since)
        .append_pair("_count", &scan::PAGE.to_string())
        .finish();
    let mut feed =
        Scan::path(&job.upstream, &job.correlation, "the history since the last pass", format!("_history?{query}"));
    let own = format!("{}-", job.tenant.prefix);
    let mut keys = BTreeSet::new();
    let mut seen = 0u64;
    while let Some(entries) = feed.next_entries().await? {
        for e in &entries {
            if let Some((rtype, id)) = entry_key(e) {
                if id.starts_with(&own) {
                    keys.insert((rtype.to_owned(), id.to_owned()));
                }
            }
        }
        seen += entries.len() as u64;
        progress.update("history", None, seen, None);
    }
    Ok(keys)
}

/// The resource a history entry is about: its `request.url` (`Type/id/_history/n`, the only
/// name a delete has), else its resource.
fn entry_key(e: &Value) -> Option<(&str, &str)> {
    if let Some(url) = e.pointer("/request/url").and_then(Value::as_str) {
        let mut parts = url.split(['/', '?']);
        if let (Some(t), Some(id)) = (parts.next(), parts.next()) {
            if !t.is_empty() && !id.is_empty() {
                return Some((t, id));
            }
        }
    }
    let r = e.get("resource")?;
    Some((r.get("resourceType")?.as_str()?, r.get("id")?.as_str()?))
}

/// Each key's current version on `job`'s upstream in the tenant's local form, `None` when it is
/// gone or is not the tenant's (fails the outbound gate).
pub async fn current(job: &Job, keys: &BTreeSet<Key>) -> Result<BTreeMap<Key, Option<Value>>, DataError> {
    let ctx = job.ctx();
    let mut out = BTreeMap::new();
    let mut running = tokio::task::JoinSet::new();
    let mut pending = keys.iter();
    loop {
        while running.len() < READS {
            let Some(key) = pending.next() else { break };
            let (upstream, headers, key) = (job.upstream.clone(), scan::headers(job), key.clone());
            running.spawn(async move {
                let answer = upstream.send(Method::GET, &format!("{}/{}", key.0, key.1), headers, None).await;
                (key, answer)
            });
        }
        let Some(done) = running.join_next().await else { break };
        let (key, answer) = done.map_err(|e| DataError::Refused(format!("a read failed: {e}")))?;
        let answer = answer?;
        let local = match answer.status {
            StatusCode::OK => match answer.body {
                Some(raw @ Value::Object(_)) if raw.get("resourceType").and_then(Value::as_str) == Some(&key.0) => {
                    outbound::resource(&ctx, raw).ok().map(|c| c.into_tree())
                }
                _ => return Err(DataError::Answer(format!("the read of {}/{}", key.0, key.1), "no resource".into())),
            },
            StatusCode::NOT_FOUND | StatusCode::GONE => None,
            _ => return Err(status_error(&format!("the read of {}/{}", key.0, key.1), &answer)),
        };
        out.insert(key, local);
    }
    Ok(out)
}

/// What a pass did to the target.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Applied {
    pub written: u64,
    pub deleted: u64,
}

/// Makes `target` hold `now` (the source's current versions): writes first (in dependency
/// order, as a restore does), then deletes.
pub async fn apply(target: &Job, now: &BTreeMap<Key, Option<Value>>) -> Result<Applied, DataError> {
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for ((rtype, _), local) in now {
        if let Some(local) = local {
            by_type.entry(rtype.clone()).or_default().push(local.clone());
        }
    }
    let ready = prepare_all(target, &by_type, Outside::Present)?;
    let (_, batches) = plan(target, &ready);
    for (i, batch) in batches.iter().enumerate() {
        let entries = batch.iter().map(|&r| put_entry(target, &ready[r])).collect();
        send_transaction(target, entries, &format!("catch-up write {} ({} entries)", i + 1, batch.len())).await?;
    }
    let gone: Vec<Value> = now
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|((t, id), _)| json!({"request": {"method": "DELETE", "url": format!("{t}/{id}")}}))
        .collect();
    for (i, chunk) in gone.chunks(TRANSACTION).enumerate() {
        send_transaction(target, chunk.to_vec(), &format!("catch-up delete {} ({} entries)", i + 1, chunk.len()))
            .await?;
    }
    Ok(Applied { written: ready.len() as u64, deleted: gone.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_entry_names_its_resource_by_its_request_url_first() {
        let delete = json!({"fullUrl": "http://h/fhir/Patient/a-1",
            "request": {"method": "DELETE", "url": "Patient/a-1/_history/2"}});
        assert_eq!(entry_key(&delete), Some(("Patient", "a-1")));
        let write = json!({"resource": {"resourceType": "Observation", "id": "a-2"}});
        assert_eq!(entry_key(&write), Some(("Observation", "a-2")));
        assert_eq!(entry_key(&json!({"request": {"url": "Patient"}})), None);
        assert_eq!(entry_key(&json!({})), None);
    }
}
