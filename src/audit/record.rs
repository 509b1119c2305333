//! One audit record: what the trail keeps of a request (never a resource body).
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

/// One request, as the audit trail keeps it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Record {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Milliseconds since the Unix epoch, when the answer was ready.
    pub time_ms: u64,
    pub correlation: String,
    pub tenant: Option<String>,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub interaction: Option<&'static str>,
    pub method: String,
    pub resource_type: Option<String>,
    /// The local id the client used (never the upstream one).
    pub id: Option<String>,
    pub status: u16,
    /// `success`, `refused` (4xx) or `failed` (5xx).
    pub outcome: &'static str,
    /// Bundle entries blocked on the way out.
    pub dropped: usize,
    /// Response body bytes, when known before streaming.
    pub bytes: Option<u64>,
    pub micros: u64,
    /// Of `micros`, the time spent waiting on the upstream (summed over the request's exchanges).
    pub upstream_micros: u64,
}

impl Record {
    pub fn new() -> Self {
        Record { kind: "audit", ..Default::default() }
    }

    /// Stamps the time and derives the outcome from the status.
    pub fn finish(mut self, status: u16) -> Self {
        self.status = status;
        self.outcome = match status {
            500.. => "failed",
            400.. => "refused",
            _ => "success",
        };
        self.time_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        self
    }
}
