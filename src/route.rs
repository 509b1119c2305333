//! Classifying a request into one FHIR interaction fhir-fence supports, or refusing it.
//!
//! This is the allow-list: anything not matched here never reaches the upstream. Paths are
//! matched on raw segments (no `%`-escapes, no empty or dot segments), so `//`, `%2F`, `..`
//! and `;jsessionid` tricks fail here instead of being normalised differently upstream.
use crate::fhir::reference::{is_id, is_resource_type};
use http::Method;
use smallvec::SmallVec;

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    Metadata,
    Read {
        rtype: String,
        id: String,
    },
    Vread {
        rtype: String,
        id: String,
        version: String,
    },
    InstanceHistory {
        rtype: String,
        id: String,
    },
    /// `GET [type]/_history` (`rtype: Some`) or `GET [base]/_history` (`None`).
    History {
        rtype: Option<String>,
    },
    /// `GET [type]?…` or `POST [type]/_search` (`form`: parameters also in the body).
    Search {
        rtype: String,
        form: bool,
    },
    /// `GET [base]?…` or `POST [base]/_search`.
    SystemSearch {
        form: bool,
    },
    /// `GET [compartment type]/[id]/[type]?…`
    Compartment {
        ctype: String,
        id: String,
        rtype: String,
    },
    Create {
        rtype: String,
    },
    Update {
        rtype: String,
        id: String,
    },
    /// `PATCH [type]/[id]` with a JSON Patch body.
    Patch {
        rtype: String,
        id: String,
    },
    /// `PUT [type]?criteria`
    ConditionalUpdate {
        rtype: String,
    },
    /// `PATCH [type]?criteria`
    ConditionalPatch {
        rtype: String,
    },
    /// `DELETE [type]?criteria`
    ConditionalDelete {
        rtype: String,
    },
    /// `POST [base]` with a transaction or batch Bundle.
    Bundle,
    /// `POST [type]/$validate` (`id: None`) or `[type]/[id]/$validate`.
    Validate {
        rtype: String,
        id: Option<String>,
    },
    /// An allow-listed instance-level operation, `[type]/[id]/$op`.
    Operation {
        rtype: String,
        id: String,
        op: Op,
    },
    Delete {
        rtype: String,
        id: String,
    },
    /// A page of an earlier search, by fhir-fence's sealed token.
    Page {
        token: String,
    },
    /// A Bulk Data export kickoff (`form`: POST with a `Parameters` body).
    Export {
        level: ExportLevel,
        form: bool,
    },
    /// `GET [base]/_export/[job]`: the status of an export, by fhir-fence's sealed job handle.
    ExportStatus {
        job: String,
    },
    /// `DELETE [base]/_export/[job]`: cancel an export.
    ExportCancel {
        job: String,
    },
    /// `GET [base]/_export-file/[file]`: one file of a finished export, filtered as it streams.
    ExportFile {
        file: String,
    },
}

/// Which data a Bulk Data export covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportLevel {
    /// `[base]/$export`
    System,
    /// `Patient/$export`: every patient's compartment (the caller's patients only, once scoped).
    Patients,
    /// `Patient/[id]/$export`
    Patient(String),
    /// `Group/[id]/$export`
    Group(String),
}

