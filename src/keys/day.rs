//! Day keys: the data key of one day seals that day's identifier columns
//! and signs its files' footers. Retention destroys a day by writing its
//! tombstone (so the day is never re-created) and then removing the only
//! wrapped copy of its key, after which that day's sealed columns cannot be
//! decrypted by anyone who has not kept a copy of the key file.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use ring::rand::SecureRandom;

use super::custody::Kek;
use super::secret::{SecretKey, unwrap_key, wrap_key};
use super::token::{self, TokenKey};
use super::{KeyError, KeyStore};
use crate::model::{KeyId, PartitionDate};
use crate::ops::durable::{self, DurableError, FileMode};

pub(super) const DAY_DIR: &str = "day";

/// The data key of one day: seals that day's identifier columns and signs
/// its files' footers. It carries the day's token key, derived from it.
#[derive(Debug)]
pub struct DayKey {
    pub id: KeyId,
    pub date: PartitionDate,
    pub secret: SecretKey,
    /// The token key of the day's tokens (see [`super::token`]).
    pub token: TokenKey,
}

impl DayKey {
    /// The key `id`/`secret` as the key of `date`'s files, with the token
    /// key derived from it.
    pub fn new(id: KeyId, date: PartitionDate, secret: SecretKey) -> DayKey {
        let token = token::derive(&id, &secret);
        DayKey { id, date, secret, token }
    }
}

/// Day keys already unwrapped or created by this process. The mutex also
/// serialises creation within the process; across processes, the key file
/// is created only if absent, and the loser of a race takes the winner's.
pub(super) type DayKeyCache = std::sync::Mutex<HashMap<PartitionDate, Arc<DayKey>>>;

impl KeyStore {
    /// The data key of `date`, created (durably, before it is ever used) if
    /// the day has none yet. A destroyed day has none, even if another
    /// process destroyed it while this one held the key: the copy is then
    /// dropped.
    pub fn day_key(&self, date: PartitionDate) -> Result<Arc<DayKey>, KeyError> {
        let mut cache = self.day_keys.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_destroyed(date) {
            cache.remove(&date);
            return Err(KeyError::DayDestroyed(date));
        }
        if let Some(key) = cache.get(&date) {
            return Ok(Arc::clone(key));
        }
        let key = match self.read_day_key(date)? {
            Some(key) => key,
            None => self.create_day_key(date)?,
        };
        let key = Arc::new(key);
        cache.insert(date, Arc::clone(&key));
        Ok(key)
    }

    /// The data key of `date` if the day has one; never creates a key. A
    /// destroyed day has none, as for [`KeyStore::day_key`].
    pub fn existing_day_key(&self, date: PartitionDate) -> Result<Option<Arc<DayKey>>, KeyError> {
        let mut cache = self.day_keys.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_destroyed(date) {
            cache.remove(&date);
            return Ok(None);
        }
        if let Some(key) = cache.get(&date) {
            return Ok(Some(Arc::clone(key)));
        }
        let Some(key) = self.read_day_key(date)? else { return Ok(None) };
        let key = Arc::new(key);
        cache.insert(date, Arc::clone(&key));
        Ok(Some(key))
    }

    /// Drops from this process's cache every day key whose day another
    /// process destroyed; returns how many. The service runs it every
    /// minute, so such a copy does not outlive its key by more than that
    /// even for a day nobody asks for.
    pub fn forget_destroyed(&self) -> usize {
        let mut cache = self.day_keys.lock().unwrap_or_else(|p| p.into_inner());
        let before = cache.len();
        cache.retain(|date, _| !self.is_destroyed(*date));
        before - cache.len()
    }

    /// The days whose key this process holds in memory, sorted.
    pub fn cached_days(&self) -> Vec<PartitionDate> {
        let cache = self.day_keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut days: Vec<PartitionDate> = cache.keys().copied().collect();
        days.sort();
        days
    }

    /// The days that have a data key, sorted.
    pub fn days_with_keys(&self) -> Result<Vec<PartitionDate>, KeyError> {
        self.days_with_suffix(".key")
    }

    /// True once retention has destroyed `date`: its key is gone for good
    /// and a new one is never created.
    pub fn is_destroyed(&self, date: PartitionDate) -> bool {
        self.tombstone_path(date).exists()
    }

