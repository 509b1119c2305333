//! Why a request was not classified; `error.rs` (crate root) turns each into its status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("operation {0} is refused: {1}")]
    OperationRefused(String, &'static str),
    #[error("{0} is not a FHIR endpoint of this server")]
    NotFhir(String),
    #[error("malformed request path: {0}")]
    BadPath(String),
    #[error("malformed query string: {0}")]
    BadQuery(String),
    #[error("method {0} is not allowed here")]
    Method(String),
    #[error("{0} is not supported by fhir-fence yet")]
    NotSupported(String),
    #[error("malformed Bundle entry: {0}")]
    BadEntry(String),
    #[error("parameter {param:?} is not allowed on {interaction}")]
    Param { param: String, interaction: &'static str },
    #[error("parameter {param:?} on {interaction} must be {expected}")]
    Value { param: String, interaction: &'static str, expected: &'static str },
}
