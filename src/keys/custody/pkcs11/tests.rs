//! The PKCS#11 custody against SoftHSM2.

use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use std::os::unix::fs::PermissionsExt;

use cryptoki::object::AttributeInfo;

use super::config::default_label_prefix;
use super::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const SO_PIN: &str = "so-5678";
/// Tokens made before the module is initialised: one per test that
/// needs a token (SoftHSM2 does not see tokens created later).
const TOKEN_POOL: usize = 16;

/// The SoftHSM2 of this test process: its configuration, token
/// directory and token pool.
struct TestHsm {
    dir: PathBuf,
    next_token: AtomicUsize,
}

/// Sets up SoftHSM2 once per process: a configuration in a temporary
/// directory, `SOFTHSM2_CONF` pointing at it, and a pool of tokens made
/// with `softhsm2-util`. All tokens exist before any test initialises
/// the module, because SoftHSM2 reads its token directory in
/// `C_Initialize` only.
fn test_hsm() -> &'static TestHsm {
    static HSM: OnceLock<TestHsm> = OnceLock::new();
    HSM.get_or_init(|| {
        assert!(Path::new(MODULE).exists(), "the SoftHSM2 module {MODULE} is missing: install the softhsm2 package");
        // Kept, not removed on drop: the module keeps its token files
        // open until the process exits, after the last test.
        let dir = tempfile::Builder::new().prefix("cdrvault-softhsm-").tempdir().unwrap().keep();
        let tokens = dir.join("tokens");
        fs::create_dir(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        fs::write(
            &conf,
            format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
        )
        .unwrap();
        // SAFETY: setting a variable races only with threads that read
        // the environment without std's lock, i.e. from C. This runs
        // once, inside the OnceLock, before any test of this process
        // loads a PKCS#11 module (every test reaches the module through
        // this function first), and SoftHSM2 reads the variable in
        // `C_Initialize`. The other tests of these modules read the
        // environment through std only.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        for index in 0..TOKEN_POOL {
            init_token(&conf, &token_label(index), &user_pin(index));
        }
        TestHsm { dir, next_token: AtomicUsize::new(0) }
    })
}

fn token_label(index: usize) -> String {
    format!("cdrvault-test-{index:02}")
}

fn user_pin(index: usize) -> String {
    format!("user-{index:02}-1234")
}

