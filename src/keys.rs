//! The keystore: the master key, the token keys and the per-day data keys.
//!
//! Layout of the keys directory (never inside the data directory):
//!
//! ```text
//! master.key            32 random bytes, mode 0600: wraps every other key
//! token/tk-0001.key     a token key (HMAC-SHA256), wrapped; the highest id is active
//! day/2026-11-24.key    the data key of one day, wrapped; seals that day's identifiers
//! ```
//!
//! Wrapping is AES-256-GCM under the master key with a random nonce; the
//! additional data binds each wrapped key to its kind, id and day, so a
//! wrapped key file cannot be renamed into another role. Key material lives
//! in [`SecretKey`], which is zeroised on drop and never printed.
//!
//! This module must never write key material in clear anywhere but
//! `master.key`, and never inside the data directory. Destroying a day key
//! (retention) removes its only wrapped copy, after which that day's sealed
//! columns cannot be decrypted by anyone.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroize;

use crate::durable::{self, DurableError, FileMode};
use crate::models::{KeyId, PartitionDate};

/// Length of every key: 256 bits.
pub const KEY_LEN: usize = 32;
const MASTER_FILE: &str = "master.key";
const TOKEN_DIR: &str = "token";
const DAY_DIR: &str = "day";
const ORDER_DIR: &str = "order";
const WARRANT_DIR: &str = "warrant";
const RESULT_DIR: &str = "result";
const AUDIT_KEY_FILE: &str = "audit-signing.key";
const AUDIT_HEAD_FILE: &str = "audit.head";
const WRAP_MAGIC: &[u8; 8] = b"CDRVKEY1";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("keys directory {0} is already initialised")]
    AlreadyInitialised(PathBuf),
    #[error("keys directory {0} is not initialised: run `cdrvault keys init --dir {0}`")]
    NotInitialised(PathBuf),
    #[error("keys directory {keys} lies inside the data directory {data}: keep keys apart from the data they protect")]
    InsideDataDir { keys: PathBuf, data: PathBuf },
    #[error("{0} is readable by group or others: set its mode to 0600")]
    InsecurePermissions(PathBuf),
    #[error("key file {0} is corrupt or was wrapped under another master key")]
    Corrupt(PathBuf),
    #[error("no token key in {0}")]
    NoTokenKey(PathBuf),
    #[error("day {0} was destroyed by retention and cannot be re-created")]
    DayDestroyed(PartitionDate),
    #[error("the system random generator failed")]
    Random,
    #[error(transparent)]
    Durable(#[from] DurableError),
}

impl KeyError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        KeyError::Durable(DurableError::io(op, path, source))
    }
}

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

    fn from_slice(bytes: &[u8]) -> Option<Self> {
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

/// A token key: the HMAC-SHA256 key of the keyed tokens.
#[derive(Debug, Clone)]
pub struct TokenKey {
    pub id: KeyId,
    pub secret: SecretKey,
}

/// The data key of one day: seals that day's identifier columns and signs
/// its files' footers.
#[derive(Debug)]
pub struct DayKey {
    pub id: KeyId,
    pub date: PartitionDate,
    pub secret: SecretKey,
}

/// The kinds of registry record that have a key of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKeyScope {
    Order,
    Warrant,
    /// A lawful request's result, kept sealed until fetched or expired.
    Result,
}

impl RecordKeyScope {
    fn dir(self) -> &'static str {
        match self {
            RecordKeyScope::Order => ORDER_DIR,
            RecordKeyScope::Warrant => WARRANT_DIR,
            RecordKeyScope::Result => RESULT_DIR,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            RecordKeyScope::Order => "order",
            RecordKeyScope::Warrant => "warrant",
            RecordKeyScope::Result => "result",
        }
    }

    fn aad(self) -> &'static [u8] {
        match self {
            RecordKeyScope::Order => ORDER_AAD,
            RecordKeyScope::Warrant => WARRANT_AAD,
            RecordKeyScope::Result => RESULT_AAD,
        }
    }
}

/// What `keys init` created.
#[derive(Debug)]
pub struct InitReport {
    pub dir: PathBuf,
    pub token_key: KeyId,
}

