//! Reading and validating a config file. Every error names the offending key and says why.
use super::schema::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use url::Url;

/// A config that passed validation, with the directory its relative file paths are resolved against.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub dir: PathBuf,
    pub public_base: Url,
    /// The tenants read from `lifecycle.tenants_dir`: name → its file. A tenant not here is
    /// defined in the config file itself.
    pub tenant_files: BTreeMap<String, PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), reason: reason.into() }
    }
}

impl Loaded {
    /// Resolves a path from the config relative to the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }

    /// `lifecycle.tenants_dir`, resolved.
    pub fn tenants_dir(&self) -> Option<PathBuf> {
        self.config.lifecycle.tenants_dir.as_deref().map(|d| self.resolve(d))
    }

    /// `lifecycle.state_dir`, resolved.
    pub fn state_dir(&self) -> Option<PathBuf> {
        self.config.lifecycle.state_dir.as_deref().map(|d| self.resolve(d))
    }

    /// Every file a snapshot is built from: the config itself, the key files it names (not the
    /// audit file, which fhir-fence writes) and the tenant files `tenants_dir` holds now (listed
    /// afresh, so a file added or removed since the last load counts). A change to any of them
    /// is a reload.
    pub fn source_files(&self, config_path: &Path) -> Vec<PathBuf> {
        let c = &self.config;
        let tenant_files = self.tenants_dir().map(|d| tenant_files_in(&d).unwrap_or_default()).unwrap_or_default();
        let named = c
            .paging
            .key_file
            .iter()
            .chain(c.lifecycle.admin_token_file.iter())
            .chain(c.server.tls.iter().flat_map(|t| &t.client_ca_file))
            .chain(
                c.upstreams
                    .values()
                    .flat_map(|u| {
                        let oauth2 = u.oauth2.iter().flat_map(|o| [Some(&o.client_secret_file), o.ca_file.as_ref()]);
                        [
                            u.ca_file.as_ref(),
                            u.client_cert_file.as_ref(),
                            u.client_key_file.as_ref(),
                            u.bearer_file.as_ref(),
                        ]
                        .into_iter()
                        .chain(oauth2)
                    })
                    .flatten(),
            )
            .chain(
                c.issuers
                    .values()
                    .flat_map(|i| {
                        let introspection = i.introspection.as_ref().map(|x| &x.client_secret_file);
                        [i.jwks_file.as_ref(), i.secret_file.as_ref(), i.signing_key_file.as_ref(), i.ca_file.as_ref()]
                            .into_iter()
                            .chain([introspection])
                    })
                    .flatten(),
            );
        std::iter::once(config_path.to_path_buf())
            .chain(named.map(|p| self.resolve(p)))
            .chain(tenant_files.into_values())
            .collect()
    }

    /// Reads a file named by the config, naming the key on failure.
    pub fn read_file(&self, key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
        let full = self.resolve(path);
        std::fs::read(&full).map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", full.display())))
    }
}

/// Reads and validates the config at `path`, with the tenant files of `lifecycle.tenants_dir`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    let mut config: Config =
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let mut tenant_files = BTreeMap::new();
    if let Some(td) = config.lifecycle.tenants_dir.clone() {
        let td = if td.is_absolute() { td } else { dir.join(td) };
        lifecycle_dirs(&config.lifecycle, &dir, &td)?;
        for (name, file) in tenant_files_in(&td)
            .map_err(|e| ConfigError::invalid("lifecycle.tenants_dir", format!("cannot read {}: {e}", td.display())))?
        {
            let key = format!("tenant file {}", file.display());
            if !valid_tenant_name(&name) {
                return Err(ConfigError::invalid(key, "tenant names are 1-64 characters of [A-Za-z0-9.-]"));
            }
            let text =
                std::fs::read_to_string(&file).map_err(|source| ConfigError::Read { path: file.clone(), source })?;
            let tenant: Tenant =
                toml::from_str(&text).map_err(|e| ConfigError::Parse { path: file.clone(), message: e.to_string() })?;
            if config.tenants.contains_key(&name) {
                return Err(ConfigError::invalid(
                    format!("tenants.{name}"),
                    format!("defined both in the config file and in {}", file.display()),
                ));
            }
            config.tenants.insert(name.clone(), tenant);
            tenant_files.insert(name, file);
        }
    }
    grant_issuers(&mut config)?;
    let public_base = validate(&config)?;
    Ok(Loaded { config, dir, public_base, tenant_files })
}

