//! Running beside a FHIR server on Kubernetes: the sidecar container as `deploy/` defines it,
//! and `fhir-fence inject`, which adds it to a team's own manifests.
//!
//! - `sidecar` — the container, its volumes, its ports
//! - `inject`  — manifests in, manifests with the sidecar out (annotated workloads only)
pub mod inject;
pub mod sidecar;
