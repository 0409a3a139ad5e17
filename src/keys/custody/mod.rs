//! Key custody: who holds the keys that wrap every other key.
//!
//! Every key file in the keys directory is a key wrapped (AES-256-GCM)
//! under a key-encryption key (KEK) that the custody holds:
//!
//! - [`Kek::Root`] wraps the keys that live as long as the installation or a
//!   registry record (the audit signing seed, warrant, order and result
//!   keys).
//! - [`Kek::Day`] wraps one day's data key, from which that day's token key
//!   is derived. Destroying a day destroys its KEK where the custody can.
//!
//! Two custodies:
//!
//! - [`FileCustody`]: one 256-bit master key in `master.key` is every KEK.
//!   Destroying a day removes the day's wrapped key file only, so a backup
//!   of the keys directory taken before still opens the day with the live
//!   master key. This is its documented limit.
//! - [`Pkcs11Custody`]: the KEKs are non-extractable AES keys inside a
//!   PKCS#11 token (an HSM); the root never leaves it, each day has an
//!   object of its own, and destroying a day destroys that object, after
//!   which no copy of the keys directory opens the day.

mod file;
mod pkcs11;

use std::fmt;

use zeroize::Zeroizing;

pub use file::FileCustody;
pub use pkcs11::{Pin, Pkcs11Config, Pkcs11Custody};

use super::KeyError;
use crate::model::PartitionDate;

/// The key-encryption key that wraps a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kek {
    /// The installation's root key.
    Root,
    /// The KEK of one day: wraps that day's data key only.
    Day(PartitionDate),
}

/// Holds the key-encryption keys. `Send + Sync`: one custody serves every
/// thread of a process.
pub trait Custody: Send + Sync + fmt::Debug {
    /// `file` or `pkcs11`, as in the configuration.
    fn name(&self) -> &'static str;

    /// Encrypts `plain` under `kek`, bound to `aad`. A day's KEK is created
    /// first if the day has none; every process and thread that creates
    /// one for the same day at once may end up with its own, and
    /// [`Custody::decrypt`] tries each.
    fn encrypt(&self, kek: Kek, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, KeyError>;

    /// Decrypts what [`Custody::encrypt`] returned. `None` if the bytes do
    /// not open under `kek`: another key, changed bytes, or a KEK that was
    /// destroyed.
    fn decrypt(&self, kek: Kek, aad: &[u8], sealed: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError>;

    /// Destroys the KEK of `date`; returns how many key objects were
    /// destroyed (0 in file custody, where the day has no KEK of its own).
    fn destroy_day(&self, date: PartitionDate) -> Result<usize, KeyError>;

    /// The days that still have a KEK of their own, read from where the
    /// custody keeps them (the HSM's objects), sorted; `None` where days
    /// have no KEK of their own (file custody).
    fn days_with_keks(&self) -> Result<Option<Vec<PartitionDate>>, KeyError>;
}
