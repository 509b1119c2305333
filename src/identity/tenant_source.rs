//! How a token names its tenant, per issuer: a claim (JSONPath, `tenant_claim`), the issuer
//! itself (`tenant`: one identity-provider realm per tenant), or a part of the issuer's URL
//! (`iss = "https://login.example.com/{tenant}/v2.0"`, as Entra ID puts its `tid` there,
//! optionally mapped to fhir-fence's tenant names by `tenant_ids`). Exactly one per issuer,
//! checked at load; the verified `iss` is then matched here, and the tenant found here must
//! still be one the issuer may assert.
use crate::config::{ConfigError, IssPattern, Issuer};
use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;
use std::collections::BTreeMap;

/// Where an issuer's tokens name their tenant.
pub enum TenantSource {
    Claim(JpQuery),
    Fixed(String),
    /// The template's placeholder: a tenant name, or an id `tenant_ids` maps to one.
    FromIss(BTreeMap<String, String>),
}

impl TenantSource {
    /// Builds (and checks) an issuer's source; `name` is its config name.
    pub fn build(name: &str, i: &Issuer) -> Result<TenantSource, ConfigError> {
        let key = |k: &str| format!("issuers.{name}.{k}");
        let pattern = IssPattern::parse(&i.iss).map_err(|e| ConfigError::invalid(key("iss"), e))?;
        let templated = matches!(pattern, IssPattern::Template { .. });
        let given = [i.tenant_claim.is_some(), i.tenant.is_some(), templated].iter().filter(|g| **g).count();
        if given != 1 {
            return Err(ConfigError::invalid(
                format!("issuers.{name}"),
                "name where its tokens' tenant comes from, exactly one of: tenant_claim (a claim), \
                 tenant (the issuer is that tenant's), or {tenant} in iss",
            ));
        }
        if !i.tenant_ids.is_empty() && !templated {
            return Err(ConfigError::invalid(key("tenant_ids"), "only with {tenant} in iss"));
        }
        if templated && i.discovery.is_some() {
            return Err(ConfigError::invalid(
                key("discovery"),
                "an issuer template has one issuer per tenant; give the keys shared by all of them with jwks_uri",
            ));
        }
        let asserted: std::collections::HashSet<String> =
            if i.tenant_ids.is_empty() { Default::default() } else { i.asserts().into_iter().collect() };
        for (id, tenant) in &i.tenant_ids {
            if pattern.matches(&pattern.fill(id)) != Some(id.as_str()) {
                return Err(ConfigError::invalid(
                    key("tenant_ids"),
                    format!("{id:?} is not a value {{tenant}} can take"),
                ));
            }
            if !asserted.contains(tenant) {
                return Err(ConfigError::invalid(
                    key("tenant_ids"),
                    format!("{tenant:?} is not in this issuer's tenants"),
                ));
            }
        }
        Ok(match (&i.tenant_claim, &i.tenant) {
            (Some(path), _) => {
                TenantSource::Claim(compile_claim_path(path).map_err(|e| ConfigError::invalid(key("tenant_claim"), e))?)
            }
            (None, Some(t)) => {
                if i.asserts() != [t.clone()] {
                    return Err(ConfigError::invalid(
                        key("tenants"),
                        format!("an issuer of tenant {t:?} asserts that tenant only: tenants = [{t:?}]"),
                    ));
                }
                TenantSource::Fixed(t.clone())
            }
            (None, None) => TenantSource::FromIss(i.tenant_ids.clone()),
        })
    }

    /// The tenant a verified token names: `part` is the placeholder's value of its `iss`.
    pub fn tenant(&self, part: &str, claims: &Value) -> Option<String> {
        match self {
            TenantSource::Claim(path) => claim_string(path, claims),
            TenantSource::Fixed(t) => Some(t.clone()),
            TenantSource::FromIss(ids) if ids.is_empty() => Some(part.to_owned()),
            TenantSource::FromIss(ids) => ids.get(part).cloned(),
        }
    }
}

fn compile_claim_path(path: &str) -> Result<JpQuery, String> {
    parse_json_path(path).map_err(|e| format!("not a JSONPath expression: {e}"))
}

/// The claim at `path` when it is exactly one string.
fn claim_string(path: &JpQuery, claims: &Value) -> Option<String> {
    let found = js_path_process(path, claims).ok()?;
    match found.as_slice() {
        [one] => one.clone().val().as_str().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_source_finds_its_tenant() {
        let claims = json!({"tenant": "globex"});
        let claim = TenantSource::Claim(compile_claim_path("$.tenant").unwrap());
        assert_eq!(claim.tenant("", &claims).as_deref(), Some("globex"));
        assert_eq!(TenantSource::Fixed("acme".into()).tenant("", &claims).as_deref(), Some("acme"));
        assert_eq!(TenantSource::FromIss(BTreeMap::new()).tenant("acme", &claims).as_deref(), Some("acme"));
        let ids = TenantSource::FromIss(BTreeMap::from([("9188".to_owned(), "acme".to_owned())]));
        assert_eq!(ids.tenant("9188", &claims).as_deref(), Some("acme"));
        assert_eq!(ids.tenant("acme", &claims), None, "with tenant_ids, only a mapped id names a tenant");
    }
    #[test]
    fn claim_paths() {
        let p = compile_claim_path("$.org.id").unwrap();
        assert_eq!(claim_string(&p, &json!({"org": {"id": "acme"}})), Some("acme".into()));
        assert_eq!(claim_string(&p, &json!({"org": {"id": 3}})), None);
        assert_eq!(claim_string(&p, &json!({})), None);
        let many = compile_claim_path("$.t[*]").unwrap();
        assert_eq!(claim_string(&many, &json!({"t": ["a", "b"]})), None);
        assert!(compile_claim_path("not a path").is_err());
        // Auth0's namespaced claims (README, provider snippets).
        let namespaced = compile_claim_path("$['https://fhir.example.com/tenant']").unwrap();
        assert_eq!(claim_string(&namespaced, &json!({"https://fhir.example.com/tenant": "acme"})), Some("acme".into()));
    }
}
