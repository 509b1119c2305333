//! `$export` kickoff: the client's request becomes an upstream export that can only see the
//! caller's data.
//!
//! Upstream servers OR the `_typeFilter` queries of a type and export a type without a filter
//! whole, so the scoping is: an explicit `_type` list; the tenant parameter added *inside*
//! every `_typeFilter` query (scoped like a search: ids prefixed, chains and `_has` hop by
//! hop); and a `Type?<tenant parameter>` filter for every type without one. Group and Patient
//! exports first prove the Group/Patient (and every Group member) is the caller's. The upstream
//! is asked with `Cache-Control: no-cache`, so it never hands back a job started for someone
//! else, and its polling URL is replaced by a sealed fhir-fence handle.
use super::handle::{self, Job};
use super::ExportError;
use crate::error::Error;
use crate::fhir::capabilities::Capabilities;
use crate::fhir::reference::{self, is_resource_type};
use crate::headers::base_headers;
use crate::identity::Caller;
use crate::request::prefers;
use crate::route::{encode_query, parse_query, ExportLevel, Params};
use crate::scope::{params, read, refcheck, Ctx, ScopeError};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

/// Parameters of the Bulk Data spec that fhir-fence does not pass on (refused, not ignored).
const UNSUPPORTED: &[&str] = &[
    "_until",
    "_typePostFetchFilterUrl",
    "includeAssociatedData",
    "organizeOutputBy",
    "allowPartialManifests",
    "_mdm",
    "_exportId",
];

/// Search parameters that shape a result page, meaningless (and refused) inside a `_typeFilter`.
const RESULT_PARAMS: &[&str] =
    &["_include", "_revinclude", "_count", "_sort", "_total", "_summary", "_elements", "_pretty", "_type"];

const NDJSON_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// What the client asked for, validated.
#[derive(Debug, Default)]
struct Request {
    types: Vec<String>,
    type_filters: Vec<(String, Params)>,
    since: Option<String>,
    elements: Option<String>,
    patients: Vec<String>,
}

/// Starts an export for the caller and answers 202 with fhir-fence's own status URL.
#[allow(clippy::too_many_arguments)]
pub async fn kickoff(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    caller: &Caller,
    level: &ExportLevel,
    params: &Params,
    body: Option<Value>,
    headers: &HeaderMap,
    client_url: &str,
) -> Result<(StatusCode, Value, HeaderMap), Error> {
    if !ctx.tenant.operations.iter().any(|o| o == "export") {
        return Err(ScopeError::OperationDisabled("export").into());
    }
    if !prefers(headers, "respond-async") {
        return Err(ExportError::PreferAsync.into());
    }
    let mut all = params.clone();
    if let Some(body) = body {
        all.extend(from_parameters(body)?);
    }
    let request = validate(ctx, caps, level, &all)?;

    let upstream_path = match level {
        ExportLevel::System => "$export".to_owned(),
        ExportLevel::Patients => "Patient/$export".to_owned(),
        ExportLevel::Patient(id) => format!("Patient/{}/$export", refcheck::owned(ctx, "Patient", id).await?),
        ExportLevel::Group(id) => format!("Group/{}/$export", owned_group(ctx, id).await?),
    };
    let mut patients = Vec::with_capacity(request.patients.len());
    for p in &request.patients {
        patients.push(format!("Patient/{}", refcheck::owned(ctx, "Patient", p).await?));
    }

    let upstream_params = upstream_parameters(ctx, &request, &patients);
    let mut h = base_headers(ctx.correlation);
    h.insert(crate::headers::PREFER, HeaderValue::from_static("respond-async"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let answer = ctx.upstream.send(Method::POST, &upstream_path, h, Some(&upstream_params)).await?;
    if answer.status != StatusCode::ACCEPTED {
        return Err(crate::scope::refused(&answer).into());
    }
    let location = answer.headers.get(header::CONTENT_LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (form, upstream_job) = super::locations::job(&ctx.upstream.base, location).ok_or(ScopeError::Unprovable)?;
    let job = Job {
        id: uuid::Uuid::new_v4().to_string(),
        tenant: ctx.tenant.name.clone(),
        client: caller.party(),
        upstream: ctx.tenant.upstream.clone(),
        upstream_job,
        form,
        request: client_url.to_owned(),
        types: request.types,
        grant: super::handle::grant_of(caller),
    };
    let status_url = format!("{}/_export/{}", ctx.snap.public_base, handle::seal_job(ctx.snap, ctx.tenant, &job));
    tracing::info!(correlation = ctx.correlation, tenant = %ctx.tenant.name, job = %job.id, "export started");
    let mut out = HeaderMap::new();
    out.insert(header::CONTENT_LOCATION, HeaderValue::from_str(&status_url).map_err(|_| ScopeError::Unprovable)?);
    let outcome = crate::fhir::outcome::information("export started; poll the Content-Location URL for its status");
    Ok((StatusCode::ACCEPTED, outcome, out))
}

/// Flattens a `Parameters` body into name/value pairs (references as their string).
fn from_parameters(body: Value) -> Result<Params, ExportError> {
    let bad = |why: &str| ExportError::Param(why.to_owned());
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad("a POST kickoff takes a Parameters resource"));
    }
    let mut out = Vec::new();
    for p in body.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        let p = p.as_object().ok_or_else(|| bad("Parameters.parameter entries must be objects"))?;
        let name = p.get("name").and_then(Value::as_str).ok_or_else(|| bad("a parameter without a name"))?;
        let mut value = None;
        for (k, v) in p {
            match (k.as_str(), v) {
                ("name", _) => {}
                ("valueString" | "valueCode" | "valueInstant" | "valueUri" | "valueDateTime", Value::String(s)) => {
                    value = Some(s.clone())
                }
                ("valueReference", v) => {
                    value = v.get("reference").and_then(Value::as_str).map(str::to_owned);
                }
                _ => return Err(bad(&format!("parameter {name}: {k} is not accepted"))),
            }
        }
        let value = value.ok_or_else(|| bad(&format!("parameter {name} has no usable value")))?;
        out.push((name.to_owned(), value));
    }
    if body.as_object().is_some_and(|b| b.keys().any(|k| !matches!(k.as_str(), "resourceType" | "parameter" | "id"))) {
        return Err(bad("a kickoff Parameters resource holds only parameters"));
    }
    Ok(out)
}

