//! Running beside a FHIR server on Kubernetes: the sidecar container as `deploy/` defines it,
//! `fhir-fence inject`, which adds it to a team's own manifests, and `fhir-fence webhook`, which
//! adds it to Pods as they are created.
//!
//! - `sidecar`   — the container, its volumes, its ports
//! - `inject`    — manifests in, manifests with the sidecar out (annotated workloads only);
//!   `inject_object` is the one place the annotations are read
//! - `exposure`  — what would leave the FHIR server reachable around fhir-fence (its address,
//!   ports, probes, Services), read as Kubernetes and Spring Boot read them
//! - `admission` — an AdmissionReview in, its answer out (the same change, as a JSON Patch)
//! - `webhook`   — the HTTPS server the API server calls
pub mod admission;
pub mod exposure;
pub mod inject;
pub mod sidecar;
pub mod webhook;
