//! The tenancy model on a shared upstream: a marker coding in `meta` plus an id prefix.
//!
//! Every resource fhir-fence writes carries the caller's coding (in `meta.tag` or
//! `meta.security`, per config) and an upstream id `{prefix}-{local}`; clients only see `local`.
//! A resource belongs to a tenant only when *both* markers say so; that is the single
//! ownership test every answer passes ([`Marking::owns`]).
use crate::config::{Marker, TenantStatus};
use crate::fhir::reference::is_id;
use serde_json::{json, Map, Value};

/// One tenant, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    pub prefix: String,
    pub upstream: String,
    pub status: TenantStatus,
    /// Operations this tenant may call (names without `$`).
    pub operations: Vec<String>,
    /// Where this tenant's Subscriptions may deliver (prefix rules end in `/`, others are origins).
    pub destinations: Vec<String>,
    /// The generation of the tenant's sealing keys (`seal_keys`).
    pub key_generation: u32,
    /// `Observe`: requests pass through to the tenant's legacy upstream while what enforcement
    /// would refuse or drop is counted (`observe`); only on a `legacy` upstream (checked at load).
    pub enforcement: crate::config::Enforcement,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenancyError {
    #[error("{0:?} is not a valid FHIR id")]
    BadId(String),
    #[error("id {0:?} is too long once fhir-fence adds the tenant prefix (at most {1} characters here)")]
    IdTooLong(String, usize),
    #[error("meta carries a tenant coding of another tenant")]
    ForeignMarker,
}

impl Tenant {
    /// The longest local id this tenant can use (FHIR ids are at most 64 characters).
    pub fn max_local_id(&self) -> usize {
        64 - self.prefix.len() - 1
    }

    /// `local` → `{prefix}-{local}`, refusing ids that are invalid or too long once prefixed.
    pub fn upstream_id(&self, local: &str) -> Result<String, TenancyError> {
        if !is_id(local) {
            return Err(TenancyError::BadId(local.to_owned()));
        }
        if local.len() > self.max_local_id() {
            return Err(TenancyError::IdTooLong(local.to_owned(), self.max_local_id()));
        }
        Ok([self.prefix.as_str(), "-", local].concat())
    }

    /// `{prefix}-{local}` → `local`; `None` when the id is not in this tenant's namespace.
    pub fn local_id<'a>(&self, upstream_id: &'a str) -> Option<&'a str> {
        let local = upstream_id.strip_prefix(self.prefix.as_str())?.strip_prefix('-')?;
        (!local.is_empty()).then_some(local)
    }
}

#[cfg(test)]
impl Tenant {
    /// An active tenant on upstream `u` with no operations or destinations (unit tests).
    pub(crate) fn for_tests(name: &str, prefix: &str) -> Tenant {
        Tenant {
            name: name.into(),
            prefix: prefix.into(),
            upstream: "u".into(),
            status: TenantStatus::Active,
            operations: vec![],
            destinations: vec![],
            key_generation: 0,
            enforcement: crate::config::Enforcement::Enforce,
        }
    }
}

/// How the tenant coding is written: which `meta` list and which coding system.
#[derive(Debug, Clone)]
pub struct Marking {
    pub marker: Marker,
    pub system: String,
}