/// The tenant files in `dir`: every `NAME.toml` (others are ignored), by name.
pub fn tenant_files_in(dir: &Path) -> std::io::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(stem) = name.strip_suffix(".toml") else { continue };
        // Hidden files are editors' and fhir-fence's own temporary files. The entry's type
        // comes with the listing; only a link (a Kubernetes ConfigMap's files are) costs a
        // `stat` to see what it points at.
        let kind = entry.file_type()?;
        if stem.starts_with('.') || !(kind.is_file() || kind.is_symlink() && path.is_file()) {
            continue;
        }
        out.insert(stem.to_owned(), path);
    }
    Ok(out)
}

/// `tenants_dir` is neither the config file's own directory (whose other `.toml` files would
/// be read as tenants) nor holds `state_dir` (whose writes would then be reloads).
fn lifecycle_dirs(l: &Lifecycle, config_dir: &Path, tenants_dir: &Path) -> Result<(), ConfigError> {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let td = real(tenants_dir);
    if td == real(config_dir) {
        return Err(ConfigError::invalid(
            "lifecycle.tenants_dir",
            "must be a directory of its own, not the config file's directory",
        ));
    }
    if let Some(sd) = &l.state_dir {
        let sd = if sd.is_absolute() { sd.clone() } else { config_dir.join(sd) };
        if real(&sd).starts_with(&td) {
            return Err(ConfigError::invalid("lifecycle.state_dir", "must not be inside lifecycle.tenants_dir"));
        }
    }
    Ok(())
}

/// `tenants.NAME.issuers`: each named issuer may assert the tenant, as if its own `tenants`
/// list named it (so a tenant file needs no edit of the config file).
fn grant_issuers(c: &mut Config) -> Result<(), ConfigError> {
    // Per issuer, the names its list holds: one look-up per tenant, not a scan of the list
    // (ten thousand tenant files may all name one issuer).
    let mut listed: HashMap<&str, HashSet<String>> = HashMap::new();
    for (name, t) in &c.tenants {
        for i in &t.issuers {
            let key = || format!("tenants.{name}.issuers");
            let issuer =
                c.issuers.get_mut(i).ok_or_else(|| ConfigError::invalid(key(), format!("no issuer named {i:?}")))?;
            if let Some(only) = issuer.tenant.as_ref().filter(|t| *t != name) {
                return Err(ConfigError::invalid(key(), format!("issuer {i:?} asserts tenant {only:?} only")));
            }
            let names = listed.entry(i).or_insert_with(|| issuer.tenants.iter().cloned().collect());
            if issuer.tenant.is_none() && names.insert(name.clone()) {
                issuer.tenants.push(name.clone());
            }
        }
    }
    Ok(())
}

/// Checks a whole config (as `load` does after reading it and its tenant files): for a change
/// that must be judged before anything is written (`lifecycle::change`).
pub fn validate_config(c: &Config) -> Result<(), ConfigError> {
    let mut c = c.clone();
    grant_issuers(&mut c)?;
    validate(&c).map(|_| ())
}

/// An RFC 3339 UTC timestamp (`…Z`), as `deleted_at` holds.
pub fn utc_timestamp(v: &str) -> Option<time::OffsetDateTime> {
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()?;
    (v.ends_with('Z') && t.offset().is_utc()).then_some(t)
}

