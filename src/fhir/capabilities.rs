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
    /// Per type, the interactions the upstream declares (`rest.resource.interaction.code`).
    type_interactions: HashMap<String, Vec<String>>,
    /// System-level interactions the upstream declares (`rest.interaction.code`).
    system_interactions: Vec<String>,
    /// Compartments the upstream declares it can search (`rest.compartment`), by their type, e.g. `Patient`.
    compartments: Vec<String>,
    /// Types the upstream serves but cannot search by the tenant-scope parameter ([`Self::
    /// scoped_by`]): read and written by id (every answer checked on the way out), never searched.
    unscoped: Vec<String>,
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
        let mut type_interactions = HashMap::new();
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
            let codes = res.get("interaction").and_then(Value::as_array).into_iter().flatten();
            let codes = codes.filter_map(|i| i.get("code").and_then(Value::as_str).map(str::to_owned)).collect();
            type_interactions.insert(t.to_owned(), codes);
        }
        if types.is_empty() {
            return Err(CapabilitiesError("no resource types".into()));
        }
        let codes = |key: &str| -> Vec<String> {
            rest.get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("code").and_then(Value::as_str).map(str::to_owned))
                .collect()
        };
        let system_interactions = codes("interaction");
        // CompartmentDefinition canonicals end in the compartment code (`…/patient`).
        let compartments = rest
            .get("compartment")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|url| url.rsplit('/').next())
            .map(|code| {
                let mut c = code.chars();
                c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
            })
            .collect();
        Ok(Capabilities {
            types,
            type_interactions,
            system_interactions,
            compartments,
            unscoped: vec![],
            statement: cs,
        })
    }

    /// Whether the upstream declares a system-level interaction (`search-system`, `history-system`, …).
    pub fn system_interaction(&self, code: &str) -> bool {
        self.system_interactions.iter().any(|c| c == code)
    }

    /// Whether the upstream declares interaction `code` (e.g. `history-type`) on `rtype`.
    pub fn type_interaction(&self, rtype: &str, code: &str) -> bool {
        self.type_interactions.get(rtype).is_some_and(|c| c.iter().any(|x| x == code))
    }

    /// Whether the upstream declares the compartment of `rtype` (e.g. `Patient`).
    pub fn compartment(&self, rtype: &str) -> bool {
        self.compartments.iter().any(|c| c == rtype)
    }

    pub fn has_type(&self, rtype: &str) -> bool {
        self.types.contains_key(rtype)
    }

    /// The type of search parameter `name` on `rtype`, if the upstream lists it.
    pub fn param(&self, rtype: &str, name: &str) -> Option<ParamType> {
        self.types.get(rtype)?.get(name).copied()
    }

    /// Every resource type the upstream serves, sorted.
    pub fn types(&self) -> Vec<String> {
        let mut t: Vec<String> = self.types.keys().cloned().collect();
        t.sort();
        t
    }

    /// The type of parameter `name` where it exists, if it has the same type on every type that has it.
    pub fn param_anywhere(&self, name: &str) -> Option<ParamType> {
        let mut found = None;
        for params in self.types.values() {
            if let Some(ty) = params.get(name) {
                if found.is_some_and(|f| f != *ty) {
                    return None;
                }
                found = Some(*ty);
            }
        }
        found
    }

    /// Marks the types that do not list `param` (the tenant scope's search parameter) as a
    /// token as unscoped: their searches cannot carry the tenant scope, so fhir-fence refuses
    /// them ([`Self::searchable`]). HAPI lists `_tag` on every type; Medplum's router not on
    /// `Binary`. An upstream listing it on no type cannot be scoped at all: an error.
    pub fn scoped_by(mut self, param: &str) -> Result<Self, CapabilitiesError> {
        let mut unscoped: Vec<String> = self
            .types
            .iter()
            .filter(|(_, p)| p.get(param) != Some(&ParamType::Token))
            .map(|(t, _)| t.clone())
            .collect();
        if unscoped.len() == self.types.len() {
            return Err(CapabilitiesError(format!("no resource type has the {param} search parameter")));
        }
        unscoped.sort();
        self.unscoped = unscoped;
        Ok(self)
    }

    /// The types [`Self::scoped_by`] found unscoped, sorted.
    pub fn unscoped(&self) -> &[String] {
        &self.unscoped
    }

    /// Whether searches of `rtype` can carry the tenant scope (the type is served and lists it).
    pub fn searchable(&self, rtype: &str) -> bool {
        self.has_type(rtype) && self.unscoped.binary_search_by(|t| t.as_str().cmp(rtype)).is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_search_params() {
        let cs = json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server",
            "interaction": [{"code": "search-system"}], "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
            "resource": [
            {"type": "Patient", "searchParam": [{"name": "_tag", "type": "token"}, {"name": "organization", "type": "reference"}]},
            {"type": "Observation", "searchParam": [{"name": "_tag", "type": "token"}]}
        ]}]});
        let c = Capabilities::from_statement(cs).unwrap();
        assert_eq!(c.param("Patient", "organization"), Some(ParamType::Reference));
        assert_eq!(c.param("Patient", "nope"), None);
        assert!(c.has_type("Observation"));
        assert!(c.system_interaction("search-system") && !c.system_interaction("history-system"));
        assert!(c.compartment("Patient") && !c.compartment("Encounter"));
        let scoped = c.clone().scoped_by("_tag").unwrap();
        assert!(scoped.unscoped().is_empty() && scoped.searchable("Patient"));
        assert!(c.scoped_by("_security").is_err(), "a parameter no type lists scopes nothing");
    }

    #[test]
    fn a_type_without_the_scope_parameter_is_served_but_not_searched() {
        let cs = json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "resource": [
            {"type": "Patient", "searchParam": [{"name": "_tag", "type": "token"}]},
            {"type": "Binary", "searchParam": [{"name": "_id", "type": "token"}]},
            {"type": "Basic", "searchParam": [{"name": "_tag", "type": "string"}]}
        ]}]});
        let c = Capabilities::from_statement(cs).unwrap().scoped_by("_tag").unwrap();
        assert_eq!(c.unscoped(), ["Basic", "Binary"]);
        assert!(c.has_type("Binary") && !c.searchable("Binary") && !c.searchable("Basic") && c.searchable("Patient"));
        assert!(!c.searchable("Nope"));
    }

    #[test]
    fn refuses_other_resources() {
        assert!(Capabilities::from_statement(json!({"resourceType": "Patient"})).is_err());
    }
}
