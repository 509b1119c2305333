//! [`Checked`]: the one type an answer's body can have. Only the outbound gate makes one from
//! an upstream answer (the constructors are private to `outbound`), so a body that reaches
//! `answer` or a Bundle fhir-fence composes has been proven the caller's — by the compiler,
//! not by convention. fhir-fence's own words (OperationOutcomes, export manifests it rebuilt)
//! are marked as such with [`Checked::authored`], the one door that takes no upstream content.
use bytes::Bytes;
use serde_json::{Map, Value};

/// A body in the client's view that passed the outbound gate (or that fhir-fence wrote itself).
#[derive(Debug, Clone)]
pub struct Checked(Form);

#[derive(Debug, Clone)]
enum Form {
    /// Checked as a tree (`outbound::resource`, `outbound::bundle`, ...).
    Tree(Value),
    /// Checked and serialised in one pass (`fastline`, `fastbundle`): never parsed again.
    Bytes(Bytes),
}

impl Checked {
    pub(super) fn tree(v: Value) -> Checked {
        Checked(Form::Tree(v))
    }

    pub(super) fn bytes(b: impl Into<Bytes>) -> Checked {
        Checked(Form::Bytes(b.into()))
    }

    /// A body fhir-fence writes itself and that carries no tenant's data: an OperationOutcome
    /// of its own, an export manifest rebuilt around its own file handles, the
    /// CapabilityStatement trimmed to what it offers. Never for a resource the upstream sent.
    pub fn authored(v: Value) -> Checked {
        Checked(Form::Tree(v))
    }

    /// The tree, when it was checked as one (a Binary's content, an id, a version are read from it).
    pub fn as_tree(&self) -> Option<&Value> {
        match &self.0 {
            Form::Tree(v) => Some(v),
            Form::Bytes(_) => None,
        }
    }

    /// A member of the tree (`None` for a one-pass body: the code that inspects bodies reads
    /// them as trees).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_tree()?.get(key)
    }

    /// A value in the tree by JSON pointer (`None` for a one-pass body).
    pub fn pointer(&self, pointer: &str) -> Option<&Value> {
        self.as_tree()?.pointer(pointer)
    }

    /// The tree, parsing the one-pass output if need be (a batch entry embeds it).
    pub fn into_tree(self) -> Value {
        match self.0 {
            Form::Tree(v) => v,
            // The one-pass check writes JSON it has verified token by token.
            Form::Bytes(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
        }
    }

    /// The serialised body.
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            Form::Tree(v) => Bytes::from(serde_json::to_vec(&v).expect("serialisable")),
            Form::Bytes(b) => b,
        }
    }

    /// Appends the serialised body to `out` (an export line: no copy of the tree's bytes).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Form::Tree(v) => serde_json::to_writer(&mut *out, v).expect("writing to a Vec cannot fail"),
            Form::Bytes(b) => out.extend_from_slice(b),
        }
    }

    /// A checked Bundle without the entries whose resource `keep` refuses (still checked: only
    /// taken from), and how many went; its `total` is removed when any did (the count would
    /// tell what was taken).
    /// `drop_total`: remove `total` whatever was taken (a later page may take what this one did not).
    pub fn retain_entries(self, keep: impl Fn(&Value) -> bool, drop_total: bool) -> (Checked, usize) {
        let mut tree = self.into_tree();
        let mut dropped = 0;
        if let Some(Value::Array(entries)) = tree.get_mut("entry") {
            let before = entries.len();
            entries.retain(|e| e.get("resource").is_none_or(&keep));
            dropped = before - entries.len();
        }
        if dropped > 0 || drop_total {
            if let Value::Object(bundle) = &mut tree {
                bundle.remove("total");
            }
        }
        (Checked::tree(tree), dropped)
    }

    /// A checked Bundle whose entries keep their place but lose the `resource` `keep` refuses
    /// (a transaction-response: one entry per request, each with its `response`). `keep` may
    /// narrow what it keeps (a search's nested Bundle losing entries): still only taken from.
    pub fn strip_entry_resources(self, keep: impl Fn(&mut Value) -> bool) -> Checked {
        let mut tree = self.into_tree();
        if let Some(Value::Array(entries)) = tree.get_mut("entry") {
            for entry in entries.iter_mut().filter_map(Value::as_object_mut) {
                if entry.get_mut("resource").is_some_and(|r| !keep(r)) {
                    entry.remove("resource");
                }
            }
        }
        Checked::tree(tree)
    }

    /// The resources of the matches in a checked searchset (each checked with it).
    pub fn into_matches(self) -> Vec<Checked> {
        let Value::Object(mut bundle) = self.into_tree() else { return vec![] };
        let Some(Value::Array(entries)) = bundle.remove("entry") else { return vec![] };
        entries
            .into_iter()
            .filter(|e| e.pointer("/search/mode").and_then(Value::as_str).is_none_or(|m| m == "match"))
            .filter_map(|mut e| e.get_mut("resource").map(Value::take))
            .map(Checked::tree)
            .collect()
    }
}

/// A Bundle fhir-fence composes (transaction-response, batch-response): its own fields, and per
/// entry its own fields (`fullUrl`, `response`) beside a resource the gate checked.
pub struct Composed {
    bundle: Map<String, Value>,
    entries: Vec<Value>,
}

impl Composed {
    /// A Bundle of `kind` with a fresh id and a `self` link to `base` (where it was posted,
    /// fhir-fence's public base, as a server links its transaction and batch responses).
    pub fn new(kind: &str, base: &str) -> Composed {
        let mut bundle = Map::new();
        bundle.insert("resourceType".into(), "Bundle".into());
        bundle.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
        bundle.insert("type".into(), kind.into());
        bundle.insert("link".into(), serde_json::json!([{"relation": "self", "url": base}]));
        Composed { bundle, entries: vec![] }
    }

    /// One entry: fhir-fence's own `fields` and, if any, a checked `resource`.
    pub fn entry(&mut self, mut fields: Map<String, Value>, resource: Option<Checked>) {
        if let Some(r) = resource {
            fields.insert("resource".into(), r.into_tree());
        }
        self.entries.push(Value::Object(fields));
    }

    pub fn finish(mut self) -> Checked {
        self.bundle.insert("entry".into(), Value::Array(self.entries));
        Checked::tree(Value::Object(self.bundle))
    }
}
