//! What the upstream says it can do: resource types and their search parameters, learned from
//! its CapabilityStatement. fhir-fence only lets through search parameters listed here.
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "composite" => ParamType::Composite,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            "special" => ParamType::Special,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    types: HashMap<String, HashMap<String, ParamType>>,
    /// The upstream's CapabilityStatement as served (fhir-fence's `metadata` answer is built from it).
    pub statement: Value,
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream CapabilityStatement is unusable: {0}")]
pub struct CapabilitiesError(String);

impl Capabilities {
    pub fn from_statement(cs: Value) -> Result<Self, CapabilitiesError> {
        if cs.get("resourceType").and_then(Value::as_str) != Some("CapabilityStatement") {
            return Err(CapabilitiesError("not a CapabilityStatement".into()));
        }
        let rest = cs
            .get("rest")
            .and_then(Value::as_array)
            .and_then(|r| r.iter().find(|r| r.get("mode").and_then(Value::as_str) == Some("server")))
            .ok_or_else(|| CapabilitiesError("no rest entry in server mode".into()))?;
        let mut types = HashMap::new();
        for res in rest.get("resource").and_then(Value::as_array).into_iter().flatten() {
            let Some(t) = res.get("type").and_then(Value::as_str) else { continue };
            let mut params = HashMap::new();
            for p in res.get("searchParam").and_then(Value::as_array).into_iter().flatten() {
                let (Some(name), Some(ty)) = (
                    p.get("name").and_then(Value::as_str),
                    p.get("type").and_then(Value::as_str).and_then(ParamType::parse),
                ) else {
                    continue;
                };
                params.insert(name.to_owned(), ty);
            }
            types.insert(t.to_owned(), params);
        }
        if types.is_empty() {
            return Err(CapabilitiesError("no resource types".into()));
        }
        Ok(Capabilities { types, statement: cs })
    }

    pub fn has_type(&self, rtype: &str) -> bool {
        self.types.contains_key(rtype)
    }

    /// The type of search parameter `name` on `rtype`, if the upstream lists it.
    pub fn param(&self, rtype: &str, name: &str) -> Option<ParamType> {
        self.types.get(rtype)?.get(name).copied()
    }

    /// True when every resource type lists `name` as a token parameter (the tenant scope needs it everywhere).
    pub fn supports_everywhere(&self, name: &str) -> bool {
        self.types.values().all(|p| p.get(name) == Some(&ParamType::Token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_search_params() {
        let cs = json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "resource": [
            {"type": "Patient", "searchParam": [{"name": "_tag", "type": "token"}, {"name": "organization", "type": "reference"}]},
            {"type": "Observation", "searchParam": [{"name": "_tag", "type": "token"}]}
        ]}]});
        let c = Capabilities::from_statement(cs).unwrap();
        assert_eq!(c.param("Patient", "organization"), Some(ParamType::Reference));
        assert_eq!(c.param("Patient", "nope"), None);
        assert!(c.has_type("Observation"));
        assert!(c.supports_everywhere("_tag"));
        assert!(!c.supports_everywhere("_security"));
    }

    #[test]
    fn refuses_other_resources() {
        assert!(Capabilities::from_statement(json!({"resourceType": "Patient"})).is_err());
    }
}
