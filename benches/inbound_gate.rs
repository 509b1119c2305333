//! The typed inbound gate's own cost (`fhir::shape::check`), on the bodies the issue names: a
//! 1 KB Patient write and a 100-entry transaction Bundle.
//!
//!     cargo bench --bench inbound_gate            # time per check (median of 15 rounds)
//!     GATE_ONLY=write GATE_ITERATIONS=10000 valgrind --tool=callgrind target/release/deps/inbound_gate-*
//!                                                 # instructions: divide by the iterations
//!
//! `bench/instructions` counts a whole 1 KB write through fhir-fence the same way, so the two
//! give the gate's share of a write (`docs/performance.md`).
use fhir_fence::fhir::json::parse_strict;
use fhir_fence::fhir::shape::check;
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::Instant;

/// The ~1 KB Patient of `bench/origin.py`, as a client writes it.
fn patient(n: usize) -> Value {
    json!({
        "resourceType": "Patient", "id": format!("p{n}"),
        "meta": {"versionId": "3", "lastUpdated": "2026-11-20T10:15:30.123+00:00"},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Ada Lovelace</div>"},
        "identifier": [{"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                        "system": "urn:oid:1.2.36.146.595.217.0.1", "value": format!("{}", 12345 + n)}],
        "active": true,
        "name": [{"use": "official", "family": "Lovelace", "given": ["Ada", "Augusta"]}, {"use": "usual", "given": ["Ada"]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1},
                    {"system": "email", "value": "ada@example.org", "use": "home"}],
        "gender": "female", "birthDate": "1815-12-10",
        "address": [{"use": "home", "type": "both", "line": ["534 Erewhon St"], "city": "PleasantVille",
                     "district": "Rainbow", "state": "Vic", "postalCode": "3999", "period": {"start": "1974-12-25"}}],
        "contact": [{"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
                     "name": {"family": "du Marché", "given": ["Bénédicte"]},
                     "telecom": [{"system": "phone", "value": "+33 (237) 998327"}], "gender": "female"}],
        "managingOrganization": {"reference": "Organization/org1"}
    })
}

fn transaction(entries: usize) -> Value {
    let entry = |n: usize| {
        json!({"fullUrl": format!("urn:uuid:00000000-0000-0000-0000-{n:012}"),
        "resource": patient(n), "request": {"method": "POST", "url": "Patient"}})
    };
    json!({"resourceType": "Bundle", "type": "transaction", "entry": (0..entries).map(entry).collect::<Vec<_>>()})
}

fn main() {
    let cases = [("write", patient(1)), ("transaction-100", transaction(100))];
    let only = std::env::var("GATE_ONLY").ok();
    if let Ok(n) = std::env::var("GATE_ITERATIONS") {
        let n: usize = n.parse().expect("GATE_ITERATIONS is a number");
        for (name, body) in cases.iter().filter(|(name, _)| only.as_deref().is_none_or(|o| o == *name)) {
            for _ in 0..n {
                check(black_box(body)).expect("valid");
            }
            eprintln!("{name}: {n} checks");
        }
        return;
    }
    // Under `cargo test` (no `--bench`), a smoke run: the bodies pass the gate, nothing is timed.
    if !std::env::args().any(|a| a == "--bench") {
        for (name, body) in &cases {
            check(body).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        return;
    }
    println!("| body | bytes | parse_strict µs | shape::check µs |");
    println!("|---|---|---|---|");
    for (name, body) in &cases {
        let bytes = serde_json::to_vec(body).unwrap();
        let iterations = if bytes.len() > 10_000 { 200 } else { 20_000 };
        let median = |f: &dyn Fn()| {
            let mut rounds: Vec<f64> = (0..15)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..iterations {
                        f();
                    }
                    t.elapsed().as_secs_f64() * 1e6 / iterations as f64
                })
                .collect();
            rounds.sort_by(f64::total_cmp);
            rounds[7]
        };
        let parse = median(&|| {
            black_box(parse_strict(black_box(&bytes)).unwrap());
        });
        let gate = median(&|| check(black_box(body)).unwrap());
        println!("| {name} | {} | {parse:.2} | {gate:.2} |", bytes.len());
    }
}
