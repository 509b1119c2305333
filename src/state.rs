//! The running configuration as one immutable snapshot: tenants, keys, upstream clients,
//! capabilities, sealing key and caches, all built from a validated config in [`Snapshot::build`].
//!
//! A reload builds a new snapshot with [`Snapshot::rebuild`], which carries over what must
//! outlive a config change: the metrics registry, cancelled export jobs, a process-lifetime
//! sealing key, and — where their config is unchanged — upstream connection pools with their
//! capabilities, each tenant's limiter state and the audit writer. Everything derived from keys
//! or tenant status (the verified-token cache, reference look-ups) starts afresh.
use crate::audit::Audit;
use crate::config::{ConfigError, Loaded};
use crate::fhir::capabilities::Capabilities;
use crate::identity::Verifier;
use crate::listener_tls::ListenerTls;
use crate::metrics::Metrics;
use crate::seal_keys::Seals;
use crate::shared_store::Store;
use crate::tenancy::{Marking, Tenant};
use crate::tenant_runtime::{Runtimes, TenantRuntime};
use crate::upstream::Upstream;
use crate::upstream_link::Link;
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
    /// Its scheme://host:port (request paths already carry the base path).
    pub public_origin: String,
    pub marking: Marking,
    /// Shared with the verifier.
    pub tenants: Arc<HashMap<String, Arc<Tenant>>>,
    pub verifier: Verifier,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// The upstreams some tenant uses (computed once: `metadata` and `/readyz` ask per request).
    pub upstreams_in_use: std::collections::BTreeSet<String>,
    /// Per upstream, filled in once its CapabilityStatement has been read.
    pub capabilities: HashMap<String, ArcSwapOption<Capabilities>>,
    pub seals: Arc<Seals>,
    pub page_ttl_secs: u64,
    pub external_bases: Vec<String>,
    /// Positive reference look-ups: (tenant, `Type/upstream-id`).
    pub ref_cache: moka::future::Cache<(String, String), ()>,
    /// Export jobs known cancelled (ids from their sealed handles): those cancelled through this
    /// process, and those another replica cancelled that a check found in `shared` (`bulk::cancelled`).
    pub export_tombstones: moka::future::Cache<String, ()>,
    /// The Redis replicas share state through (`[redis]`): global limits, export cancellations.
    pub shared: Option<Arc<Store>>,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<Audit>,
    /// Per tenant served so far: its limiter state and its (gated) upstream, made on its first
    /// request ([`Snapshot::runtime`]).
    pub runtimes: Runtimes,
    /// TLS on the public listener (`None`: plain HTTP); each connection takes the one current
    /// when it is accepted.
    pub tls: Option<Arc<ListenerTls>>,
    /// The admin API's bearer token (`lifecycle.admin_token_file`, trimmed); `None`: the
    /// `/tenants` endpoints do not exist.
    pub admin_token: Option<Arc<str>>,
    /// Requests being served under this snapshot: a reload that must know when the old
    /// configuration no longer acts (a move's write freeze) waits for it to reach 0
    /// (`Live::reload_and_drain`).
    pub in_flight: InFlight,
}

/// A count of the requests holding a snapshot.
#[derive(Debug, Default)]
pub struct InFlight(std::sync::atomic::AtomicUsize);

/// Counts one request until dropped.
pub struct Serving<'a>(&'a InFlight);

