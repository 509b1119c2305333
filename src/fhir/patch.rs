//! JSON Patch (RFC 6902) applied within bounds.
//!
//! A patch is small but its work is not: each `copy` can double the document, so 40 of them in a
//! 2 KB request would grow one resource past any memory, and a thousand copies of a large value
//! would keep a worker thread busy for every tenant behind it. So a patch holds at most
//! [`MAX_OPERATIONS`] operations and is applied one at a time, and before each one:
//! - the document's size is kept under the body limit (the result must fit in a request body
//!   anyway: it is written back like a PUT). The size is tracked from what each operation adds
//!   and removes (the values it touches are measured, never the whole document), as an upper
//!   bound of the serialised size;
//! - the bytes the operations touch (values added, copied, replaced, removed, tested) are
//!   summed, and a patch touching more than [`WORK_FACTOR`] times the limit is refused: its work
//!   is O(limit), whatever the operations.
//!
//! [`Budget`] keeps both bounds; FHIRPath Patch (`fhir::fhirpath_patch`) charges it the same way.
use serde_json::Value;

/// The most operations one patch may hold.
pub const MAX_OPERATIONS: usize = 1000;

/// A patch may touch at most this many times the body limit, in bytes of the values it moves.
pub const WORK_FACTOR: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("a patch may hold at most {MAX_OPERATIONS} operations; this one holds {0}")]
    TooManyOperations(usize),
    #[error("the patched resource would exceed {0} bytes")]
    TooLarge(usize),
    #[error("the patch touches more than {0} bytes of values; split it into smaller patches")]
    TooMuchWork(usize),
    #[error("the patch cannot be applied: {0}")]
    Invalid(String),
    /// Not a patch document at all (answered 400, like any malformed body).
    #[error("{0}")]
    Malformed(String),
    /// A FHIRPath expression outside the subset fhir-fence evaluates (`fhir::fhirpath_patch`).
    #[error("this FHIRPath expression is not supported by fhir-fence: {0}")]
    Unsupported(String),
}

/// The patch a Bundle entry carries as its `resource`, as a patch body ([`super::fhirpath_patch::
/// Patch::parse`] reads it): a FHIRPath Patch `Parameters` as it is, or the JSON Patch document
/// a `Binary` holds (`contentType` `application/json-patch+json`, the document base64 in
/// `data`), the form FHIR gives JSON Patch inside transactions and batches. The document is
/// parsed strictly (duplicate keys refused), like any body.
pub fn entry_body(resource: Value) -> Result<Value, PatchError> {
    use base64::Engine;
    let malformed = |why: &str| PatchError::Malformed(format!("a PATCH entry's resource {why}"));
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => Ok(resource),
        Some("Binary") => {
            let content_type = resource.get("contentType").and_then(Value::as_str).unwrap_or_default();
            if content_type.split(';').next().map(str::trim) != Some("application/json-patch+json") {
                return Err(malformed("is a Binary whose contentType is not application/json-patch+json"));
            }
            let data = resource.get("data").and_then(Value::as_str).ok_or_else(|| malformed("has no data"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| malformed("holds data that is not base64"))?;
            match crate::fhir::json::parse_strict(&bytes) {
                Ok(document @ Value::Array(_)) => Ok(document),
                _ => Err(malformed("holds data that is not a JSON Patch document")),
            }
        }
        _ => Err(malformed("must be a Parameters (FHIRPath Patch) or a Binary holding a JSON Patch")),
    }
}

/// The two bounds of a patch being applied: an upper bound of the document's serialised size,
/// kept under `limit`, and the bytes of values touched so far, kept under [`WORK_FACTOR`] ×
/// `limit`. Each operation is charged *before* it runs, with the sizes of what it will add and
/// remove.
#[derive(Debug)]
pub struct Budget {
    bound: usize,
    work: usize,
    limit: usize,
}

impl Budget {
    /// A budget for `operations` operations on `doc` (measured once, here), or the refusal of
    /// a patch that holds too many or a document already over the limit.
    pub fn new(doc: &Value, operations: usize, limit: usize) -> Result<Budget, PatchError> {
        if operations > MAX_OPERATIONS {
            return Err(PatchError::TooManyOperations(operations));
        }
        let bound = size(doc);
        if bound > limit {
            return Err(PatchError::TooLarge(limit));
        }
        Ok(Budget { bound, work: 0, limit })
    }

