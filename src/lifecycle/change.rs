//! Tenant state changes as routine operations: the one function ([`apply`]) the CLI and the
//! admin API both call. Each change is judged against the whole resulting config before
//! anything is written, is idempotent (asked twice, the second says `unchanged` and writes
//! nothing), writes the tenant's file atomically (`store`) and appends one line to the
//! lifecycle record (`record`); a record that cannot be written undoes the change.
//!
//! Only tenants in `lifecycle.tenants_dir` are managed: one defined in the config file itself
//! is refused (moving it to a file is the operator's edit). `undelete` brings a `deleting`
//! tenant back as `suspended` (not its state before the delete): the operator then resumes it
//! on purpose.
use super::{now_utc, record, store};
use crate::config::{self, ConfigError, Loaded, Tenant, TenantStatus};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A change asked for.
#[derive(Debug, Clone)]
pub enum Operation {
    /// A new tenant file with this table.
    Create(Box<Tenant>),
    Suspend,
    /// → `active`, from `suspended` or `read-only`.
    Resume,
    ReadOnly,
    /// → `deleting`, `deleted_at` = now.
    Delete,
    /// `deleting` → `suspended`.
    Undelete,
    /// A move's switch (`tenant_data::relocate`, never asked for alone): the tenant's data now
    /// lives on `upstream`, and its status becomes `status` (what it was before the freeze).
    Place {
        upstream: String,
        status: TenantStatus,
        isolation: config::Isolation,
    },
}

