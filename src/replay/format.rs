//! The recorded-traffic format (`docs/replay-format.md`): NDJSON, one exchange per line.
//!
//! Bodies are kept as JSON when they are JSON (so ids can be mapped and bodies compared as
//! documents) and as text otherwise. Only the headers in [`KEPT_REQUEST_HEADERS`] and
//! [`KEPT_RESPONSE_HEADERS`] are written: credentials and cookies never are.
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};

/// Request headers that change what a FHIR server does, and so belong in a recording.
pub const KEPT_REQUEST_HEADERS: &[&str] =
    &["accept", "content-type", "prefer", "if-match", "if-none-match", "if-none-exist", "if-modified-since"];

/// Response headers worth comparing or learning ids from.
pub const KEPT_RESPONSE_HEADERS: &[&str] = &["content-type", "location", "content-location", "etag", "last-modified"];

/// One request and (if recorded) its response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    /// Unique in the file; reports name exchanges by it.
    pub id: String,
    /// Free labels (`create`, `search`, …) for reading reports; not interpreted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Set when the exchange is expected to be refused (by fhir-fence, in a replay): the
    /// replayed answer must have this status and an OperationOutcome body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
    pub request: Request,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub method: String,
    /// Relative to the FHIR base, without a leading `/` (`Patient/123`, `""` for the base).
    pub path: String,
    /// The raw query string, without `?`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub query: String,
    /// Lower-case names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// A body that is not JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
    /// A body that is not UTF-8 text (a Binary's content), in base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub status: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

/// A body: a JSON document, text, other bytes (base64), or nothing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Body {
    pub body: Option<Value>,
    pub body_text: Option<String>,
    pub body_base64: Option<String>,
}

impl Request {
    pub fn body(&self) -> Body {
        Body { body: self.body.clone(), body_text: self.body_text.clone(), body_base64: self.body_base64.clone() }
    }
}

impl Response {
    /// The body as text for comparing: the text, or the bytes' base64.
    pub fn text(&self) -> Option<&str> {
        self.body_text.as_deref().or(self.body_base64.as_deref())
    }
}

impl Body {
    /// JSON when the bytes parse as JSON, else UTF-8 text, else base64; nothing when empty.
    pub fn from_bytes(bytes: &[u8]) -> Body {
        use base64::Engine;
        if bytes.is_empty() {
            return Body::default();
        }
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            return Body { body: Some(v), ..Body::default() };
        }
        match std::str::from_utf8(bytes) {
            Ok(t) => Body { body_text: Some(t.to_owned()), ..Body::default() },
            Err(_) => {
                Body { body_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)), ..Body::default() }
            }
        }
    }

    /// The body as text for comparing: the text, or the bytes' base64.
    pub fn text(&self) -> Option<&str> {
        self.body_text.as_deref().or(self.body_base64.as_deref())
    }

    /// The bytes to send; a `body_base64` that is not base64 sends nothing.
    pub fn to_bytes(&self) -> Vec<u8> {
        use base64::Engine;
        match (&self.body, &self.body_text, &self.body_base64) {
            (Some(v), _, _) => serde_json::to_vec(v).expect("serialisable"),
            (None, Some(t), _) => t.as_bytes().to_vec(),
            (None, None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default(),
            (None, None, None) => Vec::new(),
        }
    }
}

/// The answer a recorder saw: status, headers (all of them; filtered here) and bytes.
pub struct Seen<'a> {
    pub status: u16,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Exchange {
    /// An exchange as seen on the wire: only the kept headers, bodies as JSON or text.
    pub fn observed(
        id: String,
        method: &str,
        path: String,
        query: String,
        headers: &[(String, String)],
        body: &[u8],
        response: Option<Seen>,
    ) -> Self {
        let qb = Body::from_bytes(body);
        Exchange {
            id,
            labels: vec![],
            expect: None,
            request: Request {
                method: method.to_owned(),
                path,
                query,
                headers: kept_headers(headers, KEPT_REQUEST_HEADERS),
                body: qb.body,
                body_text: qb.body_text,
                body_base64: qb.body_base64,
            },
            response: response.map(|r| {
                let rb = Body::from_bytes(r.body);
                Response {
                    status: r.status,
                    headers: kept_headers(r.headers, KEPT_RESPONSE_HEADERS),
                    body: rb.body,
                    body_text: rb.body_text,
                    body_base64: rb.body_base64,
                }
            }),
        }
    }
}

/// Keeps the headers named in `kept` (names lower-cased); everything else is left out.
pub fn kept_headers(headers: &[(String, String)], kept: &[&str]) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter_map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            kept.contains(&k.as_str()).then(|| (k, v.clone()))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads a traffic file: every line one exchange (blank lines skipped), ids unique.
pub fn read(input: impl BufRead) -> Result<Vec<Exchange>, FormatError> {
    let mut out: Vec<Exchange> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| FormatError::Line { line: i + 1, reason };
        crate::fhir::json::parse_strict(line.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let x: Exchange = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        if x.request.path.starts_with('/') {
            return Err(bad(format!("exchange {}: the path must be relative to the FHIR base (no leading /)", x.id)));
        }
        if !seen.insert(x.id.clone()) {
            return Err(bad(format!("exchange id {} appears twice", x.id)));
        }
        out.push(x);
    }
    Ok(out)
}

/// Writes one exchange as one line.
pub fn write_line(out: &mut impl Write, x: &Exchange) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, x)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_round_trips_and_bad_lines_are_named() {
        let line = r#"{"id":"e1","labels":["create"],"request":{"method":"PUT","path":"Patient/p1","headers":{"content-type":"application/fhir+json"},"body":{"resourceType":"Patient","id":"p1"}},"response":{"status":201,"headers":{"location":"Patient/p1/_history/1"},"body_text":"ok"}}"#;
        let xs = read(line.as_bytes()).unwrap();
        let mut out = Vec::new();
        write_line(&mut out, &xs[0]).unwrap();
        assert_eq!(read(&out[..]).unwrap(), xs);
        assert_eq!(xs[0].response.as_ref().unwrap().body_text.as_deref(), Some("ok"));
        let jpeg = [0xff, 0xd8, 0xff, 0xe0, 0, 0x10, b'J', b'F'];
        let b = Body::from_bytes(&jpeg);
        assert!(b.body.is_none() && b.body_text.is_none(), "bytes that are not UTF-8 are not text");
        assert_eq!(b.to_bytes(), jpeg, "and come back unchanged");
        assert_eq!(Body::from_bytes(b"caf\xc3\xa9").body_text.as_deref(), Some("café"));
        let twice = format!("{line}\n\n{line}\n");
        assert!(read(twice.as_bytes()).unwrap_err().to_string().starts_with("line 3: exchange id e1 appears twice"));
        let unknown = line.replace("\"labels\"", "\"label\"");
        assert!(read(unknown.as_bytes()).unwrap_err().to_string().contains("unknown field"));
        let absolute = line.replace("\"Patient/p1\",\"headers\"", "\"/Patient/p1\",\"headers\"");
        assert!(read(absolute.as_bytes()).unwrap_err().to_string().contains("relative"));
    }

    #[test]
    fn only_kept_headers_are_recorded() {
        let h: Vec<(String, String)> =
            [("Authorization", "Bearer x"), ("Cookie", "a=b"), ("Content-Type", "application/fhir+json")]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        let kept = kept_headers(&h, KEPT_REQUEST_HEADERS);
        assert_eq!(kept.into_iter().collect::<Vec<_>>(), vec![("content-type".into(), "application/fhir+json".into())]);
    }
}
