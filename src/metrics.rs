//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! Per tenant: requests (by interaction and status), latency, requests in flight, Bundle entries
//! and NDJSON lines blocked on the way out (each one a leak the outbound check stopped — so they
//! get their own series, impossible to miss). Refusals by reason and upstream failures by kind.
//! Tenants in observe mode: their requests, and what enforcement would have refused or dropped.
//! Tenant label values are bounded by `metrics.tenant_labels` (`tenant_labels`): every value a
//! series gets for its `tenant` label goes through [`Metrics::tenant`], which answers the
//! tenant's name or `other`. Unauthenticated requests count as tenant `-`.
pub mod tenant_labels;

use crate::config::TenantLabels;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

/// `fhir_fence_jwks_refreshes_total{issuer, result}`: `ok`, `failed`, and `skipped` (an unknown
/// kid inside a back-off after failures, answered from the cache).
pub static JWKS_REFRESHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new("fhir_fence_jwks_refreshes_total", "Key refreshes from identity providers, by issuer and result"),
        &["issuer", "result"],
    )
    .expect("valid metric")
});

pub static INTROSPECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "fhir_fence_introspections_total",
            "Opaque tokens sent to an identity provider's introspection endpoint, by issuer and result",
        ),
        &["issuer", "result"],
    )
    .expect("valid metric")
});

/// `fhir_fence_upstream_tokens_total{upstream, result}`: the tokens fhir-fence obtains for
/// upstreams (`upstream_token`): `ok`, `failed`, `skipped` (a request inside a back-off after a
/// failure, answered at once) and `rejected` (the upstream refused the token: 401).
pub static UPSTREAM_TOKENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "fhir_fence_upstream_tokens_total",
            "Access tokens fetched for upstreams with OAuth2 client credentials, by upstream and result",
        ),
        &["upstream", "result"],
    )
    .expect("valid metric")
});

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub refused: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub entries_dropped: IntCounterVec,
    pub ndjson_lines_dropped: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub audit_dropped: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub audit_events_written: IntCounterVec,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounterVec,
    pub observed_requests: IntCounterVec,
    pub observed_differences: IntCounterVec,
    labels: tenant_labels::Labeller,
    /// Decisions taken without Redis (`shared_store`), by reason: `timeout`, `error`, `down`.
    pub limit_backend_fallback: IntCounterVec,
    /// 1 while the shared Redis answers (or is not configured), 0 while it is unreachable.
    pub redis_up: IntGauge,
}

impl Metrics {
    /// With the default `metrics.tenant_labels`.
    pub fn new() -> Self {
        Self::with_tenant_labels(TenantLabels::DEFAULT)
    }

