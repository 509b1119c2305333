//! The outbound gate: every body that leaves fhir-fence for a client is made here, from an
//! upstream answer, by a check that proves it the caller's (fail closed: what cannot be proven
//! does not leave).
//!
//! - `resource`  — one parsed resource: the caller's marker and id prefix, references kept inside
//!   the tenant; markers stripped, ids and references turned back into the caller's
//! - `bundle`    — searchset and history Bundles, entry by entry; `total` and paging links
//! - `fastline`  — the same check as `resource` in one pass over the bytes (reads, export lines)
//! - `fastbundle` — a searchset Bundle in one pass, built from `fastline`'s cuts
//! - `subscription` — a stored Subscription shown with the criteria its writer wrote
//! - `parameters` — `$meta`'s Parameters and `$validate`'s OperationOutcome
//! - `export`    — export error and deleted-file lines (resource lines: `resource`, `ExportLines`)
//!
//! Their product is [`Checked`], the only body `answer` sends and the only resource a Bundle
//! fhir-fence composes ([`Composed`]) embeds.
pub mod bundle;
mod checked;
pub mod export;
pub mod fastbundle;
pub mod fastline;
pub mod parameters;
pub mod resource;
pub mod subscription;

pub use bundle::{bundle, Filtered};
pub use checked::{Checked, Composed};
pub use fastline::{fast_line, ExportLines, FastLine};
pub use resource::{public_url, resource, resource_bytes};
