//! PKCS#11 custody: the KEKs are AES-256 keys that a token (an HSM) generates
//! and keeps; this module only asks the token to encrypt and decrypt with
//! them.
//!
//! Objects on the token, found by their `CKA_LABEL`:
//!
//! ```text
//! {prefix}root              the root KEK, created once by `create_root`
//! {prefix}day-YYYY-MM-DD    the KEK of one day, created on its first use
//! ```
//!
//! Every KEK is generated inside the token (`CKM_AES_KEY_GEN`, 32 bytes) as
//! a private, sensitive, non-extractable token object that may encrypt and
//! decrypt but neither wrap nor unwrap, so its value can never be read out.
//! Sealed bytes are `iv (12) | ciphertext | tag (16)`: AES-256-GCM
//! (`CKM_AES_GCM`) with a fresh IV from the system random generator and
//! the caller's additional data.
//!
//! Invariants:
//!
//! - No key material, PIN or plaintext ever appears in an error, a log line
//!   or a `Debug` output. The PIN comes from a private file or an
//!   environment variable, never the command line, and lives in a [`Pin`]
//!   that is zeroised on drop.
//! - A module is loaded and initialised once per process (a second
//!   `C_Initialize` fails) and never finalised: `C_Finalize` would end the
//!   sessions of every custody in the process.
//! - A session is used by one thread at a time (PKCS#11 forbids concurrent
//!   use of a session): each custody keeps its one session in a mutex.
//! - Two processes that create the same day's KEK at once may each create
//!   one object under the same label; decryption tries every object that
//!   carries the label, and destroying a day destroys all of them.
//!
//! What SoftHSM2 (2.6.1) taught us:
//!
//! - It reads its token directory in `C_Initialize` only. A token created
//!   afterwards by `softhsm2-util` in another process stays invisible to
//!   this process until it restarts, however often the slots are listed.
//!   [`Pkcs11Custody::open`] lists the slots afresh each time anyway, for
//!   modules that do see tokens arrive, and says so when a token is missing.
//! - Single-part `C_Encrypt`/`C_Decrypt` with `CKM_AES_GCM` work, including
//!   the length query with a null output buffer that cryptoki makes first
//!   (for decryption it answers the ciphertext length, an upper bound; the
//!   second call reports the real length).
//! - A GCM tag that does not verify, and a ciphertext shorter than the tag,
//!   fail `C_Decrypt` with `CKR_GENERAL_ERROR`, not with
//!   `CKR_ENCRYPTED_DATA_INVALID` as the standard suggests. Both (and
//!   `CKR_ENCRYPTED_DATA_LEN_RANGE`) therefore mean "does not open" when
//!   `C_Decrypt` returns them after `C_DecryptInit` accepted the key and
//!   the parameters; the failed call ends the operation, so the session is
//!   ready for the next one.
//! - Login state belongs to the application and the token, not to a
//!   session: a second `C_Login` as user, from any session, answers
//!   `CKR_USER_ALREADY_LOGGED_IN`, and the login lasts while any session
//!   with the token stays open.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::Ulong;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::{Custody, Kek};
use crate::keys::{KEY_LEN, KeyError};
use crate::model::PartitionDate;

/// Length of the GCM IV at the front of sealed bytes.
const IV_LEN: usize = 12;
/// Length of the GCM tag at the end of sealed bytes.
const TAG_LEN: usize = 16;
mod config;
#[cfg(test)]
mod tests;

use config::TokenSelector;
pub use config::{Pin, Pkcs11Config};

/// The PKCS#11 contexts of this process, one per module (keyed by its
/// resolved path). A module may be initialised only once per process, and
/// several custodies (several keystores, or tests) may use one module.
/// Contexts are never finalised: that would close every session of every
/// custody; the operating system reclaims them at exit. `Pkcs11` is itself
/// a shared handle (an `Arc` inside), so the map holds it directly.
static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// The context of `module`, loaded and initialised on first use.
fn context(module: &Path) -> Result<Pkcs11, KeyError> {
    let resolved = fs::canonicalize(module)
        .map_err(|e| KeyError::Hsm(format!("cannot find the PKCS#11 module {}: {e}", module.display())))?;
    // Entries are inserted only once initialised, so a map whose lock was
    // poisoned by a panic elsewhere is still consistent.
    let mut contexts = CONTEXTS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(context) = contexts.get(&resolved) {
        return Ok(context.clone());
    }
    let context = Pkcs11::new(&resolved)
        .map_err(|e| KeyError::Hsm(format!("cannot load the PKCS#11 module {}: {e}", resolved.display())))?;
    // OS locking: the module protects its own state with the platform's
    // mutexes, so different sessions may be used from different threads.
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        // Another library in this process initialised the module first:
        // the module is usable, and the state is shared by the process.
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(hsm_error(&format!("cannot initialise the PKCS#11 module {}", resolved.display()), e)),
    }
    contexts.insert(resolved, context.clone());
    Ok(context)
}

