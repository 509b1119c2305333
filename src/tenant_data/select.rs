//! `tenant adopt`'s selection: which resources of a legacy server (no tenant coding, plain ids,
//! written without fhir-fence) one adoption takes. A legacy server that mixes customers is the
//! case it is for, so the operator names one customer's records:
//!
//! - no criteria: every resource of every type the legacy server declares searchable;
//! - `--where TYPE?QUERY` (repeatable): the resources that search matches. The query is the
//!   legacy server's own search, sent with `Prefer: handling=strict` (an unknown parameter is an
//!   error, not ignored); parameters that change what a search returns rather than which
//!   resources match (`_include`, `_revinclude`, `_summary`, `_elements`, `_count`, `_contained`,
//!   `_sort`, …) are refused: only the allow-listed `_` parameters ([`CONTROL`]) pass;
//! - `--compartment Patient/ID` (repeatable): the Patient, read, and every resource of its
//!   compartment: one search `TYPE?patient=Patient/ID` per type of
//!   `fhir::compartment::PATIENT_COMPARTMENT` and of [`MORE_COMPARTMENT`] the legacy server declares searchable (by
//!   `subject`, else `actor`, for a type without a `patient` parameter: [`COMPARTMENT_PARAMS`]),
//!   each paged to its end. HAPI JPA answers no compartment search (`Patient/ID/TYPE` is a 400),
//!   and its `$everything` also returns whatever the compartment's resources reference, another
//!   patient included, by its own rules; these are plain searches it pages reliably;
//! - `--with-referenced`: besides, every resource the selection references (relatively) that is
//!   of a type outside the Patient compartment (an Organization, Practitioner, Location,
//!   Medication…: shared reference data), read one by one, and so on transitively. A reference
//!   to a Patient-compartment type is never followed: another customer's records come in only
//!   by a criterion naming them.
//!
//! Each resource is selected once (by `Type/id`), however many criteria find it. What is found
//! but cannot be taken (no id, not of the type searched) is a `Refusal`.
use super::progress::Progress;
use super::scan::{status_error, Scan, PAGE};
use super::{DataError, Refusal};
use crate::fhir::capabilities::Capabilities;
use crate::fhir::compartment::PATIENT_COMPARTMENT;
use crate::fhir::reference::{self, Target};
use crate::headers::strict_headers;
use crate::upstream::Upstream;
use http::{Method, StatusCode};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The `_` parameters a `--where` query may hold: they choose which resources match.
pub const CONTROL: &[&str] =
    &["_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_has", "_list", "_text", "_content"];

/// The parameter a Patient-compartment type is searched by for one patient, the first the
/// legacy server declares for the type (HAPI JPA does not serve `Patient/ID/TYPE`).
pub const COMPARTMENT_PARAMS: &[&str] = &["patient", "subject", "actor", "member"];

/// Patient-compartment types of R4 that `PATIENT_COMPARTMENT` leaves out (it follows HAPI's
/// Patient-level export): a compartment's adoption takes them too, and never follows a
/// reference to them.
pub const MORE_COMPARTMENT: &[&str] = &["Device", "Group", "List"];

/// Whether `rtype` is of the R4 Patient compartment (a patient's data, not shared reference data).
pub fn in_compartment(rtype: &str) -> bool {
    PATIENT_COMPARTMENT.contains(&rtype) || MORE_COMPARTMENT.contains(&rtype)
}

/// One selection criterion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criterion {
    /// `TYPE` or `TYPE?QUERY`: the resources that search matches.
    Where { rtype: String, query: String },
    /// `Patient/ID`: the Patient and its compartment.
    Compartment { id: String },
}

