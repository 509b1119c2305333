//! The one place where errors become HTTP responses: a FHIR `OperationOutcome` with a status.
//!
//! Each module has its own error type; this module decides, in one `match`, what the client
//! learns from each. Anything about the upstream is reduced to a generic message plus the
//! correlation id; the original detail goes to the log only.
use crate::bulk::ExportError;
use crate::fhir::outcome::operation_outcome;
use crate::identity::AuthError;
use crate::limits::LimitError;
use crate::request::RequestError;
use crate::route::RouteError;
use crate::scope::ScopeError;
use crate::smart::SmartError;
use crate::upstream::UpstreamError;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Request(RequestError),
    #[error(transparent)]
    Scope(ScopeError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The token's SMART scopes do not allow the request.
    #[error(transparent)]
    Smart(#[from] SmartError),
    /// The public listener has `server.max_connections` open (answered on the extra connection).
    #[error("fhir-fence has too many client connections open; retry shortly")]
    Overloaded,
    /// The tenant is `read-only` (frozen while its data is moved or copied) and the request
    /// changes data; `retry_after` is `lifecycle.read_only_retry_after_secs`.
    #[error("the tenant is read-only for now (its data is being moved or is frozen): reads and searches work, changes are refused; retry later")]
    ReadOnly { retry_after: u64 },
}

/// A scope error that is really another layer's is answered as that layer's (the upstream
/// failing, a patched body over the size limit), so status, metrics and log read the same
/// wherever it happened.
impl From<ScopeError> for Error {
    fn from(e: ScopeError) -> Self {
        match e {
            ScopeError::Upstream(u) => Error::Upstream(u),
            ScopeError::PatchTooLarge(limit) => Error::Request(RequestError::TooLarge(limit)),
            e => Error::Scope(e),
        }
    }
}

/// Form search parameters are answered like the same parameters in the URL.
impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Form(r) => Error::Route(r),
            e => Error::Request(e),
        }
    }
}