impl Operation {
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Create(_) => "create",
            Operation::Suspend => "suspend",
            Operation::Resume => "resume",
            Operation::ReadOnly => "read-only",
            Operation::Delete => "delete",
            Operation::Undelete => "undelete",
            Operation::Place { .. } => "move",
        }
    }

    /// The state-change operation named `name` (not `create`, which needs its table).
    pub fn parse(name: &str) -> Option<Operation> {
        Some(match name {
            "suspend" => Operation::Suspend,
            "resume" => Operation::Resume,
            "read-only" => Operation::ReadOnly,
            "delete" => Operation::Delete,
            "undelete" => Operation::Undelete,
            _ => return None,
        })
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Changed {
    pub tenant: String,
    pub operation: &'static str,
    /// The status before (`None` for a create).
    pub from: Option<TenantStatus>,
    pub to: TenantStatus,
    /// `changed` or `unchanged` (already so: nothing written, nothing recorded).
    pub result: &'static str,
}

impl Changed {
    /// Asked for what already is: nothing written, nothing recorded.
    fn unchanged(tenant: &str, operation: &'static str, status: TenantStatus) -> Changed {
        Changed { tenant: tenant.to_owned(), operation, from: Some(status), to: status, result: "unchanged" }
    }

    pub fn changed(&self) -> bool {
        self.result == "changed"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("tenant state changes need lifecycle.tenants_dir and lifecycle.state_dir in the config")]
    NotConfigured,
    #[error("the configuration is invalid: {0}")]
    Config(#[from] ConfigError),
    #[error("no tenant named {0:?}")]
    UnknownTenant(String),
    #[error("{0:?} is not a valid tenant name (1-64 characters of [A-Za-z0-9.-], the first a letter or digit)")]
    BadName(String),
    #[error("tenant {0:?} is defined in the config file; move it to tenants_dir to manage it")]
    Inline(String),
    #[error("tenant {0:?} exists already")]
    Exists(String),
    #[error("the lifecycle record shows tenant {tenant:?}, whose name or prefix {name:?}/{prefix:?} would reuse: names and prefixes are never reused (a retired tenant's ids and tokens stay behind)")]
    Retired { name: String, prefix: String, tenant: String },
    #[error("the new tenant would make the configuration invalid: {0}")]
    Invalid(ConfigError),
    #[error("tenant {tenant:?} is {status}: {hint}")]
    NotFrom { tenant: String, status: &'static str, hint: &'static str },
    #[error("{0}")]
    Io(String),
}

/// One change at a time in this process (the admin API's requests, a test's calls); across
/// processes, the lifecycle lock (`lock.rs`).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Applies `op` to tenant `name` of the config at `config_path`, recorded as done by `who`.
pub fn apply(config_path: &Path, name: &str, op: Operation, who: &str) -> Result<Changed, LifecycleError> {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let loaded = config::load(config_path)?;
    let (tenants_dir, state_dir) = dirs(&loaded)?;
    if !config::valid_tenant_name(name) {
        return Err(LifecycleError::BadName(name.to_owned()));
    }
    // Other processes' changes take turns with this one; the config is read again under the lock.
    let _turn = super::lock::wait(&state_dir, "lifecycle")
        .map_err(|e| LifecycleError::Io(format!("cannot take the lifecycle lock: {e}")))?;
    let loaded = config::load(config_path)?;
    let file = store::path(&tenants_dir, name);
    let operation = op.name();
    let (before, after) = match op {
        Operation::Create(new) => {
            // Asked again with the same table: unchanged; with another: the name is taken.
            if let Some(current) = loaded.config.tenants.get(name) {
                let same = loaded.tenant_files.contains_key(name) && current == &*new;
                if !same {
                    return Err(LifecycleError::Exists(name.to_owned()));
                }
                return Ok(Changed::unchanged(name, operation, current.status));
            }
            // A name or prefix is never used twice: a retired tenant's ids (its deleted
            // versions, its history) stay on the upstream under its prefix, and its page tokens
            // and export handles were sealed under its name.
            let earlier = record::read(&state_dir)
                .map_err(|e| LifecycleError::Io(format!("cannot read the lifecycle record: {e}")))?;
            if let Some(e) =
                earlier.iter().find(|e| e.tenant == name || e.prefix.as_deref() == Some(new.prefix.as_str()))
            {
                return Err(LifecycleError::Retired {
                    name: name.to_owned(),
                    prefix: new.prefix.clone(),
                    tenant: e.tenant.clone(),
                });
            }
            (None, *new)
        }
        op => {
            let Some(current) = loaded.config.tenants.get(name) else {
                return Err(LifecycleError::UnknownTenant(name.to_owned()));
            };
            if !loaded.tenant_files.contains_key(name) {
                return Err(LifecycleError::Inline(name.to_owned()));
            }
            let Some(next) = next(name, current, &op)? else {
                return Ok(Changed::unchanged(name, operation, current.status));
            };
            (Some(current.clone()), next)
        }
    };
    // Judged as the whole config the change makes, before anything is written.
    let mut whole = loaded.config.clone();
    whole.tenants.insert(name.to_owned(), after.clone());
    config::validate_config(&whole).map_err(LifecycleError::Invalid)?;
    let io = |what: &str, e: std::io::Error| LifecycleError::Io(format!("{what}: {e}"));
    let old_text = std::fs::read_to_string(&file).ok();
    std::fs::create_dir_all(&tenants_dir).map_err(|e| io("cannot create tenants_dir", e))?;
    let text = store::text(name, &after).map_err(LifecycleError::Io)?;
    store::write_atomic(&file, &text).map_err(|e| io(&format!("cannot write {}", file.display()), e))?;
    let entry = record::Entry {
        at: now_utc(),
        who: who.to_owned(),
        operation: operation.to_owned(),
        tenant: name.to_owned(),
        from: before.as_ref().map(|t| t.status.as_str().to_owned()),
        to: after.status.as_str().to_owned(),
        prefix: Some(after.prefix.clone()),
        counts: None,
        ok: None,
    };
    if let Err(e) = record::append(&state_dir, &entry) {
        // No change without its record: the file goes back to what it was.
        let _ = match &old_text {
            Some(t) => store::write_atomic(&file, t),
            None => std::fs::remove_file(&file),
        };
        return Err(io("cannot append to the lifecycle record; the change was undone", e));
    }
    tracing::info!(tenant = name, operation, who, to = after.status.as_str(), "tenant lifecycle change");
    Ok(Changed {
        tenant: name.to_owned(),
        operation,
        from: before.map(|t| t.status),
        to: after.status,
        result: "changed",
    })
}

/// The tenant after `op`, `None` when it already is so.
fn next(name: &str, t: &Tenant, op: &Operation) -> Result<Option<Tenant>, LifecycleError> {
    use TenantStatus as S;
    let deleting = || LifecycleError::NotFrom {
        tenant: name.to_owned(),
        status: "deleting",
        hint: "undelete it first (it comes back suspended)",
    };
    let to = |status: S| (t.status != status).then(|| Tenant { status, deleted_at: None, ..t.clone() });
    Ok(match (op, t.status) {
        (Operation::Delete, S::Deleting) | (Operation::Undelete, S::Active | S::Suspended | S::ReadOnly) => None,
        (Operation::Delete, _) => Some(Tenant { status: S::Deleting, deleted_at: Some(now_utc()), ..t.clone() }),
        (Operation::Undelete, S::Deleting) => to(S::Suspended),
        (Operation::Suspend | Operation::Resume | Operation::ReadOnly | Operation::Place { .. }, S::Deleting) => {
            return Err(deleting())
        }
        (Operation::Place { upstream, status, isolation }, _) => {
            (t.upstream != *upstream || t.status != *status || t.isolation != *isolation).then(|| Tenant {
                upstream: upstream.clone(),
                status: *status,
                isolation: *isolation,
                deleted_at: None,
                ..t.clone()
            })
        }
        (Operation::Suspend, _) => to(S::Suspended),
        (Operation::Resume, _) => to(S::Active),
        (Operation::ReadOnly, _) => to(S::ReadOnly),
        (Operation::Create(_), _) => unreachable!("a create has no current tenant"),
    })
}

/// Whether `op` on the managed tenant `name` would be accepted now, judged as [`apply`] judges
/// it (the whole resulting config), without writing anything: a move asks this of its switch
/// before it copies anything.
pub fn check(config_path: &Path, name: &str, op: &Operation) -> Result<(), LifecycleError> {
    let loaded = config::load(config_path)?;
    dirs(&loaded)?;
    let current = loaded.config.tenants.get(name).ok_or_else(|| LifecycleError::UnknownTenant(name.to_owned()))?;
    if !loaded.tenant_files.contains_key(name) {
        return Err(LifecycleError::Inline(name.to_owned()));
    }
    if let Some(after) = next(name, current, op)? {
        let mut whole = loaded.config.clone();
        whole.tenants.insert(name.to_owned(), after);
        config::validate_config(&whole).map_err(LifecycleError::Invalid)?;
    }
    Ok(())
}

fn dirs(loaded: &Loaded) -> Result<(PathBuf, PathBuf), LifecycleError> {
    match (loaded.tenants_dir(), loaded.state_dir()) {
        (Some(t), Some(s)) => Ok((t, s)),
        _ => Err(LifecycleError::NotConfigured),
    }
}

/// One tenant as `list` and `show` present it.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub name: String,
    /// `file` (managed here) or `config` (defined in the config file).
    pub defined_in: &'static str,
    pub status: TenantStatus,
    pub prefix: String,
    pub upstream: String,
    pub isolation: config::Isolation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    /// For a `deleting` tenant: from when its data may be purged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge_allowed_at: Option<String>,
}

/// Every tenant of the config at `config_path`, by name.
pub fn list(config_path: &Path) -> Result<Vec<View>, LifecycleError> {
    let loaded = config::load(config_path)?;
    Ok(loaded.config.tenants.iter().map(|(name, t)| view(&loaded, name, t)).collect())
}

/// One tenant.
pub fn show(config_path: &Path, name: &str) -> Result<View, LifecycleError> {
    let loaded = config::load(config_path)?;
    let t = loaded.config.tenants.get(name).ok_or_else(|| LifecycleError::UnknownTenant(name.to_owned()))?;
    Ok(view(&loaded, name, t))
}

fn view(loaded: &Loaded, name: &str, t: &Tenant) -> View {
    View {
        name: name.to_owned(),
        defined_in: if loaded.tenant_files.contains_key(name) { "file" } else { "config" },
        status: t.status,
        prefix: t.prefix.clone(),
        upstream: t.upstream.clone(),
        isolation: t.isolation,
        deleted_at: t.deleted_at.clone(),
        purge_allowed_at: super::purge_allowed_at(t, &loaded.config.lifecycle).map(super::rfc3339),
    }
}
