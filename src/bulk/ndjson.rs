//! A streaming NDJSON filter with constant memory: export files are split on `\n` (a trailing
//! `\r` is tolerated, blank lines skipped), each line is parsed strictly (duplicate keys
//! rejected), must have the expected `resourceType`, and is passed to a per-line check that
//! decides whether it leaves (and in what form). Failing lines are dropped and counted; a line
//! is only ever emitted whole; a line longer than the limit ends the stream with an error,
//! without buffering more than the limit.
//!
//! An optional *needle* makes the common case cheap: a line that does not contain it (for an
//! output file, `"{prefix}-`, which every line of the caller's must hold in its `id`) cannot
//! pass the check, so it is dropped without being parsed.
use crate::fhir::json::parse_strict;
use crate::outbound::{Checked, ExportLines};
use memchr::memchr;
use memchr::memmem::Finder;
use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NdjsonError {
    #[error("an NDJSON line exceeds {0} bytes")]
    LineTooLong(usize),
}

/// Why a line was dropped (for metrics and the audit trail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not JSON, not an object, or duplicate keys.
    Malformed,
    /// Another `resourceType` than the file's.
    WrongType,
    /// The per-line check refused it (not the caller's).
    Refused,
}

/// Counts of what passed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub kept: u64,
    pub malformed: u64,
    pub wrong_type: u64,
    pub refused: u64,
}

impl Counts {
    pub fn dropped(&self) -> u64 {
        self.malformed + self.wrong_type + self.refused
    }
}

/// The filter's state between chunks: at most one partial line (bounded by `max_line`).
pub struct NdjsonFilter<F> {
    expected_type: String,
    max_line: usize,
    partial: Vec<u8>,
    check: F,
    needle: Option<Finder<'static>>,
    fast: Option<ExportLines>,
    pub counts: Counts,
}

/// The per-line check, boxed, for filters chosen at run time: what may leave of a line is
/// [`Checked`] (only the outbound gate, or fhir-fence's own words, make one).
pub type Check = Box<dyn FnMut(Value) -> Option<Checked> + Send + Sync>;

impl<F: FnMut(Value) -> Option<Checked>> NdjsonFilter<F> {
    /// `check` gets each well-formed line of `expected_type` and returns what may leave, or `None`.
    pub fn new(expected_type: &str, max_line: usize, check: F) -> Self {
        NdjsonFilter {
            expected_type: expected_type.to_owned(),
            max_line,
            partial: Vec::new(),
            check,
            needle: None,
            fast: None,
            counts: Counts::default(),
        }
    }

    /// Lines `fast` accepts are written as it wrote them; the others go through `check`.
    /// (`fast` must never accept what `check` would refuse, or change what it would write.)
    pub fn with_fast_path(mut self, fast: ExportLines) -> Self {
        self.fast = Some(fast);
        self
    }

    /// Lines without `needle` are refused unparsed (use only when `check` would refuse them too).
    pub fn with_needle(mut self, needle: &[u8]) -> Self {
        self.needle = Some(Finder::new(needle).into_owned());
        self
    }

