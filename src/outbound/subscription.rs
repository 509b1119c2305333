//! A stored Subscription shown as its writer wrote it: fhir-fence scoped its criteria on the
//! way in (`scope::subscription`) and kept the original in an extension of its own.
use serde_json::{Map, Value};

/// Holds the client's criteria on the stored Subscription.
pub const ORIGINAL_CRITERIA: &str = "https://fhir-fence.dev/StructureDefinition/original-criteria";

/// Shows a stored Subscription as the client wrote it: its own criteria back, our extension gone.
pub fn restore(resource: &mut Map<String, Value>) {
    let Some(Value::Array(extensions)) = resource.get_mut("extension") else { return };
    let mut original = None;
    extensions.retain(|e| {
        if e.get("url").and_then(Value::as_str) == Some(ORIGINAL_CRITERIA) {
            original = e.get("valueString").and_then(Value::as_str).map(str::to_owned);
            false
        } else {
            true
        }
    });
    if extensions.is_empty() {
        resource.remove("extension");
    }
    if let Some(c) = original {
        resource.insert("criteria".into(), Value::String(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_clients_criteria_are_restored() {
        let mut r = json!({"resourceType": "Subscription", "criteria": "Observation?code=x&_tag=s%7Ca",
            "extension": [{"url": ORIGINAL_CRITERIA, "valueString": "Observation?code=x"}]});
        restore(r.as_object_mut().unwrap());
        assert_eq!(r, json!({"resourceType": "Subscription", "criteria": "Observation?code=x"}));
    }
}
