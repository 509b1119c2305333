//! Per-tenant workload limits: a cost-weighted rate limit (GCRA, `governor`), a cap on
//! requests in flight and a cap on upstream connections ([`Gate`]), so one heavy tenant cannot
//! starve the others on a shared upstream.
//!
//! One limiter and one semaphore per configured tenant (bounded memory). Each request costs
//! the weight of its interaction class (a transaction or batch: each entry the weight of its
//! own class, at least `bundle-entry`). The in-flight slot is taken as soon as the tenant is
//! known, before the body is read, and a tenant's open client connections may be capped
//! (`max_connections`, held by `connection::Slot`), so a tenant sending slow bodies spends
//! its own slots, never another tenant's. In `shadow` mode nothing is refused; what would
//! have been is counted and logged.
//!
//! With `limits.backend = "redis"` the rate is one limit across replicas (`global_rate`); when
//! Redis cannot decide in time, `redis.fail` picks this replica's own limiter (`local`) or a
//! refusal (`closed`). The in-flight, connection and upstream caps stay per replica: they
//! protect this process and its connections, which no other replica shares.
use crate::config::{LimitBackend, Limits, RedisFail};
use crate::global_rate::{Decision, GlobalRate};
use crate::metrics::Metrics;
use crate::shared_store::Store;
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use http::StatusCode;
use serde_json::Value;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Interaction classes that `weights` may price.
pub const CLASSES: &[&str] = &["read", "search", "write", "operation", "bundle-entry", "export"];

/// Default cost per class (a search costs the upstream more than a read; an export most).
const DEFAULT_WEIGHTS: &[(&str, u32)] =
    &[("read", 1), ("search", 5), ("write", 2), ("operation", 5), ("bundle-entry", 1), ("export", 50)];

/// What one request of `class` costs under limits `l` (its own weight, else the default).
pub fn weight(l: &crate::config::Limits, class: &str) -> u32 {
    let default = DEFAULT_WEIGHTS.iter().find(|(k, _)| *k == class).map_or(1, |(_, w)| *w);
    l.weights.get(class).copied().unwrap_or(default)
}

/// The class of one transaction or batch entry, from its `request`: `GET` of `Type/id` (or a
/// version) is a read, other `GET`s (searches, history) and `POST …/_search` are searches,
/// anything naming an operation (`$`) is an operation, other methods are writes.
fn entry_class(entry: &Value) -> &'static str {
    let request = entry.get("request");
    let method = request.and_then(|r| r.get("method")).and_then(Value::as_str).unwrap_or("");
    let url = request.and_then(|r| r.get("url")).and_then(Value::as_str).unwrap_or("");
    let (path, query) = url.split_once('?').map_or((url, None), |(p, q)| (p, Some(q)));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments.iter().any(|s| s.starts_with('$')) {
        return "operation";
    }
    match method {
        "GET" | "HEAD" => match (query, segments.as_slice()) {
            (None, [_, id]) if *id != "_history" => "read",
            (None, [_, _, "_history", _]) => "read",
            _ => "search",
        },
        "POST" if segments.last() == Some(&"_search") => "search",
        _ => "write",
    }
}

/// The class of an interaction (by its `Interaction::name`).
pub fn class_of(interaction: &str) -> &'static str {
    match interaction {
        "read" | "vread" | "page" | "export-status" | "export-file" | "export-cancel" | "metadata" => "read",
        "search-type" | "search-system" | "search-compartment" | "history-instance" | "history-type"
        | "history-system" => "search",
        "create" | "update" | "patch" | "delete" | "update-conditional" | "patch-conditional"
        | "delete-conditional" => "write",
        "bundle" => "bundle-entry",
        "export" => "export",
        _ => "operation",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("tenant request rate exceeded; retry after {} s", retry_after.as_secs())]
    Rate { retry_after: Duration, policy: String },
    #[error("this request costs {cost} units, more than the tenant's burst of {burst}")]
    TooCostly { cost: u32, burst: u32, policy: String },
    #[error("too many requests of this tenant in flight; retry shortly")]
    InFlight { status: StatusCode },
    #[error("this tenant has too many connections open; retry shortly")]
    Connections,
    #[error("the shared rate-limit state (Redis) cannot be reached, and this deployment refuses rather than limit per replica (redis.fail = \"closed\"); retry shortly")]
    BackendUnavailable,
}

