//! Method, path and parameters → the one [`Interaction`] they ask for, or a refusal. The
//! allow-list of paths and of the parameters each non-search interaction accepts.
use super::error::RouteError;
use super::interaction::Interaction;
use super::operation::operation;
use super::query::Params;
use crate::fhir::reference::{is_id, is_resource_type};
use http::Method;
use smallvec::SmallVec;

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
    if let Some((k, _)) = params.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(RouteError::Param { param: k.clone(), interaction: interaction.name() });
    }
    params.iter().try_for_each(|(k, v)| super::values::check(k, v, interaction.name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{parse_query, Op};

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
}