/// Checks one (effective) limits table; `key` names it in the error.
fn limits(key: &str, l: &crate::config::Limits) -> Result<(), ConfigError> {
    if [l.rate_per_second, l.burst, l.max_in_flight, l.upstream_connections, l.max_connections].contains(&Some(0)) {
        return Err(ConfigError::invalid(
            key,
            "rate_per_second, burst, max_in_flight, max_connections and upstream_connections must be greater than 0",
        ));
    }
    if l.burst.is_some() && l.rate_per_second.is_none() {
        return Err(ConfigError::invalid(format!("{key}.burst"), "a burst needs a rate_per_second"));
    }
    if !matches!(l.in_flight_status, None | Some(429) | Some(503)) {
        return Err(ConfigError::invalid(format!("{key}.in_flight_status"), "must be 429 or 503"));
    }
    for name in l.weights.keys() {
        if !crate::limits::CLASSES.contains(&name.as_str()) {
            return Err(ConfigError::invalid(
                format!("{key}.weights.{name}"),
                format!("unknown interaction class (known: {})", crate::limits::CLASSES.join(", ")),
            ));
        }
    }
    Ok(())
}

/// `[redis]` and `limits.backend`: a Redis backend needs a usable `[redis]` table.
fn redis(c: &Config) -> Result<(), ConfigError> {
    let Some(r) = &c.redis else {
        if c.limits.backend == Some(crate::config::LimitBackend::Redis) {
            return Err(ConfigError::invalid("limits.backend", "\"redis\" needs a [redis] table with a url"));
        }
        return Ok(());
    };
    let url = Url::parse(&r.url).map_err(|e| ConfigError::invalid("redis.url", e.to_string()))?;
    match url.scheme() {
        "redis" if url.host_str().is_some() => {}
        "redis+unix" | "unix" if !url.path().is_empty() => {}
        "rediss" => return Err(ConfigError::invalid("redis.url", "TLS to Redis (rediss://) is not supported")),
        _ => {
            return Err(ConfigError::invalid(
                "redis.url",
                "must be redis://host:port[/db] or redis+unix:///path/to/socket",
            ))
        }
    }
    if r.timeout_ms == 0 || r.timeout_ms > 1000 {
        return Err(ConfigError::invalid("redis.timeout_ms", "must be between 1 and 1000"));
    }
    if r.batch == Some(0) {
        return Err(ConfigError::invalid("redis.batch", "must be greater than 0"));
    }
    if r.lease_ms < 10 || r.lease_ms > 60_000 {
        return Err(ConfigError::invalid("redis.lease_ms", "must be between 10 and 60000"));
    }
    if r.key_prefix.is_empty() || r.key_prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::invalid("redis.key_prefix", "must be one word"));
    }
    Ok(())
}

