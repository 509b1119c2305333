//! `$`-operations: only the instance-level ones fhir-fence scopes pass (each must also be
//! enabled per tenant); server-wide ones are refused with the reason the client is told, and
//! `$export` is routed to its own interaction.
use super::error::RouteError;
use super::interaction::{ExportLevel, Interaction, Op};
use super::query::Params;
use crate::fhir::reference::{is_id, is_resource_type};
use http::Method;

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

/// Operations: only instance-level ones fhir-fence scopes; the rest refused with a reason.
pub(super) fn operation(
    method: &Method,
    segments: &[&str],
    op: &str,
    params: &Params,
) -> Result<Interaction, RouteError> {
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
    params.iter().try_for_each(|(k, v)| super::values::check(k, v, found.name()))?;
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
