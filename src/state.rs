//! The running configuration as one immutable snapshot: tenants, keys, upstream clients,
//! capabilities, sealing key and caches, all built from a validated config in [`Snapshot::build`].
use crate::audit::Audit;
use crate::config::{ConfigError, Loaded};
use crate::fhir::capabilities::Capabilities;
use crate::identity::Verifier;
use crate::limits::TenantLimits;
use crate::metrics::Metrics;
use crate::seal::Sealer;
use crate::tenancy::{Marking, Tenant};
use crate::upstream::Upstream;
use arc_swap::ArcSwapOption;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Snapshot {
    pub loaded: Loaded,
    /// The public FHIR base without a trailing slash.
    pub public_base: String,
    /// Its path part (`/fhir`), under which all FHIR routes live.
    pub base_path: String,
    pub marking: Marking,
    pub tenants: HashMap<String, Arc<Tenant>>,
    pub verifier: Verifier,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Per upstream, filled in once its CapabilityStatement has been read.
    pub capabilities: HashMap<String, ArcSwapOption<Capabilities>>,
    pub sealer: Sealer,
    pub page_ttl_secs: u64,
    pub external_bases: Vec<String>,
    /// Positive reference look-ups: (tenant, `Type/upstream-id`).
    pub ref_cache: moka::future::Cache<(String, String), ()>,
    /// Export jobs cancelled through this process (ids from their sealed handles).
    pub export_tombstones: moka::future::Cache<String, ()>,
    pub metrics: Arc<Metrics>,
    pub audit: Audit,
    /// Per tenant: its effective limits (the defaults overridden by its own table).
    pub limits: HashMap<String, Arc<TenantLimits>>,
}

impl Snapshot {
    /// Builds everything the config describes; fails, naming the key, on anything unusable.
    pub fn build(loaded: Loaded) -> Result<Self, ConfigError> {
        let c = &loaded.config;
        let tenants: HashMap<String, Arc<Tenant>> = c
            .tenants
            .iter()
            .map(|(name, t)| {
                let tenant = Tenant {
                    name: name.clone(),
                    prefix: t.prefix.clone(),
                    upstream: t.upstream.clone(),
                    status: t.status,
                    operations: t.operations.clone(),
                    destinations: t.subscription_destinations.clone(),
                };
                (name.clone(), Arc::new(tenant))
            })
            .collect();
        let verifier = Verifier::build(&loaded, &tenants)?;
        let upstreams = c
            .upstreams
            .iter()
            .map(|(name, u)| (name.clone(), Arc::new(Upstream::new(name, u, c.server.max_upstream_body_bytes))))
            .collect();
        let capabilities = c.upstreams.keys().map(|n| (n.clone(), ArcSwapOption::empty())).collect();
        let sealer = match &c.paging.key_file {
            Some(p) => Sealer::from_key_file(&loaded.read_file("paging.key_file", p)?)
                .map_err(|e| ConfigError::invalid("paging.key_file", e.to_string()))?,
            None => Sealer::random(),
        };
        let public_base = loaded.public_base.as_str().trim_end_matches('/').to_owned();
        let base_path = loaded.public_base.path().trim_end_matches('/').to_owned();
        let ref_cache = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(c.tenancy.reference_cache_ttl_secs))
            .build();
        let export_tombstones = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(c.export.job_ttl_secs))
            .build();
        let limits = c
            .tenants
            .iter()
            .map(|(name, t)| (name.clone(), Arc::new(TenantLimits::new(&c.limits.overridden_by(&t.limits)))))
            .collect();
        let metrics = Arc::new(Metrics::new());
        Ok(Snapshot {
            limits,
            audit: Audit::new(&loaded, metrics.clone()),
            metrics,
            export_tombstones,
            marking: Marking { marker: c.tenancy.marker, system: c.tenancy.system.clone() },
            external_bases: c
                .tenancy
                .allowed_external_bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .collect(),
            page_ttl_secs: c.paging.token_ttl_secs,
            public_base,
            base_path,
            tenants,
            verifier,
            upstreams,
            capabilities,
            sealer,
            ref_cache,
            loaded,
        })
    }

    /// The upstream's capabilities, reading its CapabilityStatement now if not yet loaded.
    pub async fn capabilities(&self, upstream: &str) -> Option<Arc<Capabilities>> {
        let slot = self.capabilities.get(upstream)?;
        if let Some(c) = slot.load_full() {
            return Some(c);
        }
        let caps = Arc::new(self.fetch_capabilities(upstream).await.ok()?);
        slot.store(Some(caps.clone()));
        Some(caps)
    }

    /// Reads and checks an upstream's CapabilityStatement (also used by `/readyz`).
    pub async fn fetch_capabilities(&self, upstream: &str) -> Result<Capabilities, String> {
        let u = self.upstreams.get(upstream).ok_or("no such upstream")?;
        let answer =
            u.send(http::Method::GET, "metadata", http::HeaderMap::new(), None).await.map_err(|e| e.to_string())?;
        if answer.status != http::StatusCode::OK {
            return Err(format!("metadata answered {}", answer.status));
        }
        let caps = Capabilities::from_statement(answer.body.ok_or("empty metadata")?).map_err(|e| e.to_string())?;
        let param = self.marking.search_param();
        if !caps.supports_everywhere(param) {
            return Err(format!("the upstream does not support the {param} search parameter on every resource type"));
        }
        Ok(caps)
    }
}