/// The keystore of one keys directory.
pub struct KeyStore {
    dir: PathBuf,
    master: SecretKey,
    /// Sorted by id; the last one is active for new data.
    token_keys: Vec<TokenKey>,
    /// Day keys already unwrapped or created by this process. The mutex also
    /// serialises creation, so two writers never create two keys for a day.
    day_keys: Mutex<HashMap<PartitionDate, Arc<DayKey>>>,
    rng: SystemRandom,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Creates a new keys directory with a master key and a first token key.
    /// Refuses a directory inside `data_dir` and one that already has keys.
    pub fn init(dir: &Path, data_dir: Option<&Path>) -> Result<InitReport, KeyError> {
        if let Some(data_dir) = data_dir {
            ensure_apart(dir, data_dir)?;
        }
        if dir.join(MASTER_FILE).exists() {
            return Err(KeyError::AlreadyInitialised(dir.to_path_buf()));
        }
        create_private_dir(dir)?;
        create_private_dir(&dir.join(TOKEN_DIR))?;
        create_private_dir(&dir.join(DAY_DIR))?;
        create_private_dir(&dir.join(ORDER_DIR))?;
        let rng = SystemRandom::new();
        let master = SecretKey::random(&rng)?;
        durable::write_atomically(&dir.join(MASTER_FILE), master.expose(), FileMode::Private)?;
        let token_key = write_token_key(dir, &master, &rng, 1)?;
        let audit_seed = SecretKey::random(&rng)?;
        // A constant of lower-case letters, digits and a dash: a valid id.
        let audit_id = KeyId::new("audit-0001").expect("a valid key id");
        let wrapped = wrap_key(&master, &rng, &audit_id, &audit_seed, AUDIT_AAD)?;
        durable::write_atomically(&dir.join(AUDIT_KEY_FILE), &wrapped, FileMode::Private)?;
        Ok(InitReport { dir: dir.to_path_buf(), token_key })
    }

