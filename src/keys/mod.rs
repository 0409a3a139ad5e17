//! The keystore: the custody of the key-encryption keys, the per-day data
//! keys and the token keys derived from them, and the keys of registry
//! records.
//!
//! Layout of the keys directory (never inside the data directory):
//!
//! ```text
//! custody               `file` or `pkcs11`: the custody the directory was made for
//! master.key            file custody only: 32 random bytes, mode 0600, every KEK
//! day/2026-11-24.key    the data key of one day, wrapped under the day's KEK
//! day/2026-11-24.destroyed  the tombstone of a destroyed day
//! order/ warrant/ result/   the keys of registry records, wrapped under the root
//! audit-signing.key     the audit trail's signing seed, wrapped under the root
//! retention.clock       when retention last swept (RFC 3339): the reference of its clock check
//! ```
//!
//! Wrapping is AES-256-GCM under a key-encryption key of the [`custody`]
//! (the master key, or an HSM object); the additional data binds each
//! wrapped key to its kind, id and day, so a wrapped key file cannot be
//! renamed into another role. A day's token key is derived from its data
//! key ([`token`]), so destroying the day destroys both. Key material lives
//! in [`SecretKey`], which is zeroised on drop and never printed.
//!
//! This module must never write key material in clear anywhere but
//! `master.key`, and never inside the data directory. Destroying a day key
//! (retention) removes its wrapped copy and, in HSM custody, the day's KEK,
//! after which that day's sealed and token columns cannot be opened or
//! reproduced by anyone (see `docs/threat-model.md` for file custody's
//! limit).

pub mod custody;
mod day;
mod record;
mod secret;
mod token;

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use serde::Deserialize;

pub use day::DayKey;
pub use record::{RECORD_ID_RANDOM_BYTES, RecordKey, RecordKeyFile, RecordKeyScope, new_record_id};
pub use secret::{KEY_LEN, SecretKey, open_bytes, open_value, seal_bytes, seal_value};
pub use token::{TokenKey, day_of_token_key, token_key_id};

use custody::{Custody, FileCustody, Kek, Pkcs11Config, Pkcs11Custody};

use crate::model::{KeyId, PartitionDate};
use crate::ops::durable::{self, DurableError, FileMode};

const MASTER_FILE: &str = "master.key";
const CUSTODY_FILE: &str = "custody";
const AUDIT_KEY_FILE: &str = "audit-signing.key";
const AUDIT_HEAD_PREFIX: &str = "audit-";
const AUDIT_HEAD_SUFFIX: &str = ".head";
const RETENTION_CLOCK_FILE: &str = "retention.clock";
const AUDIT_AAD: &[u8] = b"audit-signing";

/// The `[keys]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// The keys directory, created by `cdrvault keys init`. Must not be
    /// inside the data directory.
    pub dir: PathBuf,
    /// Who holds the key-encryption keys.
    pub custody: CustodyKind,
    /// The HSM, for `custody = "pkcs11"`.
    pub pkcs11: Option<Pkcs11Config>,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig { dir: PathBuf::from("cdrvault-keys"), custody: CustodyKind::File, pkcs11: None }
    }
}

impl KeysConfig {
    /// File custody of `dir`.
    pub fn file(dir: &Path) -> KeysConfig {
        KeysConfig { dir: dir.to_path_buf(), ..KeysConfig::default() }
    }
}

/// `[keys] custody`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CustodyKind {
    /// `master.key` in the keys directory holds every KEK.
    File,
    /// A PKCS#11 token holds the KEKs as non-extractable objects.
    Pkcs11,
}

impl CustodyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CustodyKind::File => "file",
            CustodyKind::Pkcs11 => "pkcs11",
        }
    }
}

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
    #[error("keys directory {dir} was made for {made_for} custody, not {configured}")]
    WrongCustody { dir: PathBuf, made_for: String, configured: &'static str },
    #[error("[keys] custody = \"pkcs11\" needs a [keys.pkcs11] section")]
    NoPkcs11Config,
    #[error("day {0} was destroyed by retention and cannot be re-created")]
    DayDestroyed(PartitionDate),
    #[error("key file {0} exists already: a record's key is created once and never replaced")]
    RecordKeyExists(PathBuf),
    #[error("the system random generator failed")]
    Random,
    #[error("HSM: {0}")]
    Hsm(String),
    #[error(transparent)]
    Durable(#[from] DurableError),
}

impl KeyError {
    /// True when the process must stop: an fsync failed.
    pub fn is_fatal(&self) -> bool {
        matches!(self, KeyError::Durable(e) if e.is_fatal())
    }

    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        KeyError::Durable(DurableError::io(op, path, source))
    }
}

