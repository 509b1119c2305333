//! Which key seals a tenant's tokens (paper §5.3: per-tenant secrets). Page tokens and export
//! handles are sealed with a key of the tenant's own, derived with HKDF-SHA256 from a master
//! key, the tenant's name and its key generation (`tenants.NAME.key_generation`). So:
//! - a token of one tenant cannot even be opened with another's key (its tenant field is
//!   checked after opening too);
//! - one tenant's tokens are revoked by raising its generation (those of the previous
//!   generation keep opening, so nothing in use breaks; raise it by two to revoke them all);
//!   no other tenant is touched, and a derived key that leaks says nothing of the others;
//! - the master key rotates without breaking tokens in use: `paging.key_file` holds a ring,
//!   one `ID KEY` line per key, the first sealing and every one opening.
//!
//! A token is `base64url(header ‖ nonce ‖ ciphertext ‖ tag)`, the header naming the key
//! (`2`, the master key id's length and bytes, the generation as 4 big-endian bytes) and bound
//! to the ciphertext as associated data with the purpose.
use crate::seal::{SealError, Sealer};
use crate::tenancy::Tenant;
use aws_lc_rs::hkdf::{KeyType, Prk, Salt, HKDF_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

const VERSION: u8 = 2;
const SALT: &[u8] = b"fhir-fence seal keys v2";

/// The master key ring and the tenant keys derived from it so far.
pub struct Seals {
    /// `(id, pseudorandom key)`, the sealing one first.
    ring: Vec<(String, Prk)>,
    /// Derived keys by (tenant, master key id, generation): bounded, so ten thousand tenants
    /// cost memory only for those that page or export.
    derived: moka::sync::Cache<(String, String, u32), Arc<Sealer>>,
}

struct Len32;

impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl Seals {
    /// A ring of one random key that lives as long as this process.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).expect("system randomness");
        Self::new(vec![("k0".to_owned(), key)])
    }

    /// Reads a key file: one base64 key of 32 bytes (standard or URL alphabet; its id is `k0`),
    /// or lines `ID KEY`, the first sealing; blank lines and lines starting with `#` ignored.
    pub fn from_key_file(contents: &[u8]) -> Result<Self, SealError> {
        let text = std::str::from_utf8(contents).map_err(|_| SealError::BadKey)?;
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        let mut ring = Vec::new();
        for line in &lines {
            let (id, key) = match line.split_once(char::is_whitespace) {
                Some((id, key)) => (id, key.trim()),
                None if lines.len() == 1 => ("k0", *line),
                None => return Err(SealError::BadKey),
            };
            let valid_id =
                (1..=16).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid_id || ring.iter().any(|(known, _)| known == id) {
                return Err(SealError::BadKey);
            }
            ring.push((id.to_owned(), decode_key(key)?));
        }
        match ring.is_empty() {
            true => Err(SealError::BadKey),
            false => Ok(Self::new(ring)),
        }
    }

    fn new(ring: Vec<(String, [u8; 32])>) -> Self {
        let salt = Salt::new(HKDF_SHA256, SALT);
        Seals {
            ring: ring.into_iter().map(|(id, key)| (id, salt.extract(&key))).collect(),
            derived: moka::sync::Cache::new(10_000),
        }
    }

    /// The ids in the ring, the sealing one first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.ring.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// `value`, sealed for `tenant` and `purpose` with the first master key and the tenant's
    /// current generation.
    pub fn seal<T: Serialize>(&self, tenant: &Tenant, purpose: &str, value: &T, ttl: Duration) -> String {
        let (id, _) = &self.ring[0];
        let header = header(id, tenant.key_generation);
        let sealer = self.sealer(tenant, 0, tenant.key_generation);
        let mut out = header.clone();
        out.extend(sealer.seal_bytes(&aad(purpose, &header), value, ttl));
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The value in a token sealed for `tenant` and `purpose` by [`Seals::seal`] with a key of
    /// the ring and the tenant's current or previous generation; anything else is `Invalid`.
    pub fn open<T: DeserializeOwned>(&self, tenant: &Tenant, purpose: &str, token: &str) -> Result<T, SealError> {
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| SealError::Invalid)?;
        let (&version, rest) = bytes.split_first().ok_or(SealError::Invalid)?;
        let (&id_len, rest) = rest.split_first().ok_or(SealError::Invalid)?;
        let id_len = usize::from(id_len);
        if version != VERSION || rest.len() < id_len + 4 {
            return Err(SealError::Invalid);
        }
        let (id, rest) = rest.split_at(id_len);
        let (generation, sealed) = rest.split_at(4);
        let generation = u32::from_be_bytes(generation.try_into().map_err(|_| SealError::Invalid)?);
        let current = tenant.key_generation;
        if generation != current && Some(generation) != current.checked_sub(1) {
            return Err(SealError::Invalid);
        }
        let index = self.ring.iter().position(|(known, _)| known.as_bytes() == id).ok_or(SealError::Invalid)?;
        let header = &bytes[..2 + id_len + 4];
        self.sealer(tenant, index, generation).open_bytes(&aad(purpose, header), sealed)
    }

    /// The tenant's key under master key `index` for `generation` (derived once, then cached).
    fn sealer(&self, tenant: &Tenant, index: usize, generation: u32) -> Arc<Sealer> {
        let (id, prk) = &self.ring[index];
        self.derived.get_with((tenant.name.clone(), id.clone(), generation), || {
            let generation = generation.to_be_bytes();
            let info: [&[u8]; 4] = [b"tenant\0", tenant.name.as_bytes(), b"\0", &generation];
            let mut key = [0u8; 32];
            prk.expand(&info, Len32).and_then(|okm| okm.fill(&mut key)).expect("32 bytes are a valid HKDF length");
            Arc::new(Sealer::new(&key))
        })
    }
}

