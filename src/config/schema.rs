//! The config file's shape, as serde structs. Every struct denies unknown keys so a typo fails loudly.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub admin: Admin,
    pub tenancy: Tenancy,
    #[serde(default)]
    pub paging: Paging,
    #[serde(default)]
    pub export: Export,
    /// Workload limits every tenant gets unless its own `limits` table overrides a key.
    #[serde(default)]
    pub limits: Limits,
    /// The Redis server replicas share state through (`shared_store`): global rate limits with
    /// `limits.backend = "redis"`, and export cancellations whenever it is set.
    pub redis: Option<Redis>,
    #[serde(default)]
    pub audit: Audit,
    pub upstreams: BTreeMap<String, Upstream>,
    pub issuers: BTreeMap<String, Issuer>,
    /// Tenants defined in the config file; `lifecycle.tenants_dir` adds those defined one per
    /// file (`load` merges both here, so nothing downstream tells them apart).
    #[serde(default)]
    pub tenants: BTreeMap<String, Tenant>,
    /// Tenants as data: where tenant files and the lifecycle record live (`lifecycle`).
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// What `/metrics` exposes.
    #[serde(default)]
    pub metrics: MetricsSettings,
}

/// `[metrics]`: what the Prometheus endpoint exposes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Which tenants get a `tenant` label value of their own (`metrics::tenant_labels`): `"all"`,
    /// `"top N"` or `"none"`; the others are counted under `tenant="other"`. Default `"top 100"`.
    #[serde(default)]
    pub tenant_labels: TenantLabels,
}

/// `metrics.tenant_labels`, written as a string and parsed (so a wrong value fails at load,
/// naming the key): `all`, `top N` (N ≥ 1) or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum TenantLabels {
    /// Every tenant its own label value (unbounded: one set of series per tenant that sent a request).
    All,
    /// At most N tenants their own label value: the first N that send a request, for the life
    /// of the process.
    Top(usize),
    /// No tenant names: everything under `other`.
    None,
}

impl TenantLabels {
    /// The default: bounded, and the same as `all` for up to 100 tenants.
    pub const DEFAULT: TenantLabels = TenantLabels::Top(100);
}

impl Default for TenantLabels {
    fn default() -> Self {
        TenantLabels::DEFAULT
    }
}

impl TryFrom<String> for TenantLabels {
    type Error = String;

