//! Canonicals written as relative literals (`"library": ["Library/x"]`), which servers resolve
//! like references.
//!
//! A `canonical` element normally holds a URL (`http://…/Library/x|1.0`), matched against
//! `Library.url` server-wide. But HAPI treats a canonical that is a relative literal as a local
//! reference: it refuses the write when `Library/x` does not exist (HAPI-1094, an existence
//! oracle for any id on the server) and indexes it for searches and `_include`. fhir-fence
//! therefore treats such a value exactly like a `reference`: moved into the tenant's namespace
//! on the way in, required to be the tenant's on the way out.
//!
//! The elements are the R4 elements of type `canonical` outside the server-wide definitional
//! types (which tenants cannot write), named by their last path segment; a choice element
//! (`value[x]`) by its canonical form (`valueCanonical`). A value counts only when it is a
//! string (or a string in an array) that is exactly `Type/id` (optionally `/_history/v`, then
//! `|version`) with `Type` an R4 resource type; URLs and everything else are left alone.
use super::reference::{self, Literal};
use serde_json::Value;

/// The names of R4 `canonical` elements in the types a tenant writes (a `match`, so that the
/// check on every key of every resource the fast path scans costs a length compare for most).
macro_rules! elements {
    ($($name:literal),* $(,)?) => {
        /// Whether an object member of this name holds canonicals.
        pub fn is_element(key: &[u8]) -> bool {
            matches!(key, $($name)|*)
        }
        #[cfg(test)]
        const ELEMENTS: &[&[u8]] = &[$($name),*];
    };
}
elements!(
    b"answerValueSet",
    b"capabilities",
    b"definition",
    b"definitionCanonical",
    b"derivedFrom",
    b"instantiatesCanonical",
    b"library",
    b"measure",
    b"moduleCanonical",
    b"partOf",
    b"profile",
    b"questionnaire",
    b"replaces",
    b"resource",
    b"transform",
    b"valueCanonical",
    b"valueSet",
    b"workflow",
);

/// A canonical that is a relative literal: the literal and what follows it (`|version` or "").
pub fn literal(canonical: &str) -> Option<(Literal<'_>, &str)> {
    let cut = canonical.find('|').unwrap_or(canonical.len());
    let l = reference::literal(&canonical[..cut])?;
    super::shape::Model::r4().is_resource_type(l.rtype).then_some((l, &canonical[cut..]))
}

/// A canonical that names a tenant's resource and is therefore treated as a reference — one
/// naming a server-wide type (`StructureDefinition/x` in `meta.profile`) names shared
/// definitions and is not: the literal and what follows it (`|version` or ""). The one
/// definition for the inbound check (`scope::write`) and both forms of the outbound check.
pub fn tenant_literal(canonical: &str) -> Option<(Literal<'_>, &str)> {
    literal(canonical).filter(|(l, _)| !super::server_wide::is_server_wide(l.rtype))
}

/// Why a canonical of an element that may name `targets` (empty: any type) is of no form a
/// server resolves one way only, or `None` when it is fine. A canonical is an absolute URL
/// (`scheme://…`), a `urn:`, a `#contained` id, or a relative literal `Type/id[|version]` of a
/// type the element may name. Anything else is read by servers in ways of their own: HAPI takes
/// a leading-slash `/Library/x` for a local link to that id whoever owns it, and its validator
/// looks up `QuestionnaireResponse.questionnaire = "ValueSet/x"` by the id alone.
pub fn form_problem(c: &str, targets: &[Box<str>]) -> Option<&'static str> {
    if c.starts_with('#') || c.starts_with("urn:") {
        return None;
    }
    if let Some((l, _)) = literal(c) {
        return match targets.is_empty() || targets.iter().any(|t| **t == *l.rtype) {
            true => None,
            false => Some("a relative canonical must name a type this element can point at"),
        };
    }
    match c.split_once("://") {
        Some((scheme, rest)) if !scheme.is_empty() && !rest.is_empty() && !scheme.contains('/') => None,
        _ => Some("a canonical is an absolute URL, a urn:, a #contained id or Type/id"),
    }
}

/// Calls `f` on every string held by a canonical element in `value` (a string member, or each
/// string in an array member), depth first, stopping at the first error.
pub fn for_each_mut<E>(value: &mut Value, f: &mut impl FnMut(&mut String) -> Result<(), E>) -> Result<(), E> {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::String(s) if is_element(k.as_bytes()) => f(s)?,
                    Value::Array(items) if is_element(k.as_bytes()) => {
                        for item in items {
                            match item {
                                Value::String(s) => f(s)?,
                                other => for_each_mut(other, f)?,
                            }
                        }
                    }
                    _ => for_each_mut(v, f)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| for_each_mut(v, f)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn elements_are_recognised() {
        assert!(ELEMENTS.iter().all(|e| is_element(e)));
        assert!(!is_element(b"reference") && !is_element(b"librar") && !is_element(b"url"));
    }

    #[test]
    fn only_relative_literals_of_resource_types_count() {
        let (l, rest) = literal("Library/x|1.0").unwrap();
        assert_eq!((l.rtype, l.id, rest), ("Library", "x", "|1.0"));
        assert_eq!(literal("Questionnaire/q").unwrap().1, "");
        assert!(literal("Questionnaire/q/_history/2").unwrap().0.version.is_some());
        assert!(literal("http://example.org/fhir/Library/x").is_none());
        assert!(literal("Blood/urine").is_none(), "not a resource type");
        assert!(literal("Library/x/y").is_none());
    }

    #[test]
    fn visits_strings_and_arrays_of_strings_under_canonical_elements_only() {
        let mut v = json!({
            "library": ["Library/a", "http://x/Library/b"],
            "relatedArtifact": [{"type": "depends-on", "resource": "Questionnaire/q"}],
            "partOf": [{"reference": "Procedure/p"}],
            "meta": {"profile": ["StructureDefinition/s"]},
            "extension": [{"url": "u", "valueCanonical": "PlanDefinition/p"}],
            "text": {"div": "Library/not-this"},
            "code": "Library/nor-this"
        });
        let mut seen = vec![];
        for_each_mut(&mut v, &mut |s: &mut String| -> Result<(), ()> {
            seen.push(s.clone());
            s.push('!');
            Ok(())
        })
        .unwrap();
        seen.sort();
        assert_eq!(
            seen,
            ["Library/a", "PlanDefinition/p", "Questionnaire/q", "StructureDefinition/s", "http://x/Library/b"]
        );
        assert_eq!(v["library"][0], "Library/a!");
    }
}
