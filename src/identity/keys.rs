//! Key material per issuer: an algorithm allow-list and the keys that may verify (and, for
//! development, sign) its tokens. Built and checked at config load; keys from an identity
//! provider (`discovery`, `jwks_uri`) are fetched and rotated by `remote`.
use super::jwks::{parse_jwks, JwksKey, Strictness};
use super::remote::{https_uri, RemoteKeys, Source};
use crate::config::{ConfigError, Issuer, Loaded};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub struct IssuerKeys {
    pub name: String,
    pub algorithms: Vec<Algorithm>,
    pub verify: VerifyKeys,
    /// Present when the config gives a way to sign (HS secret, or `signing_key_file`).
    pub signing: Option<(Algorithm, EncodingKey, Option<String>)>,
    /// What the provider's keys were built with: source, `iss`, grace, CA certificates (a
    /// reload keeps the keys when these are unchanged).
    remote_settings: Option<(Source, String, Duration, Option<Vec<u8>>)>,
}

/// The longest `keys_grace_secs`: a week.
const MAX_GRACE_SECS: u64 = 7 * 24 * 3600;

pub enum VerifyKeys {
    /// HS* with a shared secret (development).
    Secret(DecodingKey),
    /// Public keys from a JWKS file, each with its `kid` and the algorithm family it serves.
    Jwks(Vec<JwksKey>),
    /// Public keys from the issuer's identity provider, fetched and refreshed.
    Remote(Arc<RemoteKeys>),
    /// None: the issuer's tokens are opaque, checked by introspection.
    None,
}

impl IssuerKeys {
    /// `prev`: the same issuer in the snapshot being replaced; its provider's keys are kept
    /// when the provider settings did not change (a reload does not refetch them).
    pub fn build(loaded: &Loaded, name: &str, issuer: &Issuer, prev: Option<&IssuerKeys>) -> Result<Self, ConfigError> {
        let key = |k: &str| format!("issuers.{name}.{k}");
        let no_keys = [&issuer.discovery, &issuer.jwks_uri].iter().all(|k| k.is_none())
            && [&issuer.jwks_file, &issuer.secret_file, &issuer.signing_key_file].iter().all(|k| k.is_none());
        if issuer.introspection.is_some() && no_keys && issuer.algorithms.is_empty() {
            // Opaque tokens only: no JWT of this issuer verifies.
            return Ok(IssuerKeys {
                name: name.to_owned(),
                algorithms: Vec::new(),
                verify: VerifyKeys::None,
                signing: None,
                remote_settings: None,
            });
        }
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
        if let Some(remote) = remote_source(name, issuer)? {
            if hmac > 0
                || issuer.secret_file.is_some()
                || issuer.jwks_file.is_some()
                || issuer.signing_key_file.is_some()
            {
                return Err(ConfigError::invalid(
                    key("discovery"),
                    "keys from an identity provider go with public-key algorithms only, and no key files",
                ));
            }
            if issuer.keys_grace_secs > MAX_GRACE_SECS {
                return Err(ConfigError::invalid(key("keys_grace_secs"), format!("at most {MAX_GRACE_SECS} (a week)")));
            }
            // The provider's keys are kept over a reload only when nothing they were fetched
            // with changed: the source, the issuer its discovery must name, the grace, and the
            // CA certificates themselves (a CA removed from the file is not trusted any more).
            let ca = match &issuer.ca_file {
                Some(path) => Some(loaded.read_file(&key("ca_file"), path)?),
                None => None,
            };
            let settings = (remote.clone(), issuer.iss.clone(), grace(issuer), ca.clone());
            let kept = prev.and_then(|p| match &p.verify {
                VerifyKeys::Remote(r) if p.remote_settings.as_ref() == Some(&settings) => Some(r.clone()),
                _ => None,
            });
            let keys = match kept {
                Some(k) => k,
                None => {
                    let tls = super::tls::client_config(&key("ca_file"), ca.as_deref())?;
                    let keys = Arc::new(RemoteKeys::new(name, &issuer.iss, remote, tls, grace(issuer)));
                    keys.prefetch();
                    keys
                }
            };
            let verify = VerifyKeys::Remote(keys);
            return Ok(IssuerKeys {
                name: name.to_owned(),
                algorithms,
                verify,
                signing: None,
                remote_settings: Some(settings),
            });
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
                let keys =
                    parse_jwks(&bytes, Strictness::File).map_err(|e| ConfigError::invalid(key("jwks_file"), e))?;
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
        if issuer.ca_file.is_some() && issuer.introspection.is_none() {
            return Err(ConfigError::invalid(
                key("ca_file"),
                "only for an identity provider (discovery, jwks_uri, introspection)",
            ));
        }
        Ok(IssuerKeys { name: name.to_owned(), algorithms, verify, signing, remote_settings: None })
    }

    /// Calls `f` with the key that may verify a token with this header; `None` when there is
    /// none (no guessing across kids).
    pub fn with_key<T>(&self, alg: Algorithm, kid: Option<&str>, f: impl FnOnce(&DecodingKey) -> T) -> Option<T> {
        match &self.verify {
            VerifyKeys::Secret(k) => (alg.family() == AlgorithmFamily::Hmac).then(|| f(k)),
            VerifyKeys::Jwks(keys) => pick(keys, alg, kid).map(f),
            VerifyKeys::Remote(remote) => remote.with_keys(|keys| pick(keys, alg, kid).map(f)),
            VerifyKeys::None => None,
        }
    }

    /// The provider's keys, when they come from one.
    pub fn remote(&self) -> Option<&Arc<RemoteKeys>> {
        match &self.verify {
            VerifyKeys::Remote(r) => Some(r),
            _ => None,
        }
    }
}

/// The key for `alg` and `kid` among `keys`: by kid, or the only key when the token names none.
fn pick<'k>(keys: &'k [JwksKey], alg: Algorithm, kid: Option<&str>) -> Option<&'k DecodingKey> {
    let fits = |k: &&JwksKey| k.family == alg.family() && k.alg.is_none_or(|a| a == alg);
    match kid {
        Some(kid) => keys.iter().filter(fits).find(|k| k.kid.as_deref() == Some(kid)).map(|k| &k.key),
        None if keys.len() == 1 => keys.iter().find(fits).map(|k| &k.key),
        None => None,
    }
}