fn init_token(conf: &Path, label: &str, pin: &str) {
    let output = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", SO_PIN])
        .env("SOFTHSM2_CONF", conf)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            panic!("softhsm2-util is not installed: the PKCS#11 tests need the softhsm2 package")
        }
        Err(e) => panic!("cannot run softhsm2-util: {e}"),
    };
    assert!(output.status.success(), "softhsm2-util failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// A token of its own for one test, and its PIN file (mode 0600).
struct TestToken {
    config: Pkcs11Config,
    _pin_dir: tempfile::TempDir,
}

fn fresh_token() -> TestToken {
    let hsm = test_hsm();
    let index = hsm.next_token.fetch_add(1, Ordering::SeqCst);
    assert!(index < TOKEN_POOL, "the pool of {TOKEN_POOL} SoftHSM2 tokens is used up: raise TOKEN_POOL");
    let pin_dir = tempfile::tempdir_in(&hsm.dir).unwrap();
    let pin_file = pin_dir.path().join("user.pin");
    fs::write(&pin_file, format!("{}\n", user_pin(index))).unwrap();
    fs::set_permissions(&pin_file, fs::Permissions::from_mode(0o600)).unwrap();
    let config = Pkcs11Config {
        module: PathBuf::from(MODULE),
        slot: None,
        token_label: Some(token_label(index)),
        pin_file: Some(pin_file),
        pin_env: None,
        label_prefix: default_label_prefix(),
    };
    TestToken { config, _pin_dir: pin_dir }
}

fn date(text: &str) -> PartitionDate {
    PartitionDate::parse(text).unwrap()
}

fn open_bytes(custody: &Pkcs11Custody, kek: Kek, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    custody.decrypt(kek, aad, sealed).unwrap().map(|plain| plain.to_vec())
}

#[test]
fn round_trips_under_the_root_and_under_a_day() {
    let token = fresh_token();
    let custody = Pkcs11Custody::open(&token.config).unwrap();
    assert_eq!(custody.name(), "pkcs11");
    assert!(!custody.has_root().unwrap());
    custody.create_root().unwrap();
    assert!(custody.has_root().unwrap());

    let sealed = custody.encrypt(Kek::Root, b"audit-signing", b"root secret").unwrap();
    assert_eq!(sealed.len(), IV_LEN + b"root secret".len() + TAG_LEN);
    assert_eq!(open_bytes(&custody, Kek::Root, b"audit-signing", &sealed).unwrap(), b"root secret");

    let day = Kek::Day(date("2026-11-24"));
    let sealed = custody.encrypt(day, b"day", b"day secret").unwrap();
    assert_eq!(open_bytes(&custody, day, b"day", &sealed).unwrap(), b"day secret");
    // A fresh IV each time: the same input never seals the same way.
    assert_ne!(custody.encrypt(day, b"day", b"day secret").unwrap(), sealed);
    // One object for the day however often it is used.
    assert_eq!(custody.days_with_keks().unwrap(), Some(vec![date("2026-11-24")]));
    let empty = custody.encrypt(day, b"", b"").unwrap();
    assert_eq!(open_bytes(&custody, day, b"", &empty).unwrap(), b"");
}

#[test]
fn a_kek_opens_only_what_it_sealed() {
    let token = fresh_token();
    let custody = Pkcs11Custody::open(&token.config).unwrap();
    custody.create_root().unwrap();
    let (monday, tuesday) = (Kek::Day(date("2026-11-23")), Kek::Day(date("2026-11-24")));
    let sealed = custody.encrypt(monday, b"aad", b"monday's key").unwrap();
    custody.encrypt(tuesday, b"aad", b"tuesday's key").unwrap();

    assert_eq!(open_bytes(&custody, tuesday, b"aad", &sealed), None);
    assert_eq!(open_bytes(&custody, Kek::Root, b"aad", &sealed), None);
    let under_root = custody.encrypt(Kek::Root, b"aad", b"root's").unwrap();
    assert_eq!(open_bytes(&custody, monday, b"aad", &under_root), None);
    // Other additional data, changed bytes, truncation.
    assert_eq!(open_bytes(&custody, monday, b"other", &sealed), None);
    let mut changed = sealed.clone();
    changed[IV_LEN] ^= 1;
    assert_eq!(open_bytes(&custody, monday, b"aad", &changed), None);
    assert_eq!(open_bytes(&custody, monday, b"aad", &sealed[..IV_LEN + TAG_LEN - 1]), None);
    assert_eq!(open_bytes(&custody, monday, b"aad", &sealed[..sealed.len() - 1]), None);
    // A day that never had a KEK opens nothing, and gets none.
    let never = Kek::Day(date("2020-01-01"));
    assert_eq!(open_bytes(&custody, never, b"aad", &sealed), None);
    // After all those failures the session still works.
    assert_eq!(open_bytes(&custody, monday, b"aad", &sealed).unwrap(), b"monday's key");
    assert_eq!(custody.days_with_keks().unwrap(), Some(vec![date("2026-11-23"), date("2026-11-24")]));
}

#[test]
fn encrypting_under_a_missing_root_is_an_error() {
    let token = fresh_token();
    let custody = Pkcs11Custody::open(&token.config).unwrap();
    let error = custody.encrypt(Kek::Root, b"aad", b"secret").unwrap_err();
    assert!(matches!(&error, KeyError::Hsm(message) if message.contains("no root key")), "{error}");
    assert_eq!(custody.decrypt(Kek::Root, b"aad", &[0u8; 40]).unwrap(), None);
    custody.create_root().unwrap();
    let error = custody.create_root().unwrap_err();
    assert!(matches!(&error, KeyError::Hsm(message) if message.contains("already holds a root key")), "{error}");
}

#[test]
fn destroying_a_day_makes_its_data_unreadable() {
    let token = fresh_token();
    let custody = Pkcs11Custody::open(&token.config).unwrap();
    let (kept, destroyed) = (date("2026-11-23"), date("2026-11-24"));
    let kept_sealed = custody.encrypt(Kek::Day(kept), b"aad", b"kept").unwrap();
    let sealed = custody.encrypt(Kek::Day(destroyed), b"aad", b"destroyed").unwrap();
    assert_eq!(custody.days_with_keks().unwrap(), Some(vec![kept, destroyed]));

    assert_eq!(custody.destroy_day(destroyed).unwrap(), 1);
    assert_eq!(open_bytes(&custody, Kek::Day(destroyed), b"aad", &sealed), None);
    assert_eq!(custody.days_with_keks().unwrap(), Some(vec![kept]));
    assert_eq!(custody.destroy_day(destroyed).unwrap(), 0);
    assert_eq!(open_bytes(&custody, Kek::Day(kept), b"aad", &kept_sealed).unwrap(), b"kept");
    // Another session on the token sees the same: the object is gone.
    let other = Pkcs11Custody::open(&token.config).unwrap();
    assert_eq!(open_bytes(&other, Kek::Day(destroyed), b"aad", &sealed), None);
}

#[test]
fn racing_custodies_open_each_others_data() {
    let token = fresh_token();
    let custodies: Vec<_> = (0..2).map(|_| Arc::new(Pkcs11Custody::open(&token.config).unwrap())).collect();
    let day = Kek::Day(date("2026-11-24"));
    let barrier = Arc::new(Barrier::new(custodies.len()));
    let threads: Vec<_> = custodies
        .iter()
        .enumerate()
        .map(|(index, custody)| {
            let (custody, barrier) = (Arc::clone(custody), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                custody.encrypt(day, b"aad", format!("from {index}").as_bytes()).unwrap()
            })
        })
        .collect();
    let sealed: Vec<_> = threads.into_iter().map(|thread| thread.join().unwrap()).collect();
    for (index, sealed) in sealed.iter().enumerate() {
        for custody in &custodies {
            assert_eq!(open_bytes(custody, day, b"aad", sealed).unwrap(), format!("from {index}").as_bytes());
        }
    }
    let objects = custodies[0].destroy_day(date("2026-11-24")).unwrap();
    assert!((1..=2).contains(&objects), "{objects} objects");
}

