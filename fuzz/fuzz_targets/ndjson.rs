//! NDJSON splitting: never panic, whatever the chunking; every line written ends in `\n`, is one
//! the check passed, and no line is longer than the limit.
#![no_main]
use fhir_fence::bulk::ndjson::NdjsonFilter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let mut filter = NdjsonFilter::new("Patient", 256, |v: serde_json::Value| {
        Some(fhir_fence::outbound::Checked::authored(v))
    });
    let mut out = Vec::new();
    let cut = usize::from(split).min(data.len());
    let ok = filter.push(&data[..cut], &mut out).and_then(|_| filter.push(&data[cut..], &mut out));
    if ok.and_then(|_| filter.finish(&mut out)).is_ok() {
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).expect("only JSON lines leave");
            assert_eq!(v["resourceType"], "Patient");
        }
        assert!(out.is_empty() || out.ends_with(b"\n"));
    }
});