impl Criterion {
    /// Parses a `--where` value: `TYPE` or `TYPE?QUERY`.
    pub fn parse_where(s: &str) -> Result<Criterion, String> {
        let (rtype, query) = s.split_once('?').unwrap_or((s, ""));
        if !reference::is_resource_type(rtype) {
            return Err(format!("--where {s:?}: {rtype:?} is not a resource type (TYPE?QUERY)"));
        }
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let base = name.split(':').next().unwrap_or_default();
            if base.is_empty() {
                return Err(format!("--where {s:?}: a parameter without a name"));
            }
            if base.starts_with('_') && !CONTROL.contains(&base) {
                return Err(format!(
                    "--where {s:?}: {base} changes what the search returns, not which resources match; \
                     only {} are allowed among the _ parameters",
                    CONTROL.join(", ")
                ));
            }
            if value.is_empty() {
                return Err(format!("--where {s:?}: {name} has no value"));
            }
        }
        Ok(Criterion::Where { rtype: rtype.to_owned(), query: query.to_owned() })
    }

    /// Parses a `--compartment` value: `Patient/ID`.
    pub fn parse_compartment(s: &str) -> Result<Criterion, String> {
        match reference::literal(s) {
            Some(l) if l.rtype == "Patient" && l.version.is_none() => {
                Ok(Criterion::Compartment { id: l.id.to_owned() })
            }
            _ => Err(format!("--compartment {s:?}: must be Patient/ID")),
        }
    }

    /// The criterion as the operator wrote it (reports, the adopt state).
    pub fn describe(&self) -> String {
        match self {
            Criterion::Where { rtype, query } if query.is_empty() => format!("where {rtype}"),
            Criterion::Where { rtype, query } => format!("where {rtype}?{query}"),
            Criterion::Compartment { id } => format!("compartment Patient/{id}"),
        }
    }
}

/// The legacy server an adoption reads.
pub struct Legacy<'a> {
    pub name: &'a str,
    pub upstream: &'a Upstream,
    pub caps: &'a Capabilities,
    pub correlation: &'a str,
}

impl Legacy<'_> {
    fn searchable(&self, rtype: &str) -> bool {
        self.caps.type_interaction(rtype, "search-type")
    }
}

/// What was selected: per type, id → the resource as the legacy server holds it.
#[derive(Debug, Default)]
pub struct Selection {
    pub resources: BTreeMap<String, BTreeMap<String, Value>>,
    pub refused: Vec<Refusal>,
    /// Resources added by `--with-referenced`.
    pub referenced: u64,
}

impl Selection {
    pub fn total(&self) -> u64 {
        self.resources.values().map(|m| m.len() as u64).sum()
    }

    fn contains(&self, rtype: &str, id: &str) -> bool {
        self.resources.get(rtype).is_some_and(|m| m.contains_key(id))
    }

    /// Takes one resource a search of `searched` returned (a server's OperationOutcome of a
    /// search answer is its message, not data, and is skipped).
    fn take(&mut self, searched: &str, raw: Value) {
        let rtype = raw.get("resourceType").and_then(Value::as_str).unwrap_or("(no resourceType)").to_owned();
        let id = raw.get("id").and_then(Value::as_str).map(str::to_owned);
        if rtype == "OperationOutcome" && searched != "OperationOutcome" {
            return;
        }
        let Some(id) = id else {
            self.refused.push(Refusal::new(&rtype, "(no id)", "the legacy server's resource has no id"));
            return;
        };
        if rtype != searched {
            self.refused.push(Refusal::new(&rtype, &id, format!("a search of {searched} returned it")));
            return;
        }
        self.resources.entry(rtype).or_default().entry(id).or_insert(raw);
    }
}

/// Runs every criterion (none: every searchable type) against the legacy server.
pub async fn select(
    legacy: &Legacy<'_>,
    criteria: &[Criterion],
    with_referenced: bool,
    progress: &Progress,
) -> Result<Selection, DataError> {
    let mut sel = Selection::default();
    let searches: Vec<(String, String)> = if criteria.is_empty() {
        let types = legacy.caps.types().into_iter().filter(|t| legacy.searchable(t));
        types.map(|t| (t.clone(), format!("{t}?_count={PAGE}"))).collect()
    } else {
        let mut out = Vec::new();
        for c in criteria {
            out.extend(searches_of(legacy, c, &mut sel).await?);
        }
        out
    };
    let total = searches.len() as u64;
    for (n, (rtype, path)) in searches.into_iter().enumerate() {
        let mut scan = Scan::path(legacy.upstream, legacy.correlation, &format!("the search of {path}"), path.clone());
        while let Some(page) = scan.next_page().await? {
            for raw in page {
                sel.take(&rtype, raw);
            }
        }
        progress.update("select", Some(&rtype), n as u64 + 1, Some(total));
    }
    if with_referenced {
        follow_references(legacy, &mut sel, progress).await?;
    }
    Ok(sel)
}