/// Where an issuer's keys come from when an identity provider serves them.
fn remote_source(name: &str, issuer: &Issuer) -> Result<Option<Source>, ConfigError> {
    let key = |k: &str| format!("issuers.{name}.{k}");
    match (&issuer.discovery, &issuer.jwks_uri) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ConfigError::invalid(key("jwks_uri"), "give discovery or jwks_uri, not both")),
        (Some(d), None) => {
            Ok(Some(Source::Discovery(https_uri(d).map_err(|e| ConfigError::invalid(key("discovery"), e))?)))
        }
        (None, Some(j)) => Ok(Some(Source::Jwks(https_uri(j).map_err(|e| ConfigError::invalid(key("jwks_uri"), e))?))),
    }
}

fn grace(issuer: &Issuer) -> Duration {
    Duration::from_secs(issuer.keys_grace_secs)
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && (b[end - 1] == b'\n' || b[end - 1] == b'\r') {
        end -= 1;
    }
    &b[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(extra: &str) -> Issuer {
        toml::from_str(&format!(
            "iss = \"https://idp.test\"\naudience = [\"a\"]\nalgorithms = [\"RS256\"]\ntenant_claim = \"$.t\"\ntenants = []\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn keys_from_a_provider_come_over_https_only() {
        let source = |extra: &str| remote_source("idp", &issuer(extra));
        assert!(matches!(source(""), Ok(None)));
        assert!(matches!(
            source("discovery = \"https://idp.test/.well-known/openid-configuration\""),
            Ok(Some(Source::Discovery(_)))
        ));
        assert!(matches!(source("jwks_uri = \"https://idp.test/jwks\""), Ok(Some(Source::Jwks(_)))));
        for refused in [
            "discovery = \"http://idp.test/.well-known/openid-configuration\"",
            "jwks_uri = \"file:///etc/jwks.json\"",
            "jwks_uri = \"https:///jwks\"",
            "discovery = \"https://a\"\njwks_uri = \"https://a/jwks\"",
        ] {
            assert!(source(refused).is_err(), "{refused}");
        }
        assert_eq!(issuer("").keys_grace_secs, 3600);
    }

    #[test]
    fn a_providers_jwks_keeps_signature_keys_only() {
        let rsa = r#"{"kty":"RSA","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;
        let with = |extra: &str| format!(r#"{{"keys":[{}]}}"#, rsa.replacen('{', &format!("{{{extra}"), 1));
        assert_eq!(parse_jwks(with(r#""kid":"s","use":"sig","#).as_bytes(), Strictness::File).unwrap().len(), 1);
        let mixed = format!(
            r#"{{"keys":[{},{}]}}"#,
            rsa.replacen('{', r#"{"kid":"e","use":"enc","#, 1),
            rsa.replacen('{', r#"{"kid":"s","#, 1)
        );
        let keys = parse_jwks(mixed.as_bytes(), Strictness::Provider).unwrap();
        assert_eq!(keys.iter().map(|k| k.kid.as_deref()).collect::<Vec<_>>(), [Some("s")]);
        assert!(
            parse_jwks(with(r#""use":"enc","#).as_bytes(), Strictness::Provider).is_err(),
            "no signature key at all"
        );
        assert!(parse_jwks(b"{}", Strictness::Provider).is_err());
        // Found in review: keys for encryption by key_ops or alg, symmetric and unknown keys.
        let odd = format!(
            r#"{{"keys":[{},{},{{"kty":"oct","kid":"o","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}},{{"kty":"AKP","kid":"pq","alg":"ML-DSA-44"}},{}]}}"#,
            rsa.replacen('{', r#"{"kid":"ops","key_ops":["encrypt"],"#, 1),
            rsa.replacen('{', r#"{"kid":"oaep","alg":"RSA-OAEP","#, 1),
            rsa.replacen('{', r#"{"kid":"good","alg":"RS256","#, 1)
        );
        let keys = parse_jwks(odd.as_bytes(), Strictness::Provider).unwrap();
        assert_eq!(keys.iter().map(|k| k.kid.as_deref()).collect::<Vec<_>>(), [Some("good")]);
        assert!(parse_jwks(odd.as_bytes(), Strictness::File).is_err(), "a file's odd key is an error");
    }
}
