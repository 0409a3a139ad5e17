//! The `[keys.pkcs11]` section: which token, which PIN, which labels.

use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cryptoki::types::AuthPin;
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use crate::keys::KeyError;

/// A PKCS#11 token label is at most 32 bytes.
const TOKEN_LABEL_MAX: usize = 32;

/// The `[keys.pkcs11]` config section: which token holds the KEKs and how
/// to log in to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The slot id of the token. Exactly one of `slot` and `token_label`.
    pub slot: Option<u64>,
    /// The label of the token. Exactly one of `slot` and `token_label`.
    pub token_label: Option<String>,
    /// A file holding the user PIN (a trailing newline is ignored); it must
    /// not be readable by group or others. Exactly one of `pin_file` and
    /// `pin_env`.
    pub pin_file: Option<PathBuf>,
    /// The name of the environment variable that holds the user PIN.
    /// Exactly one of `pin_file` and `pin_env`.
    pub pin_env: Option<String>,
    /// The prefix of the labels of this installation's key objects, so that
    /// several installations can share a token.
    #[serde(default = "default_label_prefix")]
    pub label_prefix: String,
}

pub(super) fn default_label_prefix() -> String {
    "cdrvault-".to_string()
}

/// Which token the configuration selects.
pub(super) enum TokenSelector<'a> {
    Slot(u64),
    Label(&'a str),
}

impl fmt::Display for TokenSelector<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSelector::Slot(id) => write!(f, "slot {id}"),
            TokenSelector::Label(label) => write!(f, "token {label:?}"),
        }
    }
}

/// Where the PIN comes from.
enum PinSource<'a> {
    File(&'a Path),
    Env(&'a str),
}

impl Pkcs11Config {
    /// Checks the fields that depend on each other: exactly one token
    /// selector, exactly one PIN source, a usable label prefix.
    pub fn validate(&self) -> Result<(), KeyError> {
        self.token_selector()?;
        self.pin_source()?;
        if self.label_prefix.is_empty() {
            return Err(config_error("keys.pkcs11.label_prefix must not be empty"));
        }
        Ok(())
    }

    /// Reads the user PIN from its file or environment variable.
    pub fn pin(&self) -> Result<Pin, KeyError> {
        match self.pin_source()? {
            PinSource::File(path) => read_pin_file(path),
            PinSource::Env(name) => read_pin_env(name),
        }
    }

    pub(super) fn token_selector(&self) -> Result<TokenSelector<'_>, KeyError> {
        match (self.slot, self.token_label.as_deref()) {
            (Some(id), None) => Ok(TokenSelector::Slot(id)),
            (None, Some(label)) if label.is_empty() || label.len() > TOKEN_LABEL_MAX => {
                Err(config_error("keys.pkcs11.token_label must have 1 to 32 bytes, as a PKCS#11 token label does"))
            }
            (None, Some(label)) => Ok(TokenSelector::Label(label)),
            _ => Err(config_error("set exactly one of keys.pkcs11.slot and keys.pkcs11.token_label")),
        }
    }

    fn pin_source(&self) -> Result<PinSource<'_>, KeyError> {
        match (self.pin_file.as_deref(), self.pin_env.as_deref()) {
            (Some(path), None) => Ok(PinSource::File(path)),
            (None, Some(name)) if !name.is_empty() => Ok(PinSource::Env(name)),
            _ => Err(config_error("set exactly one of keys.pkcs11.pin_file and keys.pkcs11.pin_env")),
        }
    }
}

fn config_error(message: &str) -> KeyError {
    KeyError::Hsm(message.to_string())
}

fn read_pin_file(path: &Path) -> Result<Pin, KeyError> {
    // The mode of the file that is read, not of whatever the path names
    // a moment earlier.
    let mut file = fs::File::open(path).map_err(|e| KeyError::io("open", path, e))?;
    let metadata = file.metadata().map_err(|e| KeyError::io("stat", path, e))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions(path.to_path_buf()));
    }
    // Room for the whole file up front, so that no reallocation leaves a
    // copy of the PIN behind in freed memory.
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0).saturating_add(1));
    if let Err(e) = file.read_to_end(&mut bytes) {
        bytes.zeroize();
        return Err(KeyError::io("read", path, e));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        e.into_bytes().zeroize();
        KeyError::Hsm(format!("the PIN in {} is not UTF-8", path.display()))
    })?;
    Pin::new(Zeroizing::new(text)).ok_or_else(|| KeyError::Hsm(format!("the PIN file {} is empty", path.display())))
}

fn read_pin_env(name: &str) -> Result<Pin, KeyError> {
    let value = match std::env::var(name) {
        Ok(value) => Zeroizing::new(value),
        Err(std::env::VarError::NotPresent) => {
            return Err(KeyError::Hsm(format!("the PIN variable {name} is not set")));
        }
        Err(std::env::VarError::NotUnicode(raw)) => {
            raw.into_vec().zeroize();
            return Err(KeyError::Hsm(format!("the PIN variable {name} is not UTF-8")));
        }
    };
    Pin::new(value).ok_or_else(|| KeyError::Hsm(format!("the PIN variable {name} is empty")))
}

/// The user PIN of a token. Zeroised on drop; `Debug` prints nothing of it.
pub struct Pin(pub(super) Zeroizing<String>);

impl Pin {
    /// Strips trailing line ends (a PIN file usually ends with one); `None`
    /// if nothing is left.
    fn new(mut text: Zeroizing<String>) -> Option<Pin> {
        let kept = text.trim_end_matches(['\n', '\r']).len();
        // Truncating keeps the bytes in the same allocation, which the
        // `Zeroizing` wrapper clears in full on drop.
        text.truncate(kept);
        if text.is_empty() { None } else { Some(Pin(text)) }
    }

    /// The PIN in the form cryptoki takes; the copy is zeroised on drop.
    pub(super) fn auth_pin(&self) -> AuthPin {
        AuthPin::from(self.0.as_str())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}
