//! What an interaction needs from a token's SMART scopes, and whether its grant gives it.
//!
//! Each interaction needs permissions on a type (`read` → `r`, `search` → `s`, a conditional
//! write also `s`, `$export` → `rs` on each exported type…); parameters that reach into other
//! types need them too, from `user/` or `system/` scopes (an `_include`d type `r`, a chained or
//! `_has` type `s`). Granted by `user/` or `system/` scopes alone: [`Access::Full`] (the whole
//! tenant). Granted only with `patient/` scopes: [`Access::Patient`], which `scope::confine`
//! narrows to the launch patient's resources — or refuses where it cannot (patches,
//! conditional writes, history, system-wide searches, exports). Not granted: 403, naming the
//! scope that is missing.
use super::scopes::{Grant, Perms};
use crate::route::{parse_query, ExportLevel, Interaction, Op, Params};
use serde_json::Value;

/// What the grant allows an interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Everything the tenant rule allows.
    Full,
    /// Only inside this patient's compartment (a local id).
    Patient(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SmartError {
    #[error("the token's scopes do not allow this request: it needs {0}")]
    Missing(String),
    #[error("the token's patient/ scopes need a patient launch context (its patient claim), and it has none")]
    NoPatient,
    #[error("the token's patient/ scopes do not allow {0}: they confine it to the patient's compartment, which {0} cannot be narrowed to (it needs {1})")]
    NotConfinable(&'static str, String),
    #[error("the token's patient/ scopes confine it to Patient/{0}")]
    OutsideCompartment(String),
    #[error("the token's patient/ scopes cannot be narrowed to the patient for {0} (not in the R4 Patient compartment, or the upstream has no patient search parameter for it)")]
    CannotNarrow(String),
    #[error("the token's patient/ scopes narrow this search by its parameter, which {0} would modify")]
    NarrowingModified(String),
    #[error("the token's patient/ scopes allow writing Patient/{0}'s resources only: this {1} is not (its patient references must all be Patient/{0}, and there must be one)")]
    NotThePatients(String, String),
}

/// Permissions needed on a type (`None`: every type, `*`).
struct Need {
    rtype: Option<String>,
    perms: Perms,
}

impl Need {
    fn new(rtype: Option<&str>, perms: Perms) -> Need {
        Need { rtype: rtype.map(str::to_owned), perms }
    }

    /// `Type.perms` as a scope names it, with the contexts that could grant it.
    fn scope(&self, confinable: bool) -> String {
        let t = self.rtype.as_deref().unwrap_or("*");
        match confinable {
            true => format!("patient/{t}.{0}, user/{t}.{0} or system/{t}.{0}", self.perms),
            false => format!("user/{t}.{0} or system/{t}.{0}", self.perms),
        }
    }
}

/// Whether `grant` allows `interaction` with `params`, `criteria` (a create's `If-None-Exist`,
/// which searches) and `body` (a write's resource, whose conditional references search; a
/// `Parameters` body of an export kickoff, whose `_type` and `_typeFilter` count as parameters).
pub fn permit(
    grant: &Grant,
    interaction: &Interaction,
    params: &Params,
    criteria: Option<&Params>,
    body: Option<&Value>,
) -> Result<Access, SmartError> {
    let mut params = std::borrow::Cow::Borrowed(params);
    if let (Interaction::Export { form: true, .. }, Some(body)) = (interaction, body) {
        params.to_mut().extend(parameters(body));
    }
    let (needs, confinable) = needs(interaction, &params, criteria.is_some());
    // Types reached through parameters, criteria, `_typeFilter`s and conditional references:
    // granted without confinement (an included Practitioner is no member of the patient's
    // compartment).
    let mut reached_all = reached(&params);
    reached_all.extend(criteria.map(reached).unwrap_or_default());
    reached_all.extend(inner_queries(&params, body));
    reached_all.extend(subscribed(interaction, body));
    for need in reached_all {
        if !grant.perms(need.rtype.as_deref(), false).contains(need.perms) {
            return Err(SmartError::Missing(need.scope(false)));
        }
    }
    let full = |n: &Need| grant.perms(n.rtype.as_deref(), false).contains(n.perms);
    if needs.iter().all(full) {
        return Ok(Access::Full);
    }
    let either = |n: &Need| grant.perms(n.rtype.as_deref(), false).union(grant.perms(n.rtype.as_deref(), true));
    if let Some(n) = needs.iter().find(|n| !either(n).contains(n.perms)) {
        return Err(SmartError::Missing(n.scope(confinable.is_ok())));
    }
    // Granted only with patient/ scopes.
    if let Err(what) = confinable {
        let n = needs.iter().find(|n| !full(n)).expect("one needs patient/");
        return Err(SmartError::NotConfinable(what, n.scope(false)));
    }
    grant.patient.clone().map(Access::Patient).ok_or(SmartError::NoPatient)
}

/// The permissions an interaction needs, and whether a `patient/` grant can be confined to
/// the patient's compartment for it (`Err`: what it is, for the refusal).
fn needs(i: &Interaction, params: &Params, conditional_create: bool) -> (Vec<Need>, Result<(), &'static str>) {
    use Interaction as I;
    let (r, s) = (Perms::R, Perms::S);
    let one = |t: &str, p: Perms| vec![Need::new(Some(t), p)];
    let searched = Perms::S;
    match i {
        I::Read { rtype, .. } | I::Vread { rtype, .. } | I::InstanceHistory { rtype, .. } => (one(rtype, r), Ok(())),
        I::Validate { rtype, id: Some(_) } => (one(rtype, r), Ok(())),
        I::Operation { rtype, op: Op::Meta, .. } => (one(rtype, r), Ok(())),
        I::Search { rtype, .. } | I::Compartment { rtype, .. } => (one(rtype, s), Ok(())),
        I::Operation { op: Op::Everything, .. } => (vec![Need::new(None, r.union(s))], Ok(())),
        // A rehearsal of a create: nothing is written or read.
        I::Validate { rtype, id: None } => (one(rtype, Perms::C), Ok(())),
        I::History { rtype } => (vec![Need::new(rtype.as_deref(), s)], Err("history of a type or of the server")),
        I::SystemSearch { .. } => (types(params, s), Err("a search across types")),
        I::Export { level, .. } => {
            let what = match level {
                ExportLevel::System => "a system export",
                ExportLevel::Patients | ExportLevel::Patient(_) => "a patient export",
                ExportLevel::Group(_) => "a group export",
            };
            (types(params, r.union(s)), Err(what))
        }
        // Writes of the patient's own resources can be confined (`scope::confine` judges the
        // body and the resource it replaces); those that search or transform first cannot.
        I::Create { rtype } if conditional_create => {
            (one(rtype, Perms::C.union(searched)), Err("a conditional create"))
        }
        I::Create { rtype } => (one(rtype, Perms::C), Ok(())),
        I::Update { rtype, .. } => (one(rtype, Perms::U), Ok(())),
        I::Delete { rtype, .. } => (one(rtype, Perms::D), Ok(())),
        I::Patch { rtype, .. } => (one(rtype, Perms::U), Err("a patch (an update can be)")),
        I::Operation { rtype, op: Op::MetaAdd | Op::MetaDelete, .. } => {
            (one(rtype, Perms::U), Err("$meta-add or $meta-delete"))
        }
        I::ConditionalUpdate { rtype } | I::ConditionalPatch { rtype } => {
            (one(rtype, Perms::U.union(searched)), Err("a conditional write"))
        }
        I::ConditionalDelete { rtype } => (one(rtype, Perms::D.union(searched)), Err("a conditional write")),
        I::Operation { op: Op::Validate, rtype, .. } => (one(rtype, r), Ok(())),
        // Nothing of their own: a page continues a search its token is bound to (by the grant),
        // export status and files belong to the job of the client that started it, a Bundle's
        // entries are judged one by one, and metadata is public.
        I::Page { .. }
        | I::ExportStatus { .. }
        | I::ExportCancel { .. }
        | I::ExportFile { .. }
        | I::Bundle
        | I::Metadata => (vec![], Ok(())),
    }
}

/// `_type`'s types (every type without it), each needing `perms`.
fn types(params: &Params, perms: Perms) -> Vec<Need> {
    let named: Vec<Need> = params
        .iter()
        .filter(|(k, _)| k == "_type")
        .flat_map(|(_, v)| v.split(','))
        .map(|t| match t.trim() {
            "*" => Need::new(None, perms),
            t => Need::new(Some(t), perms),
        })
        .collect();
    if named.is_empty() {
        vec![Need::new(None, perms)]
    } else {
        named
    }
}

/// A `Parameters` body's parameters as name/value pairs (an export kickoff's `_type`,
/// `_typeFilter`…): every `value[x]` a string is read (`valueString`, `valueCode`, `valueUri`…),
/// a `valueReference` by its `reference`; a value that cannot be read so counts as `*` (every
/// type), so nothing the kickoff may understand escapes the check.
fn parameters(body: &Value) -> Params {
    let list = body.get("parameter").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut out = Params::new();
    for p in list {
        let Some(name) = p.get("name").and_then(Value::as_str) else { continue };
        let Some(members) = p.as_object() else { continue };
        for (_, value) in members.iter().filter(|(k, _)| k.starts_with("value")) {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Object(o) => o.get("reference").and_then(Value::as_str).unwrap_or("*").to_owned(),
                _ => "*".to_owned(),
            };
            out.push((name.to_owned(), text));
        }
    }
    out
}

/// What searches hidden inside other values reach: each `_typeFilter` (`Type?query`) and each
/// conditional reference in `body` (`Patient?name=x`, resolved by a search on that type) needs
/// `s` on its type, and whatever its own query reaches. A query that does not parse needs `*`.
fn inner_queries(params: &Params, body: Option<&Value>) -> Vec<Need> {
    let mut queries: Vec<&str> = params.iter().filter(|(k, _)| k == "_typeFilter").map(|(_, v)| v.as_str()).collect();
    let mut references = Vec::new();
    if let Some(body) = body {
        conditional_references(body, &mut references);
    }
    queries.extend(references);
    let mut out = Vec::new();
    for q in queries {
        let (rtype, query) = q.split_once('?').unwrap_or((q, ""));
        // A type fhir-fence cannot name (`Patient/p1?x`) stands for every type.
        let rtype = Some(rtype).filter(|t| crate::fhir::shape::Model::r4().is_resource_type(t));
        out.push(Need::new(rtype, Perms::S));
        match parse_query(Some(query)) {
            Ok(inner) => out.extend(reached(&inner)),
            Err(_) => out.push(Need::new(None, Perms::S)),
        }
    }
    out
}

/// What a Subscription written by the caller would deliver: everything its `criteria` search
/// finds, for as long as it lives, about every patient. So its type needs `r` and `s` granted
/// in full (a `patient/` scope cannot narrow a notification), as does whatever the criteria
/// reach. A patch of a Subscription may rewrite its criteria into anything: it needs `*.rs`.
fn subscribed(interaction: &Interaction, body: Option<&Value>) -> Vec<Need> {
    let every = || vec![Need::new(None, Perms::R.union(Perms::S))];
    match interaction {
        Interaction::Patch { rtype, .. } | Interaction::ConditionalPatch { rtype } if rtype == "Subscription" => {
            every()
        }
        Interaction::Create { rtype }
        | Interaction::Update { rtype, .. }
        | Interaction::ConditionalUpdate { rtype }
            if rtype == "Subscription" =>
        {
            let Some(criteria) = body.and_then(|b| b.get("criteria")).and_then(Value::as_str) else { return vec![] };
            let (rtype, query) = criteria.split_once('?').unwrap_or((criteria, ""));
            let rtype = Some(rtype).filter(|t| crate::fhir::shape::Model::r4().is_resource_type(t));
            let mut out = vec![Need::new(rtype, Perms::R.union(Perms::S))];
            match parse_query(Some(query)) {
                Ok(inner) => out.extend(reached(&inner)),
                Err(_) => out.extend(every()),
            }
            out
        }
        _ => vec![],
    }
}

/// Every `reference` string with a `?` (a conditional reference) anywhere in `v`.
fn conditional_references<'v>(v: &'v Value, out: &mut Vec<&'v str>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("reference", Value::String(r)) if r.contains('?') => out.push(r),
                    _ => conditional_references(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| conditional_references(v, out)),
        _ => {}
    }
}