impl Error {
    /// Status, FHIR issue code, and the diagnostics the client may see.
    fn classify(&self, correlation: &str) -> (StatusCode, &'static str, String) {
        use StatusCode as S;
        let shown = || self.to_string();
        match self {
            Error::Auth(AuthError::Suspended) => (S::FORBIDDEN, "suspended", shown()),
            Error::Auth(AuthError::Unavailable(_)) => (
                S::SERVICE_UNAVAILABLE,
                "transient",
                format!("the token could not be checked with its identity provider now; retry shortly (correlation id {correlation})"),
            ),
            Error::Auth(_) => (S::UNAUTHORIZED, "login", shown()),
            Error::Smart(_) => (S::FORBIDDEN, "forbidden", shown()),
            Error::Route(RouteError::NotFhir(_)) => (S::NOT_FOUND, "not-found", shown()),
            Error::Route(RouteError::Method(_)) => (S::METHOD_NOT_ALLOWED, "not-supported", shown()),
            Error::Route(RouteError::OperationRefused(..)) => (S::FORBIDDEN, "forbidden", shown()),
            Error::Route(RouteError::NotSupported(_)) => (S::NOT_IMPLEMENTED, "not-supported", shown()),
            Error::Route(RouteError::Param { .. }) => (S::BAD_REQUEST, "not-supported", shown()),
            Error::Route(_) => (S::BAD_REQUEST, "invalid", shown()),
            Error::Request(e) => {
                let (status, code) = match e {
                    RequestError::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, "too-long"),
                    RequestError::MediaType(_) | RequestError::PatchFormat(_) | RequestError::Encoded => {
                        (S::UNSUPPORTED_MEDIA_TYPE, "not-supported")
                    }
                    RequestError::NotAcceptable => (S::NOT_ACCEPTABLE, "not-supported"),
                    RequestError::Json(_)
                    | RequestError::NotParameters
                    | RequestError::Shape(_)
                    | RequestError::UnexpectedBody
                    | RequestError::Header(_) => (S::BAD_REQUEST, "invalid"),
                    RequestError::Read | RequestError::Form(_) => (S::BAD_REQUEST, "invalid"),
                    RequestError::SlowBody(_) => (S::REQUEST_TIMEOUT, "timeout"),
                };
                (status, code, shown())
            }
            Error::Scope(e) => match e {
                // HAPI's issue code for a resource it does not know (`processing`), so a missing
                // resource reads the same through fhir-fence as on the plain server.
                ScopeError::NotFound(_) => (S::NOT_FOUND, "processing", shown()),
                ScopeError::PageToken => (S::NOT_FOUND, "not-found", shown()),
                // HAPI's code for it (`processing`), so a client sees what the server says.
                ScopeError::Gone(_) => (S::GONE, "processing", shown()),
                ScopeError::OperationDisabled(_) | ScopeError::NotWritable(..) => (S::FORBIDDEN, "forbidden", shown()),
                ScopeError::Subscription(_) => (S::UNPROCESSABLE_ENTITY, "business-rule", shown()),
                ScopeError::MultipleMatches => (S::PRECONDITION_FAILED, "multiple-matches", shown()),
                ScopeError::UpstreamUnsupported(_) | ScopeError::Unscoped(_) | ScopeError::OperationUnserved(_) => {
                    (S::NOT_IMPLEMENTED, "not-supported", shown())
                }
                ScopeError::UnknownType(_) | ScopeError::Body(_) | ScopeError::Id(_) => {
                    (S::BAD_REQUEST, "invalid", shown())
                }
                ScopeError::Param(_) => (S::BAD_REQUEST, "invalid", shown()),
                ScopeError::ParamNotSupported(_) => (S::BAD_REQUEST, "not-supported", shown()),
                // HAPI's status and code for a patch that does not apply.
                ScopeError::PatchFailed(_) => (S::BAD_REQUEST, "processing", shown()),
                ScopeError::ForeignMarker
                | ScopeError::Reference(_)
                | ScopeError::ReferenceForm(..)
                | ScopeError::Canonical(..)
                | ScopeError::Patch(_) => (S::UNPROCESSABLE_ENTITY, "processing", shown()),
                ScopeError::Refused(upstream_status, _) => {
                    // An upstream server error is a bad gateway to the client; 4xx pass on as they are.
                    // A 405 answers a method fhir-fence routed because the upstream serves it: the
                    // upstream refuses a feature of the request (HAPI: `:contains` disabled), 400.
                    let status = match S::from_u16(*upstream_status) {
                        Ok(S::METHOD_NOT_ALLOWED) => S::BAD_REQUEST,
                        Ok(s) if s.is_client_error() => s,
                        _ => S::BAD_GATEWAY,
                    };
                    let code = match status {
                        S::CONFLICT | S::PRECONDITION_FAILED => "conflict",
                        S::NOT_FOUND | S::GONE => "not-found",
                        _ if *upstream_status == 405 => "not-supported",
                        _ => "processing",
                    };
                    let msg = format!(
                        "the upstream server refused the request (HTTP {}); details are withheld, correlation id {correlation}",
                        status.as_u16()
                    );
                    (status, code, msg)
                }
                ScopeError::Unprovable => (
                    S::BAD_GATEWAY,
                    "exception",
                    format!("the upstream answer could not be verified as the caller's; correlation id {correlation}"),
                ),
                // Not reached through `From` (which answers them as their own layer's errors).
                ScopeError::PatchTooLarge(_) => (S::PAYLOAD_TOO_LARGE, "too-long", shown()),
                ScopeError::Upstream(_) => (
                    S::BAD_GATEWAY,
                    "exception",
                    format!("the upstream server's answer was unusable; correlation id {correlation}"),
                ),
                ScopeError::CapabilitiesUnavailable => (
                    S::SERVICE_UNAVAILABLE,
                    "transient",
                    "the upstream's CapabilityStatement is not loaded yet; retry shortly".into(),
                ),
            },
            Error::Limit(e) => (e.status(), "throttled", shown()),
            Error::Overloaded => (S::SERVICE_UNAVAILABLE, "transient", shown()),
            Error::ReadOnly { .. } => (S::SERVICE_UNAVAILABLE, "transient", shown()),
            Error::Export(e) => match e {
                ExportError::UnknownHandle => (S::NOT_FOUND, "not-found", shown()),
                ExportError::CancellationsUnknown => (S::SERVICE_UNAVAILABLE, "transient", shown()),
                ExportError::Unsupported(_) | ExportError::OutputFormat(_) => {
                    (S::BAD_REQUEST, "not-supported", shown())
                }
                ExportError::PreferAsync | ExportError::Param(_) | ExportError::NotExportable(..) => {
                    (S::BAD_REQUEST, "invalid", shown())
                }
            },
            Error::Upstream(UpstreamError::Saturated(_)) => (S::SERVICE_UNAVAILABLE, "throttled", shown()),
            // fhir-fence's own credentials for the upstream: not the client's problem, and no
            // detail of them (the token endpoint's answer) is shown.
            Error::Upstream(UpstreamError::Token(_, e)) if e.transient() => (
                S::SERVICE_UNAVAILABLE,
                "transient",
                format!("fhir-fence could not obtain its credentials for the upstream server now; retry shortly (correlation id {correlation})"),
            ),
            Error::Upstream(UpstreamError::Token(..) | UpstreamError::CredentialsRefused(_)) => (
                S::BAD_GATEWAY,
                "exception",
                format!("the upstream server did not accept fhir-fence's credentials; correlation id {correlation}"),
            ),
            Error::Upstream(UpstreamError::Timeout(_)) => (
                S::GATEWAY_TIMEOUT,
                "timeout",
                format!("the upstream server did not answer in time; correlation id {correlation}"),
            ),
            Error::Upstream(_) => (
                S::BAD_GATEWAY,
                "exception",
                format!("the upstream server's answer was unusable; correlation id {correlation}"),
            ),
        }
    }

    /// For metrics: why fhir-fence itself refused, or `None` when the refusal or failure came
    /// from the upstream (counted as an upstream error, or passed on as the upstream's answer).
    pub fn refusal_reason(&self) -> Option<&'static str> {
        match self {
            Error::Auth(AuthError::Suspended) => Some("suspended"),
            Error::Auth(AuthError::Unavailable(_)) => Some("identity-provider"),
            Error::Auth(_) => Some("unauthenticated"),
            Error::Route(_) => Some("route"),
            Error::Request(_) => Some("request"),
            Error::Upstream(UpstreamError::Saturated(_)) => Some("upstream-connections"),
            Error::Scope(ScopeError::Refused(..)) | Error::Upstream(_) => None,
            Error::Scope(ScopeError::Unprovable) => Some("unprovable"),
            Error::Scope(ScopeError::NotFound(_) | ScopeError::Gone(_)) => Some("not-found"),
            Error::Scope(_) => Some("scope"),
            Error::Export(_) => Some("export"),
            Error::Limit(_) => Some("limit"),
            Error::Smart(_) => Some("smart-scope"),
            Error::Overloaded => Some("connections"),
            Error::ReadOnly { .. } => Some("read-only"),
        }
    }

    /// A stable, bounded label naming this error's kind, `reason/variant`, where `reason` is
    /// [`refusal_reason`](Self::refusal_reason) (or `upstream` for an upstream failure): what
    /// observe mode counts a would-be refusal as (`observe`), never free text.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Route(e) => match e {
                RouteError::OperationRefused(..) => "route/operation-refused",
                RouteError::NotFhir(_) => "route/not-fhir",
                RouteError::BadPath(_) => "route/bad-path",
                RouteError::BadQuery(_) => "route/bad-query",
                RouteError::Method(_) => "route/method",
                RouteError::NotSupported(_) => "route/not-supported",
                RouteError::BadEntry(_) => "route/bad-entry",
                RouteError::Param { .. } => "route/param",
                RouteError::Value { .. } => "route/value",
            },
            Error::Request(e) => match e {
                RequestError::TooLarge(_) => "request/too-large",
                RequestError::MediaType(_) => "request/media-type",
                RequestError::PatchFormat(_) => "request/patch-format",
                RequestError::NotParameters => "request/not-parameters",
                RequestError::Encoded => "request/encoded",
                RequestError::NotAcceptable => "request/not-acceptable",
                RequestError::Json(_) => "request/json",
                RequestError::Shape(_) => "request/shape",
                RequestError::UnexpectedBody => "request/unexpected-body",
                RequestError::Header(_) => "request/header",
                RequestError::Read => "request/read",
                RequestError::SlowBody(_) => "request/slow-body",
                RequestError::Form(_) => "request/form",
            },
            Error::Scope(e) => match e {
                ScopeError::NotFound(_) => "not-found/not-found",
                ScopeError::Gone(_) => "not-found/gone",
                ScopeError::UnknownType(_) => "scope/unknown-type",
                ScopeError::Param(_) => "scope/param",
                ScopeError::ParamNotSupported(_) => "scope/param-not-supported",
                ScopeError::Body(_) => "scope/body",
                ScopeError::Id(_) => "scope/id",
                ScopeError::Patch(_) | ScopeError::PatchFailed(_) => "scope/patch",
                ScopeError::ForeignMarker => "scope/foreign-marker",
                ScopeError::Reference(_) => "scope/reference",
                ScopeError::ReferenceForm(..) => "scope/reference-form",
                ScopeError::Canonical(..) => "scope/canonical",
                ScopeError::Refused(..) => "upstream/refused",
                ScopeError::Unprovable => "unprovable/unprovable",
                ScopeError::UpstreamUnsupported(_) => "scope/upstream-unsupported",
                ScopeError::Unscoped(_) => "scope/unscoped",
                ScopeError::OperationUnserved(_) => "scope/operation-unserved",
                ScopeError::OperationDisabled(_) => "scope/operation-disabled",
                ScopeError::NotWritable(..) => "scope/not-writable",
                ScopeError::Subscription(_) => "scope/subscription",
                ScopeError::MultipleMatches => "scope/multiple-matches",
                ScopeError::PageToken => "scope/page-token",
                ScopeError::CapabilitiesUnavailable => "scope/capabilities-unavailable",
                ScopeError::PatchTooLarge(_) => "scope/patch-too-large",
                ScopeError::Upstream(_) => "upstream/failed",
            },
            Error::Smart(e) => match e {
                SmartError::Missing(_) => "smart-scope/missing",
                SmartError::NoPatient => "smart-scope/no-patient",
                SmartError::NotConfinable(..) => "smart-scope/not-confinable",
                SmartError::OutsideCompartment(_) => "smart-scope/outside-compartment",
                SmartError::CannotNarrow(_) => "smart-scope/cannot-narrow",
                SmartError::NarrowingModified(_) => "smart-scope/narrowing-modified",
                SmartError::NotThePatients(..) => "smart-scope/not-the-patients",
            },
            Error::Export(e) => match e {
                ExportError::PreferAsync => "export/prefer-async",
                ExportError::Param(_) => "export/param",
                ExportError::Unsupported(_) => "export/unsupported",
                ExportError::OutputFormat(_) => "export/output-format",
                ExportError::NotExportable(..) => "export/not-exportable",
                ExportError::UnknownHandle => "export/unknown-handle",
                ExportError::CancellationsUnknown => "export/cancellations-unknown",
            },
            Error::Auth(AuthError::Suspended) => "suspended/suspended",
            Error::Auth(AuthError::Unavailable(_)) => "identity-provider/unavailable",
            Error::Auth(_) => "unauthenticated/unauthenticated",
            Error::Limit(_) => "limit/limit",
            Error::Overloaded => "connections/connections",
            Error::ReadOnly { .. } => "read-only/read-only",
            Error::Upstream(UpstreamError::Saturated(_)) => "upstream-connections/saturated",
            Error::Upstream(_) => "upstream/failed",
        }
    }

    /// For metrics: the kind of upstream failure, if this is one.
    pub fn upstream_failure(&self) -> Option<&'static str> {
        match self {
            Error::Upstream(e) => Some(match e {
                UpstreamError::Connect(..) => "connect",
                UpstreamError::Timeout(_) => "timeout",
                UpstreamError::TooLarge(_) => "too-large",
                UpstreamError::NotJson(..) => "not-json",
                UpstreamError::BadJson(..) => "bad-json",
                UpstreamError::Encoding(..) => "encoding",
                UpstreamError::Request(_) => "request",
                UpstreamError::Token(..) => "token",
                UpstreamError::CredentialsRefused(_) => "credentials-refused",
                UpstreamError::Saturated(_) => return None,
            }),
            _ => None,
        }
    }

    /// The status and OperationOutcome for this error (logged here): a single request's answer
    /// ([`into_response`](Self::into_response)) or a batch entry's `response`.
    pub fn outcome(&self, correlation: &str) -> (StatusCode, serde_json::Value) {
        let (status, code, diagnostics) = self.logged(correlation);
        (status, serde_json::to_value(operation_outcome(code, &diagnostics)).expect("serialisable"))
    }

    /// The status, issue code and diagnostics of this error, logged here.
    fn logged(&self, correlation: &str) -> (StatusCode, &'static str, String) {
        let (status, code, diagnostics) = self.classify(correlation);
        if status.is_server_error() {
            tracing::warn!(correlation, error = %self, status = status.as_u16(), "request failed");
        } else if matches!(self, Error::Limit(_)) {
            // A tenant over its limit sends these by the thousand: a line each would make its
            // flood the log's (and every other tenant's) problem. Counted in
            // `fhir_fence_rate_limited_total` and `refused_total`, audited one by one.
            tracing::debug!(correlation, error = %self, status = status.as_u16(), "request refused");
        } else {
            tracing::info!(correlation, error = %self, status = status.as_u16(), "request refused");
        }
        (status, code, diagnostics)
    }

    /// The HTTP response for this error.
    pub fn into_response(self, correlation: &str) -> Response<Full<Bytes>> {
        // Serialised from the typed OperationOutcome: a flood of refusals builds no JSON tree.
        let (status, code, diagnostics) = self.logged(correlation);
        let body = serde_json::to_vec(&operation_outcome(code, &diagnostics)).expect("serialisable");
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json; charset=utf-8"));
        crate::headers::set_correlation(h, correlation);
        if matches!(
            self,
            Error::Upstream(UpstreamError::Saturated(_))
                | Error::Overloaded
                | Error::Export(ExportError::CancellationsUnknown)
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Error::ReadOnly { retry_after } = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        let token_unavailable = matches!(&self, Error::Upstream(UpstreamError::Token(_, e)) if e.transient());
        if matches!(self, Error::Auth(AuthError::Unavailable(_))) || token_unavailable {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        // A refused connection (the tenant's connection cap, a body that arrived too slowly) is
        // closed after this answer rather than kept for the next request.
        if matches!(self, Error::Limit(LimitError::Connections) | Error::Request(RequestError::SlowBody(_))) {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Error::Limit(e) = &self {
            for (k, v) in e.headers() {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(limit_header(k), v);
                }
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            let challenge = match self {
                Error::Auth(AuthError::Missing) => "Bearer",
                _ => "Bearer error=\"invalid_token\"",
            };
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        resp
    }
}

/// A header name of a limit refusal (`LimitError::headers`) without parsing it per refusal.
fn limit_header(name: &'static str) -> http::HeaderName {
    const RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
    const RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
    match name {
        "retry-after" => header::RETRY_AFTER,
        "ratelimit" => RATELIMIT,
        "ratelimit-policy" => RATELIMIT_POLICY,
        other => http::HeaderName::from_static(other),
    }
}