impl Interaction {
    /// The resource type and local id the request names, for the audit trail.
    pub fn target(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Interaction::Read { rtype, id }
            | Interaction::Vread { rtype, id, .. }
            | Interaction::InstanceHistory { rtype, id }
            | Interaction::Update { rtype, id }
            | Interaction::Patch { rtype, id }
            | Interaction::Delete { rtype, id }
            | Interaction::Operation { rtype, id, .. } => (Some(rtype), Some(id)),
            Interaction::Compartment { ctype, id, .. } => (Some(ctype), Some(id)),
            Interaction::Validate { rtype, id } => (Some(rtype), id.as_deref()),
            Interaction::Search { rtype, .. }
            | Interaction::Create { rtype }
            | Interaction::ConditionalUpdate { rtype }
            | Interaction::ConditionalPatch { rtype }
            | Interaction::ConditionalDelete { rtype } => (Some(rtype), None),
            Interaction::History { rtype } => (rtype.as_deref(), None),
            Interaction::Export { level: ExportLevel::Patient(id), .. } => (Some("Patient"), Some(id)),
            Interaction::Export { level: ExportLevel::Group(id), .. } => (Some("Group"), Some(id)),
            _ => (None, None),
        }
    }

    /// The resource type this request changes, if it changes one.
    pub fn changes(&self) -> Option<&str> {
        match self {
            Interaction::Create { rtype }
            | Interaction::Update { rtype, .. }
            | Interaction::Patch { rtype, .. }
            | Interaction::Delete { rtype, .. }
            | Interaction::ConditionalUpdate { rtype }
            | Interaction::ConditionalPatch { rtype }
            | Interaction::ConditionalDelete { rtype }
            | Interaction::Operation { rtype, op: Op::MetaAdd | Op::MetaDelete, .. } => Some(rtype),
            _ => None,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Interaction::Metadata => "metadata",
            Interaction::Read { .. } => "read",
            Interaction::Vread { .. } => "vread",
            Interaction::InstanceHistory { .. } => "history-instance",
            Interaction::History { rtype: Some(_) } => "history-type",
            Interaction::History { rtype: None } => "history-system",
            Interaction::Search { .. } => "search-type",
            Interaction::SystemSearch { .. } => "search-system",
            Interaction::Compartment { .. } => "search-compartment",
            Interaction::Create { .. } => "create",
            Interaction::Update { .. } => "update",
            Interaction::Patch { .. } => "patch",
            Interaction::ConditionalUpdate { .. } => "update-conditional",
            Interaction::ConditionalPatch { .. } => "patch-conditional",
            Interaction::ConditionalDelete { .. } => "delete-conditional",
            Interaction::Operation { op, .. } => op.name(),
            Interaction::Bundle => "bundle",
            Interaction::Validate { .. } => "validate",
            Interaction::Delete { .. } => "delete",
            Interaction::Page { .. } => "page",
            Interaction::Export { .. } => "export",
            Interaction::ExportStatus { .. } => "export-status",
            Interaction::ExportCancel { .. } => "export-cancel",
            Interaction::ExportFile { .. } => "export-file",
        }
    }
}

/// The operations fhir-fence knows how to scope (each must also be enabled per tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `Patient/[id]/$everything`: the patient's record, every entry checked.
    Everything,
    /// `[type]/[id]/$meta`: the resource's meta, tenant coding removed.
    Meta,
    /// `[type]/[id]/$meta-add`, codings outside the tenant system only.
    MetaAdd,
    /// `[type]/[id]/$meta-delete`, codings outside the tenant system only.
    MetaDelete,
    /// `[type]/$validate` (the body checked like a write) and `[type]/[id]/$validate` (a read).
    Validate,
}

impl Op {
    /// Names that `tenants.NAME.operations` may list (`export` is Bulk Data `$export`, routed on its own).
    pub const ALLOWABLE: &'static [&'static str] =
        &["everything", "meta", "meta-add", "meta-delete", "validate", "export"];

    /// The config name (without `$`).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Everything => "everything",
            Op::Meta => "meta",
            Op::MetaAdd => "meta-add",
            Op::MetaDelete => "meta-delete",
            Op::Validate => "validate",
        }
    }
}

/// Operations refused whatever the config says, with the reason the client is told.
const REFUSED_OPERATIONS: &[(&str, &str)] = &[
    ("$expunge", "it erases history across tenants"),
    ("$graphql", "it follows references server-wide"),
    ("$import", "the server would fetch URLs and write unmarked data"),
    ("$replace-references", "it rewrites references server-wide"),
    ("$hapi.fhir.replace-references", "it rewrites references server-wide"),
    ("$hapi.fhir.undo-replace-references", "it rewrites references server-wide"),
    ("$get-resource-counts", "it counts every tenant's resources"),
    ("$trigger-subscription", "subscriptions are not scoped yet"),
    ("$reindex", "it is an administrative operation"),
    ("$reindex-terminology", "it is an administrative operation"),
    ("$perform-reindexing-pass", "it is an administrative operation"),
    ("$mark-all-resources-for-reindexing", "it is an administrative operation"),
    ("$diff", "it compares versions without a tenant check"),
    ("$binary-access-read", "Binary content is not scoped yet"),
    ("$binary-access-write", "Binary content is not scoped yet"),
    ("$export-poll-status", "poll the status URL fhir-fence gave at kickoff"),
    ("$merge", "it rewrites references server-wide"),
];

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
    #[error("parameter {param:?} is not allowed on {interaction}")]
    Param { param: String, interaction: &'static str },
}

