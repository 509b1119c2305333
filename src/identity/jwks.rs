//! A JWKS read as verifying keys: a key file the operator wrote, or an identity provider's set.
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;
use std::str::FromStr;

pub struct JwksKey {
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

/// How a JWKS is read: a file the operator wrote must be usable whole; a provider's may hold
/// keys fhir-fence cannot use (other key types, encryption keys), which are left out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    File,
    Provider,
}

/// A JWKS as verifying keys: public signature keys only (a key for encryption — by `use`,
/// `key_ops` or an `alg` that is no signature algorithm — never verifies), a `kid` on each when
/// there are several. A provider's unusable keys are skipped (and logged); a file's are errors.
pub fn parse_jwks(bytes: &[u8], strictness: Strictness) -> Result<Vec<JwksKey>, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, KeyOperations, PublicKeyUse};
    let set: Value = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let listed = set.get("keys").and_then(Value::as_array).ok_or("not a JWKS: no keys list")?;
    let mut keys = Vec::new();
    for raw in listed {
        let skip = |why: String| -> Result<(), String> {
            match strictness {
                Strictness::File => Err(why),
                Strictness::Provider => {
                    tracing::warn!(key = %raw.get("kid").unwrap_or(&serde_json::Value::Null), why, "left out a key of the provider's JWKS");
                    Ok(())
                }
            }
        };
        let jwk: jsonwebtoken::jwk::Jwk = match serde_json::from_value(raw.clone()) {
            Ok(j) => j,
            Err(e) => {
                skip(format!("unusable key: {e}"))?;
                continue;
            }
        };
        let common = &jwk.common;
        let for_encryption = common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature)
            || common.key_operations.as_ref().is_some_and(|ops| !ops.contains(&KeyOperations::Verify));
        if for_encryption {
            continue;
        }
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) && strictness == Strictness::Provider {
            skip("a symmetric key in a provider's JWKS".into())?;
            continue;
        }
        // An `alg` that is no signature algorithm fhir-fence knows (RSA-OAEP…): not for verifying.
        let alg = match &common.key_algorithm {
            None => None,
            Some(a) => match Algorithm::from_str(&a.to_string()) {
                Ok(alg) => Some(alg),
                Err(_) => {
                    skip(format!("alg {a} is not a signature algorithm"))?;
                    continue;
                }
            },
        };
        let dk = match DecodingKey::from_jwk(&jwk) {
            Ok(dk) => dk,
            Err(e) => {
                skip(format!("unusable key: {e}"))?;
                continue;
            }
        };
        keys.push(JwksKey { kid: common.key_id.clone(), family: dk.family(), alg, key: dk });
    }
    if keys.is_empty() {
        return Err("the JWKS holds no usable signature key".into());
    }
    if keys.len() > 1 && keys.iter().any(|k| k.kid.is_none()) {
        return Err("with several keys, every key needs a kid".into());
    }
    Ok(keys)
}