impl LimitError {
    /// Headers a refusal carries (`Retry-After`, IETF `RateLimit` / `RateLimit-Policy`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            LimitError::Rate { retry_after, policy } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                vec![
                    ("retry-after", secs.max(1).to_string()),
                    ("ratelimit-policy", policy.clone()),
                    ("ratelimit", format!("\"tenant\";r=0;t={}", secs.max(1))),
                ]
            }
            LimitError::TooCostly { policy, .. } => vec![("ratelimit-policy", policy.clone())],
            LimitError::InFlight { .. } | LimitError::Connections | LimitError::BackendUnavailable => {
                vec![("retry-after", "1".into())]
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            LimitError::InFlight { status } => *status,
            LimitError::Connections | LimitError::BackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            LimitError::Rate { .. } | LimitError::TooCostly { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

type Limiter = RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, DefaultClock>;

/// One clock for every tenant's limiter: making one (a calibrated `quanta` clock) costs more
/// than all the rest of a tenant's limits (issue 20: ten thousand tenants).
static CLOCK: std::sync::LazyLock<DefaultClock> = std::sync::LazyLock::new(DefaultClock::default);

/// One tenant's limits, built from its effective config.
pub struct TenantLimits {
    rate: Option<(Limiter, u32, u32)>,
    /// With `limits.backend = "redis"` (and a rate): the limit across replicas; `rate` is then
    /// the fallback under `redis.fail = "local"`.
    global: Option<Arc<GlobalRate>>,
    in_flight: Option<(Arc<Semaphore>, StatusCode)>,
    connections: Option<Arc<Semaphore>>,
    upstream: Option<Gate>,
    shadow: bool,
    weights: BTreeMap<&'static str, u32>,
}

/// A tenant's cap on concurrent upstream exchanges: each holds a permit from the moment it is
/// sent until its answer (or streamed body) is finished. HTTP/1.1 carries one exchange per
/// connection, so this bounds the connections the tenant keeps busy on a shared upstream.
#[derive(Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    wait: Duration,
    shadow: bool,
}

/// What an upstream exchange holds while it runs (nothing when ungated or in shadow mode).
pub type GatePermit = Option<OwnedSemaphorePermit>;

impl Gate {
    /// Waits up to the configured time for a permit; `Err` when none came (in shadow mode: goes on).
    pub async fn enter(&self) -> Result<GatePermit, ()> {
        match tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ if self.shadow => {
                tracing::info!("upstream connection cap exceeded (shadow mode: not refused)");
                Ok(None)
            }
            _ => Err(()),
        }
    }
}