    fn try_from(v: String) -> Result<Self, String> {
        let bad = || format!("{v:?}: expected \"all\", \"top N\" (N from 1) or \"none\"");
        match v.as_str() {
            "all" => Ok(TenantLabels::All),
            "none" => Ok(TenantLabels::None),
            _ => {
                let digits = v.strip_prefix("top ").filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
                match digits.map(str::parse::<usize>) {
                    Some(Ok(n)) if n >= 1 => Ok(TenantLabels::Top(n)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

/// `[lifecycle]`: tenants as files, the lifecycle record, the admin API for state changes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    /// A directory (relative to the config file) of `NAME.toml` files, each holding one
    /// tenant's table as `[tenants.NAME]` would; an added, edited or removed file is a reload.
    pub tenants_dir: Option<PathBuf>,
    /// Where the lifecycle record (`lifecycle.jsonl`) and operation state are kept (relative to
    /// the config file); not inside `tenants_dir`. Needed to change tenant states.
    pub state_dir: Option<PathBuf>,
    /// A file holding the admin API's bearer token; without it the `/tenants` endpoints do not exist.
    pub admin_token_file: Option<PathBuf>,
    /// How long a `deleting` tenant can still be undeleted before its data may be purged.
    #[serde(default = "default_delete_grace")]
    pub delete_grace_secs: u64,
    /// The `Retry-After` (seconds) a `read-only` tenant's writes are answered with.
    #[serde(default = "default_read_only_retry")]
    pub read_only_retry_after_secs: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            tenants_dir: None,
            state_dir: None,
            admin_token_file: None,
            delete_grace_secs: default_delete_grace(),
            read_only_retry_after_secs: default_read_only_retry(),
        }
    }
}

/// The public listener: where FHIR clients connect.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub listen: String,
    /// The FHIR base URL clients use (`http://host:port/fhir`); every URL leaving fhir-fence is built on it.
    pub public_base: String,
    /// Request bodies above this are refused with 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Transaction and batch Bundles with more entries are refused (400).
    #[serde(default = "default_max_bundle_entries")]
    pub max_bundle_entries: usize,
    /// Upstream answers above this are refused with 502 (fail closed, nothing partial leaves).
    #[serde(default = "default_max_upstream_body")]
    pub max_upstream_body_bytes: usize,
    /// How long a request body may take before it must keep up `min_body_bytes_per_sec`: a body
    /// must arrive within `body_timeout_ms` plus one second per `min_body_bytes_per_sec` bytes
    /// received so far, else 408 (a client trickling its body holds a connection no longer).
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// The slowest average rate a request body may arrive at once `body_timeout_ms` is spent.
    #[serde(default = "default_min_body_rate")]
    pub min_body_bytes_per_sec: u64,
    /// Client connections open at once; one more is answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Worker threads serving clients (`workers.rs`); by default one per core. Needs a restart.
    #[serde(default)]
    pub workers: Option<usize>,
    /// TLS on the public listener (`listener_tls.rs`); without it, plain HTTP (a sidecar behind
    /// a TLS-terminating ingress or mesh).
    pub tls: Option<ListenerTls>,
}

/// TLS on the public listener. The certificate and key files are followed on disk (re-read
/// every 2 s); `client_ca_file` is read like the config (an edit is a reload).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain, the server's own first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates that issue client certificates: clients are asked for one.
    pub client_ca_file: Option<PathBuf>,
    /// `optional` (default): a client may connect without a certificate (and use a token);
    /// `required`: the handshake fails without a certificate of `client_ca_file`'s CAs.
    #[serde(default)]
    pub client_certs: ClientCerts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCerts {
    #[default]
    Optional,
    Required,
}

/// What a tenant's client certificate is for (`tenants.NAME.client_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Every request of the tenant needs its certificate and a token of the same tenant.
    #[default]
    CertificateAndToken,
    /// The certificate alone identifies the tenant (service to service); a token, if sent,
    /// must be the same tenant's.
    Certificate,
}

/// The admin listener: health, readiness (and later metrics). Never exposes FHIR data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Marker {
    /// The tenant coding goes into `meta.tag`; searches are scoped with `_tag`.
    Tag,
    /// The tenant coding goes into `meta.security`; searches are scoped with `_security`.
    Security,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenancy {
    pub marker: Marker,
    /// The coding system of the tenant marker (an absolute URI).
    pub system: String,
    /// Absolute reference bases, other than fhir-fence's own, that resources may point at.
    #[serde(default)]
    pub allowed_external_bases: Vec<String>,
    /// URL prefixes (ending in `/`) of shared definitions: canonicals under them are written and
    /// validated as they are (`scope::canonicals`); any other canonical URL must name a
    /// definition of the caller's own.
    #[serde(default)]
    pub shared_canonical_bases: Vec<String>,
    /// How long a successful reference look-up is trusted.
    #[serde(default = "default_ref_ttl")]
    pub reference_cache_ttl_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    /// 32 random bytes, base64, shared by every replica so any of them can open a page token.
    /// Without it, a random key is made at start-up (tokens then die with the process).
    pub key_file: Option<PathBuf>,
    #[serde(default = "default_page_ttl")]
    pub token_ttl_secs: u64,
}

impl Default for Paging {
    fn default() -> Self {
        Paging { key_file: None, token_ttl_secs: default_page_ttl() }
    }
}

/// Where the per-request audit records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuditSink {
    /// JSON lines on standard output, beside the logs (`"type": "audit"`).
    #[default]
    Stdout,
    /// JSON lines appended to `audit.file`.
    File,
    /// No audit trail (tests, or when another sink is added later).
    None,
}