    /// Feeds one chunk; complete lines that pass are appended to `out`, each ending in `\n`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) -> Result<(), NdjsonError> {
        while let Some(pos) = memchr(b'\n', chunk) {
            let (head, rest) = chunk.split_at(pos);
            if self.partial.is_empty() {
                self.line(head, out)?;
            } else {
                self.grow(head)?;
                let line = std::mem::take(&mut self.partial);
                self.line(&line, out)?;
            }
            chunk = &rest[1..];
        }
        self.grow(chunk)
    }

    /// Ends the stream: a last line without a newline is handled like any other.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), NdjsonError> {
        let line = std::mem::take(&mut self.partial);
        self.line(&line, out)
    }

    fn grow(&mut self, bytes: &[u8]) -> Result<(), NdjsonError> {
        if self.partial.len() + bytes.len() > self.max_line {
            return Err(NdjsonError::LineTooLong(self.max_line));
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), NdjsonError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.max_line {
            return Err(NdjsonError::LineTooLong(self.max_line));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if self.needle.as_ref().is_some_and(|n| n.find(line).is_none()) {
            self.counts.refused += 1;
            return Ok(());
        }
        if let Some(fast) = &mut self.fast {
            if fast.accept(line, out) {
                out.push(b'\n');
                self.counts.kept += 1;
                return Ok(());
            }
        }
        match self.judge(line) {
            Ok(checked) => {
                checked.write_to(out);
                out.push(b'\n');
                self.counts.kept += 1;
            }
            Err(Dropped::Malformed) => self.counts.malformed += 1,
            Err(Dropped::WrongType) => self.counts.wrong_type += 1,
            Err(Dropped::Refused) => self.counts.refused += 1,
        }
        Ok(())
    }

    fn judge(&mut self, line: &[u8]) -> Result<Checked, Dropped> {
        let value = parse_strict(line).map_err(|_| Dropped::Malformed)?;
        if !value.is_object() {
            return Err(Dropped::Malformed);
        }
        if value.get("resourceType").and_then(Value::as_str) != Some(self.expected_type.as_str()) {
            return Err(Dropped::WrongType);
        }
        (self.check)(value).ok_or(Dropped::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Marker;
    use crate::tenancy::{Marking, Tenant};

    fn tenant(name: &str) -> Tenant {
        Tenant::for_tests(name, name)
    }

    /// The check an export download will use: markers required, then stripped.
    fn filter(max_line: usize) -> NdjsonFilter<impl FnMut(Value) -> Option<Checked>> {
        let (marking, acme) = (Marking { marker: Marker::Tag, system: "urn:t".into() }, tenant("acme"));
        NdjsonFilter::new("Observation", max_line, move |v: Value| {
            let Value::Object(mut m) = v else { return None };
            if !marking.owns(&m, &acme) {
                return None;
            }
            marking.strip(&mut m, &acme);
            Some(Checked::authored(Value::Object(m)))
        })
    }

    fn line(prefix: &str, tenant: &str, id: &str) -> String {
        format!(
            r#"{{"resourceType":"Observation","id":"{prefix}-{id}","meta":{{"tag":[{{"system":"urn:t","code":"{tenant}"}}]}}}}"#
        )
    }

    #[test]
    fn keeps_own_lines_drops_the_rest() {
        let mut f = filter(1 << 20);
        let input = [
            line("acme", "acme", "1"),
            line("globex", "globex", "2"),
            r#"{"resourceType":"Observation","id":"acme-3","meta":{}}"#.to_owned(),
            line("acme", "acme", "4").replace("Observation", "Patient"),
            r#"{"resourceType":"Observation","id":"acme-5","meta":{},"meta":{"tag":[{"system":"urn:t","code":"acme"}]}}"#.to_owned(),
            "not json".to_owned(),
            String::new(),
            line("acme", "acme", "6"),
        ]
        .join("\r\n");
        let mut out = Vec::new();
        f.push(input.as_bytes(), &mut out).unwrap();
        f.finish(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let ids: Vec<&str> =
            text.lines().map(|l| l.split("\"id\":\"").nth(1).unwrap().split('"').next().unwrap()).collect();
        assert_eq!(ids, ["1", "6"]);
        assert!(!text.contains("urn:t") && !text.contains("globex"));
        assert_eq!(f.counts, Counts { kept: 2, malformed: 2, wrong_type: 1, refused: 2 });
    }

    #[test]
    fn lines_split_across_chunks_are_whole() {
        let input = format!("{}\n{}\n", line("acme", "acme", "1"), line("acme", "acme", "2"));
        for size in [1, 2, 3, 7, 64] {
            let mut f = filter(1 << 20);
            let mut out = Vec::new();
            for chunk in input.as_bytes().chunks(size) {
                f.push(chunk, &mut out).unwrap();
                // Only whole lines ever come out.
                assert!(out.is_empty() || out.ends_with(b"\n"));
            }
            f.finish(&mut out).unwrap();
            assert_eq!(f.counts.kept, 2, "chunk size {size}");
        }
    }

    #[test]
    fn an_over_long_line_ends_the_stream_without_buffering_it() {
        let mut f = filter(100);
        let mut out = Vec::new();
        let long = "x".repeat(60);
        f.push(long.as_bytes(), &mut out).unwrap();
        assert_eq!(f.push(long.as_bytes(), &mut out), Err(NdjsonError::LineTooLong(100)));
        assert!(f.partial.len() <= 100);
        let mut f = filter(100);
        assert_eq!(f.push(format!("{}\n", "y".repeat(150)).as_bytes(), &mut out), Err(NdjsonError::LineTooLong(100)));
        assert!(out.is_empty());
    }

    #[test]
    fn large_generated_stream_in_constant_memory() {
        // 200k lines, half foreign, fed in 64 KiB chunks: memory stays at one partial line.
        let (own, foreign) = (line("acme", "acme", "x"), line("globex", "globex", "y"));
        let mut chunk = Vec::new();
        for i in 0..1000 {
            chunk.extend_from_slice(if i % 2 == 0 { own.as_bytes() } else { foreign.as_bytes() });
            chunk.push(b'\n');
        }
        let mut f = filter(1 << 20);
        let mut out = Vec::new();
        for _ in 0..200 {
            for piece in chunk.chunks(65536) {
                f.push(piece, &mut out).unwrap();
                assert!(f.partial.len() <= own.len().max(foreign.len()));
            }
            out.clear();
        }
        f.finish(&mut out).unwrap();
        assert_eq!((f.counts.kept, f.counts.refused), (100_000, 100_000));
    }
}