    /// Charges an operation that adds `added` bytes to the document and takes `removed` away
    /// (`removed` must not over-count: the bound stays an upper bound only if it does not).
    pub fn change(&mut self, added: usize, removed: usize) -> Result<(), PatchError> {
        self.touch(added.saturating_add(removed))?;
        self.bound = self.bound.saturating_add(added).saturating_sub(removed);
        if self.bound > self.limit {
            return Err(PatchError::TooLarge(self.limit));
        }
        Ok(())
    }

    /// Charges `bytes` of work that leaves the document's size alone (a test, a move, a look-up).
    pub fn touch(&mut self, bytes: usize) -> Result<(), PatchError> {
        self.work = self.work.saturating_add(bytes);
        let budget = self.limit.saturating_mul(WORK_FACTOR);
        if self.work > budget {
            return Err(PatchError::TooMuchWork(budget));
        }
        Ok(())
    }
}

/// Applies `patch` to `doc`, refusing it before the document outgrows `limit` bytes or the
/// operations touch more than [`WORK_FACTOR`] × `limit` bytes.
pub fn apply(doc: &mut Value, patch: &json_patch::Patch, limit: usize) -> Result<(), PatchError> {
    use json_patch::PatchOperation as Op;
    let mut budget = Budget::new(doc, patch.len(), limit)?;
    for op in patch.iter() {
        // What the operation will add and remove, measured before it runs: a copy that would pass
        // the limit is refused without ever being made.
        let at = |p: &json_patch::jsonptr::Pointer| doc.pointer(p.as_str()).map_or(0, size);
        // A new member: its key as JSON writes it (escapes included: a tab is two bytes, found by
        // the `json_patch` fuzz target; the pointer's own `~0`/`~1` only over-count), a colon and
        // a comma.
        let member = |p: &json_patch::jsonptr::Pointer| {
            p.as_str().rsplit('/').next().map_or(0, |k| size(&Value::String(k.to_owned())) + 2)
        };
        // `add` and `copy` replace what an object member held, but insert into an array: only
        // the former takes anything away.
        let replaced = |p: &json_patch::jsonptr::Pointer| {
            let parent = p.as_str().rsplit_once('/').map_or("", |(parent, _)| parent);
            match doc.pointer(parent) {
                Some(Value::Object(_)) => at(p),
                _ => 0,
            }
        };
        let (added, removed) = match op {
            Op::Add(a) => (size(&a.value) + member(&a.path), replaced(&a.path)),
            Op::Replace(r) => (size(&r.value), at(&r.path)),
            Op::Copy(c) => (at(&c.from) + member(&c.path), replaced(&c.path)),
            Op::Move(m) => (member(&m.path), at(&m.path)),
            Op::Remove(r) => (0, at(&r.path)),
            Op::Test(t) => (0, size(&t.value)),
        };
        match op {
            Op::Test(_) => budget.touch(added.saturating_add(removed))?,
            _ => budget.change(added, removed)?,
        }
        json_patch::patch(doc, std::slice::from_ref(op)).map_err(|e| PatchError::Invalid(e.to_string()))?;
    }
    Ok(())
}