/// The audit trail: one record per FHIR request, never a resource body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    #[serde(default)]
    pub sink: AuditSink,
    /// The file for `sink = "file"` (relative to the config file).
    pub file: Option<PathBuf>,
    /// Records waiting to be written; when full, records are dropped (and counted), requests never wait.
    #[serde(default = "default_audit_queue")]
    pub queue: usize,
    /// Also write each record as a FHIR `AuditEvent` on the tenant's upstream, readable by the
    /// tenant through fhir-fence (`[audit.fhir]`; absent: no AuditEvents).
    pub fhir: Option<AuditFhir>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit { sink: AuditSink::default(), file: None, queue: default_audit_queue(), fhir: None }
    }
}

/// The AuditEvent sink: batch Bundles per tenant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFhir {
    /// AuditEvents per batch Bundle.
    #[serde(default = "default_audit_batch")]
    pub batch: usize,
    /// The longest a record waits for its batch to fill, in milliseconds.
    #[serde(default = "default_audit_flush")]
    pub flush_ms: u64,
}

/// Bulk Data export: job handles are sealed with the paging key (`paging.key_file`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// How long a job handle (and the file URLs of its manifest) stays valid.
    #[serde(default = "default_job_ttl")]
    pub job_ttl_secs: u64,
    /// An NDJSON line longer than this ends a download with an error (nothing partial is sent).
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
}

