//! Development tokens: `fhir-fence token` signs a JWT with an issuer's configured signing key.
use super::keys::IssuerKeys;
use crate::config::IssPattern;
use crate::config::Issuer;
use jsonwebtoken::{encode, get_current_timestamp, Header};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("issuer {0:?} has no signing key in the config (HS issuers sign with secret_file; others need signing_key_file)")]
    NoSigningKey(String),
    #[error("cannot place a claim at {0:?}: only simple paths like $.a.b are supported for minting")]
    ClaimPath(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Signs a token for `tenant` with issuer `keys`/`issuer`, valid for `ttl_secs`.
pub fn mint(issuer: &Issuer, keys: &IssuerKeys, tenant: &str, sub: &str, ttl_secs: u64) -> Result<String, MintError> {
    let (alg, key, kid) = keys.signing.as_ref().ok_or_else(|| MintError::NoSigningKey(keys.name.clone()))?;
    let now = get_current_timestamp();
    let mut claims = Map::new();
    // A template issuer's `iss` carries the tenant (or the id `tenant_ids` maps to it).
    let pattern = IssPattern::parse(&issuer.iss).map_err(MintError::ClaimPath)?;
    let part = issuer.tenant_ids.iter().find(|(_, t)| *t == tenant).map_or(tenant, |(id, _)| id.as_str());
    claims.insert("iss".into(), pattern.fill(part).into());
    claims.insert("sub".into(), sub.into());
    claims.insert("aud".into(), issuer.audience[0].clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert("exp".into(), (now + ttl_secs).into());
    if let Some(path) = &issuer.tenant_claim {
        place_claim(&mut claims, path, tenant)?;
    }
    let mut header = Header::new(*alg);
    header.kid = kid.clone();
    encode(&header, &Value::Object(claims), key).map_err(|e| MintError::Sign(e.to_string()))
}

fn place_claim(claims: &mut Map<String, Value>, path: &str, value: &str) -> Result<(), MintError> {
    let bad = || MintError::ClaimPath(path.to_owned());
    let rest = path.strip_prefix("$.").ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('.').collect();
    if parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')) {
        return Err(bad());
    }
    let (last, parents) = parts.split_last().ok_or_else(bad)?;
    let mut node = claims;
    for p in parents {
        node =
            node.entry(p.to_string()).or_insert_with(|| Value::Object(Map::new())).as_object_mut().ok_or_else(bad)?;
    }
    node.insert(last.to_string(), value.into());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_nested_claims() {
        let mut m = Map::new();
        place_claim(&mut m, "$.org.id", "acme").unwrap();
        assert_eq!(Value::Object(m), serde_json::json!({"org": {"id": "acme"}}));
        assert!(place_claim(&mut Map::new(), "$..x", "a").is_err());
        assert!(place_claim(&mut Map::new(), "$['x']", "a").is_err());
    }
}
