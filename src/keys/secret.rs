//! Key material and the two ciphers over it: wrapping keys under the
//! master key (AES-256-GCM, the additional data binding each wrapped key to
//! its role and id, so a wrapped key file cannot be renamed into another
//! role), and sealing short values and results under a record's key.
//!
//! Key material lives in [`SecretKey`], which is zeroised on drop and never
//! printed.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroize;

use super::KeyError;
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

/// `magic | id length | id | nonce | AES-256-GCM(secret)`; the additional data
/// is `magic | role | id`.
pub(super) fn wrap_key(
    master: &SecretKey,
    rng: &SystemRandom,
    id: &KeyId,
    secret: &SecretKey,
    role: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let cipher = aes_gcm(master);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| KeyError::Random)?;
    let mut sealed = secret.expose().to_vec();
    let aad = wrap_aad(role, id.as_str());
    let result = cipher.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut sealed);
    if result.is_err() {
        sealed.zeroize();
        return Err(KeyError::Random);
    }
    let mut out = Vec::with_capacity(WRAP_MAGIC.len() + 1 + id.as_str().len() + NONCE_LEN + sealed.len());
    out.extend_from_slice(WRAP_MAGIC);
    out.push(id.as_str().len() as u8);
    out.extend_from_slice(id.as_str().as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

pub(super) fn unwrap_key(master: &SecretKey, bytes: &[u8], role: &[u8]) -> Option<(KeyId, SecretKey)> {
    let rest = bytes.strip_prefix(WRAP_MAGIC)?;
    let (&id_len, rest) = rest.split_first()?;
    let id_len = usize::from(id_len);
    if rest.len() < id_len + NONCE_LEN {
        return None;
    }
    let (id, rest) = rest.split_at(id_len);
    let id = KeyId::new(std::str::from_utf8(id).ok()?)?;
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = sealed.to_vec();
    let aad = wrap_aad(role, id.as_str());
    let plain = aes_gcm(master).open_in_place(nonce, Aad::from(&aad), &mut buffer).ok();
    let secret = plain.and_then(|p| SecretKey::from_slice(p));
    buffer.zeroize();
    Some((id, secret?))
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
    let plain = aes_gcm(key).open_in_place(nonce, Aad::from(context), &mut buffer).ok()?;
    Some(plain.to_vec())
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
        let master = SecretKey::random(&rng).unwrap();
        let secret = SecretKey::random(&rng).unwrap();
        let id = KeyId::new("tk-0001").unwrap();
        let wrapped = wrap_key(&master, &rng, &id, &secret, b"token").unwrap();
        let (unwrapped_id, unwrapped) = unwrap_key(&master, &wrapped, b"token").unwrap();
        assert_eq!((unwrapped_id, unwrapped.expose()), (id, secret.expose()));
        assert!(unwrap_key(&master, &wrapped, b"order").is_none());
    }
}
