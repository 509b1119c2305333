//! Tenant-agnostic FHIR knowledge: strict JSON, the R4 shape every body must have, references,
//! search parameters, OperationOutcome.
//! Nothing in here knows about tenants; `scope` and `tenancy` build on it.
pub mod canonical;
pub mod canonical_params;
pub mod capabilities;
pub mod compartment;
pub mod fhirpath_patch;
pub mod json;
pub mod outcome;
pub mod patch;
pub mod reference;
pub mod server_wide;
pub mod shape;
