//! SoftHSM2 for black-box tests: a token directory and configuration of the
//! test's own, tokens made with `softhsm2-util`, and what a `[keys.pkcs11]`
//! section needs to use them.
//!
//! SoftHSM2 reads its configuration from `SOFTHSM2_CONF`, and its token
//! directory, in `C_Initialize` only: a process sees the tokens that existed
//! when it first opened the module. A spawned `cdrvault` gets the variable
//! from [`SoftHsm::env`] and sees every token made before it started. A test
//! that uses the library in-process calls [`SoftHsm::set_process_env`] (one
//! `SoftHsm` per process, e.g. in a `static OnceLock`) and makes all its
//! tokens before the first `Pkcs11Custody::open`.
//!
//! Panics, never skips, when SoftHSM2 is missing.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The SoftHSM2 module of Debian's `libsofthsm2` package.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const CONF_VAR: &str = "SOFTHSM2_CONF";
const USER_PIN: &str = "user-1234";
const SO_PIN: &str = "so-5678";

/// A SoftHSM2 installation in a temporary directory.
pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    /// The configuration file: what `SOFTHSM2_CONF` must name.
    pub conf: PathBuf,
}

/// A token, as a `[keys.pkcs11]` section names it.
pub struct HsmToken {
    pub module: PathBuf,
    pub token_label: String,
    /// The user PIN, mode 0600.
    pub pin_file: PathBuf,
}

impl SoftHsm {
    /// A token directory and a configuration; sets no environment variable.
    pub fn new() -> SoftHsm {
        assert!(Path::new(MODULE).exists(), "the SoftHSM2 module {MODULE} is missing: install the softhsm2 package");
        let dir = tempfile::Builder::new().prefix("cdrvault-softhsm-").tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        let text =
            format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display());
        fs::write(&conf, text).unwrap();
        SoftHsm { dir, conf }
    }

    /// Makes a token labelled `label` (at most 32 bytes) with
    /// `softhsm2-util`, and a PIN file for it.
    pub fn init_token(&self, label: &str) -> HsmToken {
        assert!(!label.is_empty() && label.len() <= 32, "a token label has 1 to 32 bytes: {label:?}");
        let output = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label, "--pin", USER_PIN, "--so-pin", SO_PIN])
            .env(CONF_VAR, &self.conf)
            .output();
        let output = match output {
            Ok(output) => output,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                panic!("softhsm2-util is not installed: the PKCS#11 tests need the softhsm2 package")
            }
            Err(e) => panic!("cannot run softhsm2-util: {e}"),
        };
        assert!(output.status.success(), "softhsm2-util failed: {}", String::from_utf8_lossy(&output.stderr));
        let pin_file = self.dir.path().join(format!("{label}.pin"));
        fs::write(&pin_file, format!("{USER_PIN}\n")).unwrap();
        fs::set_permissions(&pin_file, fs::Permissions::from_mode(0o600)).unwrap();
        HsmToken { module: PathBuf::from(MODULE), token_label: label.to_string(), pin_file }
    }

    /// Points this process at this installation, once per process. Panics
    /// if another `SoftHsm` did so first: the module reads the variable
    /// once, so a second installation could never be used.
    pub fn set_process_env(&self) {
        static SET: OnceLock<PathBuf> = OnceLock::new();
        let conf = SET.get_or_init(|| {
            // SAFETY: setting a variable races only with threads that read
            // the environment without std's lock, i.e. from C. It is set
            // once, before this process loads the PKCS#11 module (the test
            // calls this first), and SoftHSM2 reads it in `C_Initialize`.
            unsafe { std::env::set_var(CONF_VAR, &self.conf) };
            self.conf.clone()
        });
        assert_eq!(conf, &self.conf, "SOFTHSM2_CONF names another SoftHsm already: use one per process");
    }
}
