//! The export manifest (`manifest.json`) and the digest that lets a restore be verified.
//!
//! **Canonical form** (`fhir-fence-canonical/1`): the resource in its local form (as the tenant
//! reads it through fhir-fence), without `meta.versionId`, `meta.lastUpdated` and `meta.source`
//! (the upstream assigns them on every write: a restored resource gets new ones; HAPI sets
//! `source` from the writing request's id), `meta` removed when nothing else is left in it;
//! then written as JSON with the members of every object sorted by key (UTF-8 byte order), no
//! whitespace, arrays in their order, strings escaped and numbers written as `serde_json` writes
//! them (fhir-fence parses JSON numbers as `f64`, on its write path as here: `1.50` is `1.5`).
//! The digest is the SHA-256 of those bytes, in lower-case hex.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The manifest format this version writes and reads.
pub const FORMAT: &str = "fhir-fence-tenant-export/1";
pub const CANONICAL_FORM: &str = "fhir-fence-canonical/1";
pub const FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub tenant: String,
    pub source: Source,
    /// RFC 3339, when the export finished.
    pub exported_at: String,
    pub digest: DigestInfo,
    /// Resources written, over all types.
    pub total: u64,
    /// Resources the tenant-scoped searches returned that failed the ownership test: not written.
    pub refused: u64,
    /// Every type with at least one resource.
    pub types: BTreeMap<String, TypeEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The upstream's name in the config.
    pub upstream: String,
    pub base_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestInfo {
    pub algorithm: String,
    pub canonical_form: String,
}

impl Default for DigestInfo {
    fn default() -> Self {
        DigestInfo { algorithm: "sha-256".into(), canonical_form: CANONICAL_FORM.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeEntry {
    /// The NDJSON file, relative to the export directory.
    pub file: String,
    pub count: u64,
    /// Local id → digest of its canonical form.
    pub resources: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads and checks `dir/manifest.json`.
    pub fn read(dir: &std::path::Path) -> Result<Manifest, super::DataError> {
        let path = dir.join(FILE);
        let bytes = std::fs::read(&path).map_err(|e| super::DataError::io(&path, e))?;
        let m: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| super::DataError::Corrupt(path.clone(), e.to_string()))?;
        if m.format != FORMAT || m.digest != DigestInfo::default() {
            return Err(super::DataError::Corrupt(
                path,
                format!("not a {FORMAT} manifest with {CANONICAL_FORM} digests"),
            ));
        }
        for (t, e) in &m.types {
            if e.file != file_name(t) || e.count != e.resources.len() as u64 {
                return Err(super::DataError::Corrupt(path, format!("the entry of {t} is inconsistent")));
            }
        }
        Ok(m)
    }
}

/// The NDJSON file of a type.
pub fn file_name(rtype: &str) -> String {
    format!("{rtype}.ndjson")
}

/// The canonical form of a resource (see the module comment).
pub fn canonical_bytes(resource: &Value) -> Vec<u8> {
    let mut r = resource.clone();
    if let Some(Value::Object(meta)) = r.get_mut("meta") {
        for k in ["versionId", "lastUpdated", "source"] {
            meta.remove(k);
        }
        if meta.is_empty() {
            r.as_object_mut().expect("meta sits in an object").remove("meta");
        }
    }
    let mut out = Vec::with_capacity(512);
    write_sorted(&r, &mut out);
    out
}

/// A resource with what the upstream assigns on every write removed (`meta.versionId`,
/// `lastUpdated`, `source`): the content a restore must reproduce.
pub fn content(resource: &Value) -> Value {
    serde_json::from_slice(&canonical_bytes(resource)).expect("canonical bytes are JSON")
}

fn write_sorted(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("a string serialises");
                out.push(b':');
                write_sorted(&map[k.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_sorted(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("a scalar serialises"),
    }
}

/// SHA-256 of the canonical form, lower-case hex.
pub fn digest(resource: &Value) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical_bytes(resource));
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The local id of a resource in local form.
pub fn local_id(resource: &Map<String, Value>) -> Option<&str> {
    resource.get("id").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_digest_ignores_what_the_upstream_assigns_and_key_order() {
        let a = json!({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3",
            "lastUpdated": "2026-01-01T00:00:00Z", "source": "#abc"}, "name": [{"family": "A", "given": ["x"]}]});
        let b = json!({"name": [{"given": ["x"], "family": "A"}], "id": "p1", "resourceType": "Patient"});
        assert_eq!(digest(&a), digest(&b));
        assert_eq!(
            String::from_utf8(canonical_bytes(&a)).unwrap(),
            r#"{"id":"p1","name":[{"family":"A","given":["x"]}],"resourceType":"Patient"}"#
        );
        // A tag, a changed value or array order are content.
        let tagged = json!({"resourceType": "Patient", "id": "p1", "meta": {"tag": [{"code": "t"}]},
            "name": [{"family": "A", "given": ["x"]}]});
        assert_ne!(digest(&a), digest(&tagged));
        let other = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "B", "given": ["x"]}]});
        assert_ne!(digest(&a), digest(&other));
        assert_eq!(digest(&a).len(), 64);
    }

    #[test]
    fn numbers_are_written_one_way() {
        let v: Value = serde_json::from_str(r#"{"valueQuantity":{"value":1.50},"count":3,"big":1e3}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_bytes(&v)).unwrap(),
            r#"{"big":1000.0,"count":3,"valueQuantity":{"value":1.5}}"#
        );
    }
}
