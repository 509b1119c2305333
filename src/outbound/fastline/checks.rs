//! The FHIR half of the one-pass check, on the members that matter: `resourceType` and `id`
//! at the top, the tenant coding in `meta`, references, canonicals and Attachment urls. Each
//! either notes the cut the full check's rewrite amounts to, or answers Unsure for anything
//! the full check would refuse or rewrite otherwise.
use super::cuts::Elements;
use super::policy::{Unsure, R};
use super::scanner::{Place, Scan};
use crate::fhir::canonical;
use crate::fhir::reference::{self, Target};

/// Elements that mark an object as an `Attachment` (as in `fhir::reference`).
fn is_attachment_key(key: &[u8]) -> bool {
    matches!(key, b"contentType" | b"data" | b"size" | b"hash" | b"title" | b"creation" | b"language")
}

impl<'a> Scan<'a> {
    /// `meta.tag` or `meta.security`: the caller's tenant coding is counted and cut (with one
    /// neighbouring comma). Returns how many elements remain.
    pub(super) fn meta_list(&mut self, depth: usize, field: &'static str) -> R<usize> {
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
    pub(super) fn coding(&mut self, depth: usize) -> R<(Option<&'a str>, Option<&'a str>)> {
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

    pub(super) fn object(&mut self, depth: usize, place: Place) -> R<()> {
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

    /// Cuts what the full check rewrites in a reference (upstream base, tenant prefix), or
    /// answers Unsure for any reference it would refuse.
    pub(super) fn reference(&mut self, at: usize, r: &'a str) -> R<()> {
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
    pub(super) fn canonical(&mut self, at: usize, c: &'a str) -> R<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
