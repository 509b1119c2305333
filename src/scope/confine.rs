//! A request granted only by `patient/` SMART scopes (`smart::Access::Patient`), narrowed to
//! the launch patient before it is scoped like any other. The narrowing is the type's
//! `patient` search parameter (`patient=Patient/{patient}`, added to the client's own, which it
//! can only narrow further): a resource whose `patient` is the launch patient is in its
//! compartment, so nothing outside it is found. It is narrower than the compartment definition
//! (an Observation that names the patient only as its performer is not found) — never wider.
//! Compartment searches (`Patient/p/Observation`) are not the means: HAPI JPA serves none.
//!
//! - a search of a type in the R4 Patient compartment whose `patient` parameter the upstream
//!   declares gets `patient=Patient/{patient}`; a search of Patient itself gets `_id={patient}`;
//!   any other type cannot be narrowed: 403;
//! - a read (vread, instance history, `$meta`, `$validate` of an instance) is first asked for
//!   with the same narrowing (`_id` and `patient`); not found so, the answer is the 404 of a
//!   resource that does not exist. A vread is judged by the resource's current version;
//! - `$everything` and compartment searches are the launch patient's only;
//! - a create or update is the patient's when every Patient reference at the elements behind
//!   the type's `patient` parameter (`fhir::shape::Model::patient_paths`: Observation's
//!   `subject`, Appointment's `participant.actor`) is the launch patient, and there is one, and
//!   no Patient it names anywhere else is another; an update or delete must also find the
//!   resource it replaces the patient's (an update of an id that never existed creates it; one
//!   that was deleted is not taken over). The patient's own Patient resource by its id.
//!
//! What cannot be narrowed this way (patches, conditional writes, history, system searches,
//! exports) never gets here: `smart::permit` refuses it.
//!
//! The answer is judged again on its way out ([`is_patients`], applied by `dispatch`): every
//! resource of a type the grant reaches only through `patient/` scopes must be the patient's —
//! whatever the upstream decided to add (`$everything` follows references out of the
//! compartment; an old version may name another patient; a search may lose its narrowing).
use super::search;
use super::Ctx;
use crate::error::Error;
use crate::fhir::capabilities::{Capabilities, ParamType};
use crate::fhir::compartment::PATIENT_COMPARTMENT;
use crate::route::{Interaction, Op, Params};
use crate::smart::SmartError;
use serde_json::Value;

/// The interaction (and, when they change, the parameters) a confined caller's request becomes.
pub async fn confine(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    interaction: Interaction,
    params: &Params,
    body: Option<&Value>,
    patient: &str,
) -> Result<(Interaction, Option<Params>), Error> {
    use Interaction as I;
    let outside = || Error::from(SmartError::OutsideCompartment(patient.to_owned()));
    match interaction {
        I::Search { ref rtype, .. } => {
            let (name, value) = narrowing(caps, rtype, patient)?;
            // A modifier on the narrowing parameter can undo it upstream (HAPI drops `_id`
            // when `_id:not` is there too): refused.
            if let Some((k, _)) = params.iter().find(|(k, _)| k.split_once(':').is_some_and(|(base, _)| base == name)) {
                return Err(SmartError::NarrowingModified(k.clone()).into());
            }
            let mut narrowed = params.clone();
            narrowed.push((name, value));
            Ok((interaction, Some(narrowed)))
        }
        I::Compartment { ref ctype, ref id, .. } if ctype == "Patient" && id == patient => Ok((interaction, None)),
        I::Operation { ref rtype, ref id, op: Op::Everything } if rtype == "Patient" && id == patient => {
            Ok((interaction, None))
        }
        I::Compartment { .. } | I::Operation { op: Op::Everything, .. } => Err(outside()),
        I::Read { ref rtype, ref id }
        | I::Vread { ref rtype, ref id, .. }
        | I::InstanceHistory { ref rtype, ref id }
        | I::Validate { ref rtype, id: Some(ref id) }
        | I::Operation { ref rtype, ref id, op: Op::Meta | Op::Validate } => {
            if !member(ctx, caps, patient, rtype, id).await? {
                return Err(super::ScopeError::NotFound(format!("{rtype}/{id}")).into());
            }
            Ok((interaction, None))
        }
        I::Validate { id: None, .. } => Ok((interaction, None)),
        // A new Patient is never the launch patient.
        I::Create { ref rtype } if rtype == "Patient" => Err(outside()),
        I::Create { ref rtype } => {
            written(ctx, caps, rtype, body, patient).await?;
            Ok((interaction, None))
        }
        I::Update { ref rtype, ref id } if rtype == "Patient" => match id == patient {
            true => {
                written(ctx, caps, rtype, body, patient).await?;
                Ok((interaction, None))
            }
            false => Err(outside()),
        },
        I::Update { ref rtype, ref id } => {
            written(ctx, caps, rtype, body, patient).await?;
            match current(ctx, caps, rtype, id).await? {
                Some(found) if !belongs(ctx, rtype, &found, patient) => Err(outside()),
                Some(_) => Ok((interaction, None)),
                // No current version: a new id, or a deleted resource, whose history may be
                // another patient's — an update would continue it. Only a new id is taken.
                None => match super::read::history(ctx, rtype, id, &vec![("_count".into(), "1".into())], "").await {
                    Err(super::ScopeError::NotFound(_)) => Ok((interaction, None)),
                    Err(e) => Err(e.into()),
                    Ok(_) => Err(outside()),
                },
            }
        }
        I::Delete { ref rtype, ref id } => {
            let mine = match rtype.as_str() {
                "Patient" => id == patient,
                _ => current(ctx, caps, rtype, id).await?.is_some_and(|found| belongs(ctx, rtype, &found, patient)),
            };
            match mine {
                true => Ok((interaction, None)),
                false => Err(super::ScopeError::NotFound(format!("{rtype}/{id}")).into()),
            }
        }
        // `smart::permit` lets nothing else through confined.
        _ => Err(outside()),
    }
}