impl InFlight {
    pub fn enter(&self) -> Serving<'_> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Serving(self)
    }

    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Snapshot {
    /// Builds everything the config describes; fails, naming the key, on anything unusable.
    pub fn build(loaded: Loaded) -> Result<Self, ConfigError> {
        Self::assemble(loaded, None)
    }

    /// Builds the snapshot for a reloaded config, carrying state over from `prev` (see above).
    /// Refuses changes that need a restart (the listen addresses, the worker count).
    pub fn rebuild(loaded: Loaded, prev: &Snapshot) -> Result<Self, ConfigError> {
        let (new, old) = (&loaded.config, &prev.loaded.config);
        if new.server.listen != old.server.listen {
            return Err(ConfigError::invalid("server.listen", "cannot change while running; restart fhir-fence"));
        }
        if new.server.workers != old.server.workers {
            return Err(ConfigError::invalid("server.workers", "cannot change while running; restart fhir-fence"));
        }
        if new.admin.listen != old.admin.listen {
            return Err(ConfigError::invalid("admin.listen", "cannot change while running; restart fhir-fence"));
        }
        Self::assemble(loaded, Some(prev))
    }

    fn assemble(loaded: Loaded, prev: Option<&Snapshot>) -> Result<Self, ConfigError> {
        let c = &loaded.config;
        let old = prev.map(|p| &p.loaded.config);
        // A tenant's key generation only goes up while running: lowering it (a rolled-back
        // file) would open the tokens raising it revoked.
        for (name, t) in &c.tenants {
            if let Some(was) = prev.and_then(|p| p.tenants.get(name)).map(|t| t.key_generation) {
                if t.key_generation < was {
                    return Err(ConfigError::invalid(
                        format!("tenants.{name}.key_generation"),
                        format!("may only go up (it is {was}): a lower one would bring revoked tokens back"),
                    ));
                }
            }
        }
        let tenants: Arc<HashMap<String, Arc<Tenant>>> = Arc::new(
            c.tenants
                .iter()
                .map(|(name, t)| {
                    let tenant = Tenant {
                        name: name.clone(),
                        prefix: t.prefix.clone(),
                        upstream: t.upstream.clone(),
                        status: t.status,
                        operations: t.operations.clone(),
                        destinations: t.subscription_destinations.clone(),
                        key_generation: t.key_generation,
                        enforcement: t.enforcement,
                    };
                    (name.clone(), Arc::new(tenant))
                })
                .collect(),
        );
        let verifier = Verifier::build(&loaded, &tenants, prev.map(|p| &p.verifier))?;
        let upstreams_in_use = c.tenants.values().map(|t| t.upstream.clone()).collect();
        // An upstream whose settings did not change keeps its connection pool and capabilities.
        // Each upstream's TLS and credentials, from the files the config names.
        let links: HashMap<&String, Arc<Link>> = c
            .upstreams
            .iter()
            .map(|(name, u)| Ok((name, Arc::new(Link::build(&loaded, name, u)?))))
            .collect::<Result<_, ConfigError>>()?;
        let unchanged_upstream = |name: &str| {
            let same = old.is_some_and(|o| {
                o.upstreams.get(name) == c.upstreams.get(name)
                    && o.server.max_upstream_body_bytes == c.server.max_upstream_body_bytes
                    && o.tenancy == c.tenancy
            }) && prev.and_then(|p| p.upstreams.get(name)).map(|u| &u.link.files)
                == links.get(&name.to_owned()).map(|l| &l.files);
            prev.filter(|_| same)
        };
        let upstreams: HashMap<String, Arc<Upstream>> = c
            .upstreams
            .iter()
            .map(|(name, u)| {
                let kept = unchanged_upstream(name).and_then(|p| p.upstreams.get(name).cloned());
                (
                    name.clone(),
                    kept.unwrap_or_else(|| {
                        Arc::new(Upstream::new(name, u, c.server.max_upstream_body_bytes, links[name].clone()))
                    }),
                )
            })
            .collect();
        let capabilities = c
            .upstreams
            .keys()
            .map(|n| {
                let kept = unchanged_upstream(n).and_then(|p| p.capabilities.get(n)).and_then(|slot| slot.load_full());
                (n.clone(), ArcSwapOption::new(kept))
            })
            .collect();
        let seals = match (&c.paging.key_file, prev) {
            (Some(p), _) => Arc::new(
                Seals::from_key_file(&loaded.read_file("paging.key_file", p)?)
                    .map_err(|e| ConfigError::invalid("paging.key_file", e.to_string()))?,
            ),
            // A process-lifetime key stays, so paging links and export handles survive a reload.
            (None, Some(p)) if p.loaded.config.paging.key_file.is_none() => p.seals.clone(),
            (None, _) => Arc::new(Seals::random()),
        };
        let public_base = loaded.public_base.as_str().trim_end_matches('/').to_owned();
        let base_path = loaded.public_base.path().trim_end_matches('/').to_owned();
        let public_origin = loaded.public_base.origin().ascii_serialization();
        let ref_cache = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(c.tenancy.reference_cache_ttl_secs))
            .build();
        // A cancelled job stays cancelled across reloads.
        let export_tombstones = match prev {
            Some(p) => p.export_tombstones.clone(),
            None => moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(c.export.job_ttl_secs))
                .build(),
        };
        let metrics = prev.map(|p| p.metrics.clone()).unwrap_or_else(|| Arc::new(Metrics::new()));
        // The Redis connection outlives reloads that leave `[redis]` as it was.
        let shared = match (&c.redis, prev) {
            (Some(r), Some(p)) if p.loaded.config.redis.as_ref() == Some(r) => p.shared.clone(),
            (Some(r), _) => {
                Some(Arc::new(Store::new(r, &metrics).map_err(|e| ConfigError::invalid("redis.url", e.to_string()))?))
            }
            (None, _) => None,
        };
        let same_store = prev.is_some_and(|p| match (&p.shared, &shared) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        });
        // A served tenant whose effective limits (and store) did not change keeps its limiter
        // state (its lease) and in-flight count; the others get theirs on their first request.
        let runtimes = match prev {
            Some(p) if same_store => Runtimes::carried(&p.runtimes, &p.loaded.config, c, &upstreams),
            _ => Runtimes::default(),
        };
        let audit = match prev {
            Some(p) if p.loaded.config.audit == c.audit && p.loaded.dir == loaded.dir => p.audit.clone(),
            _ => Arc::new(Audit::new(&loaded, metrics.clone())),
        };
        let tls = ListenerTls::build(&loaded, prev.and_then(|p| p.tls.as_ref()))?;
        let admin_token = match &c.lifecycle.admin_token_file {
            Some(f) => {
                let key = "lifecycle.admin_token_file";
                let text = String::from_utf8(loaded.read_file(key, f)?)
                    .map_err(|_| ConfigError::invalid(key, "the token must be UTF-8 text"))?;
                let token = text.trim();
                if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(ConfigError::invalid(key, "the token must be one word of at least 16 characters"));
                }
                Some(Arc::from(token))
            }
            None => None,
        };
        // Last, once nothing can fail: a refused reload leaves the metrics as they were.
        metrics.set_tenant_labels(c.metrics.tenant_labels);
        Ok(Snapshot {
            admin_token,
            in_flight: InFlight::default(),
            tls,
            runtimes,
            audit,
            metrics,
            export_tombstones,
            shared,
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
            public_origin,
            tenants,
            upstreams_in_use,
            verifier,
            upstreams,
            capabilities,
            seals,
            ref_cache,
            loaded,
        })
    }

    /// `tenant`'s limits and upstream, made on its first request under this snapshot (or
    /// carried over from the previous one); `None` for a tenant not configured.
    pub fn runtime(&self, tenant: &str) -> Option<Arc<TenantRuntime>> {
        self.runtimes.get(tenant, &self.loaded.config, &self.upstreams, self.shared.as_ref())
    }

    /// Where `tenant`'s AuditEvents go: its own (shared, ungated) upstream.
    pub fn audit_destination(&self, tenant: &str) -> Option<crate::audit::fhir::Destination> {
        let tenant = self.tenants.get(tenant)?.clone();
        let upstream = self.upstreams.get(&tenant.upstream)?.clone();
        Some(crate::audit::fhir::Destination { tenant, upstream, marking: self.marking.clone() })
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
        let param = self.marking.search_param();
        let caps = Capabilities::from_statement(answer.body.ok_or("empty metadata")?)
            .and_then(|c| c.scoped_by(param))
            .map_err(|e| e.to_string())?;
        if !caps.unscoped().is_empty() {
            tracing::warn!(upstream, types = ?caps.unscoped(), "the upstream cannot search these types by {param}: their searches are refused");
        }
        Ok(caps)
    }
}