/// A PKCS#11 failure as a [`KeyError`], short and free of secrets: the
/// function and its return value, e.g. `C_Login returned PinIncorrect`.
fn hsm_error(what: &str, error: CkError) -> KeyError {
    match error {
        CkError::Pkcs11(rv, function) => KeyError::Hsm(format!("{what}: C_{function:?} returned {rv:?}")),
        other => KeyError::Hsm(format!("{what}: {other}")),
    }
}

/// The hint of a "no token" error.
const NOT_LISTED: &str = " (some modules, SoftHSM2 among them, list only the tokens that existed when the process \
                          loaded them: a token created since appears after a restart)";

/// Finds the selected token's slot, listing the slots afresh.
fn find_slot(context: &Pkcs11, selector: &TokenSelector<'_>) -> Result<Slot, KeyError> {
    let slots = context.get_slots_with_token().map_err(|e| hsm_error("cannot list the slots", e))?;
    match selector {
        TokenSelector::Slot(id) => slots
            .into_iter()
            .find(|slot| slot.id() == *id)
            .ok_or_else(|| KeyError::Hsm(format!("no token in slot {id}{NOT_LISTED}"))),
        TokenSelector::Label(label) => {
            let mut found = Vec::new();
            for slot in slots {
                let info = context
                    .get_token_info(slot)
                    .map_err(|e| hsm_error(&format!("cannot read the token in slot {slot}"), e))?;
                if info.label() == *label {
                    found.push(slot);
                }
            }
            match found[..] {
                [slot] => Ok(slot),
                [] => Err(KeyError::Hsm(format!("no token labelled {label:?}{NOT_LISTED}"))),
                _ => Err(KeyError::Hsm(format!("{} tokens are labelled {label:?}: select one by slot", found.len()))),
            }
        }
    }
}

/// A token's KEKs: the root and one per day, generated and kept inside the
/// token. One logged-in session, used by one thread at a time.
pub struct Pkcs11Custody {
    module: PathBuf,
    slot: Slot,
    label_prefix: String,
    session: Mutex<Held>,
    rng: SystemRandom,
}

/// The session, and the handles of this installation's key objects as last
/// listed through it. Finding objects walks every object of the token
/// (SoftHSM2 reads each), so a day's key is found in the listing rather
/// than searched for each time: opening a year of day keys lists once.
struct Held {
    session: Session,
    /// Label to handles; refreshed when a label is missing or a handle
    /// fails (another process created or destroyed an object).
    handles: HashMap<String, Vec<ObjectHandle>>,
}

impl Held {
    /// Lists every AES key of the token whose label starts with `prefix`.
    fn refresh(&mut self, prefix: &str) -> Result<(), KeyError> {
        let template =
            [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES), Attribute::Token(true)];
        let keys = self.session.find_objects(&template).map_err(|e| hsm_error("cannot list the keys", e))?;
        self.handles.clear();
        for key in keys {
            let attributes = self
                .session
                .get_attributes(key, &[AttributeType::Label])
                .map_err(|e| hsm_error("cannot read a key's label", e))?;
            for attribute in attributes {
                if let Attribute::Label(label) = attribute
                    && let Ok(label) = String::from_utf8(label)
                    && label.starts_with(prefix)
                {
                    self.handles.entry(label).or_default().push(key);
                }
            }
        }
        Ok(())
    }

    /// The handles of `label`, listing afresh if it is not known; and
    /// whether this call listed.
    fn keys(&mut self, prefix: &str, label: &str) -> Result<(Vec<ObjectHandle>, bool), KeyError> {
        let listed = !self.handles.contains_key(label);
        if listed {
            self.refresh(prefix)?;
        }
        Ok((self.handles.get(label).cloned().unwrap_or_default(), listed))
    }

    /// The object that encrypts under `kek` (labelled `label`): the first
    /// listed, or for a day that has none a new one. A missing root is an
    /// error: it is never created past `keys init`.
    fn kek(&mut self, prefix: &str, kek: Kek, label: &str) -> Result<ObjectHandle, KeyError> {
        match (kek, self.keys(prefix, label)?.0.first()) {
            (_, Some(&key)) => Ok(key),
            (Kek::Day(_), None) => {
                let key = generate_key(&self.session, label)?;
                self.handles.insert(label.to_string(), vec![key]);
                Ok(key)
            }
            (Kek::Root, None) => Err(KeyError::Hsm(format!("the token holds no root key labelled {label:?}"))),
        }
    }
}