#[test]
fn decrypt_tries_every_object_of_a_day() {
    // What a race between two processes leaves: two objects under one
    // label, each custody having sealed under its own.
    let token = fresh_token();
    let (first, second) = (Pkcs11Custody::open(&token.config).unwrap(), Pkcs11Custody::open(&token.config).unwrap());
    let day = date("2026-11-24");
    let label = first.label(Kek::Day(day));
    let seal_with_new_object = |custody: &Pkcs11Custody, plain: &[u8]| {
        let held = custody.session();
        let session = &held.session;
        let key = generate_key(session, &label).unwrap();
        seal(session, &custody.rng, key, b"aad", plain).unwrap()
    };
    let from_first = seal_with_new_object(&first, b"first");
    let from_second = seal_with_new_object(&second, b"second");
    assert_eq!(find_keys(&first.session().session, &label).unwrap().len(), 2);

    for custody in [&first, &second] {
        assert_eq!(open_bytes(custody, Kek::Day(day), b"aad", &from_first).unwrap(), b"first");
        assert_eq!(open_bytes(custody, Kek::Day(day), b"aad", &from_second).unwrap(), b"second");
    }
    // Encrypting uses one of them and creates no third.
    let sealed = second.encrypt(Kek::Day(day), b"aad", b"third").unwrap();
    assert_eq!(open_bytes(&first, Kek::Day(day), b"aad", &sealed).unwrap(), b"third");
    assert_eq!(first.days_with_keks().unwrap(), Some(vec![day]));
    assert_eq!(first.destroy_day(day).unwrap(), 2);
    assert_eq!(open_bytes(&second, Kek::Day(day), b"aad", &from_first), None);
    assert_eq!(open_bytes(&second, Kek::Day(day), b"aad", &from_second), None);
    assert_eq!(second.days_with_keks().unwrap(), Some(vec![]));
}

#[test]
fn kek_objects_cannot_be_read_out() {
    let token = fresh_token();
    let custody = Pkcs11Custody::open(&token.config).unwrap();
    custody.create_root().unwrap();
    custody.encrypt(Kek::Day(date("2026-11-24")), b"aad", b"x").unwrap();
    let held = custody.session();
    let session = &held.session;
    for kek in [Kek::Root, Kek::Day(date("2026-11-24"))] {
        let keys = find_keys(session, &custody.label(kek)).unwrap();
        assert_eq!(keys.len(), 1);
        let key = keys[0];
        // The value is withheld: the token answers "sensitive", and
        // cryptoki leaves the attribute out.
        let info = session.get_attribute_info(key, &[AttributeType::Value]).unwrap();
        assert!(matches!(info[..], [AttributeInfo::Sensitive]), "{info:?}");
        let value = session.get_attributes(key, &[AttributeType::Value]);
        assert!(matches!(value.as_deref(), Ok([]) | Err(_)), "the token revealed a key value");
        let attributes = session
            .get_attributes(
                key,
                &[
                    AttributeType::Extractable,
                    AttributeType::Sensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Private,
                    AttributeType::Token,
                    AttributeType::Wrap,
                    AttributeType::Unwrap,
                    AttributeType::ValueLen,
                ],
            )
            .unwrap();
        assert_eq!(attributes.len(), 8, "{attributes:?}");
        for attribute in attributes {
            match attribute {
                Attribute::Extractable(value) | Attribute::Wrap(value) | Attribute::Unwrap(value) => {
                    assert!(!value, "{attribute:?}")
                }
                Attribute::Sensitive(value)
                | Attribute::NeverExtractable(value)
                | Attribute::Private(value)
                | Attribute::Token(value) => assert!(value, "{attribute:?}"),
                Attribute::ValueLen(len) => assert_eq!(usize::from(len), KEY_LEN),
                other => panic!("unexpected attribute {other:?}"),
            }
        }
    }
}

