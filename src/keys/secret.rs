//! Key material and the two ciphers over it: wrapping keys under a
//! key-encryption key of the custody (the additional data binding each
//! wrapped key to its role and id, so a wrapped key file cannot be renamed
//! into another role), and sealing short values and results under a
//! record's key (AES-256-GCM).
//!
//! Key material lives in [`SecretKey`], which is zeroised on drop and never
//! printed.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroize;

use super::KeyError;
use super::custody::{Custody, Kek};
use crate::model::KeyId;

/// Length of every key: 256 bits.
pub const KEY_LEN: usize = 32;
const WRAP_MAGIC: &[u8; 8] = b"CDRVKEY1";

/// 256 bits of key material. Zeroised on drop; `Debug` prints nothing of it.
#[derive(Clone)]
pub struct SecretKey(Box<[u8; KEY_LEN]>);

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl SecretKey {
    pub(crate) fn random(rng: &SystemRandom) -> Result<Self, KeyError> {
        let mut bytes = Box::new([0u8; KEY_LEN]);
        rng.fill(&mut bytes[..]).map_err(|_| KeyError::Random)?;
        Ok(SecretKey(bytes))
    }

    /// Wraps given key material, e.g. for benchmarks and tests.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SecretKey(Box::new(bytes))
    }

    pub(super) fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(SecretKey(Box::new(array)))
    }

    /// The raw key bytes, for handing to a cipher.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// `magic | id length | id | the custody's encryption of the secret`; the
/// additional data is `magic | role | id`.
pub(super) fn wrap_key(
    custody: &dyn Custody,
    kek: Kek,
    id: &KeyId,
    secret: &SecretKey,
    role: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let aad = wrap_aad(role, id.as_str());
    let sealed = custody.encrypt(kek, &aad, secret.expose())?;
    let mut out = Vec::with_capacity(WRAP_MAGIC.len() + 1 + id.as_str().len() + sealed.len());
    out.extend_from_slice(WRAP_MAGIC);
    out.push(id.as_str().len() as u8);
    out.extend_from_slice(id.as_str().as_bytes());
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a key wrapped by [`wrap_key`]: `Ok(None)` if the bytes are not a
/// wrapped key of `role` that opens under `kek`.
pub(super) fn unwrap_key(
    custody: &dyn Custody,
    kek: Kek,
    bytes: &[u8],
    role: &[u8],
) -> Result<Option<(KeyId, SecretKey)>, KeyError> {
    let Some(rest) = bytes.strip_prefix(WRAP_MAGIC) else { return Ok(None) };
    let Some((&id_len, rest)) = rest.split_first() else { return Ok(None) };
    let id_len = usize::from(id_len);
    if rest.len() < id_len {
        return Ok(None);
    }
    let (id, sealed) = rest.split_at(id_len);
    let Some(id) = std::str::from_utf8(id).ok().and_then(KeyId::new) else { return Ok(None) };
    let aad = wrap_aad(role, id.as_str());
    let Some(plain) = custody.decrypt(kek, &aad, sealed)? else { return Ok(None) };
    Ok(SecretKey::from_slice(&plain).map(|secret| (id, secret)))
}

/// Seals a short value (a registry target) with AES-256-GCM under `key`,
/// bound to `context` (the record's id): nonce followed by ciphertext.
pub fn seal_value(key: &SecretKey, rng: &SystemRandom, context: &[u8], value: &str) -> Result<Vec<u8>, KeyError> {
    seal_bytes(key, rng, context, value.as_bytes().to_vec())
}

/// Opens a value sealed by [`seal_value`]; `None` if the key or context is
/// wrong or the bytes were changed.
pub fn open_value(key: &SecretKey, context: &[u8], sealed: &[u8]) -> Option<String> {
    String::from_utf8(open_bytes(key, context, sealed)?).ok()
}

/// Seals bytes with AES-256-GCM under `key`, bound to `context`: nonce
/// followed by ciphertext and tag.
pub fn seal_bytes(
    key: &SecretKey,
    rng: &SystemRandom,
    context: &[u8],
    mut buffer: Vec<u8>,
) -> Result<Vec<u8>, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| KeyError::Random)?;
    aes_gcm(key)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut buffer)
        .map_err(|_| KeyError::Random)?;
    let mut out = Vec::with_capacity(NONCE_LEN + buffer.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buffer);
    Ok(out)
}

/// Opens bytes sealed by [`seal_bytes`]; `None` if the key or context is
/// wrong or the bytes were changed.
pub fn open_bytes(key: &SecretKey, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = body.to_vec();
    let plain = aes_gcm(key).open_in_place(nonce, Aad::from(context), &mut buffer).ok().map(|p| p.to_vec());
    buffer.zeroize();
    plain
}

fn wrap_aad(role: &[u8], id: &str) -> Vec<u8> {
    let mut aad = WRAP_MAGIC.to_vec();
    aad.extend_from_slice(role);
    aad.push(b'/');
    aad.extend_from_slice(id.as_bytes());
    aad
}

fn aes_gcm(key: &SecretKey) -> LessSafeKey {
    // AES-256-GCM takes any 32-byte key, so this cannot fail.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.expose()).expect("a 32-byte AES-256 key"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::custody::FileCustody;

    #[test]
    fn a_value_opens_only_with_its_key_and_context() {
        let rng = SystemRandom::new();
        let key = SecretKey::random(&rng).unwrap();
        let other = SecretKey::random(&rng).unwrap();
        let sealed = seal_value(&key, &rng, b"w-1", "+4520000001").unwrap();
        assert_eq!(open_value(&key, b"w-1", &sealed).as_deref(), Some("+4520000001"));
        assert_eq!(open_value(&other, b"w-1", &sealed), None);
        assert_eq!(open_value(&key, b"w-2", &sealed), None);
    }

    #[test]
    fn a_wrapped_key_unwraps_only_in_its_role() {
        let rng = SystemRandom::new();
        let custody = FileCustody::new(SecretKey::random(&rng).unwrap());
        let secret = SecretKey::random(&rng).unwrap();
        let id = KeyId::new("warrant-w-0001").unwrap();
        let wrapped = wrap_key(&custody, Kek::Root, &id, &secret, b"warrant").unwrap();
        let (unwrapped_id, unwrapped) = unwrap_key(&custody, Kek::Root, &wrapped, b"warrant").unwrap().unwrap();
        assert_eq!((unwrapped_id, unwrapped.expose()), (id, secret.expose()));
        assert!(unwrap_key(&custody, Kek::Root, &wrapped, b"order").unwrap().is_none());
        let other = FileCustody::new(SecretKey::random(&rng).unwrap());
        assert!(unwrap_key(&other, Kek::Root, &wrapped, b"warrant").unwrap().is_none());
    }
}