/// Decoded query parameters, in order. Built only by [`parse_query`], which is strict.
pub type Params = Vec<(String, String)>;

/// Classifies `method path?query` under the public base path (e.g. `/fhir`).
pub fn classify(method: &Method, base_path: &str, path: &str, params: &Params) -> Result<Interaction, RouteError> {
    let rest = path
        .strip_prefix(base_path)
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .ok_or_else(|| RouteError::NotFhir(path.to_owned()))?;
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let segments: SmallVec<[&str; 8]> = if rest.is_empty() { SmallVec::new() } else { rest.split('/').collect() };
    for s in &segments {
        if s.is_empty() || *s == "." || *s == ".." || s.contains(['%', ';', '\\']) {
            return Err(RouteError::BadPath(path.to_owned()));
        }
    }
    let is_get = *method == Method::GET || *method == Method::HEAD;
    if let Some(op) = segments.iter().find(|s| s.starts_with('$')) {
        return operation(method, &segments, op, params);
    }
    let ty = |s: &str| -> Result<String, RouteError> {
        if is_resource_type(s) {
            Ok(s.to_owned())
        } else {
            Err(RouteError::BadPath(format!("{s:?} is not a resource type")))
        }
    };
    let id = |s: &str| -> Result<String, RouteError> {
        if is_id(s) {
            Ok(s.to_owned())
        } else {
            Err(RouteError::BadPath(format!("{s:?} is not a valid id")))
        }
    };
    let interaction = match segments.as_slice() {
        [] if is_get => match params.as_slice() {
            [(k, v)] if k == "_page" => Interaction::Page { token: v.clone() },
            _ => Interaction::SystemSearch { form: false },
        },
        [] if *method == Method::POST => Interaction::Bundle,
        ["metadata"] if is_get => Interaction::Metadata,
        ["_history"] if is_get => Interaction::History { rtype: None },
        ["_search"] if *method == Method::POST => Interaction::SystemSearch { form: true },
        ["_export", job] if is_get => Interaction::ExportStatus { job: job.to_string() },
        ["_export", job] if *method == Method::DELETE => Interaction::ExportCancel { job: job.to_string() },
        ["_export-file", file] if is_get => Interaction::ExportFile { file: file.to_string() },
        [t] if is_get => Interaction::Search { rtype: ty(t)?, form: false },
        [t] if *method == Method::POST => Interaction::Create { rtype: ty(t)? },
        [t] if *method == Method::PUT => Interaction::ConditionalUpdate { rtype: ty(t)? },
        [t] if *method == Method::PATCH => Interaction::ConditionalPatch { rtype: ty(t)? },
        [t] if *method == Method::DELETE => Interaction::ConditionalDelete { rtype: ty(t)? },
        [t, "_history"] if is_get => Interaction::History { rtype: Some(ty(t)?) },
        [t, "_search"] if *method == Method::POST => Interaction::Search { rtype: ty(t)?, form: true },
        [t, i] if is_get => Interaction::Read { rtype: ty(t)?, id: id(i)? },
        [t, i] if *method == Method::PUT => Interaction::Update { rtype: ty(t)?, id: id(i)? },
        [t, i] if *method == Method::DELETE => Interaction::Delete { rtype: ty(t)?, id: id(i)? },
        [t, i] if *method == Method::PATCH => Interaction::Patch { rtype: ty(t)?, id: id(i)? },
        [t, i, "_history"] if is_get => Interaction::InstanceHistory { rtype: ty(t)?, id: id(i)? },
        [t, i, "_history", v] if is_get => Interaction::Vread { rtype: ty(t)?, id: id(i)?, version: id(v)? },
        [t, i, c] if is_get && is_resource_type(c) => {
            Interaction::Compartment { ctype: ty(t)?, id: id(i)?, rtype: ty(c)? }
        }
        [t, i, "*"] => {
            ty(t)?;
            id(i)?;
            return Err(RouteError::NotSupported("compartment search across all types (/*)".into()));
        }
        [..] if !matches!(
            *method,
            Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE | Method::PATCH
        ) =>
        {
            return Err(RouteError::Method(method.to_string()))
        }
        [..] => return Err(RouteError::Method(format!("{method} on {path}"))),
    };
    check_params(&interaction, params)?;
    Ok(interaction)
}

