//! Configuration: the TOML schema (`schema`) and its validation into a ready-to-serve snapshot (`load`).
//!
//! A config is parsed with `deny_unknown_fields`, validated as a whole, and only then used;
//! a config that fails validation never serves a request.
mod load;
mod schema;

pub use load::{load, ConfigError, Loaded};
pub use schema::*;
