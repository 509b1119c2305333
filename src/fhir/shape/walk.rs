//! The walk itself: every member of a body judged against its type in the [`Model`].
use super::error::ShapeError;
use super::model::{Elem, Kind, Model};
use serde_json::{Map, Value};
use smallvec::SmallVec;

impl Model {
    /// Checks one resource (with everything inside it: contained resources, Bundle entries,
    /// `Parameters.parameter.resource`).
    pub fn check(&self, resource: &Value) -> Result<(), ShapeError> {
        self.resource(resource, false).map_err(|e| {
            let rtype = resource.get("resourceType").and_then(Value::as_str).unwrap_or("(resource)");
            e.at(rtype)
        })
    }

    fn resource(&self, v: &Value, in_contained: bool) -> Result<(), ShapeError> {
        let Value::Object(obj) = v else { return Err(ShapeError::new("expected a resource (a JSON object)")) };
        let rtype = match obj.get("resourceType") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(ShapeError::new("expected a string").at("resourceType")),
            None => return Err(ShapeError::new("a resource needs its resourceType")),
        };
        let Some(&t) = self.resources.get(rtype.as_str()) else {
            return Err(ShapeError::new(format!("{rtype:?} is not an R4 resource type")).at("resourceType"));
        };
        if in_contained && obj.contains_key("contained") {
            return Err(ShapeError::new("a contained resource cannot contain resources").at("contained"));
        }
        self.object(t, obj, true)
    }

    fn object(&self, t: u32, obj: &Map<String, Value>, is_resource: bool) -> Result<(), ShapeError> {
        if obj.is_empty() {
            return Err(ShapeError::new("an empty object is not allowed"));
        }
        let def = &self.types[t as usize];
        let mut chosen: SmallVec<[(u16, &str); 4]> = SmallVec::new();
        for (key, value) in obj {
            if is_resource && key == "resourceType" {
                continue;
            }
            let (name, extension) = match key.strip_prefix('_') {
                Some(name) => (name, true),
                None => (key.as_str(), false),
            };
            let Some(elem) = def.elements.get(name) else {
                return Err(ShapeError::new("not an element of this type").at(key.as_str()));
            };
            if let Some(group) = elem.choice {
                match chosen.iter().find(|(g, _)| *g == group) {
                    Some((_, first)) if *first != name => {
                        return Err(ShapeError::new(format!("a choice element holds one variant; {first} is here too"))
                            .at(key.as_str()))
                    }
                    Some(_) => {}
                    None => chosen.push((group, name)),
                }
            }
            let checked = if extension {
                self.primitive_extension(elem, value, obj.get(name))
            } else {
                self.element(elem, value, key, obj)
            };
            checked.map_err(|e| e.at(key.as_str()))?;
        }
        Ok(())
    }

    /// The value of element `key` of `obj`.
    fn element(&self, elem: &Elem, value: &Value, key: &str, obj: &Map<String, Value>) -> Result<(), ShapeError> {
        if !elem.many {
            return match value {
                Value::Array(_) => Err(ShapeError::new("expected a single value, not an array (cardinality ..1)")),
                _ => self.item(elem.kind, value, key),
            };
        }
        // An empty array is let through: it holds nothing a walker could miss, and a JSON Patch
        // needs one to append to (`add /meta/tag []`, then `add /meta/tag/-`).
        let Value::Array(items) = value else {
            return Err(ShapeError::new("expected an array (cardinality ..*)"));
        };
        for (i, item) in items.iter().enumerate() {
            if item.is_null() && elem.kind.is_primitive() {
                // A null keeps the place of a value that has only extensions in `_key`.
                let ext = obj.get(&format!("_{key}")).and_then(Value::as_array).and_then(|a| a.get(i));
                if ext.is_some_and(|e| !e.is_null()) {
                    continue;
                }
            }
            self.item(elem.kind, item, key).map_err(|e| e.at(format!("[{i}]")))?;
        }
        Ok(())
    }

    /// `_key` beside a primitive: an `Element` (id, extensions), or for a list of primitives an
    /// array of them (or nulls) aligned with the values.
    fn primitive_extension(&self, elem: &Elem, value: &Value, values: Option<&Value>) -> Result<(), ShapeError> {
        if !elem.kind.is_primitive() {
            return Err(ShapeError::new("`_` members belong beside primitive elements only"));
        }
        let as_element = |v: &Value| match v {
            Value::Object(o) => self.object(self.element, o, false),
            _ => Err(ShapeError::new("expected an object with id and extension")),
        };
        if !elem.many {
            return as_element(value);
        }
        let Value::Array(items) = value else {
            return Err(ShapeError::new("expected an array (cardinality ..*)"));
        };
        let values = match values {
            Some(Value::Array(v)) => Some(v),
            Some(_) => return Ok(()), // the value itself is refused where it is checked
            None => None,
        };
        if values.is_some_and(|v| v.len() != items.len()) {
            return Err(ShapeError::new("must have as many entries as the values it extends"));
        }
        for (i, item) in items.iter().enumerate() {
            let value_present = values.is_some_and(|v| !v[i].is_null());
            match item {
                Value::Null if value_present => {}
                _ => as_element(item).map_err(|e| e.at(format!("[{i}]")))?,
            }
        }
        Ok(())
    }

    /// One value of its kind.
    fn item(&self, kind: Kind, value: &Value, key: &str) -> Result<(), ShapeError> {
        match (kind, value) {
            (_, Value::Null) => Err(ShapeError::new("null is not allowed")),
            (_, Value::String(s)) if s.is_empty() => Err(ShapeError::new("an empty string is not allowed")),
            (Kind::String | Kind::IdString, Value::String(_)) => Ok(()),
            // White space as the specification's patterns mean it (XML Schema's `\s`); at the
            // ends of a code, whatever Java's `trim` (HAPI) removes: every character up to U+0020.
            (Kind::Token | Kind::Canonical(_), Value::String(s)) => match s.contains([' ', '\t', '\n', '\r']) {
                true => Err(ShapeError::new("white space is not allowed in a uri, url, canonical or id")),
                false => Ok(()),
            },
            (Kind::Code, Value::String(s)) => {
                let trimmed = s.starts_with(|c| c <= ' ') || s.ends_with(|c| c <= ' ');
                match trimmed || s.split([' ', '\t', '\n', '\r']).any(str::is_empty) {
                    true => {
                        Err(ShapeError::new("a code must not start or end with white space, nor hold two in a row"))
                    }
                    false => Ok(()),
                }
            }
            (Kind::String | Kind::Token | Kind::Code | Kind::IdString | Kind::Canonical(_), _) => {
                Err(ShapeError::new("expected a string"))
            }
            (Kind::Boolean, Value::Bool(_)) => Ok(()),
            (Kind::Boolean, _) => Err(ShapeError::new("expected true or false")),
            (Kind::Integer(min), Value::Number(n)) => match n.as_i64() {
                Some(i) if i >= min && i <= i64::from(i32::MAX) => Ok(()),
                _ => Err(ShapeError::new(format!("expected a whole number from {min} to {}", i32::MAX))),
            },
            (Kind::Integer(_), _) => Err(ShapeError::new("expected a number")),
            (Kind::Decimal, Value::Number(_)) => Ok(()),
            (Kind::Decimal, _) => Err(ShapeError::new("expected a number")),
            (Kind::Complex(t), Value::Object(o)) => self.object(t, o, false),
            (Kind::Complex(_), _) => Err(ShapeError::new("expected an object")),
            (Kind::Resource, _) => self.resource(value, key == "contained"),
        }
    }
}