impl Default for Export {
    fn default() -> Self {
        Export { job_ttl_secs: default_job_ttl(), max_line_bytes: default_max_line() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// The upstream FHIR base, e.g. `http://127.0.0.1:8090/fhir` (a sidecar's loopback) or
    /// `https://fhir.internal.example/fhir`.
    pub base_url: String,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// Idle keep-alive connections kept per upstream.
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    /// With an `https://` base: PEM CA certificates that verify the upstream (default: the Web
    /// PKI roots). The upstream's name is always verified against its certificate.
    pub ca_file: Option<PathBuf>,
    /// With an `https://` base: a PEM client certificate chain and its key, for an upstream
    /// that asks for one (both or neither).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// A file holding a bearer token fhir-fence sends to this upstream on every request (as
    /// `Authorization: Bearer …`; a client's own credentials never reach an upstream).
    pub bearer_file: Option<PathBuf>,
    /// A token fhir-fence obtains itself with OAuth2 client credentials (RFC 6749 §4.4) and
    /// sends as `Authorization: Bearer …` (instead of `bearer_file`).
    pub oauth2: Option<UpstreamOAuth2>,
    /// A legacy server: its data was not written through fhir-fence (no tenant coding, plain
    /// ids). Only `enforcement = "observe"` tenants may use it (never an enforced one), and
    /// `fhir-fence tenant adopt --from` reads from it (paper §7.1).
    #[serde(default)]
    pub legacy: bool,
}

/// fhir-fence's own OAuth2 client at the upstream's authorization server (`upstream_token`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOAuth2 {
    /// The authorization server's token endpoint (`https://…`).
    pub token_endpoint: String,
    pub client_id: String,
    /// A file holding the client's secret.
    pub client_secret_file: PathBuf,
    /// How the secret is sent (RFC 6749 §2.3.1): `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub client_auth: IntrospectionAuth,
    /// The `scope` asked for (space-separated), if the server wants one.
    pub scope: Option<String>,
    /// The RFC 8707 `resource` asked for: the upstream as the authorization server knows it
    /// (the token's audience).
    pub resource: Option<String>,
    /// The `audience` asked for, for an authorization server that wants it instead of
    /// `resource` (Auth0's API identifier; not a standard parameter).
    pub audience: Option<String>,
    /// PEM CA certificates that verify the token endpoint (default: the Web PKI roots; not the
    /// upstream's `ca_file`, which trusts the FHIR server, not its authorization server).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// The exact `iss` claim value.
    pub iss: String,
    /// Accepted `aud` values (at least one must be in the token).
    pub audience: Vec<String>,
    /// Allowed `alg` values, e.g. `["RS256"]`. `none` can never be listed. Left out only by an
    /// issuer whose tokens are all opaque (`introspection` and no keys).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// JWKS file with the issuer's public keys (RS*, PS*, ES*, EdDSA).
    pub jwks_file: Option<PathBuf>,
    /// Shared secret file (HS*; development only).
    pub secret_file: Option<PathBuf>,
    /// PEM private key for `fhir-fence token` with an asymmetric issuer (development aid).
    pub signing_key_file: Option<PathBuf>,
    /// The identity provider's OpenID discovery document (`https://…/.well-known/openid-configuration`):
    /// its `issuer` must equal `iss`; the keys come from its `jwks_uri` and are refreshed as the
    /// provider rotates them.
    pub discovery: Option<String>,
    /// The provider's JWKS (`https://…`), for a provider without a discovery document.
    pub jwks_uri: Option<String>,
    /// PEM CA certificates that verify the provider's TLS certificate (default: the Web PKI roots).
    pub ca_file: Option<PathBuf>,
    /// How long the provider's keys keep verifying while it cannot be reached, counted from
    /// when they were last refreshed (300 s) plus this (default 3600).
    #[serde(default = "default_keys_grace_secs")]
    pub keys_grace_secs: u64,
    /// `at+jwt`: the token's header must say `typ: at+jwt` (RFC 9068 access tokens; a provider's
    /// ID tokens are then refused). Default: not checked.
    pub token_type: Option<String>,
    /// Where a token's tenant comes from, exactly one of: `tenant_claim`, `tenant`, or
    /// `{tenant}` in `iss` (`identity::tenant_source`).
    /// JSONPath (RFC 9535) to the tenant claim, e.g. `$.tenant` or `$.org.id`.
    pub tenant_claim: Option<String>,
    /// The one tenant every token of this issuer is for (one identity-provider realm per tenant).
    pub tenant: Option<String>,
    /// With `{tenant}` in `iss`: the values it takes (e.g. Entra ID's `tid`) mapped to tenant
    /// names. Empty: the value is the tenant's name.
    #[serde(default)]
    pub tenant_ids: std::collections::BTreeMap<String, String>,
    /// The tenants this issuer may assert (with `tenant`: that one, which may be left out here).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Opaque (non-JWT) access tokens are checked at the provider's RFC 7662 introspection
    /// endpoint. At most one issuer has this: an opaque token names no issuer, and fhir-fence
    /// never shows a token to a provider that may not have issued it.
    pub introspection: Option<Introspection>,
    /// `smart-v2`: the token's SMART scopes (v2, and v1's `.read`/`.write`) are enforced after
    /// the tenant rule (`smart`). `ignore` (default): the tenant rule alone.
    #[serde(default)]
    pub scopes: ScopePolicy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ScopePolicy {
    #[serde(rename = "smart-v2")]
    SmartV2,
    #[default]
    #[serde(rename = "ignore")]
    Ignore,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    /// The provider's introspection endpoint (`https://…`).
    pub endpoint: String,
    /// fhir-fence's own client at the provider (never a tenant's).
    pub client_id: String,
    /// A file holding that client's secret.
    pub client_secret_file: PathBuf,
    /// How the secret is sent (RFC 6749 §2.3.1): `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub client_auth: IntrospectionAuth,
    /// The longest an answer is reused (never past the token's `exp`), 1..=3600 (default 60):
    /// a token revoked at the provider keeps working here for at most this long.
    #[serde(default = "default_introspection_cache_secs")]
    pub cache_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntrospectionAuth {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

impl Issuer {
    /// The tenants this issuer may assert.
    pub fn asserts(&self) -> Vec<String> {
        match (&self.tenant, self.tenants.is_empty()) {
            (Some(t), true) => vec![t.clone()],
            _ => self.tenants.clone(),
        }
    }
}

/// A tenant's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TenantStatus {
    Active,
    /// Every request refused (403).
    Suspended,
    /// Reads served; every interaction that changes data answered 503 with `Retry-After`
    /// (the freeze a move or an export needs).
    ReadOnly,
    /// Refused exactly like `suspended`; `deleted_at` says when, and the data may be purged
    /// once `lifecycle.delete_grace_secs` has passed.
    Deleting,
}

impl TenantStatus {
    /// Whether the tenant's requests are served at all (`suspended` and `deleting` are not,
    /// and are answered alike).
    pub fn serves(self) -> bool {
        matches!(self, TenantStatus::Active | TenantStatus::ReadOnly)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::ReadOnly => "read-only",
            TenantStatus::Deleting => "deleting",
        }
    }
}

/// Where a tenant's data lives (paper §6, hybrid placement): on an upstream shared with other
/// tenants, or on one of its own. The data model (coding + prefix) is the same on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Shared,
    /// No other tenant may use this tenant's upstream (checked at load).
    Dedicated,
}

impl Isolation {
    fn is_shared(&self) -> bool {
        *self == Isolation::Shared
    }
}

/// Whether fhir-fence enforces the tenant's isolation (the default), or only observes it on a
/// legacy upstream (paper §7.1, "run both shapes in parallel"): requests pass through as the
/// legacy path would send them, while what enforcement would refuse or drop is counted and
/// logged, so enforcement is switched on once the counts are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    #[default]
    Enforce,
    /// Only on an upstream with `legacy = true` (checked at load).
    Observe,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// The id-prefix key, `[a-z0-9]{1,12}`: upstream ids are `{prefix}-{local}`.
    pub prefix: String,
    /// The name of the upstream (in `[upstreams]`) holding this tenant's data.
    pub upstream: String,
    pub status: TenantStatus,
    /// With `status = "deleting"` (and only then): when the tenant was deleted (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    /// `shared` (default) or `dedicated`: a dedicated tenant's upstream serves no other tenant.
    #[serde(default, skip_serializing_if = "Isolation::is_shared")]
    pub isolation: Isolation,
    /// `enforce` (default) or `observe` (only on a `legacy` upstream).
    #[serde(default, skip_serializing_if = "is_default")]
    pub enforcement: Enforcement,
    /// Issuers (by name in `[issuers]`) that may assert this tenant, besides those whose own
    /// `tenants` list names it: how a tenant file is let in without editing the config file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,
    /// FHIR operations this tenant may call (without `$`): `everything`, `meta`, `meta-add`,
    /// `meta-delete`, `validate`, `export`. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<String>,
    /// Where this tenant's rest-hook Subscriptions may deliver: a rule ending in `/` is a URL
    /// prefix, any other rule an exact origin (`scheme://host:port`). Default: nowhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscription_destinations: Vec<String>,
    /// Overrides of the top-level `[limits]` for this tenant (key by key).
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: Limits,
    /// Client certificates that identify this tenant: SAN URIs (e.g. SPIFFE IDs) or DNS names,
    /// matched exactly. Needs `server.tls.client_ca_file`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_certs: Vec<String>,
    /// With `client_certs`: whether the certificate alone identifies the tenant, or must come
    /// with the tenant's token (default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub client_auth: ClientAuth,
    /// The generation of the tenant's sealing keys (page tokens, export handles; `seal_keys`):
    /// raising it by one revokes the tokens of two generations ago, by two all of them.
    #[serde(default)]
    pub key_generation: u32,
}

