//! Record keys: each record of the registry that holds something sealed (a
//! preservation order, a warrant, a lawful request's result) has a key of
//! its own, so that destroying the key when the record ends destroys what it
//! sealed at once: an order's targets and copies, a warrant's targets, a
//! result.

use std::fs;
use std::io;
use std::path::PathBuf;

use ring::rand::{SecureRandom, SystemRandom};

use super::custody::Kek;
use super::day::DayKey;
use super::secret::{SecretKey, unwrap_key, wrap_key};
use super::{KeyError, KeyStore, create_private_dir};
use crate::model::{KeyId, PartitionDate};
use crate::ops::durable::{self, DurableError, FileMode};

const ORDER_DIR: &str = "order";
const WARRANT_DIR: &str = "warrant";
const RESULT_DIR: &str = "result";
const REGISTRY_DIR: &str = "registry";
const ORDER_AAD: &[u8] = b"order";
const WARRANT_AAD: &[u8] = b"warrant";
const RESULT_AAD: &[u8] = b"result";
const REGISTRY_AAD: &[u8] = b"registry";
/// The one record of [`RecordKeyScope::Registry`]: the key of the seals.
const ROWS: &str = "rows";
/// Written beside that key, one per set of sealed tables, once the rows
/// of those tables carry its seals: `<set>.adopted`.
const ADOPTED: &str = ".adopted";
/// One empty file per revoked principal, named after it.
const RETIRED_DIR: &str = "retired";
/// One empty file per token rotated away, named after its SHA-256 in hex.
const RETIRED_TOKENS_DIR: &str = "retired-tokens";

/// Random bytes in the id of a registry record (an order, a warrant, a
/// principal): 64 bits, 16 hex digits. Among a million records of a kind
/// the chance that any two drew the same id is about 3·10⁻⁸, and a record
/// key is never replaced ([`KeyStore::create_record_key`]): a collision
/// fails a creation, it never destroys another record's key.
pub const RECORD_ID_RANDOM_BYTES: usize = 8;

/// A new registry record id: `prefix`, a dash and
/// [`RECORD_ID_RANDOM_BYTES`] random bytes in hex, e.g. `w-0f3a…`.
pub fn new_record_id(rng: &SystemRandom, prefix: &str) -> Result<String, KeyError> {
    let mut random = [0u8; RECORD_ID_RANDOM_BYTES];
    rng.fill(&mut random).map_err(|_| KeyError::Random)?;
    Ok(format!("{prefix}-{}", hex::encode(random)))
}

/// The kinds of registry record that have a key of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKeyScope {
    Order,
    Warrant,
    /// A lawful request's result, kept sealed until fetched or expired.
    Result,
    /// The seals on the registry's rows ([`KeyStore::registry_key`]).
    Registry,
}

impl RecordKeyScope {
    pub(super) fn dir(self) -> &'static str {
        match self {
            RecordKeyScope::Order => ORDER_DIR,
            RecordKeyScope::Warrant => WARRANT_DIR,
            RecordKeyScope::Result => RESULT_DIR,
            RecordKeyScope::Registry => REGISTRY_DIR,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            RecordKeyScope::Order => "order",
            RecordKeyScope::Warrant => "warrant",
            RecordKeyScope::Result => "result",
            RecordKeyScope::Registry => "registry",
        }
    }

    fn aad(self) -> &'static [u8] {
        match self {
            RecordKeyScope::Order => ORDER_AAD,
            RecordKeyScope::Warrant => WARRANT_AAD,
            RecordKeyScope::Result => RESULT_AAD,
            RecordKeyScope::Registry => REGISTRY_AAD,
        }
    }
}

/// A record key's file in the keys directory.
#[derive(Debug, Clone)]
pub struct RecordKeyFile {
    /// The record it is the key of.
    pub record: String,
    /// A temporary a crash left before the key was renamed into place.
    pub temporary: bool,
    /// When the file was last written, by the file system's clock.
    pub written: std::time::SystemTime,
}

/// The key of one registry record.
#[derive(Debug, Clone)]
pub struct RecordKey {
    pub id: KeyId,
    pub secret: SecretKey,
}