/// Operations: only instance-level ones fhir-fence scopes; the rest refused with a reason.
fn operation(method: &Method, segments: &[&str], op: &str, params: &Params) -> Result<Interaction, RouteError> {
    if let Some((_, why)) = REFUSED_OPERATIONS.iter().find(|(name, _)| *name == op) {
        return Err(RouteError::OperationRefused(op.to_owned(), why));
    }
    if op == "$export" {
        return export(method, segments);
    }
    if op.starts_with("$mdm-") {
        return Err(RouteError::OperationRefused(op.to_owned(), "MDM links resources across the server"));
    }
    let instance = match segments {
        [t, i, o] if o == &op && is_resource_type(t) && is_id(i) => Some((t.to_string(), i.to_string())),
        _ => None,
    };
    let level = if instance.is_some() { "instance" } else { "type or system" };
    let get = *method == Method::GET || *method == Method::HEAD;
    let post = *method == Method::POST;
    let found = match (op, &instance) {
        ("$everything", Some((t, _))) if t == "Patient" && get => Op::Everything,
        ("$everything", Some((t, _))) if t == "Patient" => {
            return Err(RouteError::Method(format!("{method} for {op}")))
        }
        ("$everything", _) => {
            return Err(RouteError::OperationRefused(
                op.to_owned(),
                "only Patient/[id]/$everything is scoped (type level would return every patient)",
            ))
        }
        ("$meta", Some(_)) if get || post => Op::Meta,
        ("$meta-add", Some(_)) if post => Op::MetaAdd,
        ("$meta-delete", Some(_)) if post => Op::MetaDelete,
        ("$meta" | "$meta-add" | "$meta-delete", None) => {
            return Err(RouteError::OperationRefused(
                op.to_owned(),
                "at type or system level it lists every tenant's codes",
            ))
        }
        ("$meta" | "$meta-add" | "$meta-delete", Some(_)) => {
            return Err(RouteError::Method(format!("{method} for {op}")))
        }
        ("$validate", None) if post && segments.len() == 2 && is_resource_type(segments[0]) => {
            if let Some((k, _)) = params.iter().find(|(k, _)| k != "_pretty") {
                return Err(RouteError::Param { param: k.clone(), interaction: "validate" });
            }
            return Ok(Interaction::Validate { rtype: segments[0].to_owned(), id: None });
        }
        ("$validate", Some(_)) if get || post => Op::Validate,
        _ => return Err(RouteError::NotSupported(format!("operation {op} at {level} level"))),
    };
    let allowed: &[&str] = match found {
        Op::Everything => &["_count", "_since", "_type", "_pretty"],
        _ => &["_pretty"],
    };
    if let Some((k, _)) = params.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(RouteError::Param { param: k.clone(), interaction: found.name() });
    }
    let (rtype, id) = instance.expect("matched above");
    if found == Op::Validate {
        return Ok(Interaction::Validate { rtype, id: Some(id) });
    }
    Ok(Interaction::Operation { rtype, id, op: found })
}

/// `$export` at system, Patient, Patient instance or Group instance level; GET or POST.
/// Its parameters are validated by `bulk::kickoff`.
fn export(method: &Method, segments: &[&str]) -> Result<Interaction, RouteError> {
    let level = match segments {
        ["$export"] => ExportLevel::System,
        ["Patient", "$export"] => ExportLevel::Patients,
        ["Patient", id, "$export"] if is_id(id) => ExportLevel::Patient(id.to_string()),
        ["Group", id, "$export"] if is_id(id) => ExportLevel::Group(id.to_string()),
        _ => {
            return Err(RouteError::OperationRefused(
                "$export".into(),
                "exports exist at system, Patient, Patient/[id] and Group/[id] level only",
            ))
        }
    };
    match *method {
        Method::GET | Method::HEAD => Ok(Interaction::Export { level, form: false }),
        Method::POST => Ok(Interaction::Export { level, form: true }),
        _ => Err(RouteError::Method(format!("{method} for $export"))),
    }
}