/// What an admitted request holds until it is done (its in-flight slot).
pub struct Admitted(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl TenantLimits {
    /// Limits kept in this process alone.
    pub fn new(l: &Limits) -> Self {
        Self::build(l, None, "")
    }

    /// `tenant`'s limits `l`; its rate kept in `store` when `l.backend` is `redis`.
    pub fn build(l: &Limits, store: Option<&Arc<Store>>, tenant: &str) -> Self {
        let rate = l.rate_per_second.and_then(NonZeroU32::new).map(|r| {
            let burst = l.burst.and_then(NonZeroU32::new).unwrap_or(r);
            (
                RateLimiter::direct_with_clock(Quota::per_second(r).allow_burst(burst), CLOCK.clone()),
                r.get(),
                burst.get(),
            )
        });
        let global = match (l.backend, store, &rate) {
            (Some(LimitBackend::Redis), Some(store), Some((_, r, burst))) => {
                Some(Arc::new(GlobalRate::new(store.clone(), tenant, *r, *burst)))
            }
            _ => None,
        };
        let in_flight = l.max_in_flight.map(|n| {
            let status = match l.in_flight_status {
                Some(429) => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            (Arc::new(Semaphore::new(n as usize)), status)
        });
        let weights = CLASSES.iter().map(|c| (*c, weight(l, c))).collect();
        let shadow = l.shadow.unwrap_or(false);
        let upstream = l.upstream_connections.map(|n| Gate {
            permits: Arc::new(Semaphore::new(n as usize)),
            wait: Duration::from_millis(l.upstream_wait_ms.unwrap_or(1000)),
            shadow,
        });
        let connections = l.max_connections.map(|n| Arc::new(Semaphore::new(n as usize)));
        TenantLimits { rate, global, in_flight, connections, upstream, shadow, weights }
    }

    /// The tenant's cap on upstream connections, if it has one.
    pub fn upstream_gate(&self) -> Option<Gate> {
        self.upstream.clone()
    }

    /// Takes the tenant's in-flight slot for one request (held until it is answered), or refuses.
    /// Called as soon as the tenant is known, before the body is read.
    pub fn enter(&self, tenant: &str, metrics: &Metrics) -> Result<Admitted, LimitError> {
        let permit = match &self.in_flight {
            Some((sem, status)) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.over(tenant, "in-flight", metrics, LimitError::InFlight { status: *status })?;
                    None
                }
            },
            None => None,
        };
        Ok(Admitted(permit))
    }

    /// Spends `cost` units of the tenant's rate, or refuses. Called once the request is known
    /// whole (its body read), so a Bundle is priced by its entries. With the Redis backend this
    /// awaits Redis only when this replica's lease is spent (`global_rate`), at most
    /// `redis.timeout_ms`.
    pub async fn charge(&self, tenant: &str, cost: u32, metrics: &Metrics) -> Result<(), LimitError> {
        let (Some((limiter, rate, burst)), Some(n)) = (&self.rate, NonZeroU32::new(cost)) else {
            return Ok(());
        };
        let policy = || format!("\"tenant\";q={burst};w={}", burst.div_ceil(*rate).max(1));
        if cost > *burst {
            let e = LimitError::TooCostly { cost, burst: *burst, policy: policy() };
            return self.over(tenant, "cost", metrics, e);
        }
        if let Some(global) = &self.global {
            match global.take(cost).await {
                Ok(Decision::Granted) => return Ok(()),
                Ok(Decision::Denied(retry_after)) => {
                    return self.over(tenant, "rate", metrics, LimitError::Rate { retry_after, policy: policy() })
                }
                Err(e) => {
                    global.store().fell_back(&e);
                    if global.store().config().fail == RedisFail::Closed {
                        return self.over(tenant, "backend", metrics, LimitError::BackendUnavailable);
                    }
                }
            }
        }
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let retry_after = not_until.wait_time_from(CLOCK.now());
                self.over(tenant, "rate", metrics, LimitError::Rate { retry_after, policy: policy() })
            }
            Err(_) => {
                self.over(tenant, "cost", metrics, LimitError::TooCostly { cost, burst: *burst, policy: policy() })
            }
        }
    }

    /// What a request of `interaction` costs: its class's weight; for a transaction or batch
    /// Bundle the sum over its entries, each costing its own class (a search entry costs a
    /// search), at least the `bundle-entry` weight.
    pub fn cost(&self, interaction: &str, body: Option<&Value>) -> u32 {
        let class = class_of(interaction);
        if class != "bundle-entry" {
            return self.weights[class];
        }
        let entries = body.and_then(|b| b.get("entry")).and_then(Value::as_array);
        let floor = self.weights["bundle-entry"];
        let cost = entries.into_iter().flatten().map(|e| self.weights[entry_class(e)].max(floor));
        cost.fold(0u32, u32::saturating_add).max(floor)
    }

    /// The tenant's cap on open client connections, if it has one (see `connection::Slot`).
    pub fn connections(&self) -> Option<(&Arc<Semaphore>, bool)> {
        self.connections.as_ref().map(|c| (c, self.shadow))
    }

    /// Counts a limit hit; refuses unless in shadow mode.
    fn over(&self, tenant: &str, limit: &str, metrics: &Metrics, e: LimitError) -> Result<(), LimitError> {
        let mode = if self.shadow { "shadow" } else { "enforced" };
        metrics.rate_limited.with_label_values(&[metrics.tenant(tenant), limit, mode]).inc();
        if self.shadow {
            tracing::info!(tenant, limit, "limit exceeded (shadow mode: not refused)");
            Ok(())
        } else {
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32) -> Limits {
        Limits { rate_per_second: Some(rate), burst: Some(burst), ..Limits::default() }
    }

    #[tokio::test]
    async fn weighted_costs_spend_the_burst() {
        let m = Metrics::new();
        let l = TenantLimits::new(&limits(1, 10));
        assert!(l.charge("t", l.cost("search-type", None), &m).await.is_ok()); // 5
        assert!(l.charge("t", l.cost("search-type", None), &m).await.is_ok()); // 10
        let e = l.charge("t", l.cost("read", None), &m).await.expect_err("the burst is spent");
        assert!(matches!(e, LimitError::Rate { .. }));
        assert!(e.headers().iter().any(|(k, v)| *k == "retry-after" && v.parse::<u64>().unwrap() >= 1));
        // A Bundle of 11 entries can never fit a burst of 10.
        let l = TenantLimits::new(&limits(1, 10));
        let entry = serde_json::json!({"request": {"method": "GET", "url": "Patient/1"}});
        let bundle = serde_json::json!({"entry": vec![entry; 11]});
        assert_eq!(l.cost("bundle", Some(&bundle)), 11);
        assert!(matches!(l.charge("t", 11, &m).await, Err(LimitError::TooCostly { .. })));
    }

    #[test]
    fn bundle_entries_cost_their_own_class() {
        let l = TenantLimits::new(&limits(1, 10));
        let entries = |method: &str, url: &str, n: usize| serde_json::json!({"entry": vec![serde_json::json!({"request": {"method": method, "url": url}}); n]});
        assert_eq!(l.cost("bundle", Some(&entries("GET", "Patient?name=x", 40))), 200);
        assert_eq!(l.cost("bundle", Some(&entries("GET", "Patient", 2))), 10);
        assert_eq!(l.cost("bundle", Some(&entries("GET", "Patient/1/_history", 1))), 5);
        assert_eq!(l.cost("bundle", Some(&entries("GET", "Patient/1/_history/2", 1))), 1);
        assert_eq!(l.cost("bundle", Some(&entries("POST", "Patient/_search", 1))), 5);
        assert_eq!(l.cost("bundle", Some(&entries("POST", "Patient", 3))), 6);
        assert_eq!(l.cost("bundle", Some(&entries("GET", "Patient/1/$everything", 1))), 5);
        assert_eq!(l.cost("bundle", Some(&entries("DELETE", "Patient?name=x", 1))), 2);
        assert_eq!(l.cost("bundle", Some(&serde_json::json!({"entry": [{}]}))), 2);
        assert_eq!(l.cost("bundle", Some(&serde_json::json!({}))), 1);
        assert_eq!(l.cost("read", None), 1);
    }

    #[tokio::test]
    async fn shadow_mode_counts_but_admits() {
        let m = Metrics::new();
        let l = TenantLimits::new(&Limits { shadow: Some(true), ..limits(1, 1) });
        for _ in 0..5 {
            assert!(l.enter("t", &m).is_ok() && l.charge("t", 1, &m).await.is_ok());
        }
        assert_eq!(m.rate_limited.with_label_values(&["t", "rate", "shadow"]).get(), 4);
    }

    #[test]
    fn in_flight_cap_frees_on_drop() {
        let m = Metrics::new();
        let l = TenantLimits::new(&Limits { max_in_flight: Some(1), in_flight_status: Some(429), ..Limits::default() });
        let first = l.enter("t", &m).unwrap();
        let e = l.enter("t", &m).err().unwrap();
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        drop(first);
        assert!(l.enter("t", &m).is_ok());
    }
}