impl RecordKey {
    /// An order's key as the key that seals its copies of `date`: the
    /// shape the writer and the readers take. The one place an order key
    /// becomes a file key. Its token key, derived from the order key,
    /// tokenises the copies, so they stay searchable after their day's
    /// token key is destroyed, and only while the order's key exists.
    pub fn for_day(&self, date: PartitionDate) -> DayKey {
        DayKey::new(self.id.clone(), date, self.secret.clone())
    }
}

impl KeyStore {
    /// Creates the key of one record of the registry (a preservation order,
    /// a warrant, a result): it seals that record's targets (and an order's
    /// copies), so destroying it when the record ends destroys them at once.
    ///
    /// A key is created only if the record has none:
    /// [`KeyError::RecordKeyExists`] otherwise, and the existing key is left
    /// as it is. Replacing it would make everything it sealed unreadable,
    /// so two records that drew the same id can never destroy each other's
    /// data.
    pub fn create_record_key(&self, scope: RecordKeyScope, record: &str) -> Result<RecordKey, KeyError> {
        let path = self.record_key_path(scope, record);
        let id = KeyId::new(format!("{}-{record}", scope.prefix())).ok_or_else(|| KeyError::Corrupt(path.clone()))?;
        let secret = SecretKey::random(&self.rng)?;
        let wrapped = wrap_key(self.custody(), Kek::Root, &id, &secret, scope.aad())?;
        create_private_dir(&self.dir.join(scope.dir()))?;
        match durable::write_new(&path, &wrapped, FileMode::Private) {
            Ok(()) => Ok(RecordKey { id, secret }),
            Err(DurableError::Exists { path }) => Err(KeyError::RecordKeyExists(path)),
            Err(e) => Err(e.into()),
        }
    }