/// Which query parameters each non-search interaction accepts (search parameters are scoped
/// in `scope::search`). `_pretty` is accepted everywhere and dropped.
fn check_params(interaction: &Interaction, params: &Params) -> Result<(), RouteError> {
    let allowed: &[&str] = match interaction {
        Interaction::Validate { .. } => return Ok(()),
        Interaction::Search { .. }
        | Interaction::ConditionalUpdate { .. }
        | Interaction::ConditionalPatch { .. }
        | Interaction::ConditionalDelete { .. }
        | Interaction::SystemSearch { .. }
        | Interaction::Compartment { .. }
        | Interaction::Page { .. }
        | Interaction::Export { .. } => return Ok(()),
        Interaction::InstanceHistory { .. } | Interaction::History { .. } => &["_count", "_since", "_at", "_pretty"],
        _ => &["_pretty"],
    };
    match params.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((k, _)) => Err(RouteError::Param { param: k.clone(), interaction: interaction.name() }),
        None => Ok(()),
    }
}

/// Parses a raw query string strictly: `&`-separated `name=value` pairs, `+` as space,
/// `%XX` escapes only (a stray `%` is an error), UTF-8 only.
pub fn parse_query(raw: Option<&str>) -> Result<Params, RouteError> {
    let Some(raw) = raw else { return Ok(vec![]) };
    let mut out = Vec::new();
    for pair in raw.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode_component(k)?;
        if k.is_empty() {
            return Err(RouteError::BadQuery("empty parameter name".into()));
        }
        out.push((k, decode_component(v)?));
    }
    Ok(out)
}

fn decode_component(s: &str) -> Result<String, RouteError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex =
                    bytes.get(i + 1..i + 3).ok_or_else(|| RouteError::BadQuery(format!("bad %-escape in {s:?}")))?;
                let hex = std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(hex.ok_or_else(|| RouteError::BadQuery(format!("bad %-escape in {s:?}")))?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| RouteError::BadQuery("parameters must be UTF-8".into()))
}

/// Encodes a query component for the upstream: RFC 3986 unreserved characters, `,` and `:` stay;
/// everything else (`|` too: Tomcat refuses it raw) is %-escaped.
pub fn encode_component(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b',')
        .remove(b':');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// Builds `a=b&c=d` from decoded parameters.