/// Types a search reaches through its parameters: `_include` targets (`r`; any type when the
/// include names none), `_revinclude` sources (`r`), chain hops and `_has` types (`s`).
fn reached(params: &Params) -> Vec<Need> {
    let mut out = Vec::new();
    for (name, value) in params {
        let base = name.split(':').next().unwrap_or_default();
        match base {
            "_include" | "_revinclude" => {
                for v in value.split(',') {
                    let parts: Vec<&str> = v.split(':').collect();
                    let t = match (base, parts.as_slice()) {
                        ("_include", [_, _, t]) => Some(*t),
                        ("_include", _) => None,
                        (_, [s, ..]) => Some(*s),
                        _ => None,
                    };
                    out.push(Need::new(t, Perms::R));
                }
            }
            "_has" => {
                // `_has:Type:ref:param`, possibly nested: every Type named.
                let parts: Vec<&str> = name.split(':').collect();
                for w in parts.windows(2).filter(|w| w[0] == "_has") {
                    out.push(Need::new(Some(w[1]), Perms::S));
                }
            }
            _ if name.contains('.') => {
                // `ref[:Type].….param`: every hop but the last reaches a resource.
                let hops: Vec<&str> = name.split('.').collect();
                for hop in &hops[..hops.len() - 1] {
                    out.push(Need::new(hop.split_once(':').map(|(_, t)| t), Perms::S));
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grant(scope: &str, patient: Option<&str>) -> Grant {
        Grant::from_claims(&json!({"scope": scope, "patient": patient}))
    }

    fn read(t: &str) -> Interaction {
        Interaction::Read { rtype: t.into(), id: "x".into() }
    }

    fn search(t: &str) -> Interaction {
        Interaction::Search { rtype: t.into(), form: false }
    }

    fn q(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn user_and_system_scopes_give_the_tenant_patient_scopes_the_compartment() {
        let g = grant("user/Observation.rs patient/Condition.rs", Some("p1"));
        assert_eq!(permit(&g, &read("Observation"), &vec![], None, None).unwrap(), Access::Full);
        assert_eq!(permit(&g, &read("Condition"), &vec![], None, None).unwrap(), Access::Patient("p1".into()));
        let e = permit(&g, &read("Patient"), &vec![], None, None).unwrap_err().to_string();
        assert!(e.contains("patient/Patient.r, user/Patient.r or system/Patient.r"), "{e}");
        // A write needs its letter; patient/ scopes cannot write here.
        let create = Interaction::Create { rtype: "Observation".into() };
        assert!(permit(&g, &create, &vec![], None, None).unwrap_err().to_string().contains("Observation.c"));
        let g = grant("patient/Observation.crus", Some("p1"));
        assert_eq!(permit(&g, &create, &vec![], None, None).unwrap(), Access::Patient("p1".into()));
        let e = permit(&g, &create, &vec![], Some(&vec![]), None).unwrap_err();
        assert!(matches!(e, SmartError::NotConfinable("a conditional create", _)), "{e}");
        let patch = Interaction::Patch { rtype: "Observation".into(), id: "o1".into() };
        assert!(matches!(permit(&g, &patch, &vec![], None, None), Err(SmartError::NotConfinable(..))));
        // Conditional interactions search too.
        let g = grant("system/Observation.c", None);
        assert_eq!(permit(&g, &create, &vec![], None, None).unwrap(), Access::Full);
        assert!(permit(&g, &create, &vec![], Some(&vec![]), None).unwrap_err().to_string().contains("Observation.cs"));
        // patient/ without a launch patient grants nothing usable.
        let g = grant("patient/Observation.rs", None);
        assert!(matches!(permit(&g, &search("Observation"), &vec![], None, None), Err(SmartError::NoPatient)));
    }

    #[test]
    fn types_reached_through_parameters_need_their_own_scopes() {
        let g = grant("patient/Observation.rs user/Practitioner.r", Some("p1"));
        let include = q(&[("_include", "Observation:performer:Practitioner")]);
        assert_eq!(permit(&g, &search("Observation"), &include, None, None).unwrap(), Access::Patient("p1".into()));
        for (k, v, needs) in [
            ("_include", "Observation:performer", "user/*.r"),
            ("_include", "Observation:subject:Patient", "user/Patient.r"),
            ("_revinclude", "Provenance:target", "user/Provenance.r"),
            ("_include:iterate", "Observation:subject:Patient", "user/Patient.r"),
            ("subject:Patient.name", "x", "user/Patient.s"),
            ("subject.name", "x", "user/*.s"),
            ("_has:Condition:subject:code", "x", "user/Condition.s"),
        ] {
            let e = permit(&g, &search("Observation"), &q(&[(k, v)]), None, None).unwrap_err().to_string();
            assert!(e.contains(needs), "{k}={v}: {e}");
        }
    }

    #[test]
    fn searches_inside_criteria_and_references_need_scopes_too() {
        let g = grant("user/Observation.cs", None);
        let create = Interaction::Create { rtype: "Observation".into() };
        let criteria = q(&[("subject:Patient.name", "x")]);
        let e = permit(&g, &create, &vec![], Some(&criteria), None).unwrap_err().to_string();
        assert!(e.contains("user/Patient.s"), "{e}");
        let body = json!({"resourceType": "Observation", "subject": {"reference": "Patient?name=x"}});
        let e = permit(&g, &create, &vec![], None, Some(&body)).unwrap_err().to_string();
        assert!(e.contains("user/Patient.s"), "{e}");
        let body = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"}});
        assert_eq!(permit(&g, &create, &vec![], None, Some(&body)).unwrap(), Access::Full);
    }

    #[test]
    fn what_cannot_be_confined_needs_user_or_system_scopes() {
        let g = grant("patient/*.rs", Some("p1"));
        let export = Interaction::Export { level: ExportLevel::System, form: false };
        assert!(matches!(permit(&g, &export, &vec![], None, None), Err(SmartError::NotConfinable(..))));
        let system = Interaction::SystemSearch { form: false };
        assert!(matches!(permit(&g, &system, &vec![], None, None), Err(SmartError::NotConfinable(..))));
        let g = grant("system/Patient.rs system/Observation.rs", None);
        assert_eq!(permit(&g, &export, &q(&[("_type", "Patient,Observation")]), None, None).unwrap(), Access::Full);
        let e = permit(&g, &export, &vec![], None, None).unwrap_err().to_string();
        assert!(e.contains("system/*.rs"), "{e}");
        // What the kickoff's body names counts, as do the searches inside `_typeFilter`s.
        let post = Interaction::Export { level: ExportLevel::System, form: true };
        for value in [
            r#""valueString":"Observation,Condition""#,
            r#""valueCode":"Condition""#,
            r#""valueUri":"Condition""#,
            r#""valueInteger":1"#,
        ] {
            let body: Value = serde_json::from_str(&format!(
                r#"{{"resourceType":"Parameters","parameter":[{{"name":"_type",{value}}}]}}"#
            ))
            .unwrap();
            let e = permit(&g, &post, &q(&[("_type", "Patient")]), None, Some(&body)).unwrap_err().to_string();
            assert!(e.contains("Condition.rs") || e.contains("Observation.rs") || e.contains("*.rs"), "{value}: {e}");
        }
        let filter = q(&[("_type", "Observation"), ("_typeFilter", "Observation?subject:Patient.name=x")]);
        let g2 = grant("system/Observation.rs", None);
        assert!(permit(&g2, &export, &filter, None, None).unwrap_err().to_string().contains("Patient.s"));
        let everything = Interaction::Operation { rtype: "Patient".into(), id: "p1".into(), op: Op::Everything };
        assert!(permit(&g, &everything, &vec![], None, None).is_err(), "$everything needs every type");
    }

    #[test]
    fn a_subscription_needs_what_its_criteria_would_deliver() {
        let create = Interaction::Create { rtype: "Subscription".into() };
        let body = |criteria: &str| json!({"resourceType": "Subscription", "criteria": criteria});
        // patient/ scopes cannot narrow a notification: the criteria's type needs user/ or system/.
        let g = grant("user/Subscription.cru patient/Observation.rs", Some("p1"));
        let e = permit(&g, &create, &vec![], None, Some(&body("Observation?code=x"))).unwrap_err().to_string();
        assert!(e.contains("user/Observation.rs"), "{e}");
        let g = grant("user/Subscription.cru user/Observation.rs", None);
        assert_eq!(permit(&g, &create, &vec![], None, Some(&body("Observation?code=x"))).unwrap(), Access::Full);
        let e = permit(&g, &create, &vec![], None, Some(&body("Observation?subject:Patient.name=x")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("user/Patient.s"), "{e}");
        let e = permit(&g, &create, &vec![], None, Some(&body("Condition?"))).unwrap_err().to_string();
        assert!(e.contains("Condition.rs"), "{e}");
        let update = Interaction::Update { rtype: "Subscription".into(), id: "s1".into() };
        assert!(permit(&g, &update, &vec![], None, Some(&body("Condition?"))).is_err());
        let patch = Interaction::Patch { rtype: "Subscription".into(), id: "s1".into() };
        let e = permit(&g, &patch, &vec![], None, None).unwrap_err().to_string();
        assert!(e.contains("user/*.rs"), "{e}");
    }
}
