//! Tenant-agnostic FHIR knowledge: strict JSON, references, search parameters, OperationOutcome.
//! Nothing in here knows about tenants; `scope` and `tenancy` build on it.
pub mod canonical;
pub mod capabilities;
pub mod json;
pub mod outcome;
pub mod reference;