pub fn encode_query(params: &[(String, String)]) -> String {
    params.iter().map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v))).collect::<Vec<_>>().join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: Method, p: &str, q: Option<&str>) -> Result<Interaction, RouteError> {
        classify(&m, "/fhir", p, &parse_query(q).unwrap())
    }

    #[test]
    fn crud_routes() {
        assert_eq!(
            c(Method::GET, "/fhir/Patient/p1", None),
            Ok(Interaction::Read { rtype: "Patient".into(), id: "p1".into() })
        );
        assert_eq!(
            c(Method::GET, "/fhir/Patient/p1/_history/2", None),
            Ok(Interaction::Vread { rtype: "Patient".into(), id: "p1".into(), version: "2".into() })
        );
        assert_eq!(c(Method::POST, "/fhir/Patient", None), Ok(Interaction::Create { rtype: "Patient".into() }));
        assert_eq!(
            c(Method::GET, "/fhir/Patient", Some("name=x")),
            Ok(Interaction::Search { rtype: "Patient".into(), form: false })
        );
        assert_eq!(
            c(Method::POST, "/fhir/Patient/_search", None),
            Ok(Interaction::Search { rtype: "Patient".into(), form: true })
        );
        assert_eq!(c(Method::GET, "/fhir", Some("_type=Patient")), Ok(Interaction::SystemSearch { form: false }));
        assert_eq!(c(Method::POST, "/fhir/_search", None), Ok(Interaction::SystemSearch { form: true }));
        assert_eq!(
            c(Method::GET, "/fhir/Patient/_history", None),
            Ok(Interaction::History { rtype: Some("Patient".into()) })
        );
        assert_eq!(c(Method::GET, "/fhir/_history", Some("_count=2")), Ok(Interaction::History { rtype: None }));
        assert_eq!(
            c(Method::PATCH, "/fhir/Patient/p1", None),
            Ok(Interaction::Patch { rtype: "Patient".into(), id: "p1".into() })
        );
        assert_eq!(
            c(Method::GET, "/fhir/Patient/p1/Observation", None),
            Ok(Interaction::Compartment { ctype: "Patient".into(), id: "p1".into(), rtype: "Observation".into() })
        );
        assert_eq!(c(Method::GET, "/fhir/metadata", None), Ok(Interaction::Metadata));
        assert_eq!(c(Method::GET, "/fhir", Some("_page=abc")), Ok(Interaction::Page { token: "abc".into() }));
    }

    #[test]
    fn refusals() {
        assert!(matches!(c(Method::GET, "/other/Patient", None), Err(RouteError::NotFhir(_))));
        assert!(matches!(c(Method::GET, "/fhirx/Patient", None), Err(RouteError::NotFhir(_))));
        assert!(matches!(c(Method::GET, "/fhir//Patient", None), Err(RouteError::BadPath(_))));
        assert!(matches!(c(Method::GET, "/fhir/Patient/a%2Fb", None), Err(RouteError::BadPath(_))));
        assert!(matches!(c(Method::GET, "/fhir/Patient/..", None), Err(RouteError::BadPath(_))));
        assert!(matches!(c(Method::GET, "/fhir/Patient/p1;jsessionid=x", None), Err(RouteError::BadPath(_))));
        assert!(matches!(c(Method::GET, "/fhir/patient/p1", None), Err(RouteError::BadPath(_))));
        assert!(matches!(c(Method::POST, "/fhir", Some("_format=xml")), Err(RouteError::Param { .. })));
        assert!(matches!(c(Method::GET, "/fhir/Patient/$everything", None), Err(RouteError::OperationRefused(..))));
        assert!(matches!(
            c(Method::GET, "/fhir/Patient/p1/$everything", None),
            Ok(Interaction::Operation { op: Op::Everything, .. })
        ));
        assert!(matches!(
            c(Method::POST, "/fhir/Patient/p1/$meta-add", None),
            Ok(Interaction::Operation { op: Op::MetaAdd, .. })
        ));
        assert!(matches!(
            c(Method::GET, "/fhir/Patient/p1/$everything", Some("_elements=x")),
            Err(RouteError::Param { .. })
        ));
        assert!(matches!(c(Method::GET, "/fhir/Patient/_history", Some("_type=x")), Err(RouteError::Param { .. })));
        assert_eq!(
            c(Method::PUT, "/fhir/Patient", Some("identifier=x")),
            Ok(Interaction::ConditionalUpdate { rtype: "Patient".into() })
        );
        assert!(matches!(c(Method::GET, "/fhir/Patient/p1/*", None), Err(RouteError::NotSupported(_))));
        assert!(matches!(c(Method::OPTIONS, "/fhir/Patient", None), Err(RouteError::Method(_))));
        assert!(matches!(
            c(Method::DELETE, "/fhir/Patient/p1", Some("_cascade=delete")),
            Err(RouteError::Param { .. })
        ));
        assert!(matches!(c(Method::GET, "/fhir/Patient/p1", Some("_format=xml")), Err(RouteError::Param { .. })));
    }

    #[test]
    fn strict_query_decoding() {
        assert_eq!(
            parse_query(Some("a=b+c&d=%7C")).unwrap(),
            vec![("a".into(), "b c".into()), ("d".into(), "|".into())]
        );
        assert!(parse_query(Some("a=%zz")).is_err());
        assert!(parse_query(Some("a=%4")).is_err());
        assert!(parse_query(Some("a=%ff")).is_err());
        assert_eq!(encode_query(&[("_tag".into(), "urn:x|a b".into())]), "_tag=urn:x%7Ca%20b");
    }
}