fn header(id: &str, generation: u32) -> Vec<u8> {
    let mut h = vec![VERSION, u8::try_from(id.len()).expect("ids are at most 16 bytes")];
    h.extend_from_slice(id.as_bytes());
    h.extend_from_slice(&generation.to_be_bytes());
    h
}

fn aad(purpose: &str, header: &[u8]) -> Vec<u8> {
    [purpose.as_bytes(), b"\0", header].concat()
}

fn decode_key(text: &str) -> Result<[u8; 32], SealError> {
    use base64::engine::general_purpose::STANDARD;
    let bytes = STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
        .map_err(|_| SealError::BadKey)?;
    bytes.try_into().map_err(|_| SealError::BadKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn tenant(name: &str, generation: u32) -> Tenant {
        let mut t = Tenant::for_tests(name, name);
        t.key_generation = generation;
        t
    }

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_token_opens_only_for_its_tenant_purpose_and_generation() {
        let seals = Seals::random();
        let acme = tenant("acme", 0);
        let t = seals.seal(&acme, "page", &7u32, HOUR);
        assert_eq!(seals.open::<u32>(&acme, "page", &t), Ok(7));
        assert_eq!(seals.open::<u32>(&tenant("globex", 0), "page", &t), Err(SealError::Invalid));
        assert_eq!(seals.open::<u32>(&acme, "export-job", &t), Err(SealError::Invalid));
        // A rotation keeps the previous generation's tokens; a second one ends them.
        assert_eq!(seals.open::<u32>(&tenant("acme", 1), "page", &t), Ok(7));
        assert_eq!(seals.open::<u32>(&tenant("acme", 2), "page", &t), Err(SealError::Invalid));
        // A token claiming a newer generation than the tenant's is not opened.
        let newer = seals.seal(&tenant("acme", 5), "page", &7u32, HOUR);
        assert_eq!(seals.open::<u32>(&acme, "page", &newer), Err(SealError::Invalid));
        // Another process's random ring, and every altered byte (header included), fail.
        assert_eq!(Seals::random().open::<u32>(&acme, "page", &t), Err(SealError::Invalid));
        let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..raw.len() {
            let mut altered = raw.clone();
            altered[i] ^= 0x01;
            let altered = URL_SAFE_NO_PAD.encode(altered);
            assert!(seals.open::<u32>(&acme, "page", &altered).is_err(), "byte {i}");
        }
    }

    #[test]
    fn the_master_key_rotates_without_breaking_tokens_in_use() {
        let old = Seals::from_key_file(format!("{}\n", key(1)).as_bytes()).unwrap();
        let acme = tenant("acme", 0);
        let t = old.seal(&acme, "page", &"x", HOUR);
        // The new key first (it seals), the old one kept under its id (`k0` for a bare key).
        let ring = Seals::from_key_file(format!("# rotated\nk1 {}\n\nk0 {}\n", key(2), key(1)).as_bytes()).unwrap();
        assert_eq!(ring.key_ids(), ["k1", "k0"]);
        assert_eq!(ring.open::<String>(&acme, "page", &t), Ok("x".into()));
        let fresh = ring.seal(&acme, "page", &"y", HOUR);
        assert_eq!(old.open::<String>(&acme, "page", &fresh), Err(SealError::Invalid));
        // Once the old key is dropped, its tokens end.
        let dropped = Seals::from_key_file(format!("k1 {}\n", key(2)).as_bytes()).unwrap();
        assert_eq!(dropped.open::<String>(&acme, "page", &t), Err(SealError::Invalid));
        assert_eq!(dropped.open::<String>(&acme, "page", &fresh), Ok("y".into()));
    }

    #[test]
    fn key_files() {
        assert!(Seals::from_key_file(format!("{}\n", key(1)).as_bytes()).is_ok());
        assert!(Seals::from_key_file(URL_SAFE_NO_PAD.encode([1u8; 32]).as_bytes()).is_ok());
        for bad in [
            "c2hvcnQ=".to_owned(),
            String::new(),
            "# only a comment\n".to_owned(),
            format!("{}\n{}\n", key(1), key(2)),
            format!("a {}\na {}\n", key(1), key(2)),
            format!("bad/id {}\n", key(1)),
            format!("k1 {}\n", STANDARD.encode([1u8; 31])),
        ] {
            assert_eq!(Seals::from_key_file(bad.as_bytes()).err(), Some(SealError::BadKey), "{bad:?}");
        }
    }

    #[test]
    fn derived_keys_differ_per_tenant_and_generation() {
        let seals = Seals::from_key_file(key(9).as_bytes()).unwrap();
        let a = seals.sealer(&tenant("acme", 0), 0, 0).seal_bytes(b"x", &1u8, HOUR);
        for (other, generation) in [("globex", 0), ("acme", 1)] {
            let s = seals.sealer(&tenant(other, generation), 0, generation);
            assert_eq!(s.open_bytes::<u8>(b"x", &a), Err(SealError::Invalid), "{other} {generation}");
        }
    }
}
