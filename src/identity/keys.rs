//! Key material per issuer: an algorithm allow-list and the keys that may verify (and, for
//! development, sign) its tokens. Built and checked at config load.
use crate::config::{ConfigError, Issuer, Loaded};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use std::str::FromStr;

pub struct IssuerKeys {
    pub name: String,
    pub algorithms: Vec<Algorithm>,
    pub verify: VerifyKeys,
    /// Present when the config gives a way to sign (HS secret, or `signing_key_file`).
    pub signing: Option<(Algorithm, EncodingKey, Option<String>)>,
}

pub enum VerifyKeys {
    /// HS* with a shared secret (development).
    Secret(DecodingKey),
    /// Public keys from a JWKS file, each with its `kid` and the algorithm family it serves.
    Jwks(Vec<JwksKey>),
}

pub struct JwksKey {
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl IssuerKeys {
    pub fn build(loaded: &Loaded, name: &str, issuer: &Issuer) -> Result<Self, ConfigError> {
        let key = |k: &str| format!("issuers.{name}.{k}");
        if issuer.algorithms.is_empty() {
            return Err(ConfigError::invalid(key("algorithms"), "list at least one algorithm"));
        }
        let mut algorithms = Vec::new();
        for a in &issuer.algorithms {
            if a.eq_ignore_ascii_case("none") {
                return Err(ConfigError::invalid(key("algorithms"), "\"none\" is never allowed (RFC 8725)"));
            }
            let alg = Algorithm::from_str(a)
                .map_err(|_| ConfigError::invalid(key("algorithms"), format!("unknown algorithm {a:?}")))?;
            algorithms.push(alg);
        }
        let hmac = algorithms.iter().filter(|a| a.family() == AlgorithmFamily::Hmac).count();
        if hmac != 0 && hmac != algorithms.len() {
            return Err(ConfigError::invalid(
                key("algorithms"),
                "do not mix HS* with public-key algorithms in one issuer (RFC 8725 §2.1)",
            ));
        }
        let (verify, signing) = match (hmac > 0, &issuer.secret_file, &issuer.jwks_file) {
            (true, Some(path), None) => {
                let secret = loaded.read_file(&key("secret_file"), path)?;
                let secret = trim_newline(&secret);
                if secret.len() < 32 {
                    return Err(ConfigError::invalid(key("secret_file"), "an HS secret must be at least 32 bytes"));
                }
                if issuer.signing_key_file.is_some() {
                    return Err(ConfigError::invalid(key("signing_key_file"), "HS issuers sign with secret_file"));
                }
                let signing = (algorithms[0], EncodingKey::from_secret(secret), None);
                (VerifyKeys::Secret(DecodingKey::from_secret(secret)), Some(signing))
            }
            (false, None, Some(path)) => {
                let bytes = loaded.read_file(&key("jwks_file"), path)?;
                let set: JwkSet = serde_json::from_slice(&bytes)
                    .map_err(|e| ConfigError::invalid(key("jwks_file"), format!("not a JWKS: {e}")))?;
                let mut keys = Vec::new();
                for jwk in &set.keys {
                    let dk = DecodingKey::from_jwk(jwk)
                        .map_err(|e| ConfigError::invalid(key("jwks_file"), format!("unusable key: {e}")))?;
                    let alg = jwk.common.key_algorithm.and_then(|a| Algorithm::from_str(&a.to_string()).ok());
                    keys.push(JwksKey { kid: jwk.common.key_id.clone(), family: dk.family(), alg, key: dk });
                }
                if keys.is_empty() {
                    return Err(ConfigError::invalid(key("jwks_file"), "the JWKS holds no keys"));
                }
                if keys.len() > 1 && keys.iter().any(|k| k.kid.is_none()) {
                    return Err(ConfigError::invalid(key("jwks_file"), "with several keys, every key needs a kid"));
                }
                let signing = match &issuer.signing_key_file {
                    None => None,
                    Some(p) => {
                        let pem = loaded.read_file(&key("signing_key_file"), p)?;
                        let alg = algorithms[0];
                        let ek = match alg.family() {
                            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
                            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
                            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
                            AlgorithmFamily::Hmac => unreachable!("checked above"),
                        }
                        .map_err(|e| ConfigError::invalid(key("signing_key_file"), format!("unusable key: {e}")))?;
                        let kid = if keys.len() == 1 { keys[0].kid.clone() } else { None };
                        Some((alg, ek, kid))
                    }
                };
                (VerifyKeys::Jwks(keys), signing)
            }
            (true, _, _) => {
                return Err(ConfigError::invalid(
                    key("secret_file"),
                    "HS* algorithms need secret_file (and no jwks_file)",
                ))
            }
            (false, _, _) => {
                return Err(ConfigError::invalid(
                    key("jwks_file"),
                    "public-key algorithms need jwks_file (and no secret_file)",
                ))
            }
        };
        Ok(IssuerKeys { name: name.to_owned(), algorithms, verify, signing })
    }

    /// The key that may verify a token with this header, or `None` (no guessing across kids).
    pub fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Option<&DecodingKey> {
        match &self.verify {
            VerifyKeys::Secret(k) => (alg.family() == AlgorithmFamily::Hmac).then_some(k),
            VerifyKeys::Jwks(keys) => {
                let fits = |k: &&JwksKey| k.family == alg.family() && k.alg.is_none_or(|a| a == alg);
                match kid {
                    Some(kid) => keys.iter().filter(fits).find(|k| k.kid.as_deref() == Some(kid)).map(|k| &k.key),
                    None if keys.len() == 1 => keys.iter().find(fits).map(|k| &k.key),
                    None => None,
                }
            }
        }
    }
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && (b[end - 1] == b'\n' || b[end - 1] == b'\r') {
        end -= 1;
    }
    &b[..end]
}
