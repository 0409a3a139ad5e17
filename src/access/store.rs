//! [`AccessStore`]: the lawful-access rules over an [`AccessRegistry`].
//! Its operations live with their concern: authorities and principals in
//! [`super::principals`], warrants and the scope check in
//! [`super::warrants`].

use std::fmt;
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};

use super::refusal::AccessError;
use crate::keys::KeyError;
use crate::registry::AccessRegistry;

/// The lawful-access rules over an [`AccessRegistry`].
pub struct AccessStore {
    pub(super) registry: Arc<dyn AccessRegistry>,
    pub(super) rng: SystemRandom,
}

impl fmt::Debug for AccessStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessStore")
    }
}

impl AccessStore {
    /// The rules over a registry backend.
    pub fn new(registry: Arc<dyn AccessRegistry>) -> AccessStore {
        AccessStore { registry, rng: SystemRandom::new() }
    }

    pub(super) fn random_hex(&self, bytes: usize) -> Result<String, AccessError> {
        let mut buffer = vec![0u8; bytes];
        self.rng.fill(&mut buffer).map_err(|_| KeyError::Random)?;
        Ok(hex::encode(buffer))
    }
}
