//! The sealed results: what a request answered is kept sealed, under a key
//! of its own, until it is fetched and while it is kept
//! (`access.result_keep`); then its key and file are destroyed
//! ([`super::fetch`] delivers and sweeps them).
//!
//! [`ResultStore`] owns the `results/` directory of the state directory and
//! every `<name>.sealed` file in it. Names are random, so a file name says
//! nothing about its request.

use std::path::PathBuf;
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};

use super::refusal::{AccessError, Refusal};
use crate::keys::{self, KeyStore, RecordKeyScope};
use crate::ops::durable::{self, DurableError, FileMode};

/// The directory of sealed results in the state directory.
pub const RESULTS_DIR: &str = "results";

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

    /// Seals `bytes` under a new key and a new random name, durably.
    /// Returns the name.
    pub fn seal(&self, bytes: &[u8]) -> Result<String, AccessError> {
        let mut random = [0u8; 16];
        self.rng.fill(&mut random).map_err(|_| AccessError::Internal("no randomness"))?;
        let name = hex::encode(random);
        let key = self.keys.create_record_key(RecordKeyScope::Result, &name)?;
        let sealed = keys::seal_bytes(&key.secret, &self.rng, name.as_bytes(), bytes.to_vec())?;
        durable::write_atomically(&self.path(&name), &sealed, FileMode::Private)?;
        Ok(name)
    }

    /// The bytes of a kept result.
    pub fn unseal(&self, name: &str) -> Result<Vec<u8>, AccessError> {
        let key = self.keys.record_key(RecordKeyScope::Result, name)?.ok_or(Refusal::ResultDestroyed)?;
        let sealed = std::fs::read(self.path(name)).map_err(|_| Refusal::ResultDestroyed)?;
        Ok(keys::open_bytes(&key.secret, name.as_bytes(), &sealed).ok_or(Refusal::ResultUnsealable)?)
    }

    /// Destroys a result: its key first (the file is then unreadable), then
    /// its file. Idempotent.
    pub fn destroy(&self, name: &str) -> Result<(), AccessError> {
        self.keys.destroy_record_key(RecordKeyScope::Result, name)?;
        durable::remove_file(&self.path(name))?;
        Ok(())
    }
}
