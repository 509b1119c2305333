//! The FHIR sink of the audit trail: each record becomes an `AuditEvent` stored on the tenant's
//! own upstream, stamped like any resource the tenant writes (tenant coding, prefixed id), so
//! the tenant reads its audit trail through fhir-fence like any other resource and no other
//! tenant can. Records without a tenant (unauthenticated requests) stay in the JSON lines only.
//!
//! Written in `batch` Bundles (one per upstream and tenant, at most `batch` entries, at most
//! `flush_ms` old) by one task behind a bounded queue: a full queue or a failed write drops the
//! records and counts them (`fhir_fence_audit_dropped_total{reason="fhir-…"}`), never a request.
use super::background::Background;
use super::record::Record;
use crate::config::AuditFhir;
use crate::metrics::Metrics;
use crate::tenancy::{Marking, Tenant};
use crate::upstream::Upstream;
use http::{HeaderMap, Method};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Extensions fhir-fence puts on its AuditEvents.
const EXT: &str = "https://fhir-fence.dev/StructureDefinition/audit";

/// Where one record's AuditEvent goes: the tenant it belongs to and that tenant's upstream.
#[derive(Clone)]
pub struct Destination {
    pub tenant: Arc<Tenant>,
    pub upstream: Arc<Upstream>,
    pub marking: Marking,
}

pub struct FhirSink {
    tx: mpsc::Sender<(Record, Destination)>,
    pending: Mutex<Option<mpsc::Receiver<(Record, Destination)>>>,
    started: OnceLock<()>,
    runtime: Background,
    cfg: AuditFhir,
    metrics: Arc<Metrics>,
    /// AuditEvents the upstreams accepted so far.
    written: watch::Sender<u64>,
}

impl FhirSink {
    pub fn new(cfg: &AuditFhir, queue: usize, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(queue);
        FhirSink {
            tx,
            pending: Mutex::new(Some(rx)),
            started: OnceLock::new(),
            runtime: Background::here(),
            cfg: cfg.clone(),
            metrics,
            written: watch::Sender::new(0),
        }
    }

    /// Queues a record's AuditEvent; never waits.
    pub fn record(&self, r: Record, to: Destination) {
        self.started.get_or_init(|| {
            if let Some(rx) = self.pending.lock().map(|mut p| p.take()).unwrap_or(None) {
                let (cfg, metrics, written) = (self.cfg.clone(), self.metrics.clone(), self.written.clone());
                self.runtime.spawn(write(rx, cfg, metrics, written));
            }
        });
        if self.tx.try_send((r, to)).is_err() {
            self.metrics.audit_dropped.with_label_values(&["fhir-queue-full"]).inc();
        }
    }

    /// The number of AuditEvents written so far, as a watch.
    pub fn written(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }
}

/// The writer task: collects per (upstream, tenant), writes a batch when full or when the
/// oldest record has waited `flush_ms`.
async fn write(
    mut rx: mpsc::Receiver<(Record, Destination)>,
    cfg: AuditFhir,
    metrics: Arc<Metrics>,
    written: watch::Sender<u64>,
) {
    let mut batches: BTreeMap<(String, String), (Destination, Vec<Value>)> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.flush_ms));
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some((record, to)) = got else { break };
                let key = (to.upstream.name.clone(), to.tenant.name.clone());
                let Some(event) = audit_event(&record, &to) else {
                    metrics.audit_dropped.with_label_values(&["fhir-unmappable"]).inc();
                    continue;
                };
                let batch = batches.entry(key.clone()).or_insert_with(|| (to, Vec::new()));
                batch.1.push(event);
                if batch.1.len() >= cfg.batch {
                    let (to, events) = batches.remove(&key).expect("just filled");
                    send(&to, events, &metrics, &written).await;
                }
            }
            _ = tick.tick() => {
                for (_, (to, events)) in std::mem::take(&mut batches) {
                    send(&to, events, &metrics, &written).await;
                }
            }
        }
    }
    for (_, (to, events)) in batches {
        send(&to, events, &metrics, &written).await;
    }
}

