//! All integration tests in one binary (one link step): fhir-fence runs in-process on
//! loopback ports bound to 0, in front of either an in-process fake upstream (edge cases)
//! or the real HAPI server started by `scripts/hapi` (end to end).
mod support;

mod adopt;
mod audit;
mod audit_events;
mod export_fake;
mod export_hapi;
mod fake_upstream;
mod fastline_differential;
mod fhirpath_patch;
mod hapi_e2e;
mod identity;
mod identity_provider;
mod identity_provider_fake;
mod introspection;
mod lifecycle_state;
mod limits;
mod limits_redis;
mod listener_tls;
mod medplum;
mod metrics;
mod module_cycles;
mod observe;
mod patch_entries;
mod reload;
mod replay;
mod replay_classes;
mod scale;
mod shape_r4;
mod shutdown;
mod smart_hapi;
mod tenant_data;
mod tenant_move;
mod upstream_oauth2;
mod upstream_tls;
mod webhook;
mod workers;
mod write_guard;
