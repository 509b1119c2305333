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
use crate::config::Marker;
use crate::fhir::canonical;
use crate::fhir::reference::{self, Target};
use crate::state::Snapshot;
use crate::tenancy::Tenant;
use crate::upstream::Upstream;
use smallvec::SmallVec;
use std::collections::HashSet;

/// The longest number the one-pass check copies (`-` and 32 digits and a point): longer ones are
/// judged by the strict parser, which refuses magnitudes `f64` cannot hold.
const MAX_NUMBER: usize = 34;

/// What one line's check needs to know: the caller's policy (borrowed, so a read builds one
/// without copying anything) and scratch space kept between lines.
pub struct FastLine<'p> {
    /// The type every line must have (`None`: any). A `Subscription` is always Unsure: its
    /// outbound form needs more than cuts.
    pub expected_type: Option<&'p str>,
    pub tenant: &'p Tenant,
    pub system: &'p str,
    /// `tag` or `security`: where the tenant coding must be.
    pub field: &'static str,
    pub upstream_base: &'p str,
    pub external_bases: &'p [String],
    /// Scratch space for one line's cuts, kept between lines.
    pub cuts: Vec<(usize, usize)>,
    /// After an accepted line: where its `resourceType` value and its local id lie in it.
    pub found_type: std::ops::Range<usize>,
    pub found_id: std::ops::Range<usize>,
}

/// Elements that mark an object as an `Attachment` (as in `fhir::reference`).
fn is_attachment_key(key: &[u8]) -> bool {
    matches!(key, b"contentType" | b"data" | b"size" | b"hash" | b"title" | b"creation" | b"language")
}
const MAX_DEPTH: usize = 100;

/// Why the fast path gave the line back (it never refuses on its own).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsure;

type R<T> = Result<T, Unsure>;

/// A mask whose lowest set bit lies in the first byte of `w` (little-endian) that is a quote,
/// a backslash, a control character or non-ASCII; 0 when there is none. (The classic SWAR
/// zero-byte test: bits above the first hit may be spurious, the lowest one is exact.)
#[inline]
fn special_bytes(w: u64) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let quote = zero(w ^ (LO * b'"' as u64));
    let backslash = zero(w ^ (LO * b'\\' as u64));
    let control = w.wrapping_sub(LO * 0x20) & !w & HI;
    quote | backslash | control | (w & HI)
}

/// The one-pass form of the outbound check for this caller and resource type (`None`: any).
pub fn fast_line<'p>(
    snap: &'p Snapshot,
    tenant: &'p Tenant,
    upstream: &'p Upstream,
    rtype: Option<&'p str>,
) -> FastLine<'p> {
    FastLine {
        expected_type: rtype,
        tenant,
        system: &snap.marking.system,
        field: match snap.marking.marker {
            Marker::Tag => "tag",
            Marker::Security => "security",
        },
        upstream_base: &upstream.base,
        external_bases: &snap.external_bases,
        cuts: Vec::new(),
        found_type: 0..0,
        found_id: 0..0,
    }
}

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

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    f: &'a FastLine<'a>,
    /// Where the `resourceType` value and the local id lie.
    found: (std::ops::Range<usize>, std::ops::Range<usize>),
    /// Byte ranges left out of the output, in order, not overlapping.
    cuts: Vec<(usize, usize)>,
    /// Tenant codings seen in `meta` (exactly one, the caller's, is required).
    codings: usize,
    seen_type: bool,
    seen_id: bool,
}

/// A string as found: where its content starts, the content, and whether it has escapes.
struct Str<'a> {
    at: usize,
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> Str<'a> {
    /// The plain text, when there are no escapes.
    fn plain(&self) -> R<&'a str> {
        if self.escaped {
            return Err(Unsure);
        }
        std::str::from_utf8(self.raw).map_err(|_| Unsure)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Top,
    Meta,
    Any,
}

impl<'a> Scan<'a> {
    #[inline]
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> R<u8> {
        self.b.get(self.i).copied().ok_or(Unsure)
    }

    #[inline]
    fn eat(&mut self, c: u8) -> R<()> {
        if self.peek()? != c {
            return Err(Unsure);
        }
        self.i += 1;
        Ok(())
    }