impl Marking {
    fn field(&self) -> &'static str {
        match self.marker {
            Marker::Tag => "tag",
            Marker::Security => "security",
        }
    }

    /// The search parameter that scopes a search to a tenant (`_tag` or `_security`).
    pub fn search_param(&self) -> &'static str {
        match self.marker {
            Marker::Tag => "_tag",
            Marker::Security => "_security",
        }
    }

    /// The value of that parameter for `tenant`: `system|code`.
    pub fn search_value(&self, tenant: &Tenant) -> String {
        format!("{}|{}", self.system, tenant.name)
    }

    /// Replaces any tenant-system coding in `meta.tag`/`meta.security` with the caller's.
    /// A coding naming another tenant is refused (planting data in another tenant).
    pub fn stamp(&self, resource: &mut Map<String, Value>, tenant: &Tenant) -> Result<(), TenancyError> {
        let meta = resource.entry("meta").or_insert_with(|| json!({}));
        let Some(meta) = meta.as_object_mut() else { return Err(TenancyError::ForeignMarker) };
        for field in ["tag", "security"] {
            if let Some(Value::Array(codings)) = meta.get_mut(field) {
                let mut foreign = false;
                codings.retain(|c| {
                    if c.get("system").and_then(Value::as_str) != Some(self.system.as_str()) {
                        return true;
                    }
                    foreign |= c.get("code").and_then(Value::as_str) != Some(tenant.name.as_str());
                    false
                });
                if foreign {
                    return Err(TenancyError::ForeignMarker);
                }
                if codings.is_empty() {
                    meta.remove(field);
                }
            }
        }
        let list = meta.entry(self.field()).or_insert_with(|| json!([]));
        match list {
            Value::Array(codings) => {
                codings.push(json!({"system": self.system, "code": tenant.name}));
                Ok(())
            }
            _ => Err(TenancyError::ForeignMarker),
        }
    }

    /// True when `resource` carries exactly one tenant coding, the caller's, in the configured
    /// list, none elsewhere, and an id in the caller's namespace.
    pub fn owns(&self, resource: &Map<String, Value>, tenant: &Tenant) -> bool {
        let id_ok = resource.get("id").and_then(Value::as_str).and_then(|id| tenant.local_id(id)).is_some();
        id_ok && self.marked_for(resource, tenant)
    }

    /// The coding half of [`owns`](Self::owns), for entries whose id is judged elsewhere.
    pub fn marked_for(&self, resource: &Map<String, Value>, tenant: &Tenant) -> bool {
        let Some(meta) = resource.get("meta").and_then(Value::as_object) else { return false };
        let mut mine = 0;
        for field in ["tag", "security"] {
            for c in meta.get(field).and_then(Value::as_array).into_iter().flatten() {
                if c.get("system").and_then(Value::as_str) != Some(self.system.as_str()) {
                    continue;
                }
                if field != self.field() || c.get("code").and_then(Value::as_str) != Some(tenant.name.as_str()) {
                    return false;
                }
                mine += 1;
            }
        }
        mine == 1
    }

    /// True when a `meta` element holds any coding in the tenant system (tag or security).
    pub fn mentions_system(&self, meta: &Value) -> bool {
        ["tag", "security"].iter().any(|f| {
            meta.get(*f)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| c.get("system").and_then(Value::as_str) == Some(self.system.as_str()))
        })
    }

    /// Removes the tenant coding and the id prefix (call only after [`owns`](Self::owns)).
    pub fn strip(&self, resource: &mut Map<String, Value>, tenant: &Tenant) {
        if let Some(Value::Object(meta)) = resource.get_mut("meta") {
            if let Some(Value::Array(codings)) = meta.get_mut(self.field()) {
                codings.retain(|c| c.get("system").and_then(Value::as_str) != Some(self.system.as_str()));
                if codings.is_empty() {
                    meta.remove(self.field());
                }
            }
        }
        if let Some(Value::String(id)) = resource.get_mut("id") {
            if let Some(local) = tenant.local_id(id) {
                *id = local.to_owned();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> Tenant {
        Tenant::for_tests("acme", "acme")
    }
    fn globex() -> Tenant {
        Tenant::for_tests("globex", "glx")
    }
    fn marking() -> Marking {
        Marking { marker: Marker::Tag, system: "urn:t".into() }
    }

    #[test]
    fn ids_round_trip_and_stay_in_namespace() {
        let t = acme();
        assert_eq!(t.upstream_id("p1").unwrap(), "acme-p1");
        assert_eq!(t.local_id("acme-p1"), Some("p1"));
        assert_eq!(t.local_id("glx-p1"), None);
        assert_eq!(t.local_id("acmex-p1"), None);
        assert_eq!(t.local_id("acme-"), None);
        assert!(matches!(t.upstream_id(&"a".repeat(60)), Err(TenancyError::IdTooLong(..))));
        assert_eq!(t.upstream_id(&"a".repeat(59)).unwrap().len(), 64);
        assert!(matches!(t.upstream_id("a/b"), Err(TenancyError::BadId(_))));
    }

    #[test]
    fn stamp_replaces_own_and_refuses_foreign() {
        let m = marking();
        let mut r = json!({"resourceType": "Patient", "meta": {"tag": [
            {"system": "urn:t", "code": "acme"}, {"system": "urn:other", "code": "x"}]}});
        m.stamp(r.as_object_mut().unwrap(), &acme()).unwrap();
        assert_eq!(
            r["meta"]["tag"],
            json!([{"system": "urn:other", "code": "x"}, {"system": "urn:t", "code": "acme"}])
        );

        let mut r = json!({"resourceType": "Patient", "meta": {"security": [{"system": "urn:t", "code": "globex"}]}});
        assert_eq!(m.stamp(r.as_object_mut().unwrap(), &acme()), Err(TenancyError::ForeignMarker));
    }

    #[test]
    fn owns_needs_both_markers_exactly_once() {
        let m = marking();
        let ok = json!({"id": "acme-1", "meta": {"tag": [{"system": "urn:t", "code": "acme"}]}});
        assert!(m.owns(ok.as_object().unwrap(), &acme()));
        assert!(!m.owns(ok.as_object().unwrap(), &globex()));
        let no_prefix = json!({"id": "1", "meta": {"tag": [{"system": "urn:t", "code": "acme"}]}});
        assert!(!m.owns(no_prefix.as_object().unwrap(), &acme()));
        let no_tag = json!({"id": "acme-1", "meta": {}});
        assert!(!m.owns(no_tag.as_object().unwrap(), &acme()));
        let two = json!({"id": "acme-1", "meta": {"tag": [
            {"system": "urn:t", "code": "acme"}, {"system": "urn:t", "code": "globex"}]}});
        assert!(!m.owns(two.as_object().unwrap(), &acme()));
        let wrong_list = json!({"id": "acme-1", "meta": {"tag": [{"system": "urn:t", "code": "acme"}],
            "security": [{"system": "urn:t", "code": "acme"}]}});
        assert!(!m.owns(wrong_list.as_object().unwrap(), &acme()));
    }

    #[test]
    fn mentions_system() {
        let m = marking();
        assert!(m.mentions_system(&json!({"security": [{"system": "urn:t", "code": "x"}]})));
        assert!(!m.mentions_system(&json!({"tag": [{"system": "urn:other", "code": "x"}]})));
    }

    #[test]
    fn strip_removes_markers() {
        let m = marking();
        let mut r = json!({"id": "acme-1", "meta": {"versionId": "1", "tag": [{"system": "urn:t", "code": "acme"}]}});
        m.strip(r.as_object_mut().unwrap(), &acme());
        assert_eq!(r, json!({"id": "1", "meta": {"versionId": "1"}}));
    }
}