/// What `keys init` created.
#[derive(Debug)]
pub struct InitReport {
    pub dir: PathBuf,
    pub custody: &'static str,
}

/// The keystore of one keys directory.
pub struct KeyStore {
    dir: PathBuf,
    custody: Box<dyn Custody>,
    /// Day keys already unwrapped or created by this process. The mutex also
    /// serialises creation, so two writers never create two keys for a day.
    day_keys: day::DayKeyCache,
    /// Told of every day whose keys this process creates.
    on_created: std::sync::OnceLock<KeysCreatedHook>,
    rng: SystemRandom,
}

/// Called with each day key this process creates (after it is durable, and
/// only by the process that won a race to create it), so the creation is
/// audited and counted. It must not call back into the keystore.
pub type KeysCreatedHook = Box<dyn Fn(&DayKey) + Send + Sync>;

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore").field("dir", &self.dir).field("custody", &self.custody).finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Creates a new keys directory in file custody. Refuses a directory
    /// inside `data_dir` and one that already has keys.
    pub fn init(dir: &Path, data_dir: Option<&Path>) -> Result<InitReport, KeyError> {
        KeyStore::init_with(&KeysConfig::file(dir), data_dir)
    }

    /// Creates a new keys directory in the configured custody: in file
    /// custody a master key, in PKCS#11 custody a root key inside the token
    /// (refused if the token already holds one under the label prefix).
    /// Then the audit signing seed, wrapped under the root.
    pub fn init_with(config: &KeysConfig, data_dir: Option<&Path>) -> Result<InitReport, KeyError> {
        let dir = config.dir.as_path();
        if let Some(data_dir) = data_dir {
            ensure_apart(dir, data_dir)?;
        }
        if dir.join(MASTER_FILE).exists() || dir.join(CUSTODY_FILE).exists() {
            return Err(KeyError::AlreadyInitialised(dir.to_path_buf()));
        }
        create_private_dir(dir)?;
        create_private_dir(&dir.join(day::DAY_DIR))?;
        create_private_dir(&dir.join(RecordKeyScope::Order.dir()))?;
        let rng = SystemRandom::new();
        let custody: Box<dyn Custody> = match config.custody {
            CustodyKind::File => {
                let master = SecretKey::random(&rng)?;
                durable::write_atomically(&dir.join(MASTER_FILE), master.expose(), FileMode::Private)?;
                Box::new(FileCustody::new(master))
            }
            CustodyKind::Pkcs11 => {
                let hsm = Pkcs11Custody::open(config.pkcs11.as_ref().ok_or(KeyError::NoPkcs11Config)?)?;
                hsm.create_root()?;
                Box::new(hsm)
            }
        };
        let audit_seed = SecretKey::random(&rng)?;
        // A constant of lower-case letters, digits and a dash: a valid id.
        let audit_id = KeyId::new("audit-0001").expect("a valid key id");
        let wrapped = secret::wrap_key(custody.as_ref(), Kek::Root, &audit_id, &audit_seed, AUDIT_AAD)?;
        durable::write_atomically(&dir.join(AUDIT_KEY_FILE), &wrapped, FileMode::Private)?;
        let marker = format!("{}\n", config.custody.as_str());
        durable::write_atomically(&dir.join(CUSTODY_FILE), marker.as_bytes(), FileMode::Private)?;
        Ok(InitReport { dir: dir.to_path_buf(), custody: config.custody.as_str() })
    }

    /// Opens an initialised keys directory in file custody.
    pub fn open(dir: &Path, data_dir: Option<&Path>) -> Result<KeyStore, KeyError> {
        KeyStore::open_with(&KeysConfig::file(dir), data_dir)
    }

    /// Opens an initialised keys directory in the configured custody, which
    /// must be the one it was made for.
    pub fn open_with(config: &KeysConfig, data_dir: Option<&Path>) -> Result<KeyStore, KeyError> {
        let dir = config.dir.as_path();
        if let Some(data_dir) = data_dir {
            ensure_apart(dir, data_dir)?;
        }
        let marker_path = dir.join(CUSTODY_FILE);
        let made_for = match fs::read_to_string(&marker_path) {
            Ok(text) => text.trim().to_string(),
            // Directories made before the marker existed are file custody.
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir.join(MASTER_FILE).exists() => "file".to_string(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(KeyError::NotInitialised(dir.to_path_buf()));
            }
            Err(e) => return Err(KeyError::io("read", &marker_path, e)),
        };
        if made_for != config.custody.as_str() {
            return Err(KeyError::WrongCustody {
                dir: dir.to_path_buf(),
                made_for,
                configured: config.custody.as_str(),
            });
        }
        let custody: Box<dyn Custody> = match config.custody {
            CustodyKind::File => Box::new(FileCustody::new(read_master(dir)?)),
            CustodyKind::Pkcs11 => {
                let hsm = Pkcs11Custody::open(config.pkcs11.as_ref().ok_or(KeyError::NoPkcs11Config)?)?;
                if !hsm.has_root()? {
                    return Err(KeyError::NotInitialised(dir.to_path_buf()));
                }
                Box::new(hsm)
            }
        };
        Ok(KeyStore {
            dir: dir.to_path_buf(),
            custody,
            day_keys: Default::default(),
            on_created: std::sync::OnceLock::new(),
            rng: SystemRandom::new(),
        })
    }

    /// Opens the keys directory, creating it first if it does not exist yet.
    /// Used by the demo, which runs on an embedded default.
    pub fn open_or_init(dir: &Path, data_dir: Option<&Path>) -> Result<KeyStore, KeyError> {
        if !dir.join(MASTER_FILE).exists() {
            KeyStore::init(dir, data_dir)?;
        }
        KeyStore::open(dir, data_dir)
    }

    /// Sets the hook told of every day key (and so token key) this process
    /// creates; false if one was set already.
    pub fn on_day_keys_created(&self, hook: KeysCreatedHook) -> bool {
        self.on_created.set(hook).is_ok()
    }

    /// The custody of the key-encryption keys.
    pub fn custody(&self) -> &dyn Custody {
        self.custody.as_ref()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The seed of the Ed25519 key that signs the audit trail. It lives with
    /// the keys, apart from the trail it protects.
    pub fn audit_signing_seed(&self) -> Result<SecretKey, KeyError> {
        let path = self.dir.join(AUDIT_KEY_FILE);
        let bytes = fs::read(&path).map_err(|e| KeyError::io("read", &path, e))?;
        let (_, secret) =
            secret::unwrap_key(self.custody(), Kek::Root, &bytes, AUDIT_AAD)?.ok_or(KeyError::Corrupt(path))?;
        Ok(secret)
    }

    /// Where the signed head of the audit trail at `trail` is kept: with
    /// the keys, so that truncating the trail alone is detected. Instances
    /// sharing one keys directory each keep their own trail (in their own
    /// state directory), so each trail has its own head, named after the
    /// trail's directory (its resolved path, hashed: nothing in a state
    /// directory can rename it). A state directory moved elsewhere needs its
    /// head renamed with it, or its trail reads as damaged.
    pub fn audit_head_path(&self, trail: &Path) -> PathBuf {
        let dir = trail.parent().unwrap_or(Path::new("."));
        let place = durable::resolved(dir);
        let digest = ring::digest::digest(&ring::digest::SHA256, place.as_os_str().as_encoded_bytes());
        self.dir.join(format!("{AUDIT_HEAD_PREFIX}{}{AUDIT_HEAD_SUFFIX}", hex::encode(&digest.as_ref()[..8])))
    }

    /// Where retention records when it last swept: with the tombstones, so
    /// that the record of how far destruction went and the time it went
    /// there share one directory, one owner and one backup, and a data
    /// directory restored from an older copy cannot roll either back.
    pub fn retention_clock_path(&self) -> PathBuf {
        self.dir.join(RETENTION_CLOCK_FILE)
    }
}

