//! Upstream answers fhir-fence reads whole (searches, reads, writes' answers) are asked for
//! gzip-compressed, and decoded here, bounded.
//!
//! Why: HAPI FHIR writes its JSON answers through a writer that flushes every few tokens, and
//! Tomcat sends each flush as an HTTP chunk of its own: a 20-entry Observation search is ~750
//! chunks of ~36 bytes, one system call each on HAPI's side and, on fhir-fence's, a wake-up for
//! each few that arrive — that made such a search cost fhir-fence 2–3 ms of CPU with ~100
//! context switches. Compressed, HAPI's gzip stream buffers its output: the same answer comes
//! in three chunks of 1.5 KB in all, and inflating it costs far less than the wake-ups did.
//!
//! An upstream may ignore `Accept-Encoding` (then nothing changes) but may not answer with an
//! encoding fhir-fence did not ask for: that is refused (fail closed), as a body it cannot read.
//! Answers passed through unread (observe mode's `forward`, export files) are not affected.
use bytes::Bytes;
use http::header::CONTENT_ENCODING;
use http::{HeaderMap, HeaderValue};
use std::io::Read;

/// What fhir-fence asks for: gzip, else the answer as it is.
pub const ACCEPT_GZIP: HeaderValue = HeaderValue::from_static("gzip");

#[derive(Debug, thiserror::Error)]
pub enum GzipError {
    #[error("the decoded body is larger than the configured limit")]
    TooLarge,
    #[error("content encoding {0:?} was not asked for")]
    Unexpected(String),
    #[error("the gzip body is corrupt: {0}")]
    Corrupt(String),
}

/// The body as the upstream meant it: decoded when its `Content-Encoding` is gzip, at most
/// `max` bytes once decoded (a small compressed body may inflate to any size).
pub fn decode(headers: &HeaderMap, bytes: Bytes, max: usize) -> Result<Bytes, GzipError> {
    let Some(encoding) = headers.get(CONTENT_ENCODING) else { return Ok(bytes) };
    let encoding = encoding.to_str().map_err(|_| GzipError::Unexpected("(not text)".into()))?.trim();
    if encoding.eq_ignore_ascii_case("identity") || encoding.is_empty() {
        return Ok(bytes);
    }
    if !(encoding.eq_ignore_ascii_case("gzip") || encoding.eq_ignore_ascii_case("x-gzip")) {
        return Err(GzipError::Unexpected(encoding.to_owned()));
    }
    // JSON compresses about tenfold; start there, grow as needed, never past `max`.
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(12).min(max));
    let read = flate2::read::MultiGzDecoder::new(&bytes[..])
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| GzipError::Corrupt(e.to_string()))?;
    if read > max {
        return Err(GzipError::TooLarge);
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    fn encoded(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn plain_answers_pass_unchanged() {
        let body = Bytes::from_static(b"{\"resourceType\":\"Patient\"}");
        assert_eq!(decode(&HeaderMap::new(), body.clone(), 10).unwrap(), body);
        assert_eq!(decode(&encoded("identity"), body.clone(), 100).unwrap(), body);
    }

    #[test]
    fn gzip_is_decoded_within_the_limit() {
        let json = br#"{"resourceType":"Bundle","type":"searchset"}"#;
        assert_eq!(&decode(&encoded("gzip"), gzip(json), json.len()).unwrap()[..], json);
        assert_eq!(&decode(&encoded("GZip"), gzip(json), 1 << 20).unwrap()[..], json);
    }

    #[test]
    fn a_body_inflating_past_the_limit_is_refused() {
        let bomb = gzip(&vec![b' '; 1 << 20]);
        assert!(bomb.len() < 4096);
        assert!(matches!(decode(&encoded("gzip"), bomb, 1 << 19), Err(GzipError::TooLarge)));
    }

    #[test]
    fn encodings_not_asked_for_and_corrupt_bodies_are_refused() {
        let body = Bytes::from_static(b"{}");
        assert!(matches!(decode(&encoded("br"), body.clone(), 100), Err(GzipError::Unexpected(e)) if e == "br"));
        assert!(matches!(decode(&encoded("gzip"), body, 100), Err(GzipError::Corrupt(_))));
    }
}