fn validate(ctx: &Ctx, caps: &Capabilities, level: &ExportLevel, params: &Params) -> Result<Request, Error> {
    let patient_level = !matches!(level, ExportLevel::System);
    let mut request = Request::default();
    let mut explicit = false;
    let mut filters = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "_pretty" => {}
            "_outputFormat" => {
                if !NDJSON_FORMATS.contains(&value.as_str()) {
                    return Err(ExportError::OutputFormat(value.clone()).into());
                }
            }
            "_since" => {
                let instant = value.len() >= 10 && value.bytes().all(|b| b.is_ascii_digit() || b"-:T.Z+".contains(&b));
                if !instant || request.since.replace(value.clone()).is_some() {
                    return Err(ExportError::Param(format!("_since={value} is not one FHIR instant")).into());
                }
            }
            "_type" => {
                explicit = true;
                for t in value.split(',').map(str::trim) {
                    exportable(caps, t, patient_level)?;
                    if !request.types.iter().any(|k| k == t) {
                        request.types.push(t.to_owned());
                    }
                }
            }
            "_typeFilter" => filters.push(value.clone()),
            "_elements" => {
                let with_meta = params::elements_with_meta(value)?;
                if request.elements.replace(with_meta).is_some() {
                    return Err(ExportError::Param("_elements given twice".into()).into());
                }
            }
            "patient" if matches!(level, ExportLevel::Patients) => {
                let l = reference::literal(value)
                    .filter(|l| l.rtype == "Patient" && l.version.is_none())
                    .ok_or_else(|| ExportError::Param(format!("patient={value} is not a Patient reference")))?;
                request.patients.push(l.id.to_owned());
            }
            n if UNSUPPORTED.contains(&n) || n == "patient" => {
                return Err(ExportError::Unsupported(n.to_owned()).into())
            }
            n => return Err(ExportError::Param(format!("unknown parameter {n}")).into()),
        }
    }
    if !explicit {
        request.types = default_types(caps, patient_level);
    }
    for f in filters {
        let (rtype, query) = f
            .split_once('?')
            .ok_or_else(|| ExportError::Param(format!("_typeFilter={f} is not of the form Type?query")))?;
        if !request.types.iter().any(|t| t == rtype) {
            return Err(ExportError::Param(format!("_typeFilter for {rtype}, which is not in _type")).into());
        }
        let query = parse_query(Some(query)).map_err(|e| ExportError::Param(format!("_typeFilter={f}: {e}")))?;
        if query.is_empty() {
            return Err(ExportError::Param(format!("_typeFilter={f} has no criteria")).into());
        }
        if let Some((k, _)) = query.iter().find(|(k, _)| RESULT_PARAMS.contains(&k.split(':').next().unwrap_or(k))) {
            return Err(ExportError::Param(format!("{k} is not a filter parameter (in _typeFilter={f})")).into());
        }
        let scoped = params::scope_params(ctx, caps, &[rtype.to_owned()], &query)?;
        request.type_filters.push((rtype.to_owned(), scoped));
    }
    if request.types.is_empty() {
        return Err(ExportError::Param("no resource type to export".into()).into());
    }
    Ok(request)
}

