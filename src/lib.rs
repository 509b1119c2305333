//! fhir-fence: a sidecar proxy that enforces tenant isolation in front of an unmodified FHIR R4 server.
//!
//! Start with `docs/ARCHITECTURE.md`; the request's path is `server` → `pipeline` (`identity`,
//! `request`, `route`, `limits`) → `dispatch` → `scope::*` → `upstream` → `outbound` → `answer`,
//! or `error` for refusals.
#![forbid(unsafe_code)]

pub mod admin;
pub mod answer;
pub mod audit;
pub mod bulk;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod connection;
pub mod dispatch;
pub mod error;
pub mod fhir;
pub mod global_rate;
pub mod headers;
pub mod identity;
pub mod kube;
pub mod lifecycle;
pub mod limits;
pub mod listener_tls;
pub mod live;
pub mod metadata;
pub mod metrics;
pub mod observe;
pub mod outbound;
pub mod pipeline;
pub mod replay;
pub mod request;
pub mod route;
pub mod scope;
pub mod seal;
pub mod seal_keys;
pub mod server;
pub mod server_cert;
pub mod shared_store;
pub mod smart;
pub mod state;
pub mod tenancy;
pub mod tenant_data;
pub mod tenant_runtime;
pub mod upstream;
pub mod upstream_gzip;
pub mod upstream_link;
pub mod upstream_token;
pub mod workers;
