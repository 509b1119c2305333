//! Query parsing and routing: never panic on any method, path and query; an interaction that
//! names a resource type and id names ones of the strict grammar.
#![no_main]
use fhir_fence::fhir::reference::{is_id, is_resource_type};
use fhir_fence::route::{classify, parse_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (method, rest) = text.split_once(' ').unwrap_or(("GET", text));
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else { return };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let Ok(params) = parse_query(query) else { return };
    if let Ok(interaction) = classify(&method, "/fhir", path, &params) {
        let (rtype, id) = interaction.target();
        assert!(rtype.is_none_or(is_resource_type), "{interaction:?}");
        assert!(id.is_none_or(is_id), "{interaction:?}");
    }
});