/// Where a tenant's rate-limit state lives (`limits.backend`, top level only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitBackend {
    /// In this process: each replica limits on its own (N replicas admit N times the rate).
    #[default]
    Local,
    /// In Redis (`[redis]`), leased to the replicas in small batches: one limit across replicas.
    Redis,
}

/// What a replica does when Redis cannot decide within `redis.timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFail {
    /// Limit the tenant with this replica's own limiter (as `backend = "local"`) until Redis answers again.
    #[default]
    Local,
    /// Refuse the tenant's rate-limited requests (503) until Redis answers again.
    Closed,
}

/// `[redis]`: the shared store (`shared_store`, `global_rate`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// `redis://host:port[/db]` or `redis+unix:///path/to/socket` (TLS is not supported).
    pub url: String,
    /// The longest a request waits for Redis (a lease, a tombstone), in milliseconds; then the
    /// decision falls back (`fail`). Default 5.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
    /// With `limits.backend = "redis"`, what happens while Redis does not answer in time.
    #[serde(default)]
    pub fail: RedisFail,
    /// Cost units a replica leases at once from a tenant's global allowance (default: a tenth of
    /// the tenant's `rate_per_second`, at least 1). Each replica holds at most this many unspent:
    /// the tolerance of the global limit.
    pub batch: Option<u32>,
    /// How long leased units may be spent, in milliseconds (default 1000); unspent ones then lapse.
    #[serde(default = "default_redis_lease")]
    pub lease_ms: u64,
    /// Prefix of every key fhir-fence writes (several deployments may share one Redis).
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
}

