//! The outbound check of [`scope::respond::resource`](crate::scope::respond::resource), done in
//! one pass over the bytes of an NDJSON line, for export downloads.
//!
//! Parsing every line into a `serde_json::Value` and writing it out again costs far more than
//! the check itself. This scanner validates the line as strict JSON (RFC 8259, duplicate keys
//! rejected) while copying it to the output, and edits only what the check edits: the `id`
//! (prefix removed), the caller's tenant coding (removed from `meta`), and `reference` strings
//! (turned back into local ids). It answers only **Accept** or **Unsure**: anything it does not
//! handle with certainty (escapes in keys or in checked strings, `\u` escapes, exponents,
//! deep nesting, a line the check would refuse) is Unsure, and the line then goes through the
//! `Value`-based check, which stays the single definition of what may leave. A differential
//! test below holds the two to the same answers.
use crate::fhir::reference::{self, Target};
use crate::tenancy::Tenant;
use memchr::memchr2;
use std::collections::HashSet;

/// What one line's check needs to know, borrowed for the life of a download.
pub struct FastLine {
    pub expected_type: String,
    pub tenant: Tenant,
    pub system: String,
    /// `tag` or `security`: where the tenant coding must be.
    pub field: &'static str,
    pub upstream_base: String,
    pub external_bases: Vec<String>,
}

/// Elements that mark an object as an `Attachment` (as in `fhir::reference`).
const ATTACHMENT_KEYS: &[&[u8]] = &[b"contentType", b"data", b"size", b"hash", b"title", b"creation", b"language"];
const MAX_DEPTH: usize = 100;

/// Why the fast path gave the line back (it never refuses on its own).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsure;

type R<T> = Result<T, Unsure>;

impl FastLine {
    /// Appends the client's view of `line` to `out` and returns Ok, or returns `Unsure` with
    /// `out` as it was.
    pub fn accept(&self, line: &[u8], out: &mut Vec<u8>) -> R<()> {
        let start = out.len();
        let mut s = Scan { b: line, i: 0, out, f: self, codings: 0, seen_type: false, seen_id: false };
        let r = s.top().and_then(|_| {
            s.ws();
            if s.i == s.b.len() && s.codings == 1 && s.seen_type && s.seen_id {
                Ok(())
            } else {
                Err(Unsure)
            }
        });
        if r.is_err() {
            s.out.truncate(start);
        }
        r
    }
}

struct Scan<'a, 'o> {
    b: &'a [u8],
    i: usize,
    out: &'o mut Vec<u8>,
    f: &'a FastLine,
    /// Tenant codings seen in `meta` (exactly one, the caller's, is required).
    codings: usize,
    seen_type: bool,
    seen_id: bool,
}

/// A string as found: its raw content (between the quotes) and whether it holds escapes.
struct Str<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> Str<'a> {
    /// The plain text, when there are no escapes.
    fn plain(&self) -> Option<&'a str> {
        if self.escaped {
            return None;
        }
        std::str::from_utf8(self.raw).ok()
    }
}