impl fmt::Debug for Pkcs11Custody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Custody")
            .field("module", &self.module)
            .field("slot", &self.slot.id())
            .field("label_prefix", &self.label_prefix)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Custody {
    /// Loads the module (once per process), finds the token, opens a
    /// read-write session and logs in as the user.
    pub fn open(config: &Pkcs11Config) -> Result<Pkcs11Custody, KeyError> {
        config.validate()?;
        let selector = config.token_selector()?;
        let pin = config.pin()?;
        let context = context(&config.module)?;
        let slot = find_slot(&context, &selector)?;
        let session = context
            .open_rw_session(slot)
            .map_err(|e| hsm_error(&format!("cannot open a session with {selector}"), e))?;
        match session.login(UserType::User, Some(&pin.auth_pin())) {
            Ok(()) => {}
            // Login state belongs to the application, not the session:
            // another custody of this process logged in already. The token
            // then checks no PIN at all (SoftHSM2 does not): the PIN guards
            // the process, and every custody of a process shares its login.
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(hsm_error(&format!("cannot log in to {selector}"), e)),
        }
        Ok(Pkcs11Custody {
            module: config.module.clone(),
            slot,
            label_prefix: config.label_prefix.clone(),
            session: Mutex::new(Held { session, handles: HashMap::new() }),
            rng: SystemRandom::new(),
        })
    }

    /// Creates the root KEK on the token. Refuses a token that holds one.
    pub fn create_root(&self) -> Result<(), KeyError> {
        let label = self.label(Kek::Root);
        let mut held = self.session();
        if !find_keys(&held.session, &label)?.is_empty() {
            return Err(KeyError::Hsm(format!("the token already holds a root key labelled {label:?}")));
        }
        let key = generate_key(&held.session, &label)?;
        held.handles.insert(label, vec![key]);
        Ok(())
    }

    /// Whether the token holds the root KEK.
    pub fn has_root(&self) -> Result<bool, KeyError> {
        let label = self.label(Kek::Root);
        Ok(!find_keys(&self.session().session, &label)?.is_empty())
    }

    fn label(&self, kek: Kek) -> String {
        match kek {
            Kek::Root => format!("{}root", self.label_prefix),
            Kek::Day(date) => format!("{}{date}", self.day_prefix()),
        }
    }

    fn day_prefix(&self) -> String {
        format!("{}day-", self.label_prefix)
    }

    /// The session, for one thread at a time. Every operation on it either
    /// completes or is ended by the token before the lock is released (the
    /// find iterator finalises on drop, single-part operations end with
    /// their call), so a panic elsewhere cannot leave it mid-operation and
    /// a poisoned lock is safe to take over.
    fn session(&self) -> MutexGuard<'_, Held> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Custody for Pkcs11Custody {
    fn name(&self) -> &'static str {
        "pkcs11"
    }

    fn encrypt(&self, kek: Kek, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        let label = self.label(kek);
        let mut held = self.session();
        // Finding and creating under one lock: this custody never creates
        // two objects for a day. Other processes may; see the module doc.
        let key = held.kek(&self.label_prefix, kek, &label)?;
        match seal(&held.session, &self.rng, key, aad, plain) {
            Ok(sealed) => Ok(sealed),
            // A handle gone stale (another process destroyed the object):
            // list again once.
            Err(_) => {
                held.refresh(&self.label_prefix)?;
                let key = held.kek(&self.label_prefix, kek, &label)?;
                seal(&held.session, &self.rng, key, aad, plain)
            }
        }
    }

    fn decrypt(&self, kek: Kek, aad: &[u8], sealed: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
        if sealed.len() < IV_LEN + TAG_LEN {
            return Ok(None);
        }
        let label = self.label(kek);
        let mut held = self.session();
        let (keys, listed) = held.keys(&self.label_prefix, &label)?;
        for key in keys {
            // A failure here may be a handle gone stale: listed again below.
            if let Ok(Some(plain)) = open(&held.session, key, aad, sealed) {
                return Ok(Some(plain));
            }
        }
        if listed {
            return Ok(None);
        }
        // Another process may have made an object for the day (a race) or
        // destroyed one since the listing: list again, once.
        held.refresh(&self.label_prefix)?;
        for key in held.handles.get(&label).cloned().unwrap_or_default() {
            if let Some(plain) = open(&held.session, key, aad, sealed)? {
                return Ok(Some(plain));
            }
        }
        Ok(None)
    }

    fn destroy_day(&self, date: PartitionDate) -> Result<usize, KeyError> {
        let label = self.label(Kek::Day(date));
        let mut held = self.session();
        held.handles.remove(&label);
        let keys = find_keys(&held.session, &label)?;
        for &key in &keys {
            held.session.destroy_object(key).map_err(|e| hsm_error(&format!("cannot destroy the key {label:?}"), e))?;
        }
        Ok(keys.len())
    }

    fn days_with_keks(&self) -> Result<Option<Vec<PartitionDate>>, KeyError> {
        // Listed afresh through the module: evidence, not this process's memory.
        let mut held = self.session();
        held.refresh(&self.label_prefix)?;
        let prefix = self.day_prefix();
        let mut days: Vec<PartitionDate> =
            held.handles.keys().filter_map(|label| day_of_label(label.as_bytes(), &prefix)).collect();
        days.sort_unstable();
        Ok(Some(days))
    }
}

