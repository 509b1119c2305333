//! Scoping: one module per interaction family turns a client request into an upstream request
//! that can only touch the caller's tenant; `outbound` checks every answer on the way out.
//!
//! - `read`     — read, vread, instance history (the id prefix makes foreign ids unreachable)
//! - `search`   — type, system and compartment searches, type and system history
//! - `params`   — search parameters and criteria scoped: tenant parameter added, ids and references prefixed
//! - `write`    — create, update, delete: stamp the marker, prefix ids, rewrite references
//! - `subscription` — rest-hook Subscriptions: criteria scoped, destinations allow-listed
//! - `refcheck` — every reference in a write must exist in the caller's tenant
//! - `canonicals` — canonical URLs (resolved server-wide) must name the caller's definitions or shared ones
//! - `conditional` — `If-None-Exist`, `[type]?criteria` writes, conditional reads
//! - `confine`  — a `patient/`-scoped (SMART) request narrowed to the launch patient's compartment
//! - `transaction` — transaction Bundles: every entry scoped, one atomic upstream transaction
//! - `operation` — `$everything`, `$meta`, `$meta-add`, `$meta-delete`, `$validate` (per tenant allow-list)
//! - `paging`   — sealed page tokens instead of upstream `_getpages` links
//! - `testing`  — (tests only) a `Ctx` for the unit tests beside these modules
pub mod canonicals;
pub mod conditional;
pub mod confine;
pub mod operation;
pub mod paging;
pub mod params;
pub mod read;
pub mod refcheck;
pub mod search;
pub mod subscription;
#[cfg(test)]
pub(crate) mod testing;
pub mod transaction;
pub mod write;

use crate::state::Snapshot;
use crate::tenancy::{TenancyError, Tenant};
use crate::upstream::Upstream;

/// Everything a scope module needs to know about the request it is scoping.
pub struct Ctx<'a> {
    pub snap: &'a Snapshot,
    pub tenant: &'a Tenant,
    pub upstream: &'a Upstream,
    pub correlation: &'a str,
    /// A fingerprint of the caller's SMART grant (0: scopes not enforced): page tokens are
    /// bound to it, so a page opens only for the grant that ran its search.
    pub grant: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// One answer for "missing", "deleted" and "another tenant's".
    #[error("resource {0} is not known")]
    NotFound(String),
    /// The caller's own resource, deleted (the upstream said 410 for an id in the caller's
    /// namespace, which no other tenant can write: nothing of anyone else is revealed).
    #[error("resource {0} has been deleted")]
    Gone(String),
    #[error("unknown resource type {0:?}")]
    UnknownType(String),
    /// The upstream serves the type but cannot search it by the tenant scope's parameter.
    #[error("searches of {0} are not supported by fhir-fence on this upstream: it cannot search {0} by the tenant scope's parameter")]
    Unscoped(String),
    #[error("invalid search parameter: {0}")]
    Param(String),
    #[error("{0} is not supported by fhir-fence yet")]
    ParamNotSupported(String),
    #[error("invalid resource body: {0}")]
    Body(String),
    #[error(transparent)]
    Id(TenancyError),
    /// The patch's result breaks a rule (a reference, a tenant coding, the R4 shape) or the
    /// patch leaves fhir-fence's bounds or FHIRPath subset: 422.
    #[error("the patch cannot be applied: {0}")]
    Patch(String),
    /// The patch does not apply to the resource (a path that finds nothing or too much, an
    /// index out of range, a failed `test`): 400, as HAPI answers it.
    #[error("{0}")]
    PatchFailed(String),
    #[error("meta carries a tenant coding of another tenant")]
    ForeignMarker,
    /// One answer for "missing" and "another tenant's".
    #[error("reference {0:?} does not resolve to a resource this tenant can use")]
    Reference(String),
    #[error("reference {0:?} is not allowed: {1}")]
    ReferenceForm(String, &'static str),
    #[error("canonical {0:?} is not allowed: {1}")]
    Canonical(String, &'static str),
    /// The upstream refused; the status is passed on, its diagnostics (the `String`, which may
    /// name other tenants' resources) only reach the log.
    #[error("the upstream refused with status {0}: {1}")]
    Refused(u16, String),
    /// The upstream's answer could not be proven to belong to the caller.
    #[error("the upstream answer could not be verified as the caller's")]
    Unprovable,
    /// The upstream does not declare this capability; fhir-fence will not guess.
    #[error("{0} is not supported by the upstream server (its CapabilityStatement does not declare it)")]
    UpstreamUnsupported(&'static str),
    /// The upstream does not serve an operation on a resource (or type) proven to exist.
    #[error("operation ${0} is not served by the upstream server")]
    OperationUnserved(&'static str),
    #[error("operation ${0} is not enabled for this tenant")]
    OperationDisabled(&'static str),
    #[error("writing {0} through fhir-fence is refused: {1}")]
    NotWritable(String, &'static str),
    #[error("Subscription refused: {0}")]
    Subscription(String),
    #[error("the criteria match more than one resource")]
    MultipleMatches,
    #[error("page token is not valid")]
    PageToken,
    #[error("the upstream's capabilities are not loaded yet")]
    CapabilitiesUnavailable,
    /// A JSON Patch whose result (or any step on the way) is larger than the body limit.
    #[error("the patched resource would be larger than {0} bytes")]
    PatchTooLarge(usize),
    /// Talking to the upstream failed (answered like any upstream failure, `error.rs`).
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
}

/// The refusal for an upstream answer with an unexpected status, keeping its diagnostics for the log.
pub fn refused(answer: &crate::upstream::Answer) -> ScopeError {
    let detail = answer
        .body
        .as_ref()
        .and_then(|b| b.get("issue"))
        .and_then(|i| i.get(0))
        .and_then(|i| i.get("diagnostics"))
        .and_then(|d| d.as_str())
        .unwrap_or("(no diagnostics)");
    ScopeError::Refused(answer.status.as_u16(), detail.to_owned())
}

impl From<TenancyError> for ScopeError {
    fn from(e: TenancyError) -> Self {
        match e {
            TenancyError::ForeignMarker => ScopeError::ForeignMarker,
            other => ScopeError::Id(other),
        }
    }
}
