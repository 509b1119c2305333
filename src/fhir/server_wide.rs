//! The resource types whose instances change how the server behaves for every tenant: resolved
//! or applied server-wide (profiles, terminology, search parameters…). Tenants cannot write
//! them (`scope::write::writable`), so what the server holds of them are the operator's shared
//! definitions; a canonical naming only such types names shared definitions.

/// Resource types whose instances change how the server behaves for every tenant; writing them
/// through fhir-fence is refused, with the reason.
pub const SERVER_WIDE: &[(&str, &str)] = &[
    ("SearchParameter", "it changes indexing and search for every tenant"),
    ("SubscriptionTopic", "topic-based subscriptions are not scoped yet"),
    ("StructureDefinition", "profiles are resolved server-wide"),
    ("CodeSystem", "terminology is resolved server-wide"),
    ("ValueSet", "terminology is resolved server-wide"),
    ("ConceptMap", "terminology is resolved server-wide"),
    ("NamingSystem", "identifier systems are resolved server-wide"),
    ("OperationDefinition", "operations are defined server-wide"),
    ("CompartmentDefinition", "compartments are defined server-wide"),
    ("ImplementationGuide", "implementation guides are installed server-wide"),
    ("CapabilityStatement", "it describes the whole server"),
    ("StructureMap", "maps are resolved server-wide"),
    ("GraphDefinition", "graphs are resolved server-wide"),
    ("MessageDefinition", "message definitions are resolved server-wide"),
    ("TerminologyCapabilities", "it describes the whole server"),
];

/// Whether `rtype` is one of the [`SERVER_WIDE`] types.
pub fn is_server_wide(rtype: &str) -> bool {
    SERVER_WIDE.iter().any(|(t, _)| *t == rtype)
}
