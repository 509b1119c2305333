//! Bulk Data export (`$export`), scoped at the proxy in front of an unmodified server.
//!
//! - `kickoff`  — the client's `$export` becomes an upstream export that can only see the
//!   caller's data: explicit `_type`, the tenant parameter inside every `_typeFilter`, Group
//!   and Patient ownership checked, NDJSON only, no job reuse across tenants
//! - `handle`   — sealed job and file handles: the upstream's polling and file URLs never leave
//! - `locations` — the forms of status and file URLs each upstream uses (HAPI's, Helios's)
//! - `cancelled` — cancelled jobs, shared between replicas through Redis when `[redis]` is set
//! - `status`   — polling (202 passed on, the 200 manifest rewritten) and cancellation
//! - `download` — each file streamed through `ndjson`, the constant-memory line filter, whose
//!   common case `fastline` checks in one pass over the bytes
pub mod cancelled;
pub mod download;
pub mod handle;
pub mod kickoff;
pub mod locations;
pub mod ndjson;
pub mod status;

/// What can go wrong with an export request, before any file streams.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("a Bulk Data kickoff needs the header `Prefer: respond-async`")]
    PreferAsync,
    #[error("invalid export parameter: {0}")]
    Param(String),
    #[error("export parameter {0} is not supported by fhir-fence")]
    Unsupported(String),
    #[error("only NDJSON output (application/fhir+ndjson) is supported, not {0:?}")]
    OutputFormat(String),
    #[error("resource type {0} cannot be exported: {1}")]
    NotExportable(String, &'static str),
    /// One answer for another tenant's, tampered, expired, cancelled and unknown handles.
    #[error("export job or file not known")]
    UnknownHandle,
    /// Redis (`[redis]`) could not say whether the job was cancelled on another replica (or
    /// record a cancel): refused rather than serve a job that may be cancelled.
    #[error("whether this export job was cancelled cannot be checked now (the state shared between replicas is unreachable); retry shortly")]
    CancellationsUnknown,
}