/// The searches (type searched, path) a criterion stands for; a compartment's Patient is read
/// into `sel` here.
async fn searches_of(
    legacy: &Legacy<'_>,
    c: &Criterion,
    sel: &mut Selection,
) -> Result<Vec<(String, String)>, DataError> {
    match c {
        Criterion::Where { rtype, query } => {
            if !legacy.searchable(rtype) {
                return Err(DataError::Refused(format!(
                    "{}: upstream {} does not declare {rtype} searchable",
                    c.describe(),
                    legacy.name
                )));
            }
            let sep = if query.is_empty() { "" } else { "&" };
            Ok(vec![(rtype.clone(), format!("{rtype}?{query}{sep}_count={PAGE}"))])
        }
        Criterion::Compartment { id } => {
            let patient = read(legacy, "Patient", id).await?.ok_or_else(|| {
                DataError::Refused(format!("{}: upstream {} holds no Patient/{id}", c.describe(), legacy.name))
            })?;
            sel.take("Patient", patient);
            Ok(PATIENT_COMPARTMENT
                .iter()
                .chain(MORE_COMPARTMENT)
                .filter(|t| **t != "Patient" && legacy.searchable(t))
                .filter_map(|t| {
                    let param = COMPARTMENT_PARAMS.iter().find(|p| legacy.caps.param(t, p).is_some())?;
                    Some((t.to_string(), format!("{t}?{param}=Patient/{id}&_count={PAGE}")))
                })
                .collect())
        }
    }
}

/// Reads `Type/id` from the legacy server: `None` when it has none (404, 410).
async fn read(legacy: &Legacy<'_>, rtype: &str, id: &str) -> Result<Option<Value>, DataError> {
    let path = format!("{rtype}/{id}");
    let answer = legacy.upstream.send(Method::GET, &path, strict_headers(legacy.correlation), None).await?;
    match answer.status {
        StatusCode::OK => Ok(answer.body),
        StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
        _ => Err(status_error(&format!("the read of {path}"), &answer)),
    }
}

/// The relative references of `resource` to a resource `sel` lacks, of a type outside the
/// Patient compartment (`Type/id`, in the order found, once each).
pub fn to_follow(resource: &Value, sel: &Selection) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    let mut body = resource.clone();
    let _ = reference::for_each_mut(&mut body, &mut |r: &mut String| {
        if let Target::Relative(l) = reference::parse(r) {
            let shared = !in_compartment(l.rtype);
            let pair = (l.rtype.to_owned(), l.id.to_owned());
            if shared && !sel.contains(l.rtype, l.id) && !found.contains(&pair) {
                found.push(pair);
            }
        }
        Ok::<_, ()>(())
    });
    found
}