impl<'a> Scan<'a, '_> {
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
                self.out.push(*c);
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> R<u8> {
        self.b.get(self.i).copied().ok_or(Unsure)
    }

    fn expect(&mut self, c: u8) -> R<()> {
        if self.peek()? != c {
            return Err(Unsure);
        }
        self.out.push(c);
        self.i += 1;
        Ok(())
    }

    /// Reads a string starting at `"` without writing it.
    fn string(&mut self) -> R<Str<'a>> {
        if self.peek()? != b'"' {
            return Err(Unsure);
        }
        let start = self.i + 1;
        let mut j = start;
        let mut escaped = false;
        let mut high = 0u8;
        loop {
            let k = memchr2(b'"', b'\\', &self.b[j..]).ok_or(Unsure)? + j;
            for &c in &self.b[j..k] {
                if c < 0x20 {
                    return Err(Unsure);
                }
                high |= c;
            }
            if self.b[k] == b'"' {
                j = k;
                break;
            }
            // Simple escapes are copied as they are; `\u` (and surrogates) go the slow way.
            match self.b.get(k + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                    escaped = true;
                    j = k + 2;
                }
                _ => return Err(Unsure),
            }
        }
        let raw = &self.b[start..j];
        if high >= 0x80 && std::str::from_utf8(raw).is_err() {
            return Err(Unsure);
        }
        self.i = j + 1;
        Ok(Str { raw, escaped })
    }

    fn write_str(&mut self, raw: &[u8]) {
        self.out.push(b'"');
        self.out.extend_from_slice(raw);
        self.out.push(b'"');
    }

    /// The top-level resource.
    fn top(&mut self) -> R<()> {
        self.ws();
        self.object(1, Place::Top)
    }

    /// Any value; `place` says what the surrounding check cares about.
    fn value(&mut self, depth: usize, place: Place) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(Unsure);
        }
        match self.peek()? {
            b'{' => self.object(depth, place),
            b'[' => self.array(depth),
            b'"' => {
                let s = self.string()?;
                self.write_str(s.raw);
                Ok(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.b[self.i..].starts_with(word) {
            self.out.extend_from_slice(word);
            self.i += word.len();
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?` (exponents go the slow way).
    fn number(&mut self) -> R<()> {
        let start = self.i;
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
        if matches!(b.get(i), Some(b'e' | b'E')) {
            return Err(Unsure);
        }
        self.out.extend_from_slice(&b[start..i]);
        self.i = i;
        Ok(())
    }

    fn array(&mut self, depth: usize) -> R<()> {
        self.expect(b'[')?;
        self.ws();
        if self.peek()? == b']' {
            return self.expect(b']');
        }
        loop {
            self.value(depth + 1, Place::Any)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.expect(b',')?;
                    self.ws();
                }
                b']' => return self.expect(b']'),
                _ => return Err(Unsure),
            }
        }
    }

    /// `meta.tag` or `meta.security`: Codings copied, except the caller's tenant coding, which
    /// is counted and left out. Returns how many elements were written.
    fn meta_list(&mut self, depth: usize, field: &'static str) -> R<usize> {
        self.expect(b'[')?;
        self.ws();
        let mut kept = 0;
        if self.peek()? == b']' {
            self.expect(b']')?;
            return Ok(0);
        }
        loop {
            let before = self.out.len();
            if kept > 0 {
                self.out.push(b',');
            }
            let tenant_coding = if self.peek()? == b'{' {
                let (system, code) = self.coding(depth + 1)?;
                if system.as_deref() == Some(self.f.system.as_str()) {
                    // Only the caller's, only in the configured list (once: counted by the caller).
                    if field != self.f.field || code.as_deref() != Some(self.f.tenant.name.as_str()) {
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
            if tenant_coding {
                self.codings += 1;
                self.out.truncate(before);
            } else {
                kept += 1;
            }
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.skip_ws();
                }
                b']' => {
                    self.expect(b']')?;
                    return Ok(kept);
                }
                _ => return Err(Unsure),
            }
        }
    }

    /// Whitespace consumed without copying (where the separator it followed was not copied).
    fn skip_ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    /// A Coding in `meta.tag`/`meta.security`, copied; its `system` and `code` returned.
    fn coding(&mut self, depth: usize) -> R<(Option<&'a str>, Option<&'a str>)> {
        let mut found = (None, None);
        self.members(depth, &mut |s, key| {
            match key {
                b"system" if s.peek()? == b'"' => found.0 = Some(s.string_value()?),
                b"code" if s.peek()? == b'"' => found.1 = Some(s.string_value()?),
                b"version" | b"display" | b"userSelected" => s.value(depth + 1, Place::Any)?,
                // Anything else (an extension, a stray `reference`) goes the full way.
                _ => return Err(Unsure),
            }
            Ok(true)
        })?;
        Ok(found)
    }

    /// A string value the check reads: copied, returned as plain text (escapes → Unsure).
    fn string_value(&mut self) -> R<&'a str> {
        let s = self.string()?;
        let text = s.plain().ok_or(Unsure)?;
        self.write_str(s.raw);
        Ok(text)
    }

    fn object(&mut self, depth: usize, place: Place) -> R<()> {
        let mut attachment = Attachment::default();
        self.members(depth, &mut |s, key| {
            match (place, key) {
                (Place::Top, b"resourceType") => {
                    if s.string_value()? != s.f.expected_type {
                        return Err(Unsure);
                    }
                    s.seen_type = true;
                }
                (Place::Top, b"id") => {
                    let v = s.string()?;
                    let local = v.plain().and_then(|id| s.f.tenant.local_id(id)).ok_or(Unsure)?;
                    s.write_str(local.as_bytes());
                    s.seen_id = true;
                }
                (Place::Top, b"meta") if s.peek()? == b'{' => s.object(depth + 1, Place::Meta)?,
                (Place::Top, b"meta") => return Err(Unsure),
                (Place::Meta, b"tag" | b"security") => {
                    if s.peek()? != b'[' {
                        return Err(Unsure);
                    }
                    let field = if key == b"tag" { "tag" } else { "security" };
                    let before = s.codings;
                    let kept = s.meta_list(depth + 1, field)?;
                    // The list the tenant coding was removed from goes when nothing is left.
                    return Ok(!(kept == 0 && s.codings > before));
                }
                (_, b"reference") if s.peek()? == b'"' => {
                    let v = s.string()?;
                    let r = v.plain().ok_or(Unsure)?;
                    let rewritten = s.reference(r)?;
                    s.write_str(rewritten.as_deref().unwrap_or(r).as_bytes());
                }
                (_, b"url") if s.peek()? == b'"' => {
                    let v = s.string()?;
                    s.write_str(v.raw);
                    attachment.url = Some(v.plain());
                }
                _ => {
                    attachment.marked |= ATTACHMENT_KEYS.contains(&key);
                    attachment.extension |= key.starts_with(b"value");
                    s.value(depth + 1, Place::Any)?
                }
            }
            Ok(true)
        })?;
        // An Attachment's url naming the upstream is never shown (the full check refuses it).
        if let (Some(url), true, false) = (attachment.url, attachment.marked, attachment.extension) {
            match url {
                Some(u) if !u.starts_with(&self.f.upstream_base) => {}
                _ => return Err(Unsure),
            }
        }
        Ok(())
    }

    /// The members of an object: `{`, key/value pairs through `each` (which answers whether the
    /// member stays), `}`. A duplicate or escaped key → Unsure.
    fn members(&mut self, depth: usize, each: &mut dyn FnMut(&mut Self, &'a [u8]) -> R<bool>) -> R<()> {
        if depth > MAX_DEPTH {
            return Err(Unsure);
        }
        self.expect(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            return self.expect(b'}');
        }
        let mut keys: Keys<'a> = Keys::default();
        let mut written = 0usize;
        loop {
            let member_start = self.out.len();
            if written > 0 {
                self.out.push(b',');
            }
            let key = self.string()?;
            if key.escaped || !keys.insert(key.raw) {
                return Err(Unsure);
            }
            self.write_str(key.raw);
            self.ws();
            self.expect(b':')?;
            self.ws();
            if each(self, key.raw)? {
                written += 1;
            } else {
                self.out.truncate(member_start);
            }
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.skip_ws();
                }
                b'}' => return self.expect(b'}'),
                _ => return Err(Unsure),
            }
        }
    }

    /// A reference string for the client: `None` to keep it as is.
    fn reference(&self, r: &str) -> R<Option<String>> {
        match reference::parse(r) {
            Target::Contained => Ok(None),
            Target::Relative(l) => Ok(Some(l.with_id(self.f.tenant.local_id(l.id).ok_or(Unsure)?))),
            Target::Absolute { base, literal } if base == self.f.upstream_base => {
                Ok(Some(literal.with_id(self.f.tenant.local_id(literal.id).ok_or(Unsure)?)))
            }
            Target::Absolute { base, .. } if self.f.external_bases.iter().any(|b| b == base) => Ok(None),
            _ => Err(Unsure),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Top,
    Meta,
    Any,
}

/// What an object showed of being an `Attachment`.
#[derive(Default)]
struct Attachment<'a> {
    /// Its string `url` (`None` inside when it has escapes).
    url: Option<Option<&'a str>>,
    marked: bool,
    extension: bool,
}

/// Keys seen in one object: a short list, a set once objects grow (no quadratic blow-up).
#[derive(Default)]
struct Keys<'a> {
    few: Vec<&'a [u8]>,
    many: Option<HashSet<&'a [u8]>>,
}

impl<'a> Keys<'a> {
    fn insert(&mut self, k: &'a [u8]) -> bool {
        if let Some(set) = &mut self.many {
            return set.insert(k);
        }
        if self.few.contains(&k) {
            return false;
        }
        self.few.push(k);
        if self.few.len() > 16 {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}