/// The day of a label `{prefix}day-YYYY-MM-DD`; `None` for any other label.
fn day_of_label(label: &[u8], day_prefix: &str) -> Option<PartitionDate> {
    let text = std::str::from_utf8(label).ok()?.strip_prefix(day_prefix)?;
    // Only the canonical form: the labels this module writes.
    PartitionDate::parse(text).filter(|date| date.to_string() == text)
}

/// The AES keys on the token that carry `label`.
fn find_keys(session: &Session, label: &str) -> Result<Vec<ObjectHandle>, KeyError> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    session.find_objects(&template).map_err(|e| hsm_error(&format!("cannot search for the key {label:?}"), e))
}

/// Generates an AES-256 KEK inside the token. It can encrypt and decrypt,
/// and nothing else: its value can never be read or wrapped out.
fn generate_key(session: &Session, label: &str) -> Result<ObjectHandle, KeyError> {
    let value_len = Ulong::try_from(KEY_LEN).map_err(|e| hsm_error("cannot state the key length", e))?;
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(value_len),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(|e| hsm_error(&format!("cannot generate the key {label:?}"), e))
}

/// AES-256-GCM under `key`: `iv | ciphertext | tag`. The IV comes from the
/// system's generator, not the token's: a 96-bit random IV per message.
fn seal(
    session: &Session,
    rng: &SystemRandom,
    key: ObjectHandle,
    aad: &[u8],
    plain: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let mut iv = [0u8; IV_LEN];
    rng.fill(&mut iv).map_err(|_| KeyError::Random)?;
    let mut out = Vec::with_capacity(IV_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(&iv);
    // cryptoki takes the IV mutably (CK_GCM_PARAMS holds a mutable
    // pointer); the token only reads it for CKM_AES_GCM.
    let params = gcm_params(&mut iv, aad)?;
    let sealed = session
        .encrypt(&Mechanism::AesGcm(params), key, plain)
        .map_err(|e| hsm_error("cannot encrypt under the KEK", e))?;
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// GCM with a 12-byte IV and a 128-bit tag. Fails only if the additional
/// data is longer than a `CK_ULONG` can count.
fn gcm_params<'a>(iv: &'a mut [u8; IV_LEN], aad: &'a [u8]) -> Result<GcmParams<'a>, KeyError> {
    let tag_bits = Ulong::try_from(TAG_LEN * 8).map_err(|e| hsm_error("cannot build the GCM parameters", e))?;
    GcmParams::new(iv, aad, tag_bits).map_err(|e| hsm_error("cannot build the GCM parameters", e))
}

/// Opens what [`seal`] returned; `None` if it does not authenticate under
/// `key` (another key, other additional data, changed bytes).
fn open(
    session: &Session,
    key: ObjectHandle,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
    let Some((iv, body)) = sealed.split_first_chunk::<IV_LEN>() else {
        return Ok(None);
    };
    let mut iv = *iv;
    let params = gcm_params(&mut iv, aad)?;
    match session.decrypt(&Mechanism::AesGcm(params), key, body) {
        Ok(plain) => Ok(Some(Zeroizing::new(plain))),
        // A tag that does not verify. SoftHSM2 answers CKR_GENERAL_ERROR
        // for it (see the module doc); only C_Decrypt's answers count, after
        // C_DecryptInit accepted the key and the parameters.
        Err(CkError::Pkcs11(
            RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange | RvError::GeneralError,
            Function::Decrypt,
        )) => Ok(None),
        Err(e) => Err(hsm_error("cannot decrypt under the KEK", e)),
    }
}
