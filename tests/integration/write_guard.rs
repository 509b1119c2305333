//! The pre-send guard (`scope::write::provable_once_stored`): a body in the form the upstream
//! will store passes only when the outbound check would hand it back to its writer, so no write
//! commits what the answer would refuse. Conditional references never reach it: a transaction
//! resolves them first (`scope::conditional::resolve_references`), so one left in a body is refused.
use crate::support::{scope_harness::ScopeHarness, SYSTEM};
use fhir_fence::scope::write::provable_once_stored;
use serde_json::{json, Value};

#[tokio::test]
async fn only_bodies_the_writer_could_read_back_are_sent() {
    let h = ScopeHarness::start().await;
    let ctx = h.ctx();
    let (p, other, t) = (&h.ts[0].prefix, &h.ts[1].prefix, &h.ts[0].name);
    let obs = |subject: &str, tag: Value| {
        json!({"resourceType": "Observation", "id": format!("{p}-o1"), "meta": {"tag": [tag]},
            "status": "final", "code": {"text": "x"}, "subject": {"reference": subject}})
    };
    let own = json!({"system": SYSTEM, "code": t});
    let pass = [obs(&format!("Patient/{p}-p1"), own.clone()), obs("#c1", own.clone())];
    for body in pass {
        assert!(provable_once_stored(&ctx, &body).is_ok(), "refused: {body}");
    }
    let mut attachment = obs(&format!("Patient/{p}-p1"), own.clone());
    attachment["presentedForm"] = json!([{"contentType": "text/plain", "url": format!("{}/Binary/{p}-b", h.up.base)}]);
    let refuse = [
        obs(&format!("Patient/{other}-p1"), own.clone()),
        obs(&format!("Patient/{p}-p1"), json!({"system": SYSTEM, "code": h.ts[1].name})),
        obs(&format!("Patient/{p}-p1"), json!({"system": "http://elsewhere", "code": t})),
        obs("patient?name=x", own.clone()),
        obs(&format!("Patient?name=x&_tag={SYSTEM}|{t}"), own.clone()),
        obs("http://elsewhere.example/fhir/Patient/1", own.clone()),
        attachment,
    ];
    for body in refuse {
        let e = provable_once_stored(&ctx, &body).expect_err(&format!("passed: {body}"));
        assert!(e.to_string().contains("nothing was written"), "{e}");
    }
}