    /// The key of a registry record, if it still exists.
    pub fn record_key(&self, scope: RecordKeyScope, record: &str) -> Result<Option<RecordKey>, KeyError> {
        let path = self.record_key_path(scope, record);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(KeyError::io("read", &path, e)),
        };
        let (id, secret) =
            unwrap_key(self.custody(), Kek::Root, &bytes, scope.aad())?.ok_or(KeyError::Corrupt(path))?;
        Ok(Some(RecordKey { id, secret }))
    }

    /// Destroys the key of a registry record. Idempotent.
    pub fn destroy_record_key(&self, scope: RecordKeyScope, record: &str) -> Result<(), KeyError> {
        durable::remove_with_temporaries(&self.record_key_path(scope, record))?;
        Ok(())
    }

    /// The key of a preservation order (see [`Self::create_record_key`]).
    pub fn create_order_key(&self, order: &str) -> Result<RecordKey, KeyError> {
        self.create_record_key(RecordKeyScope::Order, order)
    }

    pub fn order_key(&self, order: &str) -> Result<Option<RecordKey>, KeyError> {
        self.record_key(RecordKeyScope::Order, order)
    }

    /// Destroys an order's key, then the record of its end
    /// ([`Self::record_order_end`]). Idempotent.
    pub fn destroy_order_key(&self, order: &str) -> Result<(), KeyError> {
        self.destroy_record_key(RecordKeyScope::Order, order)?;
        durable::remove_with_temporaries(&self.order_end_path(order))?;
        Ok(())
    }

    /// Records, out of the registry's reach, the end date that the last
    /// approval of an order (of the order itself or of a new end) gave it:
    /// an older copy of the order's row put back into the registry still
    /// carries a valid seal, and this is what refuses it
    /// ([`crate::lifecycle::orders::OrderStore::checked`]).
    pub fn record_order_end(&self, order: &str, ends: PartitionDate) -> Result<(), KeyError> {
        create_private_dir(&self.dir.join(ORDER_DIR))?;
        durable::write_atomically(&self.order_end_path(order), ends.to_string().as_bytes(), FileMode::Private)?;
        Ok(())
    }

    /// The end date recorded for an order, if any.
    pub fn order_end(&self, order: &str) -> Result<Option<PartitionDate>, KeyError> {
        let path = self.order_end_path(order);
        match fs::read_to_string(&path) {
            Ok(text) => PartitionDate::parse(text.trim()).map(Some).ok_or(KeyError::Corrupt(path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(KeyError::io("read", &path, e)),
        }
    }

    fn order_end_path(&self, order: &str) -> PathBuf {
        self.dir.join(ORDER_DIR).join(format!("{order}.ends"))
    }

    /// The orders that have a key, by id (temporaries left by a crash not
    /// included).
    pub fn orders_with_keys(&self) -> Result<Vec<String>, KeyError> {
        let mut orders: Vec<String> = self
            .record_key_files(RecordKeyScope::Order)?
            .into_iter()
            .filter(|k| !k.temporary)
            .map(|k| k.record)
            .collect();
        orders.sort();
        Ok(orders)
    }

    /// Every `<record>.key` of `scope`, and every temporary of one a
    /// crash left (`.<record>.key.<random>.tmp`), with the time each file
    /// was written: what the sweep of keys that no row names walks
    /// ([`crate::access`]'s housekeeping).
    pub fn record_key_files(&self, scope: RecordKeyScope) -> Result<Vec<RecordKeyFile>, KeyError> {
        let dir = self.dir.join(scope.dir());
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(KeyError::io("list", &dir, e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| KeyError::io("list", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let (record, temporary) = if durable::is_temporary_name(&name) {
                match name[1..].split_once(".key.") {
                    Some((record, _)) => (record, true),
                    None => continue,
                }
            } else {
                match name.strip_suffix(".key").filter(|r| !r.starts_with('.')) {
                    Some(record) => (record, false),
                    None => continue,
                }
            };
            let written = match entry.metadata().and_then(|m| m.modified()) {
                Ok(written) => written,
                // Destroyed since it was listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(KeyError::io("stat", &dir.join(name.as_ref()), e)),
            };
            files.push(RecordKeyFile { record: record.to_string(), temporary, written });
        }
        Ok(files)
    }

    /// The key that seals the registry's rows which decide what may be
    /// disclosed (principals, warrants, orders, requests:
    /// [`crate::registry::seal`]), created at its first use. Kept here, not
    /// in the state directory, so that whoever can write the registry
    /// cannot seal a row.
    pub fn registry_key(&self) -> Result<RecordKey, KeyError> {
        match self.record_key(RecordKeyScope::Registry, ROWS)? {
            Some(key) => Ok(key),
            None => match self.create_record_key(RecordKeyScope::Registry, ROWS) {
                Ok(key) => Ok(key),
                // Another process made it first.
                Err(KeyError::RecordKeyExists(path)) => {
                    self.record_key(RecordKeyScope::Registry, ROWS)?.ok_or(KeyError::Corrupt(path))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Whether the rows of the set of tables `tables` (a name the registry
    /// gives each set it sealed at once) written before their seals
    /// existed were sealed under the registry key already
    /// ([`Self::mark_registry_adopted`]).
    pub fn is_registry_adopted(&self, tables: &str) -> Result<bool, KeyError> {
        let adopted = self.dir.join(REGISTRY_DIR).join(format!("{tables}{ADOPTED}"));
        fs::symlink_metadata(&adopted).map(|_| true).or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => Ok(false),
            _ => Err(KeyError::io("read", &adopted, e)),
        })
    }

    /// Records that every row of the set of tables `tables` carries its
    /// seal: from then on a row of them without one is refused like a row
    /// whose seal is wrong.
    pub fn mark_registry_adopted(&self, tables: &str) -> Result<(), KeyError> {
        let path = self.dir.join(REGISTRY_DIR).join(format!("{tables}{ADOPTED}"));
        match durable::write_new(&path, b"", FileMode::Private) {
            Ok(()) | Err(DurableError::Exists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Records, out of the registry's reach, that the principal `id` was
    /// revoked: a copy of its row from before the revocation, put back into
    /// the registry, still carries a valid seal, and this is what refuses
    /// it ([`Self::is_principal_retired`]). Idempotent.
    pub fn retire_principal(&self, id: &str) -> Result<(), KeyError> {
        let Some(name) = principal_file_name(id) else { return Ok(()) };
        self.retire(RETIRED_DIR, name)
    }

    /// True if the principal `id` was ever revoked (or its id could not
    /// name a file, which no id cdrvault makes does).
    pub fn is_principal_retired(&self, id: &str) -> Result<bool, KeyError> {
        let Some(name) = principal_file_name(id) else { return Ok(true) };
        self.is_retired(RETIRED_DIR, name)
    }

    /// Records, out of the registry's reach, that the token whose SHA-256
    /// is `token_sha256` was rotated away ([`Self::retire_principal`]).
    pub fn retire_token(&self, token_sha256: &[u8]) -> Result<(), KeyError> {
        self.retire(RETIRED_TOKENS_DIR, &hex::encode(token_sha256))
    }

    /// True if the token whose SHA-256 is `token_sha256` was rotated away.
    pub fn is_token_retired(&self, token_sha256: &[u8]) -> Result<bool, KeyError> {
        self.is_retired(RETIRED_TOKENS_DIR, &hex::encode(token_sha256))
    }

    fn retire(&self, kind: &str, name: &str) -> Result<(), KeyError> {
        let dir = self.dir.join(REGISTRY_DIR).join(kind);
        create_private_dir(&self.dir.join(REGISTRY_DIR))?;
        create_private_dir(&dir)?;
        match durable::write_new(&dir.join(name), b"", FileMode::Private) {
            Ok(()) | Err(DurableError::Exists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn is_retired(&self, kind: &str, name: &str) -> Result<bool, KeyError> {
        let path = self.dir.join(REGISTRY_DIR).join(kind).join(name);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(KeyError::io("stat", &path, e)),
        }
    }

    fn record_key_path(&self, scope: RecordKeyScope, record: &str) -> PathBuf {
        self.dir.join(scope.dir()).join(format!("{record}.key"))
    }
}

/// A principal's id as a file name, if it is one (letters, digits, `-`
/// and `_`, at most 64 bytes: `p-` and hex digits for every id cdrvault
/// makes).
fn principal_file_name(id: &str) -> Option<&str> {
    let plain = id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (plain && !id.is_empty() && id.len() <= 64).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_carry_64_random_bits() {
        let rng = SystemRandom::new();
        let id = new_record_id(&rng, "w").unwrap();
        let random = id.strip_prefix("w-").unwrap();
        assert_eq!(random.len(), 2 * RECORD_ID_RANDOM_BYTES);
        assert!(random.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{id}");
        assert_ne!(new_record_id(&rng, "w").unwrap(), id);
        assert!(KeyId::new(format!("{}-{id}", RecordKeyScope::Warrant.prefix())).is_some(), "a valid key id");
    }

    #[test]
    fn key_files_are_listed_with_the_temporaries_a_crash_left_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("keys");
        KeyStore::init(&dir, None).unwrap();
        let keys = KeyStore::open(&dir, None).unwrap();
        keys.create_record_key(RecordKeyScope::Result, "aa").unwrap();
        let results = dir.join(RESULT_DIR);
        fs::write(results.join(".bb.key.0123.tmp"), b"cut short").unwrap();
        fs::write(results.join("notes.txt"), b"not a key").unwrap();
        fs::write(results.join(".cc.ends.0123.tmp"), b"not a key either").unwrap();
        let mut files: Vec<(String, bool)> = keys
            .record_key_files(RecordKeyScope::Result)
            .unwrap()
            .into_iter()
            .map(|f| (f.record, f.temporary))
            .collect();
        files.sort();
        assert_eq!(files, vec![("aa".to_string(), false), ("bb".to_string(), true)]);
        assert!(keys.record_key_files(RecordKeyScope::Warrant).unwrap().is_empty(), "no directory, no keys");
        keys.destroy_record_key(RecordKeyScope::Result, "bb").unwrap();
        assert_eq!(keys.record_key_files(RecordKeyScope::Result).unwrap().len(), 1, "the temporary goes with its key");
    }
}