fn validate(c: &Config) -> Result<Url, ConfigError> {
    socket("server.listen", &c.server.listen)?;
    socket("admin.listen", &c.admin.listen)?;
    let public_base = http_url("server.public_base", &c.server.public_base)?;
    if matches!(c.server.workers, Some(n) if n == 0 || n > 1024) {
        return Err(ConfigError::invalid("server.workers", "must be between 1 and 1024"));
    }
    if c.server.body_timeout_ms == 0 || c.server.min_body_bytes_per_sec == 0 {
        return Err(ConfigError::invalid(
            "server",
            "body_timeout_ms and min_body_bytes_per_sec must be greater than 0",
        ));
    }
    if c.server.max_body_bytes == 0 {
        return Err(ConfigError::invalid("server.max_body_bytes", "must be greater than 0"));
    }
    if let Some(f) = &c.audit.fhir {
        if f.batch == 0 || f.batch > 1000 {
            return Err(ConfigError::invalid("audit.fhir.batch", "must be between 1 and 1000"));
        }
        if f.flush_ms == 0 {
            return Err(ConfigError::invalid("audit.fhir.flush_ms", "must be greater than 0"));
        }
    }
    if c.server.max_connections == 0 {
        return Err(ConfigError::invalid("server.max_connections", "must be greater than 0"));
    }
    absolute_uri("tenancy.system", &c.tenancy.system)?;
    for (i, b) in c.tenancy.shared_canonical_bases.iter().enumerate() {
        let key = format!("tenancy.shared_canonical_bases[{i}]");
        http_url(&key, b)?;
        if !b.ends_with('/') {
            return Err(ConfigError::invalid(key, "must end in / (a prefix of canonical URLs)"));
        }
    }
    for (i, b) in c.tenancy.allowed_external_bases.iter().enumerate() {
        http_url(&format!("tenancy.allowed_external_bases[{i}]"), b)?;
    }
    if c.upstreams.is_empty() {
        return Err(ConfigError::invalid("upstreams", "at least one upstream is needed"));
    }
    for (name, u) in &c.upstreams {
        let url = http_url(&format!("upstreams.{name}.base_url"), &u.base_url)?;
        if url.scheme() != "https"
            && (u.ca_file.is_some() || u.client_cert_file.is_some() || u.client_key_file.is_some())
        {
            return Err(ConfigError::invalid(
                format!("upstreams.{name}"),
                "ca_file and client certificates are for an https:// base_url",
            ));
        }
        if u.client_cert_file.is_some() != u.client_key_file.is_some() {
            return Err(ConfigError::invalid(
                format!("upstreams.{name}"),
                "client_cert_file and client_key_file go together",
            ));
        }
        if u.request_timeout_ms == 0 || u.connect_timeout_ms == 0 {
            return Err(ConfigError::invalid(format!("upstreams.{name}"), "timeouts must be greater than 0"));
        }
    }
    let mut prefixes = HashSet::new();
    limits("limits", &c.limits)?;
    redis(c)?;
    if c.audit.sink == crate::config::AuditSink::File && c.audit.file.is_none() {
        return Err(ConfigError::invalid("audit.file", "sink = \"file\" needs a file"));
    }
    if c.audit.queue == 0 {
        return Err(ConfigError::invalid("audit.queue", "must be greater than 0"));
    }
    for (name, t) in &c.tenants {
        let key = format!("tenants.{name}");
        if t.limits.backend.is_some() {
            return Err(ConfigError::invalid(
                format!("{key}.limits.backend"),
                "the backend is chosen for the whole deployment, in the top-level [limits] only",
            ));
        }
        let effective = c.limits.overridden_by(&t.limits);
        limits(&format!("{key}.limits"), &effective)?;
        let export = crate::limits::weight(&effective, "export");
        let burst = effective.burst.or(effective.rate_per_second);
        let enforced = effective.shadow != Some(true);
        if enforced && t.operations.iter().any(|o| o == "export") && burst.is_some_and(|b| b < export) {
            return Err(ConfigError::invalid(
                format!("{key}.limits.burst"),
                format!("the tenant may export, but one export costs {export}, more than its burst: it never could"),
            ));
        }
        if !valid_tenant_name(name) {
            return Err(ConfigError::invalid(key, "tenant names are 1-64 characters of [A-Za-z0-9.-]"));
        }
        if !valid_prefix(&t.prefix) {
            return Err(ConfigError::invalid(format!("{key}.prefix"), "must match [a-z0-9]{1,12}"));
        }
        if !prefixes.insert(t.prefix.as_str()) {
            return Err(ConfigError::invalid(
                format!("{key}.prefix"),
                format!("prefix {:?} is used by another tenant", t.prefix),
            ));
        }
        for op in &t.operations {
            if !crate::route::Op::ALLOWABLE.contains(&op.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.operations"),
                    format!(
                        "{op:?} is not an operation fhir-fence can allow (known: {})",
                        crate::route::Op::ALLOWABLE.join(", ")
                    ),
                ));
            }
        }
        for (i, d) in t.subscription_destinations.iter().enumerate() {
            let u = http_url(&format!("{key}.subscription_destinations[{i}]"), d)?;
            if !d.ends_with('/') && u.path() != "/" {
                return Err(ConfigError::invalid(
                    format!("{key}.subscription_destinations[{i}]"),
                    "a rule is either a URL prefix ending in / or an origin (scheme://host:port)",
                ));
            }
        }
        if !c.upstreams.contains_key(&t.upstream) {
            return Err(ConfigError::invalid(format!("{key}.upstream"), format!("no upstream named {:?}", t.upstream)));
        }
        match (t.status, &t.deleted_at) {
            (TenantStatus::Deleting, None) => {
                return Err(ConfigError::invalid(format!("{key}.deleted_at"), "status = \"deleting\" needs deleted_at"))
            }
            (TenantStatus::Deleting, Some(at)) if utc_timestamp(at).is_none() => {
                return Err(ConfigError::invalid(
                    format!("{key}.deleted_at"),
                    "must be an RFC 3339 UTC timestamp (e.g. 2025-01-31T12:00:00Z)",
                ))
            }
            (TenantStatus::Deleting, _) | (_, None) => {}
            (_, Some(_)) => {
                return Err(ConfigError::invalid(
                    format!("{key}.deleted_at"),
                    "only a tenant with status = \"deleting\" has one",
                ))
            }
        }
        // A legacy upstream holds data no tenant coding protects: only observing tenants use it,
        // so observe mode can never weaken an enforced tenant.
        let legacy = c.upstreams.get(&t.upstream).is_some_and(|u| u.legacy);
        match (t.enforcement, legacy) {
            (Enforcement::Observe, false) => {
                return Err(ConfigError::invalid(
                    format!("{key}.enforcement"),
                    format!("observe mode needs a legacy upstream, and {:?} is not one (upstreams.{}.legacy = true)", t.upstream, t.upstream),
                ))
            }
            (Enforcement::Enforce, true) => {
                return Err(ConfigError::invalid(
                    format!("{key}.upstream"),
                    format!("{:?} is a legacy upstream (its data carries no tenant coding): only tenants with enforcement = \"observe\" may use it", t.upstream),
                ))
            }
            _ => {}
        }
        // …and is not an enforced upstream under a second name (the same server would then be
        // reachable unscoped).
        if legacy {
            let here = c.upstreams.get(&t.upstream).and_then(|u| server_of(&u.base_url));
            let enforced = c.tenants.values().filter(|o| o.enforcement == Enforcement::Enforce).map(|o| &o.upstream);
            if let Some(other) =
                enforced.into_iter().find(|o| c.upstreams.get(*o).and_then(|u| server_of(&u.base_url)) == here)
            {
                return Err(ConfigError::invalid(
                    format!("upstreams.{}.base_url", t.upstream),
                    format!("the legacy upstream {:?} is on the same server (host and port) as {other:?}, which holds enforced tenants: observe mode would reach their data unscoped", t.upstream),
                ));
            }
        }
        // Hybrid placement: a dedicated tenant's upstream serves no other tenant.
        if t.isolation == Isolation::Dedicated {
            if let Some((other, _)) = c.tenants.iter().find(|(n, o)| *n != name && o.upstream == t.upstream) {
                return Err(ConfigError::invalid(
                    format!("{key}.isolation"),
                    format!(
                        "tenant {name:?} is dedicated, but its upstream {:?} is also used by tenant {other:?}",
                        t.upstream
                    ),
                ));
            }
        }
    }
    let mut cert_names: HashMap<&str, &str> = HashMap::new();
    for (name, t) in &c.tenants {
        let key = format!("tenants.{name}");
        if !t.client_certs.is_empty() && c.server.tls.as_ref().and_then(|t| t.client_ca_file.as_ref()).is_none() {
            return Err(ConfigError::invalid(
                format!("{key}.client_certs"),
                "client certificates need server.tls.client_ca_file (the CA that issues them)",
            ));
        }
        if t.client_auth == crate::config::ClientAuth::Certificate && t.client_certs.is_empty() {
            return Err(ConfigError::invalid(format!("{key}.client_auth"), "name the tenant's client_certs"));
        }
        for n in &t.client_certs {
            if n.is_empty() || n.chars().any(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    format!("{key}.client_certs"),
                    format!("{n:?} is no SAN URI or DNS name"),
                ));
            }
            if let Some(other) = cert_names.insert(n, name) {
                return Err(ConfigError::invalid(
                    format!("{key}.client_certs"),
                    format!("{n:?} identifies tenant {other:?} already"),
                ));
            }
        }
    }
    let mut isses: Vec<(&str, super::IssPattern)> = Vec::new();
    for (name, i) in &c.issuers {
        let key = format!("issuers.{name}");
        // One `iss` value, one issuer: no two issuers (exact or templates) may both match one.
        let pattern = super::IssPattern::parse(&i.iss).map_err(|e| ConfigError::invalid(format!("{key}.iss"), e))?;
        if let Some((other, _)) = isses.iter().find(|(_, p)| p.overlaps(&pattern)) {
            return Err(ConfigError::invalid(
                format!("{key}.iss"),
                format!("an iss can match both this issuer and issuer {other:?}"),
            ));
        }
        isses.push((name, pattern));
        if i.audience.is_empty() {
            return Err(ConfigError::invalid(format!("{key}.audience"), "at least one audience is needed"));
        }
        // With tenants_dir, the tenants may all come from files (`tenants.NAME.issuers`).
        if i.asserts().is_empty() && c.lifecycle.tenants_dir.is_none() {
            return Err(ConfigError::invalid(
                format!("{key}.tenants"),
                "an issuer must be allowed at least one tenant",
            ));
        }
        for t in &i.asserts() {
            if !c.tenants.contains_key(t) {
                return Err(ConfigError::invalid(format!("{key}.tenants"), format!("no tenant named {t:?}")));
            }
        }
        // Algorithms and key material are checked where the keys are built (identity::keys).
    }
    if c.export.job_ttl_secs == 0 {
        return Err(ConfigError::invalid("export.job_ttl_secs", "must be greater than 0"));
    }
    if c.export.max_line_bytes < 1024 {
        return Err(ConfigError::invalid("export.max_line_bytes", "must be at least 1024"));
    }
    if c.paging.token_ttl_secs == 0 {
        return Err(ConfigError::invalid("paging.token_ttl_secs", "must be greater than 0"));
    }
    if c.lifecycle.read_only_retry_after_secs == 0 || c.lifecycle.read_only_retry_after_secs > 86_400 {
        return Err(ConfigError::invalid("lifecycle.read_only_retry_after_secs", "must be between 1 and 86400"));
    }
    if c.lifecycle.admin_token_file.is_some() && (c.lifecycle.tenants_dir.is_none() || c.lifecycle.state_dir.is_none())
    {
        return Err(ConfigError::invalid(
            "lifecycle.admin_token_file",
            "the admin API changes tenant files and records each change: set tenants_dir and state_dir too",
        ));
    }
    Ok(public_base)
}

