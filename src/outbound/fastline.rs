//! The outbound check of [`resource`](super::resource::resource), done in
//! one pass over the bytes of one resource: an NDJSON line of an export download, or a
//! resource inside a search Bundle (`outbound::fastbundle`).
//!
//! Parsing every line into a `serde_json::Value` and writing it out again costs far more than
//! the check itself. This scanner validates the line as strict JSON (RFC 8259, duplicate keys
//! rejected) without building anything, and notes the byte ranges the check removes: the id
//! prefix, the caller's tenant coding in `meta` (with its list when nothing else is left), and
//! the tenant prefix (and upstream base) inside `reference` strings. The line is then written
//! out with those ranges cut. It answers only **Accept** or **Unsure**: anything it does not
//! handle with certainty (escapes in keys or in checked strings, `\u` escapes, exponents,
//! deep nesting, a line the check would refuse) is Unsure, and the line goes through the
//! `Value`-based check, which stays the single definition of what may leave.
//! `tests/integration/fastline_differential.rs` holds the two to the same answers.
//!
//! - `policy`  — what the check is told (the caller's tenant, marker and bases) and its limits
//! - `scanner` — strict JSON in one pass, nothing built
//! - `checks`  — the FHIR members: id, tenant coding, references, canonicals, Attachment urls
//! - `cuts`    — the byte ranges cut so the rest stays valid JSON; duplicate keys
mod checks;
mod cuts;
mod policy;
mod scanner;

use crate::state::Snapshot;
use crate::tenancy::Tenant;
use crate::upstream::Upstream;
use policy::R;
pub use policy::{fast_line, FastLine, Unsure};
use scanner::{Place, Scan};
use std::sync::Arc;

impl FastLine<'_> {
    /// Appends the client's view of `line` to `out`, or answers `Unsure` leaving `out` alone.
    pub fn accept(&mut self, line: &[u8], out: &mut Vec<u8>) -> R<()> {
        let end = self.scan(line, 0)?;
        if line[end..].iter().any(|c| !matches!(c, b' ' | b'\t' | b'\r' | b'\n')) {
            return Err(Unsure);
        }
        self.emit(line, 0, end, out);
        Ok(())
    }

    /// The same for one resource inside a larger document (a Bundle entry's `resource`): the
    /// object starting at `start` (after white space); answers where it ends. `found_type` and
    /// `found_id` are then positions in `buf`.
    pub fn accept_at(&mut self, buf: &[u8], start: usize, out: &mut Vec<u8>) -> R<usize> {
        let end = self.scan(buf, start)?;
        self.emit(buf, start, end, out);
        Ok(end)
    }

    /// Scans the object at `start`, leaving its cuts (in order) in `self.cuts`; its end.
    fn scan(&mut self, buf: &[u8], start: usize) -> R<usize> {
        let mut cuts = std::mem::take(&mut self.cuts);
        cuts.clear();
        let mut s =
            Scan { b: buf, i: start, f: self, cuts, codings: 0, seen_type: false, seen_id: false, found: (0..0, 0..0) };
        s.ws();
        let scanned = s.object(1, Place::Top);
        let whole = s.codings == 1 && s.seen_type && s.seen_id;
        let (end, mut cuts, found) = (s.i, s.cuts, s.found);
        (self.found_type, self.found_id) = found;
        // Cuts are found in document order except where a cut waits for the next element.
        cuts.sort_unstable();
        self.cuts = cuts;
        match scanned {
            Ok(()) if whole => Ok(end),
            _ => Err(Unsure),
        }
    }

    /// Writes `buf[start..end]` without the cuts `scan` found.
    fn emit(&self, buf: &[u8], start: usize, end: usize, out: &mut Vec<u8>) {
        let mut from = start;
        for &(cut_start, cut_end) in &self.cuts {
            debug_assert!(cut_start >= from, "cuts overlap");
            out.extend_from_slice(&buf[from..cut_start]);
            from = cut_end;
        }
        out.extend_from_slice(&buf[from..end]);
    }
}

/// The one-pass check for the lines of one export file: it owns what a download outlives its
/// request with, and lends it to a [`FastLine`] per line (which copies nothing), keeping the
/// scratch space between lines. Only `outbound` makes one, so the export stream writes nothing
/// but checked lines (this, or a [`Checked`](super::Checked)).
pub struct ExportLines {
    snap: Arc<Snapshot>,
    tenant: Arc<Tenant>,
    upstream: Arc<Upstream>,
    rtype: String,
    cuts: Vec<(usize, usize)>,
}

impl ExportLines {
    pub fn new(snap: Arc<Snapshot>, tenant: Arc<Tenant>, upstream: Arc<Upstream>, rtype: &str) -> Self {
        ExportLines { snap, tenant, upstream, rtype: rtype.to_owned(), cuts: Vec::new() }
    }

    /// Appends the client's view of `line` to `out` and answers `true`, or answers `false`
    /// (unsure: the line takes the tree check) leaving `out` alone.
    pub fn accept(&mut self, line: &[u8], out: &mut Vec<u8>) -> bool {
        let mut fast = fast_line(&self.snap, &self.tenant, &self.upstream, Some(&self.rtype));
        fast.cuts = std::mem::take(&mut self.cuts);
        let accepted = fast.accept(line, out).is_ok();
        self.cuts = fast.cuts;
        accepted
    }
}
