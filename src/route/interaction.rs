//! What a request can be: the interactions, export levels and operations fhir-fence knows how
//! to scope. Anything else is refused by `classify` before it is named.

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