/// The parameter that narrows a search of `rtype` to `patient`'s resources.
fn narrowing(caps: &Capabilities, rtype: &str, patient: &str) -> Result<(String, String), SmartError> {
    if rtype == "Patient" {
        return Ok(("_id".into(), patient.to_owned()));
    }
    if PATIENT_COMPARTMENT.contains(&rtype) && caps.param(rtype, "patient") == Some(ParamType::Reference) {
        return Ok(("patient".into(), format!("Patient/{patient}")));
    }
    Err(SmartError::CannotNarrow(rtype.to_owned()))
}

/// Whether `rtype/id` is the launch patient's: found with the narrowing of a search (asked
/// past the upstream's search cache, so a resource just moved to another patient is not).
async fn member(ctx: &Ctx<'_>, caps: &Capabilities, patient: &str, rtype: &str, id: &str) -> Result<bool, Error> {
    let criteria: Params = vec![("_id".into(), id.to_owned()), narrowing(caps, rtype, patient)?];
    let found = search::matching(ctx, caps, rtype, &criteria).await?;
    Ok(found.into_iter().map(|r| r.into_tree()).any(|r| {
        r.get("resourceType").and_then(Value::as_str) == Some(rtype) && r.get("id").and_then(Value::as_str) == Some(id)
    }))
}

/// Whether a resource in an answer may reach a caller whose grant gives `rtype` only through
/// `patient/` scopes (the answer's second check: a search, history, page or `$everything`
/// entry, a read's version): her own Patient resource, or a resource that is hers by
/// [`belongs`]. An OperationOutcome is no patient data.
pub fn is_patients(ctx: &Ctx<'_>, resource: &Value, patient: &str) -> bool {
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("OperationOutcome") => true,
        Some("Patient") => resource.get("id").and_then(Value::as_str) == Some(patient),
        Some(rtype) => belongs(ctx, rtype, resource, patient),
        None => false,
    }
}

/// A body to be written for the patient: refused unless it is the patient's (her own Patient
/// resource, or [`belongs`]), unless every Patient it names anywhere (a performer, a recipient,
/// a focus…) is the patient, and unless every other resource of the Patient compartment it
/// names (an encounter, a `hasMember`, a `basedOn`…) is hers too: a `patient/` token neither
/// attaches data to another patient nor ties the patient's data to another's.
async fn written(
    ctx: &Ctx<'_>,
    caps: &Capabilities,
    rtype: &str,
    body: Option<&Value>,
    patient: &str,
) -> Result<(), Error> {
    let refused = || Error::from(SmartError::NotThePatients(patient.to_owned(), rtype.to_owned()));
    let body = body.ok_or_else(refused)?;
    let hers = match rtype {
        "Patient" => body.get("id").and_then(Value::as_str) == Some(patient),
        _ => belongs(ctx, rtype, body, patient),
    };
    if !hers {
        return Err(refused());
    }
    let mut references = Vec::new();
    every_reference(body, &mut references);
    for reference in references {
        match target(ctx, reference, patient) {
            Target::Her => {}
            Target::Another => return Err(refused()),
            Target::Member(rtype, id) => {
                // Not narrowable (no `patient` parameter upstream) is not provably hers.
                if !member(ctx, caps, patient, rtype, id).await.unwrap_or(false) {
                    return Err(refused());
                }
            }
            Target::Neither => {}
        }
    }
    Ok(())
}

