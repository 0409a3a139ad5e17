//! File custody: the master key in `master.key` (mode 0600) is the root and
//! every day's KEK.

use ring::aead::NONCE_LEN;
use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use super::{Custody, Kek};
use crate::keys::KeyError;
use crate::keys::secret::{SecretKey, open_bytes, seal_bytes};
use crate::model::PartitionDate;

/// The master key of a keys directory.
pub struct FileCustody {
    master: SecretKey,
    rng: SystemRandom,
}

impl FileCustody {
    pub fn new(master: SecretKey) -> Self {
        FileCustody { master, rng: SystemRandom::new() }
    }
}

impl std::fmt::Debug for FileCustody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileCustody")
    }
}

impl Custody for FileCustody {
    fn name(&self) -> &'static str {
        "file"
    }

    fn encrypt(&self, _kek: Kek, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        seal_bytes(&self.master, &self.rng, aad, plain.to_vec())
    }

    fn decrypt(&self, _kek: Kek, aad: &[u8], sealed: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
        if sealed.len() < NONCE_LEN {
            return Ok(None);
        }
        Ok(open_bytes(&self.master, aad, sealed).map(Zeroizing::new))
    }

    fn destroy_day(&self, _date: PartitionDate) -> Result<usize, KeyError> {
        Ok(0)
    }

    fn days_with_keks(&self) -> Result<Option<Vec<PartitionDate>>, KeyError> {
        Ok(None)
    }
}
