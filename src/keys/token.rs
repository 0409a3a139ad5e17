//! Token keys: the HMAC-SHA256 keys of the keyed tokens. The highest id is
//! active for new data; older ones stay so that lookups find data
//! tokenised under them.

use std::fs;
use std::path::Path;

use ring::rand::SystemRandom;

use super::secret::{SecretKey, unwrap_key, wrap_key};
use super::{KeyError, KeyStore};
use crate::model::KeyId;
use crate::ops::durable::{self, DurableError, FileMode};

pub(super) const TOKEN_DIR: &str = "token";
const TOKEN_AAD: &[u8] = b"token";

/// A token key: the HMAC-SHA256 key of the keyed tokens.
#[derive(Debug, Clone)]
pub struct TokenKey {
    pub id: KeyId,
    pub secret: SecretKey,
}

impl KeyStore {
    /// The token key used for new data.
    pub fn active_token_key(&self) -> &TokenKey {
        // `open` refuses a keystore without token keys, so there is a last one.
        self.token_keys.last().expect("keystore has at least one token key")
    }

    /// Every token key, oldest first: lookups compute tokens under each key
    /// id present in the searched window.
    pub fn token_keys(&self) -> &[TokenKey] {
        &self.token_keys
    }

    pub fn token_key(&self, id: &KeyId) -> Option<&TokenKey> {
        self.token_keys.iter().find(|k| &k.id == id)
    }

    /// Creates a new token key and makes it the active one. Data already
    /// written keeps the id of the key it was tokenised under.
    /// Another process rotating at the same time takes the next number;
    /// no key file is ever replaced.
    pub fn rotate_token_key(&mut self) -> Result<KeyId, KeyError> {
        loop {
            let highest = self
                .load_token_keys()?
                .iter()
                .filter_map(|key| key.id.as_str().strip_prefix("tk-")?.parse::<u32>().ok())
                .max()
                .unwrap_or(0);
            match write_token_key(&self.dir, &self.master, &self.rng, highest + 1) {
                Ok(id) => {
                    self.token_keys = self.load_token_keys()?;
                    return Ok(id);
                }
                // Taken since the listing: list again.
                Err(KeyError::AlreadyInitialised(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) fn load_token_keys(&self) -> Result<Vec<TokenKey>, KeyError> {
        let dir = self.dir.join(TOKEN_DIR);
        let mut keys = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| KeyError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| KeyError::io("list", &dir, e))?;
            let path = entry.path();
            let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".key")) else {
                continue;
            };
            if stem.starts_with('.') {
                continue;
            }
            let bytes = fs::read(&path).map_err(|e| KeyError::io("read", &path, e))?;
            let (id, secret) =
                unwrap_key(&self.master, &bytes, TOKEN_AAD).ok_or_else(|| KeyError::Corrupt(path.clone()))?;
            if id.as_str() != stem {
                return Err(KeyError::Corrupt(path));
            }
            keys.push(TokenKey { id, secret });
        }
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }
}

pub(super) fn write_token_key(
    dir: &Path,
    master: &SecretKey,
    rng: &SystemRandom,
    number: u32,
) -> Result<KeyId, KeyError> {
    let id = KeyId::new(format!("tk-{number:04}")).expect("tk- and digits form a valid key id");
    let secret = SecretKey::random(rng)?;
    let wrapped = wrap_key(master, rng, &id, &secret, TOKEN_AAD)?;
    let path = dir.join(TOKEN_DIR).join(format!("{id}.key"));
    match durable::write_new(&path, &wrapped, FileMode::Private) {
        Ok(()) => Ok(id),
        Err(DurableError::Exists { path }) => Err(KeyError::AlreadyInitialised(path)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use crate::keys::KeyStore;
    use crate::model::KeyId;

    #[test]
    fn rotation_adds_a_new_active_key_and_keeps_the_old() {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(root.path(), None).unwrap();
        let mut store = KeyStore::open(root.path(), None).unwrap();
        let old = store.active_token_key().clone();
        let new_id = store.rotate_token_key().unwrap();
        assert_eq!(new_id.as_str(), "tk-0002");
        assert_eq!(store.active_token_key().id, new_id);
        assert_ne!(store.active_token_key().secret.expose(), old.secret.expose());
        assert!(store.token_key(&old.id).is_some());
    }

    /// Two processes rotating at once each get a key of their own, and no
    /// key file is replaced (the tokens written under it would be lost).
    #[test]
    fn concurrent_rotations_never_replace_a_key() {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(root.path(), None).unwrap();
        let mut stores = [KeyStore::open(root.path(), None).unwrap(), KeyStore::open(root.path(), None).unwrap()];
        let start = std::sync::Barrier::new(2);
        let rotated: Vec<Vec<(KeyId, Vec<u8>)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = stores
                .iter_mut()
                .map(|store| {
                    let start = &start;
                    scope.spawn(move || {
                        start.wait();
                        (0..40)
                            .map(|_| {
                                let id = store.rotate_token_key().unwrap();
                                (id.clone(), store.token_key(&id).unwrap().secret.expose().to_vec())
                            })
                            .collect()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let fresh = KeyStore::open(root.path(), None).unwrap();
        for (id, secret) in rotated.iter().flatten() {
            assert_eq!(fresh.token_key(id).unwrap().secret.expose(), &secret[..], "{id} was replaced");
        }
        assert_eq!(rotated.iter().flatten().count(), 80);
    }
}
