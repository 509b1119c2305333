//! Classifying a request into one FHIR interaction fhir-fence supports, or refusing it.
//!
//! This is the allow-list: anything not matched here never reaches the upstream. Paths are
//! matched on raw segments (no `%`-escapes, no empty or dot segments), so `//`, `%2F`, `..`
//! and `;jsessionid` tricks fail here instead of being normalised differently upstream. Single
//! requests and the entries of batch and transaction Bundles are classified by the same
//! [`classify`].
//!
//! - `interaction` — what a request can be: [`Interaction`], [`ExportLevel`], [`Op`]
//! - `classify`    — method, path and parameters → an [`Interaction`], or a refusal
//! - `operation`   — `$`-operations: the ones fhir-fence scopes, the ones refused and why, `$export`
//! - `query`       — strict query-string decoding, and encoding for the upstream
//! - `entry`       — a Bundle entry's `request` read as the request it stands for
//! - `values`      — the values of the fixed parameters passed on (`_count`, `_since`, `_at`, `_type`)
//! - `error`       — [`RouteError`]
mod classify;
mod entry;
mod error;
mod interaction;
mod operation;
mod query;
mod values;

pub use classify::classify;
pub use entry::{entry_request, EntryRequest};
pub use error::RouteError;
pub use interaction::{ExportLevel, Interaction, Op};
pub use query::{encode_component, encode_query, parse_query, Params};
