//! Authenticated encryption for handles fhir-fence gives out (paging tokens now, export jobs later).
//!
//! A sealed token is opaque to clients, cannot be forged or altered, carries its own expiry,
//! and is bound to a purpose (the AEAD associated data). Any replica holding the same key can
//! open it, so no server-side session table is needed.
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Sealer {
    key: LessSafeKey,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the sealing key must be 32 bytes, base64-encoded")]
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

    /// A key that lives as long as this process.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).expect("system randomness");
        Self::new(&key)
    }

    /// Reads a key file's contents: 32 bytes in base64 (standard or URL alphabet), whitespace ignored.
    pub fn from_key_file(contents: &[u8]) -> Result<Self, SealError> {
        let text: String = String::from_utf8_lossy(contents).split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|_| SealError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadKey)?;
        Ok(Self::new(&key))
    }

    pub fn seal<T: Serialize>(&self, purpose: &str, value: &T, ttl: Duration) -> String {
        let exp = now() + ttl.as_secs();
        let mut data = serde_json::to_vec(&Envelope { exp, v: value }).expect("serialisable");
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system randomness");
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.as_bytes()), &mut data)
            .expect("sealing cannot fail for in-memory data");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        URL_SAFE_NO_PAD.encode(out)
    }

    pub fn open<T: DeserializeOwned>(&self, purpose: &str, token: &str) -> Result<T, SealError> {
        let mut bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| SealError::Invalid)?;
        if bytes.len() < NONCE_LEN + 16 {
            return Err(SealError::Invalid);
        }
        let nonce: [u8; NONCE_LEN] = bytes[..NONCE_LEN].try_into().map_err(|_| SealError::Invalid)?;
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.as_bytes()), &mut bytes[NONCE_LEN..])
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

    #[test]
    fn round_trip_and_tamper() {
        let s = Sealer::random();
        let t = s.seal("page", &("acme", 7), Duration::from_secs(60));
        assert_eq!(s.open::<(String, u32)>("page", &t).unwrap(), ("acme".into(), 7));
        // Another purpose, another key, or one flipped character: all refused.
        assert_eq!(s.open::<(String, u32)>("job", &t), Err(SealError::Invalid));
        assert_eq!(Sealer::random().open::<(String, u32)>("page", &t), Err(SealError::Invalid));
        let mut chars: Vec<char> = t.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        assert_eq!(s.open::<(String, u32)>("page", &tampered), Err(SealError::Invalid));
    }

    #[test]
    fn expiry() {
        let s = Sealer::random();
        let t = s.seal("page", &1u8, Duration::from_secs(0));
        // exp == now is still valid; craft an expired envelope by sealing in the past is not possible,
        // so check the boundary logic directly.
        assert!(s.open::<u8>("page", &t).is_ok());
        let env = Envelope { exp: now() - 1, v: 1u8 };
        let mut data = serde_json::to_vec(&env).unwrap();
        let nonce = [7u8; NONCE_LEN];
        s.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&b"page"[..]), &mut data)
            .unwrap();
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&data);
        assert_eq!(s.open::<u8>("page", &URL_SAFE_NO_PAD.encode(raw)), Err(SealError::Expired));
    }

    #[test]
    fn key_files() {
        let key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert!(Sealer::from_key_file(format!("{key}\n").as_bytes()).is_ok());
        assert_eq!(Sealer::from_key_file(b"c2hvcnQ=").err(), Some(SealError::BadKey));
    }
}
