//! The response stage of observe mode: what the outbound gate would drop or refuse in the
//! legacy answer for this tenant (`outbound::resource`, `outbound::bundle`: the tenant coding
//! and id prefix legacy data does not carry yet, references outside the tenant). Judged on a
//! blocking thread after the answer has gone, so the client does not wait for it; bodies over
//! `server.max_body_bytes` are counted as too large to judge rather than parsed.
use super::{differ, Stage};
use crate::error::Error;
use crate::fhir::json::parse_strict;
use crate::outbound;
use crate::scope::paging::Counted;
use crate::scope::Ctx;
use crate::state::Snapshot;
use crate::tenancy::Tenant;
use crate::upstream::{media_type, media_type_is, Upstream, FHIR_JSON};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::sync::Arc;

/// What a request's answer is judged with, owned so the judgement can outlive the request.
pub struct Judged {
    pub snap: Arc<Snapshot>,
    pub tenant: Arc<Tenant>,
    pub upstream: Arc<Upstream>,
    pub correlation: String,
    pub method: String,
    /// The client's path, without its query.
    pub path: String,
    /// The client's own URL (the link a Bundle's `self` would be rebuilt on).
    pub self_url: String,
}

/// Judges the answer on a blocking thread and counts what the gate would drop or refuse.
pub fn judge_later(j: Judged, status: StatusCode, headers: &HeaderMap, body: Bytes) {
    if !status.is_success() || body.is_empty() {
        return;
    }
    let json = media_type_is(media_type(headers), &[FHIR_JSON, "application/json"]);
    tokio::task::spawn_blocking(move || {
        let ctx =
            Ctx { snap: &j.snap, tenant: &j.tenant, upstream: &j.upstream, correlation: &j.correlation, grant: 0 };
        let max = j.snap.loaded.config.server.max_body_bytes;
        let found = if body.len() > max {
            vec![("outbound/too-large", 1)]
        } else if !json {
            vec![("outbound/not-json", 1)]
        } else {
            differences(&ctx, &body, &j.self_url)
        };
        for (reason, n) in found {
            differ(&j.snap, &j.tenant.name, Stage::Response, reason, n, (&j.method, &j.path, &j.correlation));
        }
    });
}

/// What the outbound gate would drop or refuse in one 2xx JSON answer, by reason.
pub fn differences(ctx: &Ctx<'_>, body: &[u8], self_url: &str) -> Vec<(&'static str, u64)> {
    let kind = |e: crate::scope::ScopeError| Error::from(e).kind();
    let value = match parse_strict(body) {
        Ok(v) => v,
        Err(_) => return vec![("outbound/bad-json", 1)],
    };
    let rtype = value.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    let btype = value.get("type").and_then(Value::as_str).unwrap_or_default();
    match (rtype, btype) {
        // fhir-fence writes its own OperationOutcomes where the upstream's would be answered.
        ("OperationOutcome", _) => vec![],
        ("Bundle", "searchset" | "history") => match outbound::bundle(ctx, value, self_url, Counted::Tenant, "") {
            Ok(f) => vec![("outbound/entry-dropped", f.dropped as u64)],
            Err(e) => vec![(kind(e), 1)],
        },
        // A batch or transaction response: each entry's resource judged alone.
        ("Bundle", _) => {
            let entries = value.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
            let refused = entries
                .into_iter()
                .filter_map(|mut e| e.get_mut("resource").map(Value::take))
                .filter(|r| outbound::resource(ctx, r.clone()).is_err())
                .count();
            vec![("outbound/entry-dropped", refused as u64)]
        }
        _ => match outbound::resource(ctx, value) {
            Ok(_) => vec![],
            Err(e) => vec![(kind(e), 1)],
        },
    }
}