/// Refuses types a tenant cannot export (unknown upstream, server-wide, outside the compartment).
fn exportable(caps: &Capabilities, t: &str, patient_level: bool) -> Result<(), ExportError> {
    if !is_resource_type(t) || !caps.has_type(t) {
        return Err(ExportError::NotExportable(t.to_owned(), "the upstream does not know it"));
    }
    if let Some((_, why)) = crate::fhir::server_wide::SERVER_WIDE.iter().find(|(w, _)| *w == t) {
        return Err(ExportError::NotExportable(t.to_owned(), why));
    }
    if patient_level && !crate::fhir::compartment::PATIENT_COMPARTMENT.contains(&t) {
        return Err(ExportError::NotExportable(t.to_owned(), "it is not in the Patient compartment"));
    }
    Ok(())
}

/// The types exported when the client names none: everything the tenant may hold (system level),
/// or the Patient compartment (Patient and Group level), as far as the upstream knows them —
/// but `Binary`, which Bulk Data servers leave out of a default export (HAPI refuses to export
/// it at all, HAPI-2039; a client may still name it).
fn default_types(caps: &Capabilities, patient_level: bool) -> Vec<String> {
    caps.types().into_iter().filter(|t| t != "Binary" && exportable(caps, t, patient_level).is_ok()).collect()
}

/// The upstream kickoff: NDJSON, explicit types, and a tenant-scoped filter for every type.
fn upstream_parameters(ctx: &Ctx, request: &Request, patients: &[String]) -> Value {
    let marking = &ctx.snap.marking;
    let tenant_filter = [(marking.search_param().to_owned(), marking.search_value(ctx.tenant))];
    let mut parameter = vec![
        json!({"name": "_outputFormat", "valueString": "application/fhir+ndjson"}),
        json!({"name": "_type", "valueString": request.types.join(",")}),
    ];
    for t in &request.types {
        let mut any = false;
        for (_, scoped) in request.type_filters.iter().filter(|(ft, _)| ft == t) {
            parameter.push(json!({"name": "_typeFilter", "valueString": format!("{t}?{}", encode_query(scoped))}));
            any = true;
        }
        if !any {
            parameter
                .push(json!({"name": "_typeFilter", "valueString": format!("{t}?{}", encode_query(&tenant_filter))}));
        }
    }
    if let Some(since) = &request.since {
        parameter.push(json!({"name": "_since", "valueInstant": since}));
    }
    if let Some(elements) = &request.elements {
        parameter.push(json!({"name": "_elements", "valueString": elements}));
    }
    for p in patients {
        parameter.push(json!({"name": "patient", "valueReference": {"reference": p}}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}

/// Proves the Group is the caller's and every member is too; returns the Group's upstream id.
async fn owned_group(ctx: &Ctx<'_>, id: &str) -> Result<String, Error> {
    // The read itself fails unless the Group and every reference in it are in the tenant.
    let group = read::read(ctx, "Group", id, None).await?.body;
    for member in group.get("member").and_then(Value::as_array).into_iter().flatten() {
        let r = member.pointer("/entity/reference").and_then(Value::as_str).unwrap_or_default();
        let l = reference::literal(r).ok_or_else(|| ScopeError::Reference(r.to_owned()))?;
        refcheck::owned(ctx, l.rtype, l.id).await.map_err(|_| ScopeError::Reference(r.to_owned()))?;
    }
    Ok(ctx.tenant.upstream_id(id).map_err(ScopeError::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_bodies() {
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "_type", "valueString": "Patient"},
            {"name": "patient", "valueReference": {"reference": "Patient/p1"}}]});
        assert_eq!(
            from_parameters(body).unwrap(),
            vec![("_type".into(), "Patient".into()), ("patient".into(), "Patient/p1".into())]
        );
        let nested = json!({"resourceType": "Parameters", "parameter": [{"name": "x", "part": []}]});
        assert!(from_parameters(nested).is_err());
        assert!(from_parameters(json!({"resourceType": "Patient"})).is_err());
    }
}