/// What a reference (client view) points at, as far as the patient is concerned.
#[derive(PartialEq, Eq)]
enum Target<'r> {
    Her,
    /// Another Patient, or one fhir-fence cannot tell is the patient (conditional, absolute),
    /// or a resource of the Patient compartment named so that it cannot be looked up.
    Another,
    /// A resource of the Patient compartment (not a Patient): hers only if found so.
    Member(&'r str, &'r str),
    Neither,
}

fn target<'r>(ctx: &Ctx<'_>, reference: &'r str, patient: &str) -> Target<'r> {
    let base = format!("{}/", ctx.snap.public_base);
    let local = reference.strip_prefix(base.as_str()).unwrap_or(reference);
    let (local, versioned) = match local.split_once("/_history/") {
        Some((current, _)) => (current, true),
        None => (local, false),
    };
    if let Some(id) = local.strip_prefix("Patient/") {
        return if id == patient { Target::Her } else { Target::Another };
    }
    // A version of a compartment member may have been another patient's (only the current
    // one is looked up): not provably hers.
    if versioned && PATIENT_COMPARTMENT.iter().any(|t| local.starts_with(&format!("{t}/"))) {
        return Target::Another;
    }
    if local.contains("Patient") {
        return Target::Another;
    }
    let member_type = PATIENT_COMPARTMENT
        .iter()
        .find(|t| local.strip_prefix(**t).is_some_and(|rest| rest.starts_with('/') || rest.starts_with('?')));
    match (member_type, local.split_once('/')) {
        // `Type/id` with a plain id: looked up. Anything else naming a member type (a
        // conditional `Encounter?…`, extra segments): not provably hers.
        (Some(t), Some((_, id))) if !id.is_empty() && !id.contains(['/', '?', '#']) => Target::Member(t, id),
        (Some(_), _) => Target::Another,
        (None, _) => Target::Neither,
    }
}

/// Every `reference` string anywhere in `v`.
fn every_reference<'v>(v: &'v Value, out: &mut Vec<&'v str>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("reference", Value::String(r)) => out.push(r),
                    _ => every_reference(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| every_reference(v, out)),
        _ => {}
    }
}

/// The caller's current `rtype/id` (client view), if it exists (past the search cache).
async fn current(ctx: &Ctx<'_>, caps: &Capabilities, rtype: &str, id: &str) -> Result<Option<Value>, Error> {
    let criteria: Params = vec![("_id".into(), id.to_owned())];
    let found = search::matching(ctx, caps, rtype, &criteria).await?;
    Ok(found.into_iter().map(|r| r.into_tree()).find(|r| r.get("id").and_then(Value::as_str) == Some(id)))
}

/// Whether `resource` (client view) is `patient`'s: a type of the Patient compartment, every
/// Patient reference at its `patient` parameter's elements is `Patient/{patient}` (local, or
/// under fhir-fence's public base; any version), and there is at least one.
fn belongs(ctx: &Ctx<'_>, rtype: &str, resource: &Value, patient: &str) -> bool {
    if !PATIENT_COMPARTMENT.contains(&rtype) {
        return false;
    }
    let mut references = Vec::new();
    for path in crate::fhir::shape::Model::r4().patient_paths(rtype) {
        collect(resource, path, &mut references);
    }
    let mut mine = false;
    for reference in references {
        match target(ctx, reference, patient) {
            Target::Her => mine = true,
            // Anything else naming a Patient (a conditional or absolute reference): not provably hers.
            Target::Another => return false,
            Target::Member(..) | Target::Neither => {}
        }
    }
    mine
}

/// The `reference` strings of the References at `path` under `value` (arrays flattened).
fn collect<'v>(value: &'v Value, path: &[String], out: &mut Vec<&'v str>) {
    match (value, path) {
        (Value::Array(items), _) => items.iter().for_each(|i| collect(i, path, out)),
        (Value::Object(o), []) => out.extend(o.get("reference").and_then(Value::as_str)),
        (Value::Object(o), [first, rest @ ..]) => {
            if let Some(v) = o.get(first.as_str()) {
                collect(v, rest, out);
            }
        }
        _ => {}
    }
}