/// Writes one batch Bundle of `PUT AuditEvent/{prefix}-{uuid}` entries; counts what failed.
async fn send(to: &Destination, events: Vec<Value>, metrics: &Metrics, written: &watch::Sender<u64>) {
    let n = events.len() as u64;
    let entries: Vec<Value> = events
        .into_iter()
        .map(|e| {
            let url = format!("AuditEvent/{}", e["id"].as_str().unwrap_or_default());
            json!({"resource": e, "request": {"method": "PUT", "url": url}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let ok = match to.upstream.send(Method::POST, "", HeaderMap::new(), Some(&bundle)).await {
        Ok(answer) if answer.status.is_success() => answer
            .body
            .as_ref()
            .and_then(|b| b.get("entry"))
            .and_then(Value::as_array)
            .map(|entries| {
                let failed: Vec<&Value> = entries
                    .iter()
                    .filter(|e| !e.pointer("/response/status").and_then(Value::as_str).unwrap_or("").starts_with('2'))
                    .collect();
                if let Some(first) = failed.first() {
                    let why = first.pointer("/response/outcome/issue/0/diagnostics").and_then(Value::as_str);
                    tracing::warn!(tenant = %to.tenant.name, failed = failed.len(), first = why.unwrap_or("-"), "the upstream refused AuditEvents of a batch");
                }
                (entries.len() - failed.len()) as u64
            })
            .unwrap_or(0),
        Ok(answer) => {
            tracing::warn!(tenant = %to.tenant.name, status = %answer.status, "the upstream refused a batch of AuditEvents");
            0
        }
        Err(e) => {
            tracing::warn!(tenant = %to.tenant.name, error = %e, "a batch of AuditEvents could not be written");
            0
        }
    };
    if ok < n {
        metrics.audit_dropped.with_label_values(&["fhir-failed"]).inc_by(n - ok);
    }
    metrics.audit_events_written.with_label_values(&[metrics.tenant(&to.tenant.name)]).inc_by(ok);
    written.send_modify(|w| *w += ok);
}

/// The FHIR R4 AuditEvent for one record, stamped for the tenant. `None` if it cannot be stamped.
pub fn audit_event(r: &Record, to: &Destination) -> Option<Value> {
    let local = format!("audit-{}", uuid::Uuid::new_v4().simple());
    let id = to.tenant.upstream_id(&local).ok()?;
    let (action, subtype) = action_of(r.interaction.unwrap_or("-"));
    let mut entity = Map::new();
    if let (Some(rtype), Some(local)) = (&r.resource_type, &r.id) {
        // A logical reference (type + the local id), not a literal one: the resource may not
        // exist (a refused read, a delete), and the upstream would refuse a dangling reference.
        if to.tenant.upstream_id(local).is_ok() {
            entity.insert(
                "what".into(),
                json!({"type": rtype, "identifier": {"system": format!("{EXT}/local-id"), "value": local}}),
            );
        }
    }
    if let Some(rtype) = &r.resource_type {
        entity.insert("name".into(), json!(rtype));
    }
    let recorded = rfc3339(r.time_ms);
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": id,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": action,
        "recorded": recorded,
        "outcome": match r.outcome { "success" => "0", "refused" => "4", _ => "8" },
        "outcomeDesc": format!("HTTP {}", r.status),
        "agent": [{
            "requestor": true,
            "who": {"identifier": {"system": format!("{EXT}/subject"), "value": r.subject.as_deref().unwrap_or("-")}},
            "altId": r.client_id.as_deref().unwrap_or("-"),
        }],
        "source": {"observer": {"display": "fhir-fence"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
        "extension": [
            {"url": format!("{EXT}/correlation-id"), "valueString": r.correlation},
            {"url": format!("{EXT}/entries-dropped"), "valueUnsignedInt": r.dropped},
            {"url": format!("{EXT}/micros"), "valueDecimal": r.micros},
            {"url": format!("{EXT}/upstream-micros"), "valueDecimal": r.upstream_micros},
        ],
    });
    if !entity.is_empty() {
        event["entity"] = json!([Value::Object(entity)]);
    }
    let obj = event.as_object_mut()?;
    to.marking.stamp(obj, &to.tenant).ok()?;
    Some(event)
}

/// The AuditEvent action (C/R/U/D/E) and restful-interaction code of an interaction.
fn action_of(interaction: &str) -> (&'static str, &'static str) {
    match interaction {
        "read" | "export-file" | "export-status" => ("R", "read"),
        "vread" => ("R", "vread"),
        "create" => ("C", "create"),
        "update" | "update-conditional" => ("U", "update"),
        "patch" | "patch-conditional" => ("U", "patch"),
        "delete" | "delete-conditional" | "export-cancel" => ("D", "delete"),
        "history-instance" => ("R", "history-instance"),
        "history-type" => ("R", "history-type"),
        "history-system" => ("R", "history-system"),
        "search-type" | "search-compartment" | "page" => ("E", "search-type"),
        "search-system" => ("E", "search-system"),
        "metadata" => ("R", "capabilities"),
        "bundle" => ("E", "batch"),
        _ => ("E", "operation"),
    }
}

/// Milliseconds since the epoch as an RFC 3339 instant (UTC).
fn rfc3339(ms: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_740_000_123), "2026-11-27T00:40:00.123Z");
    }
}
