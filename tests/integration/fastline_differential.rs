//! The export fast path (`bulk::fastline`) against the full outbound check
//! (`outbound::resource`) on the same lines: whenever the fast path accepts a line, the
//! full check must accept it too and produce the same JSON. Lines come from realistic
//! templates and from every one-byte deletion or replacement and a set of edits of them (broken syntax,
//! duplicate keys, foreign references, escapes, misplaced codings...).
use crate::support::{scope_harness::ScopeHarness, SYSTEM};
use fhir_fence::fhir::json::parse_strict;
use fhir_fence::outbound;
use fhir_fence::outbound::fast_line;
use fhir_fence::scope::paging::Counted;
use serde_json::Value;

fn templates(p: &str, t: &str, base: &str) -> Vec<String> {
    let tag = format!(r#"{{"system":"{SYSTEM}","code":"{t}"}}"#);
    vec![
        format!(
            r#"{{"resourceType":"Observation","id":"{p}-o1","meta":{{"versionId":"1","tag":[{tag}]}},"status":"final","subject":{{"reference":"Patient/{p}-p1"}},"valueQuantity":{{"value":12.5,"unit":"kg"}}}}"#
        ),
        format!(
            r##"{{"resourceType":"Observation","id":"{p}-o2","meta":{{"tag":[{{"system":"http://x","code":"y"}},{tag},{{"code":"z"}}],"security":[{{"system":"http://s","code":"R"}}]}},"performer":[{{"reference":"{base}/Practitioner/{p}-d1"}},{{"reference":"#c1"}},{{"reference":"https://terminology.example.org/fhir/ValueSet/v1"}}],"contained":[{{"resourceType":"Patient","id":"c1"}}],"note":[{{"text":"café \"quoted\" \\ back/slash\nnew line"}}],"component":[{{"valueInteger":-0}},{{"valueDecimal":0.25}},{{"valueBoolean":true}},{{"x":null}}]}}"##
        ),
        format!(
            r#"{{ "resourceType" : "Observation" , "id" : "{p}-o3" , "meta" : {{ "tag" : [ {tag} ] , "lastUpdated" : "2026-01-01" }} , "derivedFrom" : [ {{ "reference" : "Observation/{p}-o1/_history/2" }} ] , "extension" : [ {{ "url" : "http://e" , "valueAttachment" : {{ "url" : "http://elsewhere/a" , "contentType" : "text/plain" }} }} ] }}"#
        ),
        format!(
            r#"{{"resourceType":"Observation","id":"{p}-o4","meta":{{"tag":[{tag}]}},"presentedForm":[{{"contentType":"text/plain","url":"{base}/Binary/x"}}]}}"#
        ),
        format!(
            r#"{{"resourceType":"Observation","id":"{p}-o5","meta":{{"tag":[{tag}]}},"a":[[[[{{"b":[1,2,{{"c":"d"}}]}}]]]],"e":1e3,"f":"\u0041"}}"#
        ),
        format!(
            r#"{{"resourceType":"Observation","id":"{p}-o6","meta":{{"tag":[{tag},{{"system":"http://x","code":"y"}}],"security":[]}},"status":"final"}}"#
        ),
        format!(
            r#"{{"resourceType":"Observation","meta":{{"tag":[ {tag} ] , "source":"s"}},"id":"{p}-o7","x":[{{"tag":[{tag}]}}]}}"#
        ),
        format!(
            r#"{{"resourceType":"Observation","id":"{p}-o8","meta":{{"security":[{{"code":"s"}}],"tag":[ {tag} , [{{"reference":"Patient/{p}-p1"}}] ]}}}}"#
        ),
        // Canonicals written as relative literals are references (`fhir::canonical`).
        format!(
            r#"{{"resourceType":"Observation","id":"{p}-o9","meta":{{"tag":[{tag}],"profile":["StructureDefinition/s1","http://x/StructureDefinition/s2"]}},"instantiatesCanonical":["PlanDefinition/{p}-pd1|2",{{"x":"Library/y"}}],"extension":[{{"url":"http://e","valueCanonical":"Questionnaire/{p}-q1"}}],"partOf":[{{"reference":"Procedure/{p}-pr1"}}],"resource":"Library/{p}-l","library":"Blood/urine"}}"#
        ),
    ]
}

/// Edits that turn a good line into a doubtful one.
fn edits(line: &str, p: &str, other: &str) -> Vec<String> {
    let mut out = vec![
        line.replacen(&format!("{p}-p1"), &format!("{other}-p1"), 1),
        line.replacen(&format!("\"id\":\"{p}-"), &format!("\"id\":\"{other}-"), 1),
        line.replacen(&format!("Definition/{p}-"), &format!("Definition/{other}-"), 1),
        line.replacen(&format!("Questionnaire/{p}-"), "Questionnaire/", 1),
        line.replacen("StructureDefinition/s1", "Library/s1", 1),
        line.replacen(&format!("Library/{p}"), &format!("Library\\/{p}"), 1),
        line.replacen("\"status\"", "\"url\":\"http://x/Observation/o\",\"title\":\"t\",\"status\"", 1),
        line.replacen(
            "{\"x\":\"Library/y\"}",
            "{\"resourceType\":\"Library\",\"url\":\"http://x/L\",\"title\":\"t\"}",
            1,
        ),
        line.replacen("\"status\"", "\"id\":\"x\",\"status\"", 1),
        line.replacen("\"versionId\"", "\"tag\":[],\"versionId\"", 1),
        line.replacen("\"tag\"", "\"security\"", 1),
        line.replacen("\"resourceType\":\"Observation\"", "\"resourceType\":\"Patient\"", 1),
        line.replacen("\"meta\"", "\"\\u006deta\"", 1),
        line.replacen("\"reference\"", "\"refer\\u0065nce\"", 1),
        line.replacen("\"Patient/", "\"Patient?identifier=", 1),
        line.replacen("#c1", "urn:uuid:1", 1),
        line.replacen("12.5", "1.2e1", 1),
        line.replacen("12.5", "012", 1),
        // A magnitude `f64` cannot hold: the strict parser refuses it (found by fuzzing).
        line.replacen("12.5", &"5".repeat(400), 1),
        line.replacen("12.5", &format!("-{}.5", "9".repeat(40)), 1),
        line.replacen(",\"status\"", ",\"status\":1,\"status\"", 1),
        line.replacen("}", "},", 1),
        format!("{line} x"),
        format!("[{line}]"),
        line.replacen("\"final\"", "\"fi\u{1}nal\"", 1),
    ];
    out.extend(line.replacen("\"code\":\"", "\"code\":\"other", 1).lines().map(str::to_owned));
    out
}

#[tokio::test]
async fn the_fast_path_never_accepts_what_the_full_check_refuses() {
    let d = ScopeHarness::start().await;
    let (ts, up, snap, tenant, upstream) = (&d.ts, &d.up, &*d.snap, &*d.tenant, &*d.upstream);
    let ctx = d.ctx();
    let mut fast = fast_line(snap, tenant, upstream, Some("Observation"));
    let full = |line: &str| -> Option<Value> {
        let v = parse_strict(line.as_bytes()).ok()?;
        if v.get("resourceType")?.as_str()? != "Observation" {
            return None;
        }
        outbound::resource(&ctx, v).ok().map(outbound::Checked::into_tree)
    };

    let (p, other) = (ts[0].prefix.as_str(), ts[1].prefix.as_str());
    let mut lines = vec![];
    for t in templates(p, &ts[0].name, &up.base) {
        // Every one-byte deletion, every byte replaced by a quote or a backslash, and the edits.
        for i in 0..t.len() {
            if t.is_char_boundary(i) && t.is_char_boundary(i + 1) {
                lines.push(format!("{}{}", &t[..i], &t[i + 1..]));
                lines.push(format!("{}\"{}", &t[..i], &t[i + 1..]));
                lines.push(format!("{}\\{}", &t[..i], &t[i + 1..]));
            }
        }
        lines.extend(edits(&t, p, other));
        lines.push(t);
    }
    let (mut fast_yes, mut checked) = (0, 0);
    for line in &lines {
        let mut out = Vec::new();
        let slow = full(line);
        if fast.accept(line.as_bytes(), &mut out).is_ok() {
            fast_yes += 1;
            let got: Value =
                serde_json::from_slice(&out).unwrap_or_else(|e| panic!("fast output not JSON ({e}): {line}"));
            let want = slow.unwrap_or_else(|| panic!("fast path accepted a line the full check refuses: {line}"));
            assert_eq!(got, want, "different output for {line}");
        } else {
            assert!(out.is_empty(), "an unsure line leaves nothing behind");
        }
        checked += 1;
    }
    // The fast path must actually carry the common lines (otherwise it is no fast path).
    for (i, t) in templates(p, &ts[0].name, &up.base).iter().enumerate().filter(|(i, _)| ![3, 4].contains(i)) {
        let mut out = Vec::new();
        assert!(fast.accept(t.as_bytes(), &mut out).is_ok(), "template {i} should take the fast path: {t}");
    }
    assert!(fast_yes > 3 && checked > 5000, "{fast_yes} fast of {checked}");
}

/// A Bundle's links with their sealed page tokens (random per seal) blanked.
fn without_tokens(mut b: Value) -> Value {
    if let Some(o) = b.as_object_mut() {
        o.remove("id");
    }
    if let Some(links) = b.get_mut("link").and_then(Value::as_array_mut) {
        for l in links {
            if let Some(u) = l["url"].as_str().filter(|u| u.contains("_page=")) {
                l["url"] = Value::String(u.split("_page=").next().unwrap().to_owned());
            }
        }
    }
    b
}

/// The upstream search the Bundles of the differential answer.
const ASKED: &str = "Observation?_tag=x";

/// The search Bundle fast path (`scope::fastbundle`) against `outbound::bundle`: whenever it
/// answers, the full check must keep every entry and build the same Bundle.
#[tokio::test]
async fn the_bundle_fast_path_agrees_with_the_full_check() {
    let d = ScopeHarness::start().await;
    let (ts, up, snap) = (&d.ts, &d.up, &*d.snap);
    let ctx = d.ctx();
    let (p, other) = (ts[0].prefix.as_str(), ts[1].prefix.as_str());
    let self_url = format!("{}/Observation?x=1", snap.public_base);
    let base = &up.base;
    let entry = |r: &str| format!(r#"{{"fullUrl":"{base}/Observation/x","resource":{r},"search":{{"mode":"match"}}}}"#);
    let bundle = |entries: &[String], extra: &str| {
        format!(
            r#"{{"resourceType":"Bundle","id":"up-1","type":"searchset","total":{},"link":[{{"relation":"self","url":"{base}/Observation?_tag=x"}},{{"relation":"next","url":"{base}?_getpages=abc&_getpagesoffset=20"}}]{extra},"entry":[{}]}}"#,
            entries.len(),
            entries.join(",")
        )
    };
    let good: Vec<String> = templates(p, &ts[0].name, base).iter().map(|t| entry(t)).collect();
    let mut cases = vec![
        bundle(&good, ""),
        bundle(&good[..1], ",\"meta\":{\"lastUpdated\":\"2026-01-01\"}"),
        bundle(&[], ""),
        bundle(&good, "").replacen("\"searchset\"", "\"history\"", 1),
        bundle(&good, ",\"entry\":[]"),
        bundle(&good, ",\"type\":\"searchset\""),
        bundle(&good, "").replacen("\"search\":{", "\"request\":{\"method\":\"GET\",\"url\":\"x\"},\"search\":{", 1),
        bundle(&good, "").replacen(
            "\"search\":{\"mode\":\"match\"}",
            "\"search\":{\"mode\":\"match\",\"mode\":\"x\"}",
            1,
        ),
        bundle(&good, "").replacen("\"entry\":[", "\"entry\":{", 1),
        bundle(&good, "").replacen(",\"search\"", ",\"link\":[],\"search\"", 1),
        // A keyset cursor link (the Helios FHIR Server) that repeats the search, and one that does not.
        bundle(&good, "").replacen("?_getpages=abc&_getpagesoffset=20", "/Observation?_cursor=abc&_tag=x", 1),
        bundle(&good, "").replacen("?_getpages=abc&_getpagesoffset=20", "/Observation?_cursor=abc&_tag=y", 1),
        format!("{} ", bundle(&good, "")),
        format!("{}x", bundle(&good, "")),
    ];
    // Every edited and every damaged line, as the second entry after a good one.
    for t in templates(p, &ts[0].name, base) {
        for e in edits(&t, p, other) {
            cases.push(bundle(&[good[0].clone(), entry(&e)], ""));
        }
        for i in 0..t.len() {
            if t.is_char_boundary(i) && t.is_char_boundary(i + 1) {
                cases.push(bundle(&[good[0].clone(), entry(&format!("{}{}", &t[..i], &t[i + 1..]))], ""));
            }
        }
    }
    let mut fast_yes = 0;
    for case in &cases {
        let slow = parse_strict(case.as_bytes())
            .ok()
            .and_then(|v| outbound::bundle(&ctx, v, &self_url, Counted::Tenant, ASKED).ok());
        if let Some(fast) =
            fhir_fence::outbound::fastbundle::searchset(&ctx, case.as_bytes(), &self_url, Counted::Tenant, ASKED)
        {
            fast_yes += 1;
            let got: Value = serde_json::from_slice(&fast.into_bytes())
                .unwrap_or_else(|e| panic!("fast output not JSON ({e}): {case}"));
            let want = slow.unwrap_or_else(|| panic!("fast path answered a Bundle the full check refuses: {case}"));
            assert_eq!(want.dropped, 0, "fast path kept an entry the full check drops: {case}");
            assert_eq!(without_tokens(got), without_tokens(want.bundle.into_tree()), "different Bundle for {case}");
        }
    }
    // The fast path carries the common Bundles (otherwise it is no fast path)...
    let plain: Vec<String> = [0usize, 1, 2, 5, 6, 7].iter().map(|&i| good[i].clone()).collect();
    let common = bundle(&plain, "");
    assert!(fhir_fence::outbound::fastbundle::searchset(&ctx, common.as_bytes(), &self_url, Counted::Tenant, ASKED)
        .is_some());
    // ...and stays out of what it does not handle.
    assert!(fast_yes > 10 && cases.len() > 1000, "{fast_yes} fast of {}", cases.len());
}
