//! Configuration: the TOML schema (`schema`) and its validation into a ready-to-serve snapshot (`load`);
//! `iss_pattern`: what an issuer's `iss` accepts.
//!
//! A config is parsed with `deny_unknown_fields`, validated as a whole, and only then used;
//! a config that fails validation never serves a request.
mod iss_pattern;
mod load;
mod schema;

pub use iss_pattern::{IssPattern, PLACEHOLDER};
pub use load::{load, tenant_files_in, utc_timestamp, valid_tenant_name, validate_config, ConfigError, Loaded};
pub use schema::*;
