//! The sealed results: what a request answered is kept sealed, under a key
//! of its own, until it is fetched and while it is kept
//! (`access.result_keep`); then its key and sealed bytes are destroyed
//! ([`super::fetch`] delivers and sweeps them).
//!
//! [`ResultStore`] seals and unseals; the sealed bytes are kept in the
//! registry with the request's record, committed in the same transaction
//! as the record and its audit entry, so that a submission costs the key's
//! write and one commit. Results sealed before that are files
//! `<name>.sealed` in the `results/` directory of the state directory,
//! still read and destroyed. Names are random, so a name says nothing about
//! its request.

use std::path::PathBuf;
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};

use super::refusal::{AccessError, Refusal};
use crate::keys::{self, KeyStore, RecordKey, RecordKeyScope};
use crate::ops::durable::{self, DurableError};

/// The directory of sealed results in the state directory.
pub const RESULTS_DIR: &str = "results";

/// A result's name and its key, reserved before its bytes exist.
pub struct ResultKey {
    pub name: String,
    key: RecordKey,
}

/// The sealed results: `<dir>/<name>.sealed`, each sealed under the record
/// key `result/<name>`.
pub struct ResultStore {
    dir: PathBuf,
    keys: Arc<KeyStore>,
    rng: SystemRandom,
}

impl ResultStore {
    /// The store in `dir`, created if needed.
    pub fn open(dir: PathBuf, keys: Arc<KeyStore>) -> Result<ResultStore, DurableError> {
        durable::create_private_dir(&dir)?;
        durable::ensure_private(&dir)?;
        Ok(ResultStore { dir, keys, rng: SystemRandom::new() })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sealed"))
    }

    /// A new random name and its key, durable when this returns: made
    /// before the result exists, so that the key's write overlaps the
    /// lookup ([`super::requests`]). A key whose request is not recorded
    /// is destroyed ([`ResultStore::destroy`]); one left by a crash seals
    /// nothing.
    pub fn reserve(&self) -> Result<ResultKey, AccessError> {
        let mut random = [0u8; 16];
        self.rng.fill(&mut random).map_err(|_| AccessError::Internal("no randomness"))?;
        let name = hex::encode(random);
        let key = self.keys.create_record_key(RecordKeyScope::Result, &name)?;
        Ok(ResultKey { name, key })
    }

    /// Seals `bytes` under `key`. Returns the sealed bytes, which the
    /// request's record keeps ([`crate::registry::RequestRegistry::record`]):
    /// they are durable with it, in one commit.
    pub fn seal(&self, key: &ResultKey, bytes: &[u8]) -> Result<Vec<u8>, AccessError> {
        Ok(keys::seal_bytes(&key.key.secret, &self.rng, key.name.as_bytes(), bytes.to_vec())?)
    }

    /// The bytes of a kept result, from its sealed bytes in the registry,
    /// or `None` for a result sealed before they were kept there, from its
    /// file.
    pub fn unseal(&self, name: &str, sealed: Option<Vec<u8>>) -> Result<Vec<u8>, AccessError> {
        let key = self.keys.record_key(RecordKeyScope::Result, name)?.ok_or(Refusal::ResultDestroyed)?;
        let sealed = match sealed {
            Some(sealed) => sealed,
            None => std::fs::read(self.path(name)).map_err(|_| Refusal::ResultDestroyed)?,
        };
        Ok(keys::open_bytes(&key.secret, name.as_bytes(), &sealed).ok_or(Refusal::ResultUnsealable)?)
    }

    /// Destroys a result: its key first (the sealed bytes are then
    /// unreadable wherever a copy lies), then the file of a result sealed
    /// before results were kept in the registry. Idempotent.
    pub fn destroy(&self, name: &str) -> Result<(), AccessError> {
        self.keys.destroy_record_key(RecordKeyScope::Result, name)?;
        durable::remove_file(&self.path(name))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ResultStore) {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(&root.path().join("keys"), None).unwrap();
        let keys = Arc::new(KeyStore::open(&root.path().join("keys"), None).unwrap());
        let store = ResultStore::open(root.path().join("state/results"), keys).unwrap();
        (root, store)
    }

    #[test]
    fn a_result_unseals_only_under_its_own_key_and_not_once_destroyed() {
        let (_root, results) = store();
        let key = results.reserve().unwrap();
        let (name, sealed) = (key.name.clone(), results.seal(&key, b"the answer").unwrap());
        assert!(!sealed.windows(10).any(|w| w == b"the answer"), "sealed, not in clear");
        assert_eq!(results.unseal(&name, Some(sealed.clone())).unwrap(), b"the answer");
        let other = results.reserve().unwrap().name;
        assert!(results.unseal(&other, Some(sealed.clone())).is_err(), "bound to its name and key");
        results.destroy(&name).unwrap();
        let destroyed = results.unseal(&name, Some(sealed)).unwrap_err();
        assert!(matches!(destroyed, AccessError::Refused(Refusal::ResultDestroyed)), "{destroyed:?}");
    }

    #[test]
    fn a_result_sealed_into_a_file_before_is_still_read_and_destroyed() {
        let (_root, results) = store();
        let key = results.reserve().unwrap();
        let (name, sealed) = (key.name.clone(), results.seal(&key, b"kept as a file").unwrap());
        durable::write_atomically(&results.path(&name), &sealed, durable::FileMode::Private).unwrap();
        assert_eq!(results.unseal(&name, None).unwrap(), b"kept as a file");
        results.destroy(&name).unwrap();
        assert!(!results.path(&name).exists());
        assert!(results.unseal(&name, None).is_err());
    }
}