    /// Opens an initialised keys directory.
    pub fn open(dir: &Path, data_dir: Option<&Path>) -> Result<KeyStore, KeyError> {
        if let Some(data_dir) = data_dir {
            ensure_apart(dir, data_dir)?;
        }
        let master_path = dir.join(MASTER_FILE);
        let metadata = match fs::metadata(&master_path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(KeyError::NotInitialised(dir.to_path_buf()));
            }
            Err(e) => return Err(KeyError::io("stat", &master_path, e)),
        };
        if metadata.permissions().mode() & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions(master_path));
        }
        let bytes = fs::read(&master_path).map_err(|e| KeyError::io("read", &master_path, e))?;
        let master = SecretKey::from_slice(&bytes).ok_or(KeyError::Corrupt(master_path))?;
        let mut store = KeyStore {
            dir: dir.to_path_buf(),
            master,
            token_keys: Vec::new(),
            day_keys: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        };
        store.token_keys = store.load_token_keys()?;
        if store.token_keys.is_empty() {
            return Err(KeyError::NoTokenKey(dir.to_path_buf()));
        }
        Ok(store)
    }

    /// Opens the keys directory, creating it first if it does not exist yet.
    /// Used by the demo, which runs on an embedded default.
    pub fn open_or_init(dir: &Path, data_dir: Option<&Path>) -> Result<KeyStore, KeyError> {
        if !dir.join(MASTER_FILE).exists() {
            KeyStore::init(dir, data_dir)?;
        }
        KeyStore::open(dir, data_dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

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
    pub fn rotate_token_key(&mut self) -> Result<KeyId, KeyError> {
        let next = self.token_keys.len() as u32 + 1;
        let id = write_token_key(&self.dir, &self.master, &self.rng, next)?;
        self.token_keys = self.load_token_keys()?;
        Ok(id)
    }

    /// The data key of `date`, created (durably, before it is ever used) if
    /// the day has none yet.
    pub fn day_key(&self, date: PartitionDate) -> Result<Arc<DayKey>, KeyError> {
        let mut cache = self.day_keys.lock().unwrap_or_else(|p| p.into_inner());
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

    /// The data key of `date` if the day has one; never creates a key.
    pub fn existing_day_key(&self, date: PartitionDate) -> Result<Option<Arc<DayKey>>, KeyError> {
        let mut cache = self.day_keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = cache.get(&date) {
            return Ok(Some(Arc::clone(key)));
        }
        let Some(key) = self.read_day_key(date)? else { return Ok(None) };
        let key = Arc::new(key);
        cache.insert(date, Arc::clone(&key));
        Ok(Some(key))
    }

    /// The days that have a data key, sorted.
    pub fn days_with_keys(&self) -> Result<Vec<PartitionDate>, KeyError> {
        self.days_with_suffix(".key")
    }

    /// The seed of the Ed25519 key that signs the audit trail. It lives with
    /// the keys, apart from the trail it protects.
    pub fn audit_signing_seed(&self) -> Result<SecretKey, KeyError> {
        let path = self.dir.join(AUDIT_KEY_FILE);
        let bytes = fs::read(&path).map_err(|e| KeyError::io("read", &path, e))?;
        let (_, secret) = unwrap_key(&self.master, &bytes, AUDIT_AAD).ok_or(KeyError::Corrupt(path))?;
        Ok(secret)
    }

    /// Where the signed head of the audit trail is kept: with the keys, so
    /// that truncating the trail alone is detected.
    pub fn audit_head_path(&self) -> PathBuf {
        self.dir.join(AUDIT_HEAD_FILE)
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
        let (id, secret) =
            unwrap_key(&self.master, &bytes, &day_aad(date)).ok_or_else(|| KeyError::Corrupt(path.clone()))?;
        Ok(Some(DayKey { id, date, secret }))
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
        durable::remove_file(&self.day_key_path(date))?;
        Ok(id)
    }

    /// Creates the key of one record of the registry (a preservation order,
    /// a warrant): it seals that record's targets (and an order's copies),
    /// so destroying it when the record ends destroys them at once.
    pub fn create_record_key(&self, scope: RecordKeyScope, record: &str) -> Result<(KeyId, SecretKey), KeyError> {
        let path = self.record_key_path(scope, record);
        let id = KeyId::new(format!("{}-{record}", scope.prefix())).ok_or_else(|| KeyError::Corrupt(path.clone()))?;
        let secret = SecretKey::random(&self.rng)?;
        let wrapped = wrap_key(&self.master, &self.rng, &id, &secret, scope.aad())?;
        create_private_dir(&self.dir.join(scope.dir()))?;
        durable::write_atomically(&path, &wrapped, FileMode::Private)?;
        Ok((id, secret))
    }

    /// The key of a registry record, if it still exists.
    pub fn record_key(&self, scope: RecordKeyScope, record: &str) -> Result<Option<(KeyId, SecretKey)>, KeyError> {
        let path = self.record_key_path(scope, record);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(KeyError::io("read", &path, e)),
        };
        unwrap_key(&self.master, &bytes, scope.aad()).map(Some).ok_or(KeyError::Corrupt(path))
    }

    /// Destroys the key of a registry record. Idempotent.
    pub fn destroy_record_key(&self, scope: RecordKeyScope, record: &str) -> Result<(), KeyError> {
        durable::remove_file(&self.record_key_path(scope, record))?;
        Ok(())
    }

    /// The key of a preservation order (see [`Self::create_record_key`]).
    pub fn create_order_key(&self, order: &str) -> Result<(KeyId, SecretKey), KeyError> {
        self.create_record_key(RecordKeyScope::Order, order)
    }

    pub fn order_key(&self, order: &str) -> Result<Option<(KeyId, SecretKey)>, KeyError> {
        self.record_key(RecordKeyScope::Order, order)
    }

    pub fn destroy_order_key(&self, order: &str) -> Result<(), KeyError> {
        self.destroy_record_key(RecordKeyScope::Order, order)
    }

    fn record_key_path(&self, scope: RecordKeyScope, record: &str) -> PathBuf {
        self.dir.join(scope.dir()).join(format!("{record}.key"))
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
        let wrapped = wrap_key(&self.master, &self.rng, &id, &secret, &day_aad(date))?;
        durable::write_atomically(&self.day_key_path(date), &wrapped, FileMode::Private)?;
        Ok(DayKey { id, date, secret })
    }

    fn load_token_keys(&self) -> Result<Vec<TokenKey>, KeyError> {
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

const TOKEN_AAD: &[u8] = b"token";
const AUDIT_AAD: &[u8] = b"audit-signing";
const ORDER_AAD: &[u8] = b"order";
const WARRANT_AAD: &[u8] = b"warrant";
const RESULT_AAD: &[u8] = b"result";

fn day_aad(date: PartitionDate) -> Vec<u8> {
    format!("day {date}").into_bytes()
}

fn write_token_key(dir: &Path, master: &SecretKey, rng: &SystemRandom, number: u32) -> Result<KeyId, KeyError> {
    let id = KeyId::new(format!("tk-{number:04}")).expect("tk- and digits form a valid key id");
    let secret = SecretKey::random(rng)?;
    let wrapped = wrap_key(master, rng, &id, &secret, TOKEN_AAD)?;
    let path = dir.join(TOKEN_DIR).join(format!("{id}.key"));
    if path.exists() {
        return Err(KeyError::AlreadyInitialised(path));
    }
    durable::write_atomically(&path, &wrapped, FileMode::Private)?;
    Ok(id)
}

/// `magic | id length | id | nonce | AES-256-GCM(secret)`; the additional data
/// is `magic | role | id`.
fn wrap_key(
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

fn unwrap_key(master: &SecretKey, bytes: &[u8], role: &[u8]) -> Option<(KeyId, SecretKey)> {
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
pub(crate) fn seal_value(
    key: &SecretKey,
    rng: &SystemRandom,
    context: &[u8],
    value: &str,
) -> Result<Vec<u8>, KeyError> {
    seal_bytes(key, rng, context, value.as_bytes().to_vec())
}

/// Opens a value sealed by [`seal_value`]; `None` if the key or context is
/// wrong or the bytes were changed.
pub(crate) fn open_value(key: &SecretKey, context: &[u8], sealed: &[u8]) -> Option<String> {
    String::from_utf8(open_bytes(key, context, sealed)?).ok()
}

/// Seals bytes with AES-256-GCM under `key`, bound to `context`: nonce
/// followed by ciphertext and tag.
pub(crate) fn seal_bytes(
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
pub(crate) fn open_bytes(key: &SecretKey, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
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

fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        durable::create_dir_all(parent)?;
    }
    fs::DirBuilder::new().mode(0o700).create(dir).map_err(|e| KeyError::io("mkdir", dir, e))?;
    durable::fsync_dir(dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    Ok(())
}

/// Refuses a keys directory inside (or equal to) the data directory.
pub fn ensure_apart(keys_dir: &Path, data_dir: &Path) -> Result<(), KeyError> {
    let keys = resolved(keys_dir);
    let data = resolved(data_dir);
    if keys.starts_with(&data) {
        return Err(KeyError::InsideDataDir { keys: keys_dir.to_path_buf(), data: data_dir.to_path_buf() });
    }
    Ok(())
}

/// The absolute path with symlinks of its existing part resolved, so that
/// `data/../data/keys` or a symlink cannot disguise where keys would live.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            let mut result = canonical;
            for part in rest.iter().rev() {
                result.push(part);
            }
            return result;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_open_round_trips_keys() {
        let root = tempfile::tempdir().unwrap();
        let keys = root.path().join("keys");
        let report = KeyStore::init(&keys, Some(&root.path().join("data"))).unwrap();
        assert_eq!(report.token_key.as_str(), "tk-0001");
        let mode = fs::metadata(keys.join(MASTER_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let store = KeyStore::open(&keys, None).unwrap();
        let date = PartitionDate::parse("2026-11-24").unwrap();
        let created = store.day_key(date).unwrap();
        assert!(created.id.as_str().starts_with("day-2026-11-24-"));

        let reopened = KeyStore::open(&keys, None).unwrap();
        let read = reopened.existing_day_key(date).unwrap().unwrap();
        assert_eq!(read.id, created.id);
        assert_eq!(read.secret.expose(), created.secret.expose());
        assert_eq!(reopened.active_token_key().secret.expose(), store.active_token_key().secret.expose());
        assert_eq!(reopened.days_with_keys().unwrap(), vec![date]);
    }

    #[test]
    fn init_refuses_the_data_directory_and_reinitialisation() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let inside = data.join("keys");
        assert!(matches!(KeyStore::init(&inside, Some(&data)), Err(KeyError::InsideDataDir { .. })));
        let sneaky = data.join("../data/keys");
        assert!(matches!(KeyStore::init(&sneaky, Some(&data)), Err(KeyError::InsideDataDir { .. })));
        let keys = root.path().join("keys");
        KeyStore::init(&keys, Some(&data)).unwrap();
        assert!(matches!(KeyStore::init(&keys, Some(&data)), Err(KeyError::AlreadyInitialised(_))));
    }

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

    #[test]
    fn master_key_with_loose_permissions_is_refused() {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(root.path(), None).unwrap();
        fs::set_permissions(root.path().join(MASTER_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(KeyStore::open(root.path(), None), Err(KeyError::InsecurePermissions(_))));
    }

    #[test]
    fn debug_prints_no_key_material() {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(root.path(), None).unwrap();
        let store = KeyStore::open(root.path(), None).unwrap();
        let key = store.active_token_key();
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&format!("{:?}", key.secret.expose())));
    }
}
