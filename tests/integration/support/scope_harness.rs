//! The scope functions called directly, without HTTP: two tenants in front of a fake upstream
//! that never answers, and a [`Ctx`] for the first. For checks that need no upstream (the
//! outbound check, the fast paths, the pre-send guard) judged on many inputs.
use super::{fake, start, tenants, Fence, Options, T};
use fhir_fence::scope::Ctx;
use fhir_fence::state::Snapshot;
use fhir_fence::tenancy::Tenant;
use fhir_fence::upstream::Upstream;
use std::sync::Arc;

pub struct ScopeHarness {
    pub ts: Vec<T>,
    pub up: fake::Fake,
    _fence: Fence,
    pub snap: Arc<Snapshot>,
    pub tenant: Arc<Tenant>,
    pub upstream: Arc<Upstream>,
}

impl ScopeHarness {
    pub async fn start() -> ScopeHarness {
        let ts = tenants(2);
        let up = fake::start(|_| fake::Answer::Hang).await;
        let fence = start(Options::new(&up.base, &ts)).await;
        let snap = fence.snap();
        let tenant = snap.tenants[&ts[0].name].clone();
        let upstream = snap.upstreams["main"].clone();
        ScopeHarness { ts, up, _fence: fence, snap, tenant, upstream }
    }

    pub fn ctx(&self) -> Ctx<'_> {
        Ctx { snap: &self.snap, tenant: &self.tenant, upstream: &self.upstream, correlation: "harness", grant: 0 }
    }
}
