//! JSON Patch (RFC 6902) applied within bounds.
//!
//! A patch is small but its work is not: each `copy` can double the document, so 40 of them in a
//! 2 KB request would grow one resource past any memory. The patch is applied one operation at a
//! time, with at most [`MAX_OPERATIONS`] operations, and the document's serialised size is kept
//! under the body limit at every step — the result must fit in a request body anyway, since it is
//! written back like a PUT. The size is tracked as an upper bound (what an operation adds is
//! counted, what it removes is not), and measured exactly only when the bound passes the limit,
//! so a patch costs O(its own size) in the common case and never more than O(limit) per
//! operation.
use serde_json::Value;

/// The most operations one patch may hold.
pub const MAX_OPERATIONS: usize = 1000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("a JSON Patch may hold at most {MAX_OPERATIONS} operations; this one holds {0}")]
    TooManyOperations(usize),
    #[error("the patched resource would exceed {0} bytes")]
    TooLarge(usize),
    #[error("the patch cannot be applied: {0}")]
    Invalid(String),
}

/// Applies `patch` to `doc`, refusing it before the document outgrows `limit` bytes.
pub fn apply(doc: &mut Value, patch: &json_patch::Patch, limit: usize) -> Result<(), PatchError> {
    use json_patch::PatchOperation as Op;
    if patch.len() > MAX_OPERATIONS {
        return Err(PatchError::TooManyOperations(patch.len()));
    }
    let mut bound = size(doc);
    if bound > limit {
        return Err(PatchError::TooLarge(limit));
    }
    for op in patch.iter() {
        let added = match op {
            Op::Add(a) => size(&a.value),
            Op::Replace(r) => size(&r.value),
            Op::Copy(c) => doc.pointer(c.from.as_str()).map_or(0, size),
            Op::Remove(_) | Op::Move(_) | Op::Test(_) => 0,
        };
        // The bound is checked before the operation runs: a copy that would pass the limit is
        // refused without ever being made.
        bound = bound.saturating_add(added);
        if bound > limit {
            bound = size(doc).saturating_add(added);
            if bound > limit {
                return Err(PatchError::TooLarge(limit));
            }
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
    fn removals_make_room_again() {
        // Many replaces of a large value: the bound passes the limit, the exact size does not.
        let mut doc = json!({"resourceType": "Patient", "id": "x"});
        let big = "y".repeat(600);
        let ops: Vec<Value> = (0..10).map(|_| json!({"op": "replace", "path": "/id", "value": big.clone()})).collect();
        apply(&mut doc, &patch(Value::Array(ops)), 2048).unwrap();
    }

    #[test]
    fn operation_count_is_capped() {
        let mut doc = json!({});
        let ops: Vec<Value> = (0..=MAX_OPERATIONS).map(|_| json!({"op": "test", "path": "", "value": {}})).collect();
        assert_eq!(apply(&mut doc, &patch(Value::Array(ops)), 1 << 20), Err(PatchError::TooManyOperations(1001)));
        assert_eq!(size(&json!({"a": [1, "b"]})), 13);
    }
}
