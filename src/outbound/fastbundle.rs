//! The outbound check of a searchset Bundle without building a JSON tree for its resources.
//!
//! A 100-entry search Bundle parsed into `serde_json::Value`s, filtered and written out again
//! cost milliseconds, nearly all of it building and dropping the tree. Here the Bundle's own
//! members are parsed strictly (small), and each entry's resource goes through
//! [`FastLine`](crate::outbound::FastLine), the one-pass form of
//! [`resource`](super::resource::resource) that export downloads use; its cuts are
//! spliced into the output. The answer is the same Bundle `outbound::bundle` would build, member
//! for member, in the same order.
//!
//! It only ever answers `Some(bytes)` when every part is certain; anything else — an entry
//! field it does not handle, a resource the fast check is unsure about, a `history` Bundle —
//! answers `None`, and the caller runs `outbound::bundle` on the parsed Bundle, which stays the
//! single definition of what may leave (and the one that drops entries).
use super::fastline::{fast_line, FastLine};
use super::resource::public_url;
use super::Checked;
use crate::fhir::json::parse_strict;
use crate::scope::paging::{self, Counted};
use crate::scope::Ctx;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A cursor over the Bundle's own structure. Its members other than `entry` (small) are handed
/// to the strict parser one value at a time; an entry's `resource` is scanned by `FastLine` in
/// place, so the resources' bytes are read once.
struct Envelope<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Envelope<'a> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    /// The next non-blank byte, consumed.
    fn next(&mut self) -> Option<u8> {
        self.ws();
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// A member name without escapes (names with escapes are for the slow path), and its `:`.
    fn key(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let len = self.b[self.i..].iter().position(|c| *c == b'"')?;
        let k = std::str::from_utf8(&self.b[self.i..self.i + len]).ok()?;
        if k.contains('\\') {
            return None;
        }
        self.i += len + 1;
        self.eat(b':')?;
        Some(k)
    }

    /// One value, strictly parsed.
    fn value(&mut self) -> Option<Value> {
        let rest = &self.b[self.i..];
        let raw = <&RawValue>::deserialize(&mut serde_json::Deserializer::from_slice(rest)).ok()?;
        // Where the value ended: its text is a slice of `rest`.
        let end = raw.get().as_ptr() as usize - rest.as_ptr() as usize + raw.get().len();
        self.i += end;
        parse_strict(raw.get().as_bytes()).ok()
    }

    /// After `{` or `[`: false at the closing `close`, true when another member follows.
    fn more(&mut self, first: &mut bool, close: u8) -> Option<bool> {
        self.ws();
        if self.b.get(self.i) == Some(&close) {
            self.i += 1;
            return Some(false);
        }
        if !std::mem::take(first) {
            self.eat(b',')?;
        }
        Some(true)
    }
}

/// One entry, written to `out` as `outbound::bundle` writes it: `resource`, `fullUrl`, `search`.
fn entry(ctx: &Ctx, env: &mut Envelope, fast: &mut FastLine, out: &mut Vec<u8>) -> Option<()> {
    env.eat(b'{')?;
    let (mut resource, mut full_url, mut search) = (false, false, None);
    let mut first = true;
    out.extend_from_slice(b"{\"resource\":");
    let mut found = (String::new(), String::new());
    while env.more(&mut first, b'}')? {
        match env.key()? {
            "resource" if !resource => {
                resource = true;
                env.ws();
                env.i = fast.accept_at(env.b, env.i, out).ok()?;
                let text = |r: &std::ops::Range<usize>| std::str::from_utf8(&env.b[r.clone()]).ok().map(str::to_owned);
                found = (text(&fast.found_type)?, text(&fast.found_id)?);
            }
            "search" if search.is_none() => search = Some(env.value()?),
            // `fullUrl` is rebuilt; anything else (or a member twice) is for the slow path.
            "fullUrl" if !full_url => {
                full_url = true;
                env.value()?;
            }
            _ => return None,
        }
    }
    if !resource {
        return None;
    }
    out.extend_from_slice(b",\"fullUrl\":");
    serde_json::to_writer(&mut *out, &public_url(ctx, &found.0, &found.1)).ok()?;
    if let Some(s) = search {
        out.extend_from_slice(b",\"search\":");
        serde_json::to_writer(&mut *out, &s).ok()?;
    }
    out.push(b'}');
    Some(())
}

/// The client's view of a searchset Bundle, serialised, or `None` to take the slow path.
pub fn searchset(ctx: &Ctx, bytes: &[u8], self_url: &str, counted: Counted, asked: &str) -> Option<Checked> {
    let mut env = Envelope { b: bytes, i: 0 };
    let mut fast = fast_line(ctx.snap, ctx.tenant, ctx.upstream, None);
    let mut b = Map::new();
    let mut out_entries = Vec::with_capacity(bytes.len());
    let (mut kept, mut seen_entry) = (0, false);
    env.eat(b'{')?;
    let mut first = true;
    while env.more(&mut first, b'}')? {
        let key = env.key()?;
        if key == "entry" {
            if seen_entry {
                return None;
            }
            seen_entry = true;
            env.eat(b'[')?;
            let mut first_entry = true;
            while env.more(&mut first_entry, b']')? {
                out_entries.push(if kept == 0 { b'[' } else { b',' });
                entry(ctx, &mut env, &mut fast, &mut out_entries)?;
                kept += 1;
            }
        } else if b.insert(key.to_owned(), env.value()?).is_some() {
            return None;
        }
    }
    env.ws();
    if env.i != bytes.len() {
        return None;
    }
    if b.get("resourceType").and_then(Value::as_str) != Some("Bundle")
        || b.get("type").and_then(Value::as_str) != Some("searchset")
    {
        return None;
    }
    // The same member operations, in the same order, as `outbound::bundle` (which re-adds
    // `entry` last, and leaves it out when no entry is left).
    if kept > 0 {
        out_entries.push(b']');
        b.insert("entry".into(), Value::Null);
    }
    b.insert("id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
    paging::rewrite_links(ctx, &mut b, self_url, counted, asked).ok()?;
    if counted == Counted::Server {
        b.remove("total");
    }
    let mut out = Vec::with_capacity(out_entries.len() + 1024);
    out.push(b'{');
    for (i, (k, v)) in b.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, k).ok()?;
        out.push(b':');
        if k == "entry" {
            out.extend_from_slice(&out_entries);
        } else {
            serde_json::to_writer(&mut out, v).ok()?;
        }
    }
    out.push(b'}');
    Some(Checked::bytes(out))
}