    pub fn with_tenant_labels(rule: TenantLabels) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let requests = counter(
            "fhir_fence_requests_total",
            "FHIR requests answered, by tenant, interaction and status",
            &["tenant", "interaction", "status"],
        );
        let refused = counter(
            "fhir_fence_refused_total",
            "requests refused by fhir-fence (not by the upstream), by tenant and reason",
            &["tenant", "reason"],
        );
        let upstream_errors = counter(
            "fhir_fence_upstream_errors_total",
            "upstream exchanges that failed (connect, timeout, too large, not JSON, bad JSON), by tenant",
            &["tenant", "kind"],
        );
        let entries_dropped = counter(
            "fhir_fence_entries_dropped_total",
            "Bundle entries blocked by the outbound check (not provably the caller's), by tenant",
            &["tenant"],
        );
        let ndjson_lines_dropped = counter(
            "fhir_fence_ndjson_lines_dropped_total",
            "export file lines blocked by the outbound check, by tenant and reason",
            &["tenant", "reason"],
        );
        let rate_limited = counter(
            "fhir_fence_rate_limited_total",
            "requests over a tenant limit (rate, cost, in-flight), refused (enforced) or only counted (shadow)",
            &["tenant", "limit", "mode"],
        );
        let audit_dropped = counter(
            "fhir_fence_audit_dropped_total",
            "audit records not written (queue full, sink failed; fhir-…: the AuditEvent sink)",
            &["reason"],
        );
        let audit_events_written = counter(
            "fhir_fence_audit_events_written_total",
            "AuditEvents the tenant's upstream accepted, by tenant",
            &["tenant"],
        );
        let config_reloads = counter(
            "fhir_fence_config_reloads_total",
            "configuration reloads (file change, SIGHUP, admin endpoint): ok, or failed and the old config kept",
            &["result"],
        );
        let connections_refused = counter(
            "fhir_fence_connections_refused_total",
            "client connections answered 503 and closed because server.max_connections were open",
            &["listener"],
        );
        let observed_requests = counter(
            "fhir_fence_observed_requests_total",
            "requests of tenants in observe mode, passed through to their legacy upstream, by tenant",
            &["tenant"],
        );
        let observed_differences = counter(
            "fhir_fence_observed_differences_total",
            "what enforcement would have refused (stage request) or dropped from the answer (stage response) for a tenant in observe mode, by tenant, stage and reason",
            &["tenant", "stage", "reason"],
        );
        let limit_backend_fallback = counter(
            "fhir_fence_limit_backend_fallback_total",
            "rate-limit and export-cancellation decisions taken without the shared Redis (redis.fail), by reason: timeout, error, down (not asked while unreachable)",
            &["reason"],
        );
        let redis_up = IntGauge::new(
            "fhir_fence_redis_up",
            "1 while the shared Redis ([redis]) answers, 0 while it is unreachable",
        )
        .expect("valid metric");
        registry.register(Box::new(redis_up.clone())).expect("registered once");
        let connections_open =
            IntGauge::new("fhir_fence_connections_open", "client connections open on the public listener")
                .expect("valid metric");
        registry.register(Box::new(connections_open.clone())).expect("registered once");
        let latency = HistogramVec::new(
            HistogramOpts::new("fhir_fence_request_duration_seconds", "time to answer a FHIR request, by tenant")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["tenant"],
        )
        .expect("valid metric");
        registry.register(Box::new(latency.clone())).expect("registered once");
        let in_flight =
            IntGaugeVec::new(Opts::new("fhir_fence_in_flight", "FHIR requests being handled, by tenant"), &["tenant"])
                .expect("valid metric");
        registry.register(Box::new(in_flight.clone())).expect("registered once");
        // Counted where the keys are fetched (`identity::remote`), process-wide.
        registry.register(Box::new(JWKS_REFRESHES.clone())).expect("registered once");
        registry.register(Box::new(INTROSPECTIONS.clone())).expect("registered once");
        registry.register(Box::new(UPSTREAM_TOKENS.clone())).expect("registered once");
        Metrics {
            registry,
            requests,
            latency,
            in_flight,
            refused,
            upstream_errors,
            entries_dropped,
            ndjson_lines_dropped,
            rate_limited,
            audit_dropped,
            config_reloads,
            audit_events_written,
            connections_open,
            connections_refused,
            observed_requests,
            observed_differences,
            labels: tenant_labels::Labeller::new(rule),
            limit_backend_fallback,
            redis_up,
        }
    }

    /// The `tenant` label value for `tenant` (its name, or `other`): every tenant-labelled
    /// series is written through this.
    pub fn tenant<'a>(&self, tenant: &'a str) -> &'a str {
        self.labels.label(tenant)
    }

    /// `metrics.tenant_labels` from now on (a reload; the metrics outlive snapshots).
    pub fn set_tenant_labels(&self, rule: TenantLabels) {
        self.labels.set_rule(rule);
    }

    /// Counts a request in flight for `tenant` until the guard is dropped.
    pub fn in_flight(&self, tenant: &str) -> InFlight {
        let gauge = self.in_flight.with_label_values(&[self.tenant(tenant)]);
        gauge.inc();
        InFlight(gauge)
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encoding to a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements the in-flight gauge when the request is done (also on early returns).
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_appear_with_their_labels() {
        let m = Metrics::new();
        m.requests.with_label_values(&["acme", "read", "200"]).inc();
        {
            let _g = m.in_flight("acme");
            assert_eq!(m.in_flight.with_label_values(&["acme"]).get(), 1);
        }
        assert_eq!(m.in_flight.with_label_values(&["acme"]).get(), 0);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"fhir_fence_requests_total{interaction="read",status="200",tenant="acme"} 1"#),
            "{text}"
        );
    }
}