/// The length of `v` serialised compactly, counted without building the text.
pub fn size(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, v).expect("a Value always serialises");
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(ops: Value) -> json_patch::Patch {
        serde_json::from_value(ops).unwrap()
    }

    #[test]
    fn a_key_that_json_escapes_counts_at_its_escaped_length() {
        let doc = || json!({"resourceType": "Patient"});
        let key = "\t".repeat(100);
        let patch: json_patch::Patch =
            serde_json::from_value(json!([{"op": "add", "path": format!("/{key}"), "value": 1}])).unwrap();
        // Room for the key as written in the pointer, not for its escaped form.
        let limit = size(&doc()) + key.len() + 10;
        let mut d = doc();
        match apply(&mut d, &patch, limit) {
            Ok(()) => assert!(size(&d) <= limit, "{} > {limit}", size(&d)),
            Err(e) => assert!(matches!(e, PatchError::TooLarge(_)), "{e}"),
        }
        let mut d = doc();
        assert!(apply(&mut d, &patch, size(&doc()) + 2 * key.len() + 10).is_ok(), "room for the escaped key");
    }

    #[test]
    fn an_entry_carries_json_patch_in_a_binary_and_fhirpath_patch_as_parameters() {
        use base64::Engine;
        let document = json!([{"op": "remove", "path": "/gender"}]);
        let data = base64::engine::general_purpose::STANDARD.encode(document.to_string());
        let binary = json!({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data});
        assert_eq!(entry_body(binary), Ok(document));
        let parameters = json!({"resourceType": "Parameters", "parameter": []});
        assert_eq!(entry_body(parameters.clone()), Ok(parameters));
        let duplicate = base64::engine::general_purpose::STANDARD.encode(r#"[{"op":"remove","op":"add","path":"/a"}]"#);
        for refused in [
            json!({"resourceType": "Binary", "contentType": "application/json", "data": data}),
            json!({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": "%%"}),
            json!({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": duplicate}),
            json!({"resourceType": "Binary", "contentType": "application/json-patch+json"}),
            json!({"resourceType": "Patient"}),
        ] {
            assert!(matches!(entry_body(refused.clone()), Err(PatchError::Malformed(_))), "{refused}");
        }
    }

    #[test]
    fn applies_ordinary_patches() {
        let mut doc = json!({"resourceType": "Patient", "active": true, "name": [{"family": "A"}]});
        let p = patch(json!([{"op": "replace", "path": "/active", "value": false},
            {"op": "copy", "from": "/name/0", "path": "/name/-"}, {"op": "remove", "path": "/name/0"}]));
        apply(&mut doc, &p, 1024).unwrap();
        assert_eq!(doc, json!({"resourceType": "Patient", "active": false, "name": [{"family": "A"}]}));
    }

    #[test]
    fn a_doubling_patch_is_refused_before_it_grows() {
        let mut doc = json!({"resourceType": "Patient", "name": [{"text": "x".repeat(1000)}]});
        let ops: Vec<Value> = (0..40).map(|_| json!({"op": "copy", "from": "/name", "path": "/name/-"})).collect();
        let limit = 64 * 1024;
        assert_eq!(apply(&mut doc, &patch(Value::Array(ops)), limit), Err(PatchError::TooLarge(limit)));
        assert!(size(&doc) <= limit, "the document grew to {} bytes", size(&doc));
    }

    #[test]
    fn replaced_and_removed_values_make_room_again() {
        let mut doc = json!({"resourceType": "Patient", "id": "x"});
        let big = "y".repeat(600);
        // Replaces of a large value: each one's old value is taken off again.
        let ops: Vec<Value> = (0..3).map(|_| json!({"op": "replace", "path": "/id", "value": big.clone()})).collect();
        apply(&mut doc, &patch(Value::Array(ops)), 2048).unwrap();
        // Added, removed, added and copied: 1800 bytes of values in the end, under the limit.
        let ops = json!([{"op": "add", "path": "/a", "value": big}, {"op": "remove", "path": "/a"},
            {"op": "add", "path": "/b", "value": big}, {"op": "copy", "from": "/b", "path": "/c"}]);
        apply(&mut doc, &patch(ops), 2048).unwrap();
        assert!(size(&doc) <= 2048);
    }

    #[test]
    fn the_work_of_a_patch_is_bounded_by_the_limit() {
        // Copies that never grow the document (each replaces the last) still cost their bytes.
        let doc = || json!({"resourceType": "Patient", "name": [{"text": "y".repeat(1000)}, {"text": "z"}]});
        let ops: Vec<Value> =
            (0..100).map(|_| json!({"op": "copy", "from": "/name/0/text", "path": "/name/1/text"})).collect();
        assert_eq!(apply(&mut doc(), &patch(Value::Array(ops.clone())), 16_384), Err(PatchError::TooMuchWork(65_536)));
        apply(&mut doc(), &patch(Value::Array(ops[..20].to_vec())), 16_384).unwrap();
    }

    #[test]
    fn inserting_into_an_array_takes_nothing_away() {
        // A copy inserted at index 0 grows the array: the element it lands before stays.
        let mut doc = json!({"resourceType": "Patient", "name": [{"text": "y".repeat(1000)}]});
        let ops: Vec<Value> = (0..3).map(|_| json!({"op": "copy", "from": "/name/0", "path": "/name/0"})).collect();
        assert_eq!(apply(&mut doc, &patch(Value::Array(ops)), 3000), Err(PatchError::TooLarge(3000)));
        assert!(size(&doc) <= 3000, "{}", size(&doc));
    }

    #[test]
    fn operation_count_is_capped() {
        let mut doc = json!({});
        let ops: Vec<Value> = (0..=MAX_OPERATIONS).map(|_| json!({"op": "test", "path": "", "value": {}})).collect();
        assert_eq!(apply(&mut doc, &patch(Value::Array(ops)), 1 << 20), Err(PatchError::TooManyOperations(1001)));
        assert_eq!(size(&json!({"a": [1, "b"]})), 13);
    }
}
