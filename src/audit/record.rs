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

    /// Appends the record as one JSON object, byte for byte what `serde_json` writes for it
    /// (checked below), without serde's escaping of every member name: the writer does this
    /// for every request, a flood of refusals included.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"type\":");
        string(out, self.kind);
        out.extend_from_slice(b",\"time_ms\":");
        number(out, self.time_ms);
        out.extend_from_slice(b",\"correlation\":");
        string(out, &self.correlation);
        out.extend_from_slice(b",\"tenant\":");
        optional(out, self.tenant.as_deref());
        out.extend_from_slice(b",\"subject\":");
        optional(out, self.subject.as_deref());
        out.extend_from_slice(b",\"client_id\":");
        optional(out, self.client_id.as_deref());
        out.extend_from_slice(b",\"interaction\":");
        optional(out, self.interaction);
        out.extend_from_slice(b",\"method\":");
        string(out, &self.method);
        out.extend_from_slice(b",\"resource_type\":");
        optional(out, self.resource_type.as_deref());
        out.extend_from_slice(b",\"id\":");
        optional(out, self.id.as_deref());
        out.extend_from_slice(b",\"status\":");
        number(out, u64::from(self.status));
        out.extend_from_slice(b",\"outcome\":");
        string(out, self.outcome);
        out.extend_from_slice(b",\"dropped\":");
        number(out, self.dropped as u64);
        out.extend_from_slice(b",\"bytes\":");
        match self.bytes {
            Some(b) => number(out, b),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"micros\":");
        number(out, self.micros);
        out.extend_from_slice(b",\"upstream_micros\":");
        number(out, self.upstream_micros);
        out.push(b'}');
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn optional(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: the common case (printable ASCII without `"` or `\\`) copied as it is, the
/// rest escaped by `serde_json` itself.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serialises");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_what_serde_writes() {
        let full = Record {
            correlation: "7f3c-\"quoted\"\\-é-\u{1}".into(),
            tenant: Some("acme".into()),
            subject: Some("user\nnew line".into()),
            client_id: Some("app".into()),
            interaction: Some("read"),
            method: "GET".into(),
            resource_type: Some("Patient".into()),
            id: Some("p1".into()),
            dropped: 3,
            bytes: Some(1234),
            micros: 99,
            upstream_micros: 42,
            ..Record::new()
        }
        .finish(404);
        for r in [full, Record::new(), Record::new().finish(200)] {
            let mut line = Vec::new();
            r.write_json(&mut line);
            assert_eq!(String::from_utf8(line).unwrap(), serde_json::to_string(&r).unwrap());
        }
    }
}