/// Per-tenant workload limits. Every key is optional: unset at both levels means no limit.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// `local` (default) or `redis`; only in the top-level `[limits]`: where rate-limit state
    /// lives is a property of the deployment, not of a tenant (a tenant limited per replica
    /// beside tenants limited globally would get N times its rate for N replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<LimitBackend>,
    /// Sustained cost units per second (GCRA).
    pub rate_per_second: Option<u32>,
    /// Cost units that may be spent at once (default: one second's worth).
    pub burst: Option<u32>,
    /// Requests of this tenant handled at the same time.
    pub max_in_flight: Option<u32>,
    /// The answer when `max_in_flight` is reached: 429 or 503 (default 503).
    pub in_flight_status: Option<u16>,
    /// Client connections of this tenant open at once (a connection counts against the tenant
    /// of its latest request); a request that would open one more gets 503 and its connection
    /// is closed.
    pub max_connections: Option<u32>,
    /// Upstream requests (HTTP/1.1 connections) this tenant may have open at once; a request
    /// waits up to `upstream_wait_ms` for one, then gets 503.
    pub upstream_connections: Option<u32>,
    /// How long a request waits for one of the tenant's upstream connections (default 1000).
    pub upstream_wait_ms: Option<u64>,
    /// Count and log what would be refused, refuse nothing (for a safe roll-out).
    pub shadow: Option<bool>,
    /// Cost per interaction class: `read`, `search`, `write`, `operation`, `bundle-entry`, `export`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, u32>,
}

impl Limits {
    /// `self` with every key `over` sets replaced.
    pub fn overridden_by(&self, over: &Limits) -> Limits {
        let mut weights = self.weights.clone();
        weights.extend(over.weights.iter().map(|(k, v)| (k.clone(), *v)));
        Limits {
            backend: self.backend,
            rate_per_second: over.rate_per_second.or(self.rate_per_second),
            burst: over.burst.or(self.burst),
            max_in_flight: over.max_in_flight.or(self.max_in_flight),
            in_flight_status: over.in_flight_status.or(self.in_flight_status),
            max_connections: over.max_connections.or(self.max_connections),
            upstream_connections: over.upstream_connections.or(self.upstream_connections),
            upstream_wait_ms: over.upstream_wait_ms.or(self.upstream_wait_ms),
            shadow: over.shadow.or(self.shadow),
            weights,
        }
    }
}

fn default_redis_timeout() -> u64 {
    5
}
fn default_redis_lease() -> u64 {
    1000
}
fn default_redis_prefix() -> String {
    "fhir-fence".into()
}
fn default_max_body() -> usize {
    16 * 1024 * 1024
}
fn default_max_bundle_entries() -> usize {
    500
}
fn default_body_timeout_ms() -> u64 {
    10_000
}
fn default_min_body_rate() -> u64 {
    16 * 1024
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_upstream_body() -> usize {
    64 * 1024 * 1024
}
fn default_ref_ttl() -> u64 {
    30
}
fn default_page_ttl() -> u64 {
    3600
}
fn default_audit_batch() -> usize {
    50
}
fn default_audit_flush() -> u64 {
    1_000
}
fn default_audit_queue() -> usize {
    10_000
}
fn default_job_ttl() -> u64 {
    24 * 3600
}
fn default_max_line() -> usize {
    8 * 1024 * 1024
}
fn default_connect_timeout() -> u64 {
    2_000
}
fn default_request_timeout() -> u64 {
    30_000
}
fn default_pool() -> usize {
    32
}

fn default_keys_grace_secs() -> u64 {
    3600
}

fn default_introspection_cache_secs() -> u64 {
    60
}

fn default_delete_grace() -> u64 {
    7 * 24 * 3600
}

fn default_read_only_retry() -> u64 {
    5
}
