//! FHIR literal references: what a `reference` string points at, and a walker over every one in a body.
//!
//! The walker is deliberately blunt: any object member named `reference` holding a string is
//! treated as `Reference.reference`, wherever it sits (extensions, `Parameters`, contained
//! resources, backbone elements). Missing one is a leak; visiting one too many is harmless.
use serde_json::Value;

/// What a reference string points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// `#id`: a contained resource in the same body.
    Contained,
    /// `Type/id` or `Type/id/_history/v`, relative to the server's base.
    Relative(Literal<'a>),
    /// `http(s)://…/Type/id[/_history/v]`; `base` is everything before `/Type/id`.
    Absolute { base: &'a str, literal: Literal<'a> },
    /// Any other absolute URL, `urn:uuid:`/`urn:oid:`, a conditional `Type?query`, or garbage.
    Other,
    /// `Type?criteria` (a conditional reference, resolved by the server by search).
    Conditional,
    /// `urn:uuid:…` / `urn:oid:…` (only meaningful inside a transaction Bundle).
    Urn,
}

/// `Type/id[/_history/version]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Literal<'a> {
    pub rtype: &'a str,
    pub id: &'a str,
    pub version: Option<&'a str>,
}

impl Literal<'_> {
    /// Formats the literal back as `Type/id[/_history/v]` with another id.
    pub fn with_id(&self, id: &str) -> String {
        match self.version {
            Some(v) => format!("{}/{}/_history/{}", self.rtype, id, v),
            None => format!("{}/{}", self.rtype, id),
        }
    }
}

/// Classifies a reference string.
pub fn parse(reference: &str) -> Target<'_> {
    if reference.starts_with('#') {
        return Target::Contained;
    }
    if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
        return Target::Urn;
    }
    // `Type?criteria` first: criteria may hold URLs (`identifier=http://sys|x`).
    if let Some((before, _)) = reference.split_once('?') {
        if is_resource_type(before) {
            return Target::Conditional;
        }
    }
    if let Some(scheme_end) = memchr::memmem::find(reference.as_bytes(), b"://") {
        let scheme = &reference[..scheme_end];
        if (scheme == "http" || scheme == "https") && !reference.contains(['?', '#']) {
            if let Some((base, literal)) = split_absolute(reference) {
                return Target::Absolute { base, literal };
            }
        }
        return Target::Other;
    }
    if let Some((before, _)) = reference.split_once('?') {
        if is_resource_type(before) {
            return Target::Conditional;
        }
        return Target::Other;
    }
    match literal(reference) {
        Some(l) => Target::Relative(l),
        None => Target::Other,
    }
}

/// Parses exactly `Type/id` or `Type/id/_history/v`.
pub fn literal(s: &str) -> Option<Literal<'_>> {
    let mut parts = s.split('/');
    let (t, id) = (parts.next()?, parts.next()?);
    if !is_resource_type(t) || !is_id(id) {
        return None;
    }
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => Some(Literal { rtype: t, id, version: None }),
        (Some("_history"), Some(v), None) if is_id(v) => Some(Literal { rtype: t, id, version: Some(v) }),
        _ => None,
    }
}

fn split_absolute(url: &str) -> Option<(&str, Literal<'_>)> {
    // Try the versioned form first (4 trailing segments), then the plain form (2).
    for segments in [4usize, 2] {
        let mut cut = url.len();
        let mut ok = true;
        for _ in 0..segments {
            match url[..cut].rfind('/') {
                Some(i) => cut = i,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        if let Some(l) = literal(&url[cut + 1..]) {
            let base = &url[..cut];
            if base.contains("://") && !base.ends_with('/') {
                return Some((base, l));
            }
        }
    }
    None
}

/// A FHIR resource type name: an upper-case letter then letters.
pub fn is_resource_type(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_uppercase()) && b.all(|c| c.is_ascii_alphabetic()) && s.len() <= 64
}

/// A FHIR id: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

/// Calls `f` on every `reference` string in `value`, depth first, stopping at the first error.
pub fn for_each_mut<E>(value: &mut Value, f: &mut impl FnMut(&mut String) -> Result<(), E>) -> Result<(), E> {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::String(s) if k == "reference" => f(s)?,
                    _ => for_each_mut(v, f)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| for_each_mut(v, f)),
        _ => Ok(()),
    }
}

