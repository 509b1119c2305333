//! What a tenant's requests share while it is served: its limiter state (rate, in-flight and
//! connection caps) and its upstream behind its upstream connection cap. Made on the tenant's
//! first request under a snapshot ([`Runtimes::get`]), never for every configured tenant at
//! once: ten thousand tenants in a config cost memory and start-up time here only for those
//! that send requests (issue 20).
//!
//! A reload carries a served tenant's state over when its effective limits did not change (its
//! rate and in-flight count go on, as before this was lazy); otherwise the tenant starts afresh
//! under the new snapshot. One edge is new: a tenant whose first request ever began under the
//! old snapshot while the new one was being built gets fresh state under the new one (there was
//! nothing to carry yet), so for those few milliseconds its caps count twice.
use crate::config::Config;
use crate::limits::TenantLimits;
use crate::shared_store::Store;
use crate::upstream::Upstream;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// One tenant's shared state.
pub struct TenantRuntime {
    pub limits: Arc<TenantLimits>,
    /// The tenant's upstream: the shared connection pool, behind the tenant's gate if it has one.
    pub upstream: Arc<Upstream>,
}

impl TenantRuntime {
    fn new(limits: Arc<TenantLimits>, shared: &Arc<Upstream>) -> Self {
        let upstream = match limits.upstream_gate() {
            Some(gate) => Arc::new(shared.gated(gate)),
            None => shared.clone(),
        };
        TenantRuntime { limits, upstream }
    }
}

/// The tenants served so far under one snapshot.
#[derive(Default)]
pub struct Runtimes(RwLock<HashMap<String, Arc<TenantRuntime>>>);

impl Runtimes {
    /// What `prev` (under config `before`) holds that stays valid under `now`: the tenants whose
    /// effective limits are the same, on `now`'s upstreams.
    pub fn carried(prev: &Runtimes, before: &Config, now: &Config, upstreams: &HashMap<String, Arc<Upstream>>) -> Self {
        let prev = prev.0.read().unwrap_or_else(|p| p.into_inner());
        let kept = prev.iter().filter_map(|(name, runtime)| {
            let (was, is) = (before.tenants.get(name)?, now.tenants.get(name)?);
            if before.limits.overridden_by(&was.limits) != now.limits.overridden_by(&is.limits) {
                return None;
            }
            let shared = upstreams.get(&is.upstream)?;
            Some((name.clone(), Arc::new(TenantRuntime::new(runtime.limits.clone(), shared))))
        });
        Runtimes(RwLock::new(kept.collect()))
    }

    /// `tenant`'s state, made now if this is its first request under this snapshot (its rate
    /// kept in `store` when its limits say `backend = "redis"`); `None`
    /// for a tenant `config` does not name (or whose upstream is missing, which `load` refuses).
    pub fn get(
        &self,
        tenant: &str,
        config: &Config,
        upstreams: &HashMap<String, Arc<Upstream>>,
        store: Option<&Arc<Store>>,
    ) -> Option<Arc<TenantRuntime>> {
        if let Some(runtime) = self.0.read().unwrap_or_else(|p| p.into_inner()).get(tenant) {
            return Some(runtime.clone());
        }
        let t = config.tenants.get(tenant)?;
        let limits = Arc::new(TenantLimits::build(&config.limits.overridden_by(&t.limits), store, tenant));
        let made = Arc::new(TenantRuntime::new(limits, upstreams.get(&t.upstream)?));
        let mut all = self.0.write().unwrap_or_else(|p| p.into_inner());
        // Another request may have made it meanwhile: the first one made is the one kept.
        Some(all.entry(tenant.to_owned()).or_insert(made).clone())
    }

    /// How many tenants have state.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use crate::config;
    use crate::state::Snapshot;
    use std::sync::Arc;

    /// A snapshot of `tenants` tenants (`t0`, `t1`, …; `t0` with a rate limit of `rate`).
    fn snapshot(tenants: usize, rate: u32, prev: Option<&Snapshot>) -> Snapshot {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_base = \"http://fence.test/fhir\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [tenancy]\nmarker = \"tag\"\nsystem = \"https://fhir-fence.dev/CodeSystem/tenant\"\n\
             [upstreams.main]\nbase_url = \"http://127.0.0.1:9/fhir\"\n\
             [issuers.dev]\niss = \"https://issuer.test\"\naudience = [\"a\"]\nalgorithms = [\"HS256\"]\n\
             secret_file = \"{fixtures}/dev-hs256.secret\"\ntenant_claim = \"$.tenant\"\ntenants = [\"t0\"]\n"
        );
        for n in 0..tenants {
            toml += &format!("[tenants.t{n}]\nprefix = \"t{n}\"\nupstream = \"main\"\nstatus = \"active\"\n");
        }
        toml += &format!("[tenants.t0.limits]\nrate_per_second = {rate}\nmax_in_flight = 1\n");
        let dir = std::env::temp_dir().join(format!("fhir-fence-runtime-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fence.toml"), toml).unwrap();
        let loaded = config::load(&dir.join("fence.toml")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        match prev {
            Some(p) => Snapshot::rebuild(loaded, p).unwrap(),
            None => Snapshot::build(loaded).unwrap(),
        }
    }

    #[test]
    fn state_is_made_on_a_tenant_s_first_request_only() {
        let snap = snapshot(1000, 5, None);
        assert!(snap.runtimes.is_empty(), "a thousand configured tenants, none served: no state");
        let first = snap.runtime("t0").unwrap();
        assert!(Arc::ptr_eq(&first, &snap.runtime("t0").unwrap()), "made once");
        assert!(snap.runtime("t999").is_some() && snap.runtime("nobody").is_none());
        assert_eq!(snap.runtimes.len(), 2);
    }

    #[test]
    fn a_reload_carries_state_over_unless_the_limits_changed() {
        let snap = snapshot(3, 5, None);
        let (t0, t1) = (snap.runtime("t0").unwrap(), snap.runtime("t1").unwrap());
        // t0 holds its one in-flight slot across the reload.
        let held = t0.limits.enter("t0", &snap.metrics).unwrap();
        let same = snapshot(3, 5, Some(&snap));
        assert_eq!(same.runtimes.len(), 2, "only what was served is carried");
        let kept = same.runtime("t0").unwrap();
        assert!(Arc::ptr_eq(&kept.limits, &t0.limits));
        assert!(kept.limits.enter("t0", &same.metrics).is_err(), "the in-flight count goes on");
        assert!(Arc::ptr_eq(&same.runtime("t1").unwrap().limits, &t1.limits));
        let changed = snapshot(3, 6, Some(&same));
        assert!(!Arc::ptr_eq(&changed.runtime("t0").unwrap().limits, &t0.limits), "t0's limits changed");
        assert!(Arc::ptr_eq(&changed.runtime("t1").unwrap().limits, &t1.limits));
        drop(held);
    }
}