#[test]
fn a_pin_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pin_file = dir.path().join("user.pin");
    fs::write(&pin_file, "1234\n").unwrap();
    fs::set_permissions(&pin_file, fs::Permissions::from_mode(0o644)).unwrap();
    let config = Pkcs11Config {
        module: PathBuf::from(MODULE),
        slot: None,
        token_label: Some("any".to_string()),
        pin_file: Some(pin_file.clone()),
        pin_env: None,
        label_prefix: default_label_prefix(),
    };
    assert!(matches!(config.pin(), Err(KeyError::InsecurePermissions(path)) if path == pin_file));
    assert!(matches!(Pkcs11Custody::open(&config), Err(KeyError::InsecurePermissions(_))));

    fs::set_permissions(&pin_file, fs::Permissions::from_mode(0o600)).unwrap();
    let pin = config.pin().unwrap();
    assert_eq!(pin.0.as_str(), "1234");
    assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
}

#[test]
fn config_needs_exactly_one_token_and_one_pin_source() {
    let config: Pkcs11Config = serde_json::from_value(serde_json::json!({
        "module": MODULE,
        "token_label": "hsm",
        "pin_env": "CDRVAULT_HSM_PIN",
    }))
    .unwrap();
    assert_eq!(config.label_prefix, "cdrvault-");
    config.validate().unwrap();

    let both_tokens = Pkcs11Config { slot: Some(1), ..config.clone() };
    let no_token = Pkcs11Config { token_label: None, ..config.clone() };
    let both_pins = Pkcs11Config { pin_file: Some(PathBuf::from("/pin")), ..config.clone() };
    let no_pin = Pkcs11Config { pin_env: None, ..config.clone() };
    let long_label = Pkcs11Config { token_label: Some("x".repeat(33)), ..config.clone() };
    let no_prefix = Pkcs11Config { label_prefix: String::new(), ..config.clone() };
    for bad in [both_tokens, no_token, both_pins, no_pin, long_label, no_prefix] {
        assert!(matches!(bad.validate(), Err(KeyError::Hsm(_))), "{bad:?}");
        assert!(matches!(Pkcs11Custody::open(&bad), Err(KeyError::Hsm(_))), "{bad:?}");
    }
    let unknown = serde_json::from_value::<Pkcs11Config>(serde_json::json!({
        "module": MODULE, "token_label": "hsm", "pin_env": "X", "pin": "1234",
    }));
    assert!(unknown.is_err());
}

#[test]
fn finds_a_token_by_slot_id_and_names_a_missing_one() {
    let token = fresh_token();
    let by_label = Pkcs11Custody::open(&token.config).unwrap();
    let by_slot_config = Pkcs11Config { slot: Some(by_label.slot.id()), token_label: None, ..token.config.clone() };
    let by_slot = Pkcs11Custody::open(&by_slot_config).unwrap();
    let sealed = by_label.encrypt(Kek::Day(date("2026-11-24")), b"aad", b"same token").unwrap();
    assert_eq!(open_bytes(&by_slot, Kek::Day(date("2026-11-24")), b"aad", &sealed).unwrap(), b"same token");

    let missing = Pkcs11Config { token_label: Some("no-such-token".to_string()), ..token.config.clone() };
    let error = Pkcs11Custody::open(&missing).unwrap_err();
    assert!(error.to_string().contains("no token labelled \"no-such-token\""), "{error}");
    let shown = format!("{by_label:?}");
    assert!(shown.contains(MODULE) && !shown.contains("user-"), "{shown}");
}

#[test]
fn a_wrong_pin_is_refused_without_being_shown() {
    let token = fresh_token();
    let wrong_pin_file = token._pin_dir.path().join("wrong.pin");
    fs::write(&wrong_pin_file, "not-the-pin\n").unwrap();
    fs::set_permissions(&wrong_pin_file, fs::Permissions::from_mode(0o600)).unwrap();
    let wrong = Pkcs11Config { pin_file: Some(wrong_pin_file), ..token.config.clone() };
    let error = Pkcs11Custody::open(&wrong).unwrap_err();
    let shown = error.to_string();
    assert!(shown.contains("cannot log in") && shown.contains("PinIncorrect"), "{shown}");
    assert!(!shown.contains("not-the-pin") && !shown.contains("user-"), "{shown}");

    // Once the right PIN logged the application in, PKCS#11 answers a
    // second login with CKR_USER_ALREADY_LOGGED_IN, whatever the PIN:
    // the login state belongs to the process, not to a session.
    // So while a custody of this process is logged in, another one
    // opens with any PIN; the PIN guards the process, not a session.
    let _right = Pkcs11Custody::open(&token.config).unwrap();
    assert!(Pkcs11Custody::open(&wrong).is_ok());
}
