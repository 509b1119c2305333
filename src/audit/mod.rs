//! The audit trail: one structured record per FHIR request, by tenant, never a resource body.
//!
//! Records go through a bounded queue to one writer task, so auditing never makes a request
//! wait: when the queue is full the record is dropped and counted
//! (`fhir_fence_audit_dropped_total`); a failing sink is logged and counted the same way.
//! Sinks: JSON lines on stdout or appended to a file (`[audit]`), and FHIR `AuditEvent`s on
//! the tenant's upstream ([`fhir`], `[audit.fhir]`).
mod background;
pub mod fhir;
mod record;

use background::Background;
pub use record::Record;

use crate::config::{AuditSink, Loaded};
use crate::metrics::Metrics;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

enum Target {
    Stdout,
    File(PathBuf),
}

pub struct Audit {
    fhir: Option<fhir::FhirSink>,
    tx: Option<mpsc::Sender<Record>>,
    /// The writer's side, until the first record starts the writer.
    pending: Mutex<Option<(mpsc::Receiver<Record>, Target)>>,
    started: OnceLock<()>,
    runtime: Background,
    metrics: Arc<Metrics>,
}

impl Audit {
    pub fn new(loaded: &Loaded, metrics: Arc<Metrics>) -> Self {
        let c = &loaded.config.audit;
        let fhir = c.fhir.as_ref().map(|f| fhir::FhirSink::new(f, c.queue, metrics.clone()));
        let target = match c.sink {
            AuditSink::None => {
                return Audit {
                    fhir,
                    tx: None,
                    pending: Mutex::new(None),
                    started: OnceLock::new(),
                    runtime: Background::here(),
                    metrics,
                }
            }
            AuditSink::Stdout => Target::Stdout,
            AuditSink::File => Target::File(loaded.resolve(c.file.as_deref().expect("checked at load"))),
        };
        let (tx, rx) = mpsc::channel(c.queue);
        Audit {
            fhir,
            tx: Some(tx),
            pending: Mutex::new(Some((rx, target))),
            started: OnceLock::new(),
            runtime: Background::here(),
            metrics,
        }
    }

    /// True when records should name their [`fhir::Destination`].
    pub fn writes_fhir(&self) -> bool {
        self.fhir.is_some()
    }

    /// The AuditEvent sink, if configured.
    pub fn fhir(&self) -> Option<&fhir::FhirSink> {
        self.fhir.as_ref()
    }

    /// Queues a record (and its AuditEvent, when it has a destination); never waits.
    pub fn record(&self, r: Record, to: Option<fhir::Destination>) {
        if let (Some(sink), Some(to)) = (&self.fhir, to) {
            sink.record(r.clone(), to);
        }
        let Some(tx) = &self.tx else { return };
        self.started.get_or_init(|| {
            if let Some((rx, target)) = self.pending.lock().map(|mut p| p.take()).unwrap_or(None) {
                self.runtime.spawn(write(rx, target, self.metrics.clone()));
            }
        });
        if tx.try_send(r).is_err() {
            self.metrics.audit_dropped.with_label_values(&["queue-full"]).inc();
        }
    }
}

/// How long the writer lets records gather after writing some: it then wakes at most this
/// often instead of once per request (a wake-up of another thread costs more than the write).
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// The writer task: one JSON line per record, flushed after each gathered batch.
async fn write(mut rx: mpsc::Receiver<Record>, target: Target, metrics: Arc<Metrics>) {
    // A file is buffered: many records share one write. Stdout is not: it is shared with the
    // log, and a line must go out in one write.
    let mut out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match &target {
        Target::Stdout => Box::new(tokio::io::stdout()),
        Target::File(path) => match tokio::fs::OpenOptions::new().create(true).append(true).open(path).await {
            Ok(f) => Box::new(tokio::io::BufWriter::with_capacity(64 * 1024, f)),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the audit file; audit records are dropped");
                while rx.recv().await.is_some() {
                    metrics.audit_dropped.with_label_values(&["sink-failed"]).inc();
                }
                return;
            }
        },
    };
    let mut batch = Vec::with_capacity(256);
    let mut line = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 1024).await > 0 {
        for r in batch.drain(..) {
            line.clear();
            r.write_json(&mut line);
            line.push(b'\n');
            if let Err(e) = out.write_all(&line).await {
                metrics.audit_dropped.with_label_values(&["sink-failed"]).inc();
                tracing::warn!(error = %e, "an audit record could not be written");
            }
        }
        if let Err(e) = out.flush().await {
            tracing::warn!(error = %e, "audit records could not be flushed");
        }
        tokio::time::sleep(GATHER).await;
    }
}
