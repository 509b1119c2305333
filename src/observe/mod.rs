//! Observe mode (`tenants.NAME.enforcement = "observe"`, issue 19; paper §7.1, "run both shapes
//! in parallel until verified"): a tenant whose data still lives on a legacy upstream (written
//! without fhir-fence: no tenant coding, plain ids) gets the legacy answers byte for byte, while
//! what enforcement would refuse or drop is computed, counted and logged, so enforcement is
//! switched on once the counts are zero.
//!
//! The caller is authenticated and held to its tenant's slots and rate as always (identity is
//! never observed-only); then `pipeline::run` branches here, at one place. For the request, the
//! enforcing judgement is computed with the functions enforcement runs before the upstream is
//! called (`pipeline`'s route and body steps, then [`judge`]), without acting on it — except a
//! `read-only` tenant's freeze, which is lifecycle, not enforcement. The request then goes to the
//! legacy upstream unchanged ([`forward`]), and its answer back unchanged; what the outbound gate
//! would drop from it is computed after the answer is sent ([`answer`]).
//!
//! Every difference is counted in `fhir_fence_observed_differences_total{tenant, stage, reason}`
//! (`reason`: [`Error::kind`](crate::error::Error::kind), a bounded label) and logged (tenant,
//! method, path without the query, reason); `fhir_fence_observed_requests_total{tenant}` counts
//! the requests, so the share is visible.
pub mod answer;
pub mod forward;
pub mod judge;

use crate::state::Snapshot;

/// The stage a difference was found at: the request (enforcement would have refused it) or
/// the answer (the outbound gate would have dropped or refused it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Request,
    Response,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Request => "request",
            Stage::Response => "response",
        }
    }
}

/// Counts an observed request.
pub fn observed(snap: &Snapshot, tenant: &str) {
    snap.metrics.observed_requests.with_label_values(&[snap.metrics.tenant(tenant)]).inc();
}

/// Counts `n` differences of one reason, and logs them (one line per request and reason). The
/// path is logged without its query: search values can be personal data.
pub fn differ(snap: &Snapshot, tenant: &str, stage: Stage, reason: &'static str, n: u64, what: (&str, &str, &str)) {
    if n == 0 {
        return;
    }
    let (method, path, correlation) = what;
    snap.metrics
        .observed_differences
        .with_label_values(&[snap.metrics.tenant(tenant), stage.label(), reason])
        .inc_by(n);
    tracing::info!(
        target: "fhir_fence::observe",
        correlation,
        tenant,
        method,
        path,
        stage = stage.label(),
        reason,
        count = n,
        "enforcement would differ"
    );
}