    /// The tombstone of a destroyed day, if any: written before its key is
    /// removed, it records the deletion's evidence until it is audited.
    pub fn tombstone(&self, date: PartitionDate) -> Result<Option<Vec<u8>>, KeyError> {
        let path = self.tombstone_path(date);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(KeyError::io("read", &path, e)),
        }
    }

    /// Writes (or rewrites) the tombstone of `date`.
    pub fn write_tombstone(&self, date: PartitionDate, content: &[u8]) -> Result<(), KeyError> {
        durable::write_atomically(&self.tombstone_path(date), content, FileMode::Private)?;
        Ok(())
    }

    /// The days that have a tombstone, sorted.
    pub fn destroyed_days(&self) -> Result<Vec<PartitionDate>, KeyError> {
        self.days_with_suffix(".destroyed")
    }

    /// Destroys the data key of `date`: its only wrapped copy is removed and
    /// the removal made durable, after which the day's sealed columns cannot
    /// be decrypted by anyone. The tombstone must exist first, so that the
    /// day is never re-created. Idempotent. Returns the id of the key
    /// destroyed, if there still was one.
    pub fn destroy_day_key(&self, date: PartitionDate) -> Result<Option<KeyId>, KeyError> {
        if !self.is_destroyed(date) {
            return Err(KeyError::Corrupt(self.tombstone_path(date)));
        }
        let mut cache = self.day_keys.lock().unwrap_or_else(|p| p.into_inner());
        let id = match cache.remove(&date) {
            Some(key) => Some(key.id.clone()),
            None => self.read_day_key(date)?.map(|k| k.id),
        };
        durable::remove_with_temporaries(&self.day_key_path(date))?;
        // In HSM custody the day's KEK goes too: a copy of the wrapped key
        // file kept elsewhere no longer opens.
        self.custody().destroy_day(date)?;
        Ok(id)
    }

    fn day_key_path(&self, date: PartitionDate) -> PathBuf {
        self.dir.join(DAY_DIR).join(format!("{date}.key"))
    }

    fn read_day_key(&self, date: PartitionDate) -> Result<Option<DayKey>, KeyError> {
        let path = self.day_key_path(date);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(KeyError::io("read", &path, e)),
        };
        let (id, secret) = unwrap_key(self.custody(), Kek::Day(date), &bytes, &day_aad(date))?
            .ok_or_else(|| KeyError::Corrupt(path.clone()))?;
        Ok(Some(DayKey::new(id, date, secret)))
    }

    fn tombstone_path(&self, date: PartitionDate) -> PathBuf {
        self.dir.join(DAY_DIR).join(format!("{date}.destroyed"))
    }

    fn days_with_suffix(&self, suffix: &str) -> Result<Vec<PartitionDate>, KeyError> {
        let dir = self.dir.join(DAY_DIR);
        let mut days = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| KeyError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| KeyError::io("list", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(date) = name.strip_suffix(suffix).and_then(PartitionDate::parse) {
                days.push(date);
            }
        }
        days.sort();
        Ok(days)
    }

    fn create_day_key(&self, date: PartitionDate) -> Result<DayKey, KeyError> {
        if self.is_destroyed(date) {
            return Err(KeyError::DayDestroyed(date));
        }
        let mut suffix = [0u8; 4];
        self.rng.fill(&mut suffix).map_err(|_| KeyError::Random)?;
        let id = KeyId::new(format!("day-{date}-{:08x}", u32::from_be_bytes(suffix)))
            .expect("a date and hex digits form a valid key id");
        let secret = SecretKey::random(&self.rng)?;
        let wrapped = wrap_key(self.custody(), Kek::Day(date), &id, &secret, &day_aad(date))?;
        let path = self.day_key_path(date);
        match durable::write_new(&path, &wrapped, FileMode::Private) {
            Ok(()) => {}
            // Another process created the day's key first: every file of
            // the day must be sealed under that one.
            Err(DurableError::Exists { .. }) => {
                return match self.read_day_key(date)? {
                    Some(key) => Ok(key),
                    None if self.is_destroyed(date) => Err(KeyError::DayDestroyed(date)),
                    None => Err(KeyError::Corrupt(path)),
                };
            }
            Err(e) => return Err(e.into()),
        }
        // A sweep that destroyed the day after the check above must not
        // leave a key behind it.
        if self.is_destroyed(date) {
            durable::remove_with_temporaries(&path)?;
            return Err(KeyError::DayDestroyed(date));
        }
        let key = DayKey::new(id, date, secret);
        if let Some(hook) = self.on_created.get() {
            hook(&key);
        }
        Ok(key)
    }
}