/// The master key of a keys directory in file custody, refused if group or
/// others may read it.
fn read_master(dir: &Path) -> Result<SecretKey, KeyError> {
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
    SecretKey::from_slice(&bytes).ok_or(KeyError::Corrupt(master_path))
}

pub(super) fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    Ok(durable::create_private_dir(dir)?)
}

/// Refuses a keys directory inside (or equal to) the data directory.
pub fn ensure_apart(keys_dir: &Path, data_dir: &Path) -> Result<(), KeyError> {
    let keys = durable::resolved(keys_dir);
    let data = durable::resolved(data_dir);
    if keys.starts_with(&data) {
        return Err(KeyError::InsideDataDir { keys: keys_dir.to_path_buf(), data: data_dir.to_path_buf() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PartitionDate;

    #[test]
    fn init_then_open_round_trips_keys() {
        let root = tempfile::tempdir().unwrap();
        let keys = root.path().join("keys");
        let report = KeyStore::init(&keys, Some(&root.path().join("data"))).unwrap();
        assert_eq!(report.custody, "file");
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
        assert_eq!(read.token.secret.expose(), created.token.secret.expose());
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
        let key = store.day_key(PartitionDate::parse("2026-11-24").unwrap()).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&format!("{:?}", key.secret.expose())));
        assert!(!shown.contains(&format!("{:?}", key.token.secret.expose())));
    }
}
