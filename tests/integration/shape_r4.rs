//! The typed inbound gate (`fhir::shape`) is complete for R4: every file of the HL7 R4 examples
//! package passes it unchanged (no false refusal), and every mutation of them that HAPI's lenient
//! parser might still read (a single value wrapped in an array, an array unwrapped, a string
//! turned into a number, array, object or null, an unknown element, a second choice variant)
//! is refused.
use fhir_fence::fhir::json::parse_strict;
use fhir_fence::fhir::shape::check;
use serde_json::{json, Map, Value};

/// Every resource file of the examples package (instance examples and conformance resources).
fn all_examples() -> Vec<(String, Value)> {
    let dir = format!("{}/hl7-r4-examples/package", super::support::test_data_dir().display());
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e} (run scripts/fetch-test-data)"))
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter(|e| e.file_name() != "package.json" && e.file_name() != ".index.json")
        .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).ok()?)))
        .filter_map(|(n, b)| Some((n, parse_strict(&b).ok()?)))
        .filter(|(_, v)| v.get("resourceType").is_some())
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_hl7_example_passes_unchanged() {
    let examples = all_examples();
    assert!(examples.len() > 2000, "only {} examples found", examples.len());
    let refused: Vec<String> =
        examples.iter().filter_map(|(name, v)| check(v).err().map(|e| format!("{name}: {e}"))).collect();
    assert!(refused.is_empty(), "{} of {} refused:\n{}", refused.len(), examples.len(), refused.join("\n"));
}

/// Every place in `v` where a mutation can be made: (path of object keys and indexes, key).
fn members(v: &Value, path: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                path.push(Value::String(k.clone()));
                out.push(path.clone());
                members(child, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                path.push(json!(i));
                members(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn parent_mut<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Map<String, Value> {
    let mut cur = v;
    for step in &path[..path.len() - 1] {
        cur = match step {
            Value::String(k) => &mut cur[k.as_str()],
            Value::Number(i) => &mut cur[i.as_u64().unwrap() as usize],
            _ => unreachable!(),
        };
    }
    cur.as_object_mut().unwrap()
}

/// A mutation of the member at `path`, or `None` when it would leave valid FHIR.
fn mutate(v: &Value, path: &[Value], how: usize) -> Option<(Value, String)> {
    let mut out = v.clone();
    let key = path.last()?.as_str()?.to_owned();
    if key == "resourceType" || key.starts_with('_') {
        return None;
    }
    let obj = parent_mut(&mut out, path);
    let member = obj.get(&key)?.clone();
    let described = match how {
        // A single value wrapped in an array (the reference-as-array attack) / an array unwrapped.
        0 => match member {
            Value::Array(a) => {
                obj.insert(key.clone(), a[0].clone());
                "array unwrapped"
            }
            other => {
                obj.insert(key.clone(), json!([other]));
                "wrapped in an array"
            }
        },
        // A string replaced by a number, an array, an object, null.
        1..=4 => {
            let Value::String(s) = member else { return None };
            let replacement = match how {
                1 => json!(12),
                2 => json!([s]),
                3 => json!({"value": s}),
                _ => Value::Null,
            };
            obj.insert(key.clone(), replacement);
            "string replaced"
        }
        // An unknown element beside it.
        5 => {
            obj.insert(format!("{key}Unknown"), json!("x"));
            "unknown element"
        }
        // A second variant of a choice element.
        6 => {
            let (group, _) =
                ["value", "effective", "onset", "deceased", "multipleBirth", "occurrence"].iter().find_map(|g| {
                    key.strip_prefix(g).filter(|rest| rest.starts_with(char::is_uppercase)).map(|r| (g, r))
                })?;
            let other = if key.ends_with("String") { "Boolean" } else { "String" };
            let extra = json!(if other == "Boolean" { json!(true) } else { json!("x") });
            obj.insert(format!("{group}{other}"), extra);
            "second choice variant"
        }
        _ => return None,
    };
    Some((out, format!("{described} at {path:?}")))
}

#[test]
fn mutations_of_hl7_examples_are_refused() {
    let examples = all_examples();
    let mut tried = 0usize;
    let mut accepted = Vec::new();
    // Every mutation of a deterministic sample of members of the smaller examples (each mutant
    // is a clone: a full cross product would be ~10^6 clones of up to a megabyte).
    let small = examples.iter().filter(|(_, v)| v.to_string().len() < 16_384);
    for (n, (name, v)) in small.enumerate().filter(|(n, _)| n % 3 == 0) {
        let mut paths = Vec::new();
        members(v, &mut Vec::new(), &mut paths);
        for (_, path) in paths.iter().enumerate().filter(|(i, _)| (i + n) % 4 == 0) {
            for how in 0..7 {
                let Some((mutant, what)) = mutate(v, path, how) else { continue };
                tried += 1;
                if check(&mutant).is_ok() {
                    accepted.push(format!("{name}: {what}"));
                }
            }
        }
    }
    assert!(tried > 10_000, "only {tried} mutations tried");
    assert!(accepted.is_empty(), "{} of {tried} mutations accepted:\n{}", accepted.len(), accepted.join("\n"));
}

/// Canonicals in the HL7 examples are of the forms fhir-fence accepts (`fhir::canonical::form_problem`:
/// absolute URLs, `urn:`, `#id`, `Type/id` of a type the element may name) — all but one, a bare
/// id that fhir-fence refuses (a server could read it as a local link to that id, whoever owns it).
#[test]
fn hl7_canonicals_have_accepted_forms() {
    let mut odd = Vec::new();
    for (name, v) in all_examples() {
        fhir_fence::fhir::shape::Model::r4().for_each_canonical(&v, &mut |c, targets| {
            if let Some(why) = fhir_fence::fhir::canonical::form_problem(c, targets) {
                odd.push(format!("{name}: {c} ({why})"));
            }
        });
    }
    assert_eq!(
        odd,
        ["Library-library-fhir-helpers.json: library-fhir-helpers-predecessor (a canonical is an absolute URL, a urn:, a #contained id or Type/id)"],
        "canonicals of other forms"
    );
}
