//! The typed inbound gate: never panics, and what it accepts hides no reference or tenant
//! coding from the walkers — every member named `reference` holds a string or an object (a
//! `Reference`/`Identifier`, whose own `reference` is a string), and every `meta.tag` /
//! `meta.security` is an array of objects whose `system` and `code` are strings.
#![no_main]
use fhir_fence::fhir::json::parse_strict;
use fhir_fence::fhir::shape::{check, Model};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn walk(v: &Value) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                if k == "reference" {
                    assert!(child.is_string() || child.is_object(), "reference of another shape: {child}");
                }
                if k == "meta" {
                    for field in ["tag", "security"] {
                        if let Some(codings) = child.get(field) {
                            for c in codings.as_array().expect("meta codings are an array") {
                                let c = c.as_object().expect("a coding is an object");
                                for part in ["system", "code"] {
                                    assert!(c.get(part).is_none_or(Value::is_string), "coding {part}: {c:?}");
                                }
                            }
                        }
                    }
                }
                walk(child);
            }
        }
        Value::Array(a) => a.iter().for_each(walk),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = parse_strict(data) else { return };
    if check(&v).is_ok() {
        walk(&v);
        Model::r4().for_each_canonical(&v, &mut |c, _| assert!(!c.is_empty()));
    }
});
