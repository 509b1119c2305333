//! Tenant lifecycle as routine operations (paper §5.5): tenants kept as data, one file per
//! tenant in `lifecycle.tenants_dir` (read by `config::load` into the same tenant map as the
//! config file's, so nothing downstream tells them apart), and their state changes — create,
//! suspend, resume, read-only, delete, undelete — made by one library function
//! ([`change::apply`]) for the CLI (`command.rs`) and the admin API (`admin_api.rs`) alike.
//!
//! `store.rs` writes a tenant file atomically, `record.rs` appends each change to the
//! lifecycle record (`state_dir/lifecycle.jsonl`), which is never deleted with a tenant;
//! `lock.rs` makes changes from several processes take turns.
//! The running server sees a change through its file watch (`live.rs`), or at once when the
//! admin API reloads before it answers.
pub mod admin_api;
pub mod change;
pub mod command;
pub mod lock;
pub mod record;
pub mod store;

use crate::config::{Lifecycle, Tenant, TenantStatus};
use time::OffsetDateTime;

/// When a `deleting` tenant's data may be purged: its `deleted_at` plus
/// `lifecycle.delete_grace_secs` (until then `undelete` brings it back). `None` for a tenant
/// that is not `deleting` (or, which validation prevents, has no valid `deleted_at`).
pub fn purge_allowed_at(tenant: &Tenant, lifecycle: &Lifecycle) -> Option<OffsetDateTime> {
    if tenant.status != TenantStatus::Deleting {
        return None;
    }
    let at = crate::config::utc_timestamp(tenant.deleted_at.as_deref()?)?;
    at.checked_add(time::Duration::seconds(i64::try_from(lifecycle.delete_grace_secs).ok()?))
}

/// Now, as an RFC 3339 UTC timestamp to the second (`deleted_at`, the lifecycle record's `at`).
pub fn now_utc() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(status: TenantStatus, deleted_at: Option<&str>) -> Tenant {
        toml::from_str::<Tenant>("prefix = \"a\"\nupstream = \"main\"\nstatus = \"active\"")
            .map(|t| Tenant { status, deleted_at: deleted_at.map(str::to_owned), ..t })
            .unwrap()
    }

    #[test]
    fn purge_is_allowed_after_the_grace() {
        let l = Lifecycle { delete_grace_secs: 3600, ..Lifecycle::default() };
        let t = tenant(TenantStatus::Deleting, Some("2025-01-31T12:00:00Z"));
        assert_eq!(purge_allowed_at(&t, &l).map(rfc3339).as_deref(), Some("2025-01-31T13:00:00Z"));
        assert_eq!(purge_allowed_at(&tenant(TenantStatus::Suspended, None), &l), None);
        assert_eq!(Lifecycle::default().delete_grace_secs, 7 * 24 * 3600);
    }

    #[test]
    fn timestamps_are_utc() {
        assert!(crate::config::utc_timestamp(&now_utc()).is_some());
        assert!(crate::config::utc_timestamp("2025-01-31T12:00:00+01:00").is_none());
        assert!(crate::config::utc_timestamp("yesterday").is_none());
    }
}
