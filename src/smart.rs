//! SMART App Launch scopes (v2, and v1's `.read`/`.write`), applied **after** the tenant rule:
//! the tenant decides whose data a request may touch at all; the token's scopes then narrow
//! what it may do there. An issuer opts in with `scopes = "smart-v2"` (default `"ignore"`: the
//! tenant rule alone).
//!
//! - `scopes` — the grant a token carries: its `scope`/`scp` claim parsed into
//!   `(context, type, c r u d s)` and its `patient` launch context
//! - `permit` — what an interaction needs, and whether the grant gives it: in full
//!   (`user/`, `system/`), confined to the launch patient's compartment (`patient/`), or not
//!   (403 naming the scope that is missing)
mod permit;
mod scopes;

pub use permit::{permit, Access, SmartError};
pub use scopes::{Context, Grant, Perms};
