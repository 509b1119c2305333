//! Conformance runs: record FHIR traffic against a plain server, replay it through fhir-fence
//! as several tenants at once, and report isolation and transparency (`docs/replay-format.md`).
//!
//! `format` is the traffic file; `record` and `har` make one; `run` replays it (with `ids`
//! mapping server-assigned ids and `compare` judging transparency); `report` writes results.
pub mod command;
pub mod compare;
pub mod format;
pub mod har;
pub mod ids;
pub mod record;
pub mod report;
pub mod run;

/// The coding system of the marker tag a replay adds to every resource a tenant writes.
pub const MARKER_SYSTEM: &str = "https://fhir-fence.dev/CodeSystem/replay-marker";