/// Elements that mark an object as a FHIR `Attachment` (besides `url`).
const ATTACHMENT_KEYS: &[&str] = &["contentType", "data", "size", "hash", "title", "creation", "language"];

/// Calls `f` on the `url` of every object that looks like an `Attachment`: a string `url`
/// next to one of the Attachment elements, no `value[x]` (which would make it an Extension)
/// and no `resourceType` (a canonical resource's own `url` beside its `title`).
pub fn for_each_attachment_url_mut<E>(
    value: &mut Value,
    f: &mut impl FnMut(&mut String) -> Result<(), E>,
) -> Result<(), E> {
    match value {
        Value::Object(map) => {
            let attachment = map.get("url").is_some_and(Value::is_string)
                && ATTACHMENT_KEYS.iter().any(|k| map.contains_key(*k))
                && !map.keys().any(|k| k.starts_with("value"))
                && !map.contains_key("resourceType");
            if attachment {
                if let Some(Value::String(url)) = map.get_mut("url") {
                    f(url)?;
                }
            }
            for (_, v) in map.iter_mut() {
                for_each_attachment_url_mut(v, f)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| for_each_attachment_url_mut(v, f)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_references() {
        assert_eq!(parse("#c1"), Target::Contained);
        assert_eq!(parse("urn:uuid:1234"), Target::Urn);
        assert_eq!(parse("Patient?identifier=x"), Target::Conditional);
        assert_eq!(parse("Patient?identifier=http://sys|x"), Target::Conditional);
        assert_eq!(parse("http://x/Patient?identifier=y"), Target::Other);
        assert_eq!(parse("Patient/p1"), Target::Relative(Literal { rtype: "Patient", id: "p1", version: None }));
        assert_eq!(
            parse("Patient/p1/_history/3"),
            Target::Relative(Literal { rtype: "Patient", id: "p1", version: Some("3") })
        );
        assert_eq!(
            parse("http://h:8080/fhir/Patient/p1"),
            Target::Absolute {
                base: "http://h:8080/fhir",
                literal: Literal { rtype: "Patient", id: "p1", version: None }
            }
        );
        assert_eq!(
            parse("https://h/Observation/o/_history/2"),
            Target::Absolute {
                base: "https://h",
                literal: Literal { rtype: "Observation", id: "o", version: Some("2") }
            }
        );
        assert_eq!(parse("patient/p1"), Target::Other);
        assert_eq!(parse("Patient/p1/extra"), Target::Other);
        assert_eq!(parse("Patient/../x"), Target::Other);
        assert_eq!(parse("ftp://h/Patient/p1"), Target::Other);
        assert_eq!(parse("Patient/"), Target::Other);
    }

    #[test]
    fn finds_attachment_urls_only() {
        let mut v = json!({
            "content": [{"attachment": {"contentType": "application/pdf", "url": "Binary/b1"}}],
            "extension": [{"url": "http://example.org/ext", "valueString": "x"}],
            "photo": [{"url": "http://example.org/p.png", "title": "p"}],
            "url": "http://example.org/canonical",
            "contained": [{"resourceType": "Library", "url": "http://example.org/Library/l", "title": "L",
                "content": [{"contentType": "text/cql", "url": "http://example.org/l.cql"}]}]
        });
        let mut seen = vec![];
        for_each_attachment_url_mut(&mut v, &mut |u: &mut String| -> Result<(), ()> {
            seen.push(u.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["Binary/b1", "http://example.org/p.png", "http://example.org/l.cql"]);
    }

    #[test]
    fn walks_every_reference() {
        let mut v = json!({
            "subject": {"reference": "Patient/a"},
            "extension": [{"valueReference": {"reference": "Patient/b"}}],
            "contained": [{"resourceType": "X", "performer": [{"reference": "Practitioner/c"}]}],
            "reference": {"not": "a string"},
            "parameter": [{"part": [{"valueReference": {"reference": "Group/d"}}]}]
        });
        let mut seen = vec![];
        for_each_mut(&mut v, &mut |s: &mut String| -> Result<(), ()> {
            seen.push(s.clone());
            s.insert(0, 'x');
            Ok(())
        })
        .unwrap();
        seen.sort();
        assert_eq!(seen, ["Group/d", "Patient/a", "Patient/b", "Practitioner/c"]);
        assert_eq!(v["subject"]["reference"], "xPatient/a");
    }
}