fn day_aad(date: PartitionDate) -> Vec<u8> {
    format!("day {date}").into_bytes()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use crate::keys::{KeyError, KeyStore};
    use crate::model::PartitionDate;

    #[test]
    fn a_moved_or_tampered_key_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(root.path(), None).unwrap();
        let store = KeyStore::open(root.path(), None).unwrap();
        let a = PartitionDate::parse("2026-01-01").unwrap();
        let b = PartitionDate::parse("2026-01-02").unwrap();
        store.day_key(a).unwrap();
        fs::copy(root.path().join("day/2026-01-01.key"), root.path().join("day/2026-01-02.key")).unwrap();
        let fresh = KeyStore::open(root.path(), None).unwrap();
        assert!(matches!(fresh.existing_day_key(b), Err(KeyError::Corrupt(_))));
    }

    #[test]
    fn a_destroyed_day_key_is_gone_and_never_recreated() {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(root.path(), None).unwrap();
        let store = KeyStore::open(root.path(), None).unwrap();
        let date = PartitionDate::parse("2025-03-01").unwrap();
        let id = store.day_key(date).unwrap().id.clone();
        assert!(store.destroy_day_key(date).is_err(), "a tombstone comes first");
        store.write_tombstone(date, b"{}").unwrap();
        assert_eq!(store.destroy_day_key(date).unwrap(), Some(id));
        assert_eq!(store.destroy_day_key(date).unwrap(), None, "idempotent");
        let fresh = KeyStore::open(root.path(), None).unwrap();
        assert!(fresh.existing_day_key(date).unwrap().is_none());
        assert!(matches!(fresh.day_key(date), Err(KeyError::DayDestroyed(_))));
        assert_eq!(fresh.destroyed_days().unwrap(), vec![date]);
        assert!(fresh.days_with_keys().unwrap().is_empty());
    }

    /// Two keystores on one directory (the service and a backfill import,
    /// say) that first write the same new days at the same time end up
    /// with one key per day: the loser of each race takes the winner's.
    #[test]
    fn writers_racing_to_create_a_day_key_share_one_key() {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(root.path(), None).unwrap();
        let stores = [KeyStore::open(root.path(), None).unwrap(), KeyStore::open(root.path(), None).unwrap()];
        let days: Vec<PartitionDate> =
            (0..200).map(|n| PartitionDate::from_days_since_epoch(20_000 + n).unwrap()).collect();
        let start = std::sync::Barrier::new(stores.len());
        let ids: Vec<Vec<String>> = std::thread::scope(|scope| {
            let workers: Vec<_> = stores
                .iter()
                .map(|store| {
                    let (days, start) = (&days, &start);
                    scope.spawn(move || {
                        start.wait();
                        days.iter().map(|&day| store.day_key(day).unwrap().id.to_string()).collect()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let fresh = KeyStore::open(root.path(), None).unwrap();
        for (n, day) in days.iter().enumerate() {
            let stored = fresh.existing_day_key(*day).unwrap().unwrap().id.to_string();
            assert_eq!(ids[0][n], stored, "{day}: the first writer's key is the stored one");
            assert_eq!(ids[1][n], stored, "{day}: the second writer's key is the stored one");
        }
        let left: Vec<_> = fs::read_dir(root.path().join("day")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), days.len(), "one file a day, no temporary left: {left:?}");
    }

    /// A crash between linking a new key into place and removing its
    /// temporary leaves a second name of the key file: destruction removes
    /// that too.
    #[test]
    fn destroying_a_key_removes_every_name_of_its_file() {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(root.path(), None).unwrap();
        let store = KeyStore::open(root.path(), None).unwrap();
        let date = PartitionDate::parse("2025-03-01").unwrap();
        store.day_key(date).unwrap();
        let key = root.path().join("day/2025-03-01.key");
        let leftover = root.path().join("day/.2025-03-01.key.4242.7.tmp");
        fs::hard_link(&key, &leftover).unwrap();
        store.write_tombstone(date, b"{}").unwrap();
        store.destroy_day_key(date).unwrap();
        assert!(!key.exists() && !leftover.exists(), "no name of the key file survives");
    }
}