    /// Reads a string (at its opening quote): content validated, UTF-8 checked.
    #[inline]
    fn string(&mut self) -> R<Str<'a>> {
        self.eat(b'"')?;
        let b = self.b;
        let at = self.i;
        let mut j = at;
        let (mut escaped, mut high) = (false, false);
        loop {
            // Eight bytes at a time, up to the first byte that is not plain.
            while let Some(word) = b.get(j..j + 8) {
                let special = special_bytes(u64::from_le_bytes(word.try_into().expect("eight bytes")));
                if special != 0 {
                    j += special.trailing_zeros() as usize / 8;
                    break;
                }
                j += 8;
            }
            // Most often the quote that ends the string; tested in order of likelihood.
            let c = *b.get(j).ok_or(Unsure)?;
            if c == b'"' {
                break;
            } else if c == b'\\' {
                match b.get(j + 1) {
                    // Simple escapes stay as they are; `\u` (and surrogates) go the long way.
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                        escaped = true;
                        j += 2;
                    }
                    _ => return Err(Unsure),
                }
            } else if c >= 0x80 {
                high = true;
                j += 1;
            } else if c < 0x20 {
                return Err(Unsure);
            } else {
                // A plain byte in a tail shorter than a word.
                j += 1;
            }
        }
        let raw = &b[at..j];
        if high && std::str::from_utf8(raw).is_err() {
            return Err(Unsure);
        }
        self.i = j + 1;
        Ok(Str { at, raw, escaped })
    }

    /// Any value; `place` says what the surrounding check cares about.
    fn value(&mut self, depth: usize, place: Place) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(Unsure);
        }
        match self.peek()? {
            b'{' => self.object(depth, place),
            b'[' => self.array(depth, false),
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?` of at most [`MAX_NUMBER`] bytes (exponents and long
    /// numbers go the long way: the strict parser refuses a magnitude past `f64`'s, found by
    /// the `fastline_diff` fuzz target).
    #[inline]
    fn number(&mut self) -> R<()> {
        let b = self.b;
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            _ => return Err(Unsure),
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !b.get(i).is_some_and(u8::is_ascii_digit) {
                return Err(Unsure);
            }
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) || i - self.i > MAX_NUMBER {
            return Err(Unsure);
        }
        self.i = i;
        Ok(())
    }

    /// An array; under a canonical element (`canonicals`), each string in it is a canonical.
    fn array(&mut self, depth: usize, canonicals: bool) -> R<()> {
        self.eat(b'[')?;
        self.ws();
        if self.peek()? == b']' {
            return self.eat(b']');
        }
        loop {
            if canonicals && self.peek()? == b'"' {
                let v = self.string()?;
                self.canonical(v.at, v.plain()?)?;
            } else {
                self.value(depth + 1, Place::Any)?;
            }
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b']' => return self.eat(b']'),
                _ => return Err(Unsure),
            }
        }
    }

    /// `meta.tag` or `meta.security`: the caller's tenant coding is counted and cut (with one
    /// neighbouring comma). Returns how many elements remain.
    fn meta_list(&mut self, depth: usize, field: &'static str) -> R<usize> {
        self.eat(b'[')?;
        self.ws();
        if self.peek()? == b']' {
            self.eat(b']')?;
            return Ok(0);
        }
        let mut kept = 0;
        let mut elements = Elements::default();
        loop {
            let start = self.i;
            let tenant_coding = if self.peek()? == b'{' {
                let (system, code) = self.coding(depth + 1)?;
                if system == Some(self.f.system) {
                    // Only the caller's, only in the configured list (once: counted by the caller).
                    if field != self.f.field || code != Some(self.f.tenant.name.as_str()) {
                        return Err(Unsure);
                    }
                    true
                } else {
                    false
                }
            } else {
                self.value(depth + 1, Place::Any)?;
                false
            };
            let end = self.i;
            if tenant_coding {
                self.codings += 1;
            } else {
                kept += 1;
            }
            elements.element(start, end, tenant_coding, &mut self.cuts);
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b']' => {
                    elements.close(end, &mut self.cuts);
                    self.eat(b']')?;
                    return Ok(kept);
                }
                _ => return Err(Unsure),
            }
        }
    }

    /// A Coding in `meta.tag`/`meta.security`: its `system` and `code`.
    fn coding(&mut self, depth: usize) -> R<(Option<&'a str>, Option<&'a str>)> {
        let mut found = (None, None);
        self.members(depth, |s, key| {
            match key {
                b"system" if s.peek()? == b'"' => found.0 = Some(s.string()?.plain()?),
                b"code" if s.peek()? == b'"' => found.1 = Some(s.string()?.plain()?),
                b"version" | b"display" | b"userSelected" => s.value(depth + 1, Place::Any)?,
                // Anything else (an extension, a stray `reference`) goes the long way.
                _ => return Err(Unsure),
            }
            Ok(())
        })?;
        Ok(found)
    }

    fn object(&mut self, depth: usize, place: Place) -> R<()> {
        let mut attachment = Attachment::default();
        self.members(depth, |s, key| {
            match (place, key) {
                (Place::Top, b"resourceType") => {
                    attachment.resource = true;
                    if s.peek()? != b'"' {
                        return Err(Unsure);
                    }
                    let v = s.string()?;
                    let found = v.plain()?;
                    // A Subscription's outbound form needs more than cuts (its criteria are restored).
                    if found == "Subscription" || s.f.expected_type.is_some_and(|t| found != t) {
                        return Err(Unsure);
                    }
                    s.found.0 = v.at..v.at + v.raw.len();
                    s.seen_type = true;
                }
                (Place::Top, b"id") => {
                    if s.peek()? != b'"' {
                        return Err(Unsure);
                    }
                    let v = s.string()?;
                    s.f.tenant.local_id(v.plain()?).ok_or(Unsure)?;
                    s.cuts.push((v.at, v.at + s.f.tenant.prefix.len() + 1));
                    s.found.1 = v.at + s.f.tenant.prefix.len() + 1..v.at + v.raw.len();
                    s.seen_id = true;
                }
                (Place::Top, b"meta") if s.peek()? == b'{' => s.object(depth + 1, Place::Meta)?,
                (Place::Top, b"meta") => return Err(Unsure),
                (Place::Meta, b"tag" | b"security") => {
                    if s.peek()? != b'[' {
                        return Err(Unsure);
                    }
                    let field = if key == b"tag" { "tag" } else { "security" };
                    let (before, cuts_before) = (s.codings, s.cuts.len());
                    let kept = s.meta_list(depth + 1, field)?;
                    if kept == 0 && s.codings > before {
                        // Nothing left: the whole member goes (the element cut is inside it).
                        s.cuts.truncate(cuts_before);
                        s.cut_member();
                    }
                }
                (_, b"reference") if s.peek()? == b'"' => {
                    let v = s.string()?;
                    s.reference(v.at, v.plain()?)?;
                }
                (_, b"url") if s.peek()? == b'"' => attachment.url = Some(s.string()?.plain().ok()),
                (_, key) if canonical::is_element(key) => {
                    attachment.extension |= key.starts_with(b"value");
                    match s.peek()? {
                        b'"' => {
                            let v = s.string()?;
                            s.canonical(v.at, v.plain()?)?;
                        }
                        b'[' => s.array(depth + 1, true)?,
                        _ => s.value(depth + 1, Place::Any)?,
                    }
                }
                _ => {
                    attachment.marked |= is_attachment_key(key);
                    attachment.extension |= key.starts_with(b"value");
                    attachment.resource |= key == b"resourceType";
                    s.value(depth + 1, Place::Any)?
                }
            }
            Ok(())
        })?;
        // An Attachment's url naming the upstream is never shown (the full check refuses it).
        if let (Some(url), true, false, false) =
            (attachment.url, attachment.marked, attachment.extension, attachment.resource)
        {
            match url {
                Some(u) if !u.starts_with(self.f.upstream_base) => {}
                _ => return Err(Unsure),
            }
        }
        Ok(())
    }

    /// Marks the member being read for removal; `members` turns the mark into the cut.
    fn cut_member(&mut self) {
        self.cuts.push((usize::MAX, usize::MAX));
    }

    /// The members of an object: `{`, key/value pairs through `each`, `}`. A duplicate or
    /// escaped key → Unsure. A member whose handler pushed the `(MAX, MAX)` mark is cut with
    /// one neighbouring comma.
    fn members(&mut self, depth: usize, mut each: impl FnMut(&mut Self, &'a [u8]) -> R<()>) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(Unsure);
        }
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            return self.eat(b'}');
        }
        let mut keys = Keys::default();
        let mut elements = Elements::default();
        loop {
            let start = self.i;
            let key = self.string()?;
            if key.escaped || !keys.insert(key.raw) {
                return Err(Unsure);
            }
            self.ws();
            self.eat(b':')?;
            self.ws();
            each(self, key.raw)?;
            let end = self.i;
            let cut = self.cuts.last() == Some(&(usize::MAX, usize::MAX));
            if cut {
                self.cuts.pop();
            }
            elements.element(start, end, cut, &mut self.cuts);
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b'}' => {
                    elements.close(end, &mut self.cuts);
                    return self.eat(b'}');
                }
                _ => return Err(Unsure),
            }
        }
    }

    /// Cuts what the full check rewrites in a reference (upstream base, tenant prefix), or
    /// answers Unsure for any reference it would refuse.
    fn reference(&mut self, at: usize, r: &'a str) -> R<()> {
        let offset = |part: &str| at + (part.as_ptr() as usize - r.as_ptr() as usize);
        let cut_prefix = self.f.tenant.prefix.len() + 1;
        // The common form, `Type/id`, without the general grammar.
        if let Some(slash) = relative_literal(r.as_bytes()) {
            self.f.tenant.local_id(&r[slash + 1..]).ok_or(Unsure)?;
            self.cuts.push((at + slash + 1, at + slash + 1 + cut_prefix));
            return Ok(());
        }
        match reference::parse(r) {
            Target::Contained => {}
            Target::Relative(l) => {
                self.f.tenant.local_id(l.id).ok_or(Unsure)?;
                self.cuts.push((offset(l.id), offset(l.id) + cut_prefix));
            }
            Target::Absolute { base, literal } if base == self.f.upstream_base => {
                self.f.tenant.local_id(literal.id).ok_or(Unsure)?;
                self.cuts.push((at, offset(literal.rtype)));
                self.cuts.push((offset(literal.id), offset(literal.id) + cut_prefix));
            }
            Target::Absolute { base, .. } if self.f.external_bases.iter().any(|b| b == base) => {}
            _ => return Err(Unsure),
        }
        Ok(())
    }

    /// Cuts the tenant prefix from a canonical written as a relative literal, as
    /// `outbound::resource` rewrites it; Unsure when it is not the tenant's.
    fn canonical(&mut self, at: usize, c: &'a str) -> R<()> {
        let Some((literal, _)) = crate::fhir::canonical::tenant_literal(c) else { return Ok(()) };
        self.f.tenant.local_id(literal.id).ok_or(Unsure)?;
        let id_at = at + (literal.id.as_ptr() as usize - c.as_ptr() as usize);
        self.cuts.push((id_at, id_at + self.f.tenant.prefix.len() + 1));
        Ok(())
    }
}

/// `Some(position of the slash)` when `r` is exactly `Type/id` (what `reference::parse` calls
/// `Relative` without a version): an upper-case letter and up to 63 more letters, a slash, and
/// 1 to 64 id characters.
#[inline]
fn relative_literal(r: &[u8]) -> Option<usize> {
    let slash = r.iter().position(|&c| c == b'/')?;
    let (t, id) = (&r[..slash], &r[slash + 1..]);
    let type_ok = (1..=64).contains(&t.len()) && t[0].is_ascii_uppercase() && t.iter().all(u8::is_ascii_alphabetic);
    let id_ok = (1..=64).contains(&id.len()) && id.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
    (type_ok && id_ok).then_some(slash)
}

/// Cuts removed elements of a list or object together with one neighbouring comma each, so
/// what remains is still valid JSON.
#[derive(Default)]
struct Elements {
    /// Where the last kept element ended (a later removed one is cut from there: `, <it>`).
    prev_end: Option<usize>,
    /// Where a removed run at the start began (cut up to the next kept element: `<it>, `).
    cut_first: Option<usize>,
}

impl Elements {
    /// One element read from `start` to `end`; `removed` when it is to be cut.
    fn element(&mut self, start: usize, end: usize, removed: bool, cuts: &mut Vec<(usize, usize)>) {
        match (removed, self.prev_end) {
            (true, Some(p)) => cuts.push((p, end)),
            (true, None) => {
                self.cut_first.get_or_insert(start);
            }
            (false, _) => {
                if let Some(s) = self.cut_first.take() {
                    cuts.push((s, start));
                }
                self.prev_end = Some(end);
            }
        }
    }

    /// The list ends after its last element (which ended at `end`): a removed run with nothing
    /// kept after it is cut alone (its list or object goes whole, or is left empty).
    fn close(&mut self, end: usize, cuts: &mut Vec<(usize, usize)>) {
        if let Some(s) = self.cut_first.take() {
            cuts.push((s, end));
        }
    }
}

/// What an object showed of being an `Attachment`.
#[derive(Default)]
struct Attachment<'a> {
    /// Its string `url` (`None` inside when it has escapes).
    url: Option<Option<&'a str>>,
    marked: bool,
    extension: bool,
    /// A resource (its own `url` and `title`: a canonical resource), not an Attachment.
    resource: bool,
}

/// Keys seen in one object. Most FHIR objects have a few keys: they live inline (no
/// allocation, no initialisation), a one-word prefilter spares most compares, and past 64 keys
/// a set takes over (no quadratic blow-up on hostile lines).
#[derive(Default)]
struct Keys<'a> {
    list: SmallVec<[&'a [u8]; 16]>,
    /// One bit per (length, last byte) class seen.
    seen: u64,
    many: Option<HashSet<&'a [u8]>>,
}

impl<'a> Keys<'a> {
    #[inline]
    fn insert(&mut self, k: &'a [u8]) -> bool {
        if let Some(set) = &mut self.many {
            return set.insert(k);
        }
        let bit = 1u64 << ((k.len() as u64 * 31 + k.last().copied().unwrap_or(0) as u64) % 64);
        let maybe_seen = self.seen & bit != 0;
        self.seen |= bit;
        if maybe_seen && self.list.contains(&k) {
            return false;
        }
        if self.list.len() < 64 {
            self.list.push(k);
        } else {
            let mut set: HashSet<&[u8]> = self.list.drain(..).collect();
            set.insert(k);
            self.many = Some(set);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_test_finds_the_first_special_byte() {
        for byte in 0..=255u8 {
            for pos in 0..8 {
                let mut w = [b'a'; 8];
                w[pos] = byte;
                let mask = special_bytes(u64::from_le_bytes(w));
                let special = byte == b'"' || byte == b'\\' || !(0x20..0x80).contains(&byte);
                assert_eq!(mask != 0, special, "byte {byte} at {pos}");
                if special {
                    assert_eq!(mask.trailing_zeros() as usize / 8, pos, "byte {byte} at {pos}");
                }
                // Whatever follows a special byte, the first one is found.
                let mut w2 = [0u8; 8];
                w2[..pos].fill(b'a');
                if special {
                    w2[pos] = byte;
                    assert_eq!(special_bytes(u64::from_le_bytes(w2)).trailing_zeros() as usize / 8, pos);
                }
            }
        }
    }

    #[test]
    fn the_short_reference_form_agrees_with_the_grammar() {
        for r in [
            "Patient/p1",
            "Patient/a.b-c",
            "P/x",
            "patient/p1",
            "Patient/",
            "/p1",
            "Patient/p1/_history/1",
            "Patient/p 1",
            "Patient/p1?x",
            "http://x/Patient/p1",
            "#c1",
            "Patient1/p",
            "Patient/é",
        ] {
            let grammar = matches!(reference::parse(r), Target::Relative(l) if l.version.is_none());
            assert_eq!(relative_literal(r.as_bytes()).is_some(), grammar, "{r}");
        }
    }

    #[test]
    fn duplicate_keys_are_found_in_objects_of_any_size() {
        let names: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        for size in [1, 8, 9, 64, 65, 200] {
            let mut keys = Keys::default();
            for n in &names[..size] {
                assert!(keys.insert(n.as_bytes()), "{n} is new");
            }
            for n in &names[..size] {
                assert!(!keys.insert(n.as_bytes()), "{n} is a duplicate (size {size})");
            }
        }
    }
}
