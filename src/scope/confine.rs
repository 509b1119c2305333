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
//! - `$everything` and compartment searches are the launch patient's only.
//!
//! What cannot be narrowed this way (writes, history, system searches, exports) never gets
//! here: `smart::permit` refuses it.
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
    patient: &str,
) -> Result<(Interaction, Option<Params>), Error> {
    use Interaction as I;
    let outside = || Error::from(SmartError::OutsideCompartment(patient.to_owned()));
    match interaction {
        I::Search { ref rtype, .. } => {
            let mut narrowed = params.clone();
            narrowed.push(narrowing(caps, rtype, patient)?);
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

/// Whether `rtype/id` is the launch patient's (found with the narrowing of a search).
async fn member(ctx: &Ctx<'_>, caps: &Capabilities, patient: &str, rtype: &str, id: &str) -> Result<bool, Error> {
    let criteria: Params = vec![("_id".into(), id.to_owned()), narrowing(caps, rtype, patient)?];
    let found = search::search(ctx, caps, rtype, &criteria, "").await?;
    let bundle = found.body.into_tree();
    let entries = bundle.get("entry").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    Ok(entries.iter().any(|e| {
        let resource = e.get("resource");
        resource.and_then(|r| r.get("resourceType")).and_then(Value::as_str) == Some(rtype)
            && resource.and_then(|r| r.get("id")).and_then(Value::as_str) == Some(id)
    }))
}
