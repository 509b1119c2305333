//! The outbound check of a searchset Bundle without building a JSON tree for its resources.
//!
//! A 100-entry search Bundle parsed into `serde_json::Value`s, filtered and written out again
//! cost milliseconds, nearly all of it building and dropping the tree. Here the Bundle's own
//! members are parsed strictly (small), and each entry's resource goes through
//! [`FastLine`](crate::bulk::fastline::FastLine), the one-pass form of
//! [`respond::resource`](super::respond::resource) that export downloads use; its cuts are
//! spliced into the output. The answer is the same Bundle `respond::bundle` would build, member
//! for member, in the same order.
//!
//! It only ever answers `Some(bytes)` when every part is certain; anything else — an entry
//! field it does not handle, a resource the fast check is unsure about, a `history` Bundle —
//! answers `None`, and the caller runs `respond::bundle` on the parsed Bundle, which stays the
//! single definition of what may leave (and the one that drops entries).
use super::paging;
use super::respond::public_url;
use super::Ctx;
use crate::bulk::download::fast_line;
use crate::fhir::json::parse_strict;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

/// An object's members in document order, values unparsed; a duplicate key is an error.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut out: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    out.push((key, map.next_value()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A Bundle's members in document order, with `entry` read as a list of entries' members in
/// the same pass (one scan of the bytes before the resources' own).
struct Top<'a> {
    members: Vec<(Cow<'a, str>, Option<&'a RawValue>)>,
    entries: Vec<Members<'a>>,
}

impl<'de> serde::Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Bundle")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
                let mut top = Top { members: Vec::new(), entries: Vec::new() };
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if top.members.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    if key == "entry" {
                        top.entries = map.next_value()?;
                        top.members.push((key, None));
                    } else {
                        let raw: &'de RawValue = map.next_value()?;
                        top.members.push((key, Some(raw)));
                    }
                }
                Ok(top)
            }
        }
        d.deserialize_map(V)
    }
}

/// The client's view of a searchset Bundle, serialised, or `None` to take the slow path.
pub fn searchset(ctx: &Ctx, bytes: &[u8], self_url: &str, unscoped: bool) -> Option<Vec<u8>> {
    let Top { members, entries } = serde_json::from_slice(bytes).ok()?;
    let mut b = Map::new();
    for (key, raw) in members {
        if let Some(raw) = raw {
            b.insert(key.into_owned(), parse_strict(raw.get().as_bytes()).ok()?);
        }
    }
    if b.get("resourceType").and_then(Value::as_str) != Some("Bundle")
        || b.get("type").and_then(Value::as_str) != Some("searchset")
    {
        return None;
    }
    let mut fast = fast_line(ctx.snap, ctx.tenant, ctx.upstream, None);
    let mut out_entries = Vec::with_capacity(bytes.len());
    let mut kept = 0;
    for Members(fields) in entries {
        let (mut resource, mut search) = (None, None);
        for (k, v) in fields {
            match k.as_ref() {
                "resource" => resource = Some(v),
                "search" => search = Some(parse_strict(v.get().as_bytes()).ok()?),
                // `fullUrl` is rebuilt; anything else is for the slow path to judge.
                "fullUrl" => {}
                _ => return None,
            }
        }
        let line = resource?.get().as_bytes();
        out_entries.push(if kept == 0 { b'[' } else { b',' });
        out_entries.extend_from_slice(b"{\"resource\":");
        fast.accept(line, &mut out_entries).ok()?;
        let rtype = std::str::from_utf8(&line[fast.found_type.clone()]).ok()?;
        let local = std::str::from_utf8(&line[fast.found_id.clone()]).ok()?;
        out_entries.extend_from_slice(b",\"fullUrl\":");
        serde_json::to_writer(&mut out_entries, &public_url(ctx, rtype, local)).ok()?;
        if let Some(s) = search {
            out_entries.extend_from_slice(b",\"search\":");
            serde_json::to_writer(&mut out_entries, &s).ok()?;
        }
        out_entries.push(b'}');
        kept += 1;
    }
    // The same member operations, in the same order, as `respond::bundle`.
    if kept > 0 {
        out_entries.push(b']');
        b.insert("entry".into(), Value::Null);
    }
    b.insert("id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
    paging::rewrite_links(ctx, &mut b, self_url, unscoped).ok()?;
    if unscoped {
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
    Some(out)
}