fn socket(key: &str, v: &str) -> Result<(), ConfigError> {
    v.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, format!("not an IP:port socket address ({e})")))
}

fn http_url(key: &str, v: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(v).map_err(|e| ConfigError::invalid(key, format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::invalid(key, "must be an absolute http(s) URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::invalid(key, "must not have a query or fragment"));
    }
    Ok(url)
}

fn absolute_uri(key: &str, v: &str) -> Result<(), ConfigError> {
    match Url::parse(v) {
        Ok(u) if !u.cannot_be_a_base() || u.scheme() == "urn" => Ok(()),
        _ => Err(ConfigError::invalid(key, "must be an absolute URI")),
    }
}

pub(crate) fn valid_prefix(p: &str) -> bool {
    (1..=12).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// 1-64 characters of `[A-Za-z0-9.-]`, the first a letter or digit (so a tenant file is never a
/// hidden `.name.toml`, which the tenants directory's watch ignores).
pub fn valid_tenant_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// The server an upstream base URL names, as (host, port): loopback names and addresses count
/// as one host, so `localhost`, `127.0.0.1` and `[::1]` on one port are the same server (a DNS
/// alias is not seen through).
fn server_of(base_url: &str) -> Option<(String, u16)> {
    let u = Url::parse(base_url).ok()?;
    let port = u.port_or_known_default()?;
    let host = match u.host()? {
        url::Host::Domain(d)
            if d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost") =>
        {
            "loopback".to_owned()
        }
        url::Host::Domain(d) => d.to_ascii_lowercase().trim_end_matches('.').to_owned(),
        url::Host::Ipv4(ip) if ip.is_loopback() => "loopback".to_owned(),
        url::Host::Ipv6(ip) if ip.is_loopback() => "loopback".to_owned(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_canonical().to_string(),
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(valid_prefix("acme"));
        assert!(valid_prefix("a1"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("Acme"));
        assert!(!valid_prefix("ac-me"));
        assert!(!valid_prefix("abcdefghijklm"));
    }

    /// The demo config with `[lifecycle]` and `files` (name, text) in its tenants dir.
    fn with_tenant_files(files: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/demo.toml")).unwrap();
        let dir = std::env::temp_dir().join(format!("fhir-fence-load-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("tenants")).unwrap();
        // The demo names its key files relative to itself.
        let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/");
        let text = demo.replace("file = \"", &format!("file = \"{policies}"))
            + "\n[lifecycle]\ntenants_dir = \"tenants\"\nstate_dir = \"state\"\n";
        std::fs::write(dir.join("config.toml"), text).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join("tenants").join(name), text).unwrap();
        }
        let loaded = load(&dir.join("config.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
        loaded
    }

    #[test]
    fn tenant_files_join_the_config_s_tenants() {
        let t = "prefix = \"newco\"\nupstream = \"hapi\"\nstatus = \"read-only\"\nissuers = [\"dev\"]\n";
        let loaded = with_tenant_files(&[
            ("newco.toml", t),
            ("notes.txt", "not a tenant"),
            (".newco.toml.1234.tmp", "half written"),
            (".hidden.toml", "prefix = 1"),
        ])
        .unwrap();
        let newco = &loaded.config.tenants["newco"];
        assert_eq!((newco.prefix.as_str(), newco.status), ("newco", TenantStatus::ReadOnly));
        assert_eq!(loaded.tenant_files.keys().collect::<Vec<_>>(), ["newco"]);
        assert!(loaded.config.tenants.contains_key("acme"), "the config file's tenants stay");
        // `issuers` lets the tenant in without editing the issuer.
        assert!(loaded.config.issuers["dev"].asserts().contains(&"newco".to_owned()));
    }

    #[test]
    fn tenant_files_are_checked_like_the_config_s_tenants() {
        let err = |files: &[(&str, &str)]| with_tenant_files(files).unwrap_err().to_string();
        let e = err(&[("acme.toml", "prefix = \"zz\"\nupstream = \"hapi\"\nstatus = \"active\"\n")]);
        assert!(e.contains("tenants.acme") && e.contains("acme.toml") && e.contains("config file"), "{e}");
        let e = err(&[("x_y.toml", "prefix = \"zz\"\nupstream = \"hapi\"\nstatus = \"active\"\n")]);
        assert!(e.contains("x_y.toml") && e.contains("tenant names"), "{e}");
        let e = err(&[("x.toml", "prefix = \"zz\"\nupstream = \"hapi\"\nstatus = \"active\"\ncolour = 1\n")]);
        assert!(e.contains("colour"), "{e}");
        let e =
            err(&[("x.toml", "prefix = \"zz\"\nupstream = \"hapi\"\nstatus = \"active\"\nissuers = [\"nobody\"]\n")]);
        assert!(e.contains("tenants.x.issuers"), "{e}");
        let e = err(&[(
            "x.toml",
            "prefix = \"zz\"\nupstream = \"hapi\"\nstatus = \"active\"\ndeleted_at = \"2025-01-01T00:00:00Z\"\n",
        )]);
        assert!(e.contains("tenants.x.deleted_at"), "{e}");
    }

    #[test]
    fn the_demo_config_loads() {
        // Also proves that every tenant allowed to export has a burst one export fits in.
        load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/demo.toml"))).unwrap();
    }

    #[test]
    fn limits_are_checked_as_the_tenant_gets_them() {
        use crate::config::Limits;
        let ok = Limits { rate_per_second: Some(5), burst: Some(10), ..Limits::default() };
        assert!(limits("limits", &ok).is_ok());
        let bad_weight = Limits { weights: [("searches".to_owned(), 3)].into(), ..ok.clone() };
        assert!(limits("limits", &bad_weight).unwrap_err().to_string().contains("limits.weights.searches"));
        let bad_status = Limits { in_flight_status: Some(404), ..ok.clone() };
        assert!(limits("limits", &bad_status).is_err());
        let burst_alone = Limits { burst: Some(3), ..Limits::default() };
        assert!(limits("limits", &burst_alone).is_err());
        // A tenant override replaces key by key.
        let merged = ok.overridden_by(&Limits { burst: Some(1), ..Limits::default() });
        assert_eq!((merged.rate_per_second, merged.burst), (Some(5), Some(1)));
    }

    /// The demo config with `extra` appended, loaded (its key files resolved).
    fn demo_with(extra: &str) -> Result<Loaded, ConfigError> {
        let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/demo.toml")).unwrap();
        let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/");
        let dir = std::env::temp_dir().join(format!("fhir-fence-load-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = demo.replace("file = \"", &format!("file = \"{policies}")) + "\n" + extra;
        std::fs::write(dir.join("config.toml"), text).unwrap();
        let loaded = load(&dir.join("config.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
        loaded
    }

    #[test]
    fn a_redis_backend_needs_a_usable_redis_table() {
        let err = |extra: &str| demo_with(extra).unwrap_err().to_string();
        let e = err("[limits]\nbackend = \"redis\"\n");
        assert!(e.contains("limits.backend") && e.contains("[redis]"), "{e}");
        let e = err("[redis]\nurl = \"rediss://cache:6380\"\n");
        assert!(e.contains("redis.url") && e.contains("TLS"), "{e}");
        let e = err("[redis]\nurl = \"http://cache:6379\"\n");
        assert!(e.contains("redis.url"), "{e}");
        let e = err("[redis]\nurl = \"redis://cache:6379\"\ntimeout_ms = 0\n");
        assert!(e.contains("redis.timeout_ms"), "{e}");
        let e = err("[redis]\nurl = \"redis://cache:6379\"\nbatch = 0\n");
        assert!(e.contains("redis.batch"), "{e}");
        let e = err("[redis]\nurl = \"redis://cache:6379\"\nfail = \"open\"\n");
        assert!(e.contains("fail") && e.contains("open"), "{e}");
        let e = err("[redis]\nurl = \"redis://cache:6379\"\ncolour = 1\n");
        assert!(e.contains("colour"), "{e}");
        let loaded = demo_with(
            "[limits]\nbackend = \"redis\"\n[redis]\nurl = \"redis+unix:///run/redis.sock\"\nfail = \"closed\"\n",
        )
        .unwrap();
        let r = loaded.config.redis.unwrap();
        assert_eq!((r.timeout_ms, r.fail, r.lease_ms, r.batch), (5, crate::config::RedisFail::Closed, 1000, None));
    }

    #[test]
    fn a_tenant_cannot_choose_the_limits_backend() {
        let e = with_tenant_files(&[(
            "newco.toml",
            "prefix = \"newco\"\nupstream = \"hapi\"\nstatus = \"active\"\n[limits]\nbackend = \"local\"\n",
        )])
        .unwrap_err()
        .to_string();
        assert!(e.contains("tenants.newco.limits.backend") && e.contains("whole deployment"), "{e}");
    }
}
