//! Authenticated encryption for handles fhir-fence gives out (page tokens, export job and file
//! handles).
//!
//! A sealed token is opaque to clients, cannot be forged or altered, carries its own expiry,
//! and is bound to its associated data (purpose and key header). Any replica holding the same
//! key can open it, so no server-side session table is needed. Which key: `seal_keys`.
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One AES-256-GCM key. Tokens are made by `seal_keys::Seals`, which picks the tenant's key and
/// binds a header naming it (the associated data holds the purpose and that header).
pub struct Sealer {
    key: LessSafeKey,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the sealing key file must hold one base64 key of 32 bytes, or lines `ID KEY` (ID: 1-16 of A-Z a-z 0-9 _ -), each ID once")]
    BadKey,
    #[error("the token is malformed, forged or altered")]
    Invalid,
    #[error("the token has expired")]
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    exp: u64,
    v: T,
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("AES-256 takes a 32-byte key");
        Sealer { key: LessSafeKey::new(key) }
    }

    /// `value` with its expiry, encrypted and authenticated with `aad`: nonce ‖ ciphertext ‖ tag.
    pub fn seal_bytes<T: Serialize>(&self, aad: &[u8], value: &T, ttl: Duration) -> Vec<u8> {
        let exp = now() + ttl.as_secs();
        let mut data = serde_json::to_vec(&Envelope { exp, v: value }).expect("serialisable");
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system randomness");
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut data)
            .expect("sealing cannot fail for in-memory data");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        out
    }

    /// The value [`Sealer::seal_bytes`] sealed with the same `aad`, if unaltered and unexpired.
    pub fn open_bytes<T: DeserializeOwned>(&self, aad: &[u8], sealed: &[u8]) -> Result<T, SealError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(SealError::Invalid);
        }
        let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().map_err(|_| SealError::Invalid)?;
        let mut data = sealed[NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut data)
            .map_err(|_| SealError::Invalid)?;
        let env: Envelope<T> = serde_json::from_slice(plain).map_err(|_| SealError::Invalid)?;
        if env.exp < now() {
            return Err(SealError::Expired);
        }
        Ok(env.v)
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random() -> Sealer {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).unwrap();
        Sealer::new(&key)
    }

    #[test]
    fn round_trip_and_tamper() {
        let s = random();
        let t = s.seal_bytes(b"page", &("acme", 7), Duration::from_secs(60));
        assert_eq!(s.open_bytes::<(String, u32)>(b"page", &t).unwrap(), ("acme".into(), 7));
        // Other associated data, another key, or one flipped byte: all refused.
        assert_eq!(s.open_bytes::<(String, u32)>(b"job", &t), Err(SealError::Invalid));
        assert_eq!(random().open_bytes::<(String, u32)>(b"page", &t), Err(SealError::Invalid));
        let mut tampered = t.clone();
        let i = tampered.len() / 2;
        tampered[i] ^= 1;
        assert_eq!(s.open_bytes::<(String, u32)>(b"page", &tampered), Err(SealError::Invalid));
        assert_eq!(s.open_bytes::<(String, u32)>(b"page", &t[..20]), Err(SealError::Invalid));
    }

    #[test]
    fn expiry() {
        let s = random();
        let t = s.seal_bytes(b"page", &1u8, Duration::from_secs(0));
        // exp == now is still valid; an expired envelope is crafted directly.
        assert!(s.open_bytes::<u8>(b"page", &t).is_ok());
        let env = Envelope { exp: now() - 1, v: 1u8 };
        let mut data = serde_json::to_vec(&env).unwrap();
        let nonce = [7u8; NONCE_LEN];
        s.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&b"page"[..]), &mut data)
            .unwrap();
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&data);
        assert_eq!(s.open_bytes::<u8>(b"page", &raw), Err(SealError::Expired));
    }
}
