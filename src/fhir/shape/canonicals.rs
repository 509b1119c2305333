//! Canonical URLs in a checked body, with the resource types each may name: the typed view the
//! canonical rules (`scope::canonicals`) need, from the same [`Model`] the gate walks.
use super::model::{Kind, Model};
use serde_json::{Map, Value};

impl Model {
    /// Calls `f` with every canonical in a resource that passed [`Model::check`] (contained
    /// resources, Bundle entries and `Parameters` resources included, and canonicals inside
    /// extensions and `_element` siblings), with the resource types it may name (empty: any).
    pub fn for_each_canonical<'v>(&self, resource: &'v Value, f: &mut impl FnMut(&'v str, &[Box<str>])) {
        let Some(obj) = resource.as_object() else { return };
        let Some(t) = obj.get("resourceType").and_then(Value::as_str).and_then(|r| self.resources.get(r)) else {
            return;
        };
        self.canonicals_in(*t, obj, f);
    }

    fn canonicals_in<'v>(&self, t: u32, obj: &'v Map<String, Value>, f: &mut impl FnMut(&'v str, &[Box<str>])) {
        let def = &self.types[t as usize];
        for (key, value) in obj {
            let kind = match key.strip_prefix('_') {
                Some(_) => Kind::Complex(self.element),
                None => match def.elements.get(key.as_str()) {
                    Some(elem) => elem.kind,
                    None => continue, // `resourceType`
                },
            };
            let items = match value {
                Value::Array(items) => items.as_slice(),
                one => std::slice::from_ref(one),
            };
            for item in items {
                match (kind, item) {
                    (Kind::Canonical(i), Value::String(c)) => {
                        f(c, self.canonical_targets.get(usize::from(i)).map_or(&[], Vec::as_slice))
                    }
                    (Kind::Complex(t), Value::Object(o)) => self.canonicals_in(t, o, f),
                    (Kind::Resource, _) => self.for_each_canonical(item, f),
                    _ => {}
                }
            }
        }
    }
}