/// `--with-referenced`: reads what the selection references outside the Patient compartment
/// until nothing new is referenced. A target the legacy server does not hold stays out (the
/// referring resource is then refused for it when judged).
async fn follow_references(legacy: &Legacy<'_>, sel: &mut Selection, progress: &Progress) -> Result<(), DataError> {
    let mut absent: BTreeSet<(String, String)> = BTreeSet::new();
    let mut pending: Vec<Value> = sel.resources.values().flat_map(|m| m.values().cloned()).collect();
    while !pending.is_empty() {
        let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
        for r in &pending {
            wanted.extend(to_follow(r, sel).into_iter().filter(|p| !absent.contains(p)));
        }
        pending.clear();
        for (rtype, id) in wanted {
            match read(legacy, &rtype, &id).await? {
                Some(r) if r.get("resourceType").and_then(Value::as_str) == Some(rtype.as_str()) => {
                    sel.take(&rtype, r.clone());
                    sel.referenced += 1;
                    pending.push(r);
                }
                _ => {
                    absent.insert((rtype, id));
                }
            }
            progress.update("select-referenced", None, sel.referenced, None);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn where_criteria_choose_resources_and_nothing_else() {
        assert_eq!(
            Criterion::parse_where("Patient?identifier=urn:x|1").unwrap(),
            Criterion::Where { rtype: "Patient".into(), query: "identifier=urn:x|1".into() }
        );
        assert_eq!(
            Criterion::parse_where("Organization").unwrap(),
            Criterion::Where { rtype: "Organization".into(), query: String::new() }
        );
        assert!(Criterion::parse_where("Observation?_has:Patient:link:identifier=a|b&_id=1,2").is_ok());
        for (bad, why) in [
            ("patient?name=x", "not a resource type"),
            ("Patient?_include=Patient:organization", "_include changes what the search returns"),
            ("Patient?_revinclude=Observation:subject", "_revinclude"),
            ("Patient?_summary=count", "_summary"),
            ("Patient?_elements=id", "_elements"),
            ("Patient?_count=1", "_count"),
            ("Patient?_contained=true", "_contained"),
            ("Patient?name=", "has no value"),
            ("Patient?=x", "without a name"),
        ] {
            let e = Criterion::parse_where(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_compartment_is_one_patient() {
        assert_eq!(Criterion::parse_compartment("Patient/p-1").unwrap(), Criterion::Compartment { id: "p-1".into() });
        for bad in ["Observation/1", "Patient", "Patient/1/_history/2", "Patient/a b", "http://x/Patient/1"] {
            assert!(Criterion::parse_compartment(bad).is_err(), "{bad}");
        }
        assert_eq!(Criterion::parse_compartment("Patient/7").unwrap().describe(), "compartment Patient/7");
    }

    #[test]
    fn each_resource_is_selected_once_and_strays_are_refused() {
        let mut sel = Selection::default();
        sel.take("Patient", json!({"resourceType": "Patient", "id": "1", "gender": "male"}));
        sel.take("Patient", json!({"resourceType": "Patient", "id": "1", "gender": "female"}));
        sel.take("Patient", json!({"resourceType": "OperationOutcome", "issue": []}));
        sel.take("Patient", json!({"resourceType": "Observation", "id": "9"}));
        sel.take("Patient", json!({"resourceType": "Patient"}));
        assert_eq!(sel.total(), 1);
        assert_eq!(sel.resources["Patient"]["1"]["gender"], "male", "the first found is kept");
        let refused: Vec<(&str, &str)> = sel.refused.iter().map(|r| (r.rtype.as_str(), r.id.as_str())).collect();
        assert_eq!(refused, [("Observation", "9"), ("Patient", "(no id)")]);
    }

    #[test]
    fn only_references_out_of_the_patient_compartment_are_followed() {
        let mut sel = Selection::default();
        sel.take("Patient", json!({"resourceType": "Patient", "id": "1"}));
        let encounter = json!({"resourceType": "Encounter", "id": "e",
            "subject": {"reference": "Patient/1"},
            "serviceProvider": {"reference": "Organization/o1"},
            "participant": [{"individual": {"reference": "Practitioner/d1"}},
                            {"individual": {"reference": "Practitioner/d1"}},
                            {"individual": {"reference": "RelatedPerson/r1"}}],
            "partOf": {"reference": "Encounter/other"},
            "basedOn": [{"reference": "#contained"}, {"reference": "urn:uuid:abc"},
                        {"reference": "http://elsewhere/fhir/Location/l1"}],
            "extension": [{"url": "x", "valueReference": {"reference": "Patient/2"}},
                          {"url": "y", "valueReference": {"reference": "Group/g"}},
                          {"url": "z", "valueReference": {"reference": "Device/dv"}}]});
        assert_eq!(
            to_follow(&encounter, &sel),
            [("Organization".to_owned(), "o1".to_owned()), ("Practitioner".to_owned(), "d1".to_owned())]
        );
        sel.take("Organization", json!({"resourceType": "Organization", "id": "o1"}));
        assert_eq!(to_follow(&encounter, &sel), [("Practitioner".to_owned(), "d1".to_owned())]);
    }
}
