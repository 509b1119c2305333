//! Who is calling: verified bearer JWTs (RFC 8725) → a [`Caller`] bound to one tenant.
//!
//! `keys` turns the config's key sources into decoding keys (`remote`: an identity provider's,
//! fetched and rotated over HTTPS, `tls`), `verify` checks a token (`introspect`: an opaque one,
//! at its provider) and resolves the tenant
//! (`tenant_source`: from a claim, the issuer, or the issuer's URL), `mint` signs development
//! tokens for `fhir-fence token`. `tls` and `client_auth` also serve fhir-fence's other calls as
//! a client (`upstream_token`).
pub mod client_auth;
mod introspect;
mod jwks;
mod keys;
mod mint;
pub mod remote;
mod tenant_source;
pub mod tls;
mod verify;

pub use keys::IssuerKeys;
pub use mint::{mint, MintError};
pub use verify::{strict_header, AuthError, Caller, Verifier};
