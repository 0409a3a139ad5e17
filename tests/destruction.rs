//! Destruction that cannot be undone, tried as an insider would: after day
//! D is destroyed, an adversary holds every byte of D's files (from a
//! backup), a copy of the keys directory taken while D was live, and the
//! live system with every key it holds. From that, can they open D's
//! sealed columns, or reverse D's token columns by enumerating candidate
//! numbers?
//!
//! - Both custodies: the live keys alone reverse nothing and open nothing.
//! - File custody: the key backup (which holds `master.key`) still opens D,
//!   sealed columns and tokens alike. That is its documented limit, shown
//!   here so that it cannot change silently.
//! - PKCS#11 custody: the key backup is useless too, because D's KEK was
//!   destroyed inside the HSM.

mod common;
#[path = "common/softhsm.rs"]
mod softhsm;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use chrono::Duration;

use cdrvault::keys::custody::Pkcs11Config;
use cdrvault::keys::{DayKey, KeyStore, day_of_token_key};
use cdrvault::model::{IdentifierField, IdentifierKind, KeyId, PartitionDate};
use cdrvault::privacy::token::Tokeniser;
use cdrvault::storage::{layout, read};
use cdrvault::tools::synth::SynthConfig;
use common::{TestVault, VaultOptions, generated, noon};
use softhsm::{HsmToken, SoftHsm};

/// The SoftHSM2 tokens of this test binary, one per test: the module sees
/// only the tokens that existed when it was first opened, so all are made
/// at once. A token of its own keeps a test's objects apart from another
/// test's, and the CLI test's child processes from this process: SoftHSM2's
/// file store is not made for two processes changing one token at once
/// (`C_GenerateKey` then fails with `CKR_GENERAL_ERROR`).
const TOKENS: [&str; 2] = ["destruction-a", "destruction-cli"];

fn hsm(token_label: &str) -> Pkcs11Config {
    static HSM: std::sync::OnceLock<(SoftHsm, Vec<HsmToken>)> = std::sync::OnceLock::new();
    let (_, tokens) = HSM.get_or_init(|| {
        let hsm = SoftHsm::new();
        let tokens = TOKENS.iter().map(|label| hsm.init_token(label)).collect();
        hsm.set_process_env();
        (hsm, tokens)
    });
    let token = tokens.iter().find(|t| t.token_label == token_label).expect("a token of TOKENS");
    Pkcs11Config {
        module: token.module.clone(),
        slot: None,
        token_label: Some(token.token_label.clone()),
        pin_file: Some(token.pin_file.clone()),
        pin_env: None,
        label_prefix: format!("{token_label}-"),
    }
}

/// What the adversary recovered of the destroyed day.
#[derive(Debug, Default, PartialEq)]
struct Recovered {
    /// Tokens of D's files matched by a candidate's token under some key.
    tokens_reversed: usize,
    /// D's files whose sealed columns opened.
    files_unsealed: usize,
}

struct Scenario {
    vault: TestVault,
    day: PartitionDate,
    /// Copies of D's data files, kept outside the data directory.
    retained_files: Vec<PathBuf>,
    /// A copy of the keys directory taken while D was live.
    key_backup: PathBuf,
    /// The numbers the adversary enumerates: every subscriber's, and more.
    candidates: Vec<String>,
    _copies: tempfile::TempDir,
}

impl Scenario {
    fn new(options: VaultOptions) -> Scenario {
        let vault = TestVault::with(VaultOptions { now: noon(), ..options });
        let synth = SynthConfig { seed: 11, subscribers: 1_000, days: 3, until: vault.now(), invalid_ratio: 0.0 };
        let (generator, records) = generated(synth, 6_000);
        assert_eq!(vault.ingest(&records), records.len());
        let day = read::list_days(&vault.data()).unwrap()[0];

        // The insider's copies, taken while D is live.
        let copies = tempfile::tempdir().unwrap();
        let mut retained_files = Vec::new();
        for file in read::list_files(&vault.data(), day).unwrap() {
            // Under the same relative path: each file is bound to its place.
            let copy = copies.path().join("data").join(file.strip_prefix(vault.data()).unwrap());
            std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
            std::fs::copy(&file, &copy).unwrap();
            // With its companion, which holds the sealed columns.
            std::fs::copy(layout::sealed_path(&file), layout::sealed_path(&copy)).unwrap();
            retained_files.push(copy);
        }
        assert!(!retained_files.is_empty());
        let key_backup = copies.path().join("keys-backup");
        copy_dir(&vault.keys_dir(), &key_backup);
        // While D is live, the backup opens it: a real key backup.
        let before = KeyStore::open_with(&vault.keys_config(&key_backup), None).unwrap();
        assert!(before.existing_day_key(day).unwrap().is_some());
        drop(before);

        let mut candidates: Vec<String> = generator.subscribers().iter().map(|s| s.msisdn.clone()).collect();
        candidates.extend((0..100).map(|n| format!("+4560{n:06}")));
        assert!(candidates.len() >= 1_100);

        // A year and a week later retention destroys D (and the other
        // days), and the service goes on ingesting: the live system holds
        // the keys of new days.
        vault.clock.set(vault.now() + Duration::days(372));
        let audit = vault.audit();
        let registries = vault.registries();
        let orders = vault.orders(&registries, &audit);
        let sweeper = vault.sweeper(&audit, orders);
        sweeper.confirm_clock("operator").unwrap();
        let report = sweeper.run(cdrvault::lifecycle::retention::SweepMode::Delete).unwrap();
        assert!(report.days.iter().any(|d| d.day == day), "D was destroyed");
        assert!(vault.keys.is_destroyed(day));
        let fresh = SynthConfig { seed: 12, subscribers: 1_000, days: 2, until: vault.now(), invalid_ratio: 0.0 };
        let (_, later) = generated(fresh, 2_000);
        assert_eq!(vault.ingest(&later), later.len());
        assert!(vault.keys.days_with_keys().unwrap().len() >= 2, "live days with live keys");

        Scenario { vault, day, retained_files, key_backup, candidates, _copies: copies }
    }

    /// D's token columns as anyone reading the retained files sees them,
    /// with the token key id the files name.
    fn retained_tokens(&self) -> (HashSet<i64>, KeyId) {
        let columns: Vec<&str> = number_fields().iter().map(|f| f.token_column()).chain(["token_key_id"]).collect();
        let mut tokens = HashSet::new();
        let mut key_id = None;
        for file in &self.retained_files {
            for batch in read::read_file(file, None, &columns).unwrap() {
                for field in number_fields() {
                    let column = batch.column_by_name(field.token_column()).unwrap().as_primitive::<Int64Type>();
                    tokens.extend(column.iter().flatten());
                }
                let ids = batch.column_by_name("token_key_id").unwrap().as_string::<i32>();
                key_id = KeyId::new(ids.value(0));
            }
        }
        assert!(tokens.len() > 500, "D holds many numbers");
        (tokens, key_id.unwrap())
    }

    /// Everything the adversary can do with the keys of `keys`: every day
    /// key it opens (D's among them, if it still can) and the token key the
    /// retained files name.
    fn attack(&self, keys: &KeyStore) -> Recovered {
        let (tokens, token_key_id) = self.retained_tokens();
        assert_eq!(day_of_token_key(&token_key_id), Some(self.day));
        let mut day_keys: Vec<std::sync::Arc<DayKey>> = Vec::new();
        for day in keys.days_with_keys().unwrap().into_iter().chain([self.day]) {
            // A key that no longer opens is no key.
            if let Ok(Some(key)) = keys.existing_day_key(day) {
                day_keys.push(key);
            }
        }
        let mut token_keys: Vec<_> = day_keys.iter().map(|k| k.token.clone()).collect();
        token_keys.extend(keys.token_key(&token_key_id).ok().flatten());

        let mut recovered = Recovered::default();
        for key in &token_keys {
            let tokeniser = Tokeniser::new(key);
            recovered.tokens_reversed += self
                .candidates
                .iter()
                .filter(|number| tokens.contains(&tokeniser.token_for_query(IdentifierKind::Msisdn, number).unwrap().0))
                .count();
        }
        let sealed: Vec<&str> = number_fields().iter().map(|f| f.sealed_column()).collect();
        for file in &self.retained_files {
            if day_keys.iter().any(|key| read::read_file(file, Some(key), &sealed).is_ok()) {
                recovered.files_unsealed += 1;
            }
        }
        recovered
    }
}

fn number_fields() -> [IdentifierField; 3] {
    [IdentifierField::CallingNumber, IdentifierField::CalledNumber, IdentifierField::RedirectingNumber]
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            // Keeps the mode: the keystore refuses a readable master key.
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn in_file_custody_live_keys_recover_nothing_and_a_key_backup_recovers_everything() {
    let scenario = Scenario::new(VaultOptions::default());

    // The live system, with every key it holds: D's token key is gone with
    // D's key, and no other day's token key reproduces D's tokens.
    let live = KeyStore::open(&scenario.vault.keys_dir(), None).unwrap();
    assert_eq!(scenario.attack(&live), Recovered::default());

    // The documented limit of file custody: the backup holds master.key
    // and D's wrapped key, so it opens D's sealed columns and, through
    // D's token key, reverses its tokens.
    let backup = KeyStore::open(&scenario.key_backup, None).unwrap();
    let recovered = scenario.attack(&backup);
    assert_eq!(recovered.files_unsealed, scenario.retained_files.len());
    assert!(recovered.tokens_reversed > 500, "{recovered:?}");
}

#[test]
fn in_pkcs11_custody_neither_live_keys_nor_a_key_backup_recover_anything() {
    let config = hsm("destruction-a");
    let scenario = Scenario::new(VaultOptions { pkcs11: Some(config), ..VaultOptions::default() });
    assert!(!scenario.key_backup.join("master.key").exists(), "no root key leaves the HSM");
    let live = KeyStore::open_with(&scenario.vault.keys_config(&scenario.vault.keys_dir()), None).unwrap();
    assert_eq!(live.custody().name(), "pkcs11");
    assert_eq!(scenario.attack(&live), Recovered::default());
    // D's KEK went with D: listed through the module, it is gone.
    let kek_days = live.custody().days_with_keks().unwrap().unwrap();
    assert!(!kek_days.contains(&scenario.day), "{kek_days:?}");
    assert!(!kek_days.is_empty(), "the live days keep theirs");

    // The backup of the keys directory, opened with every live key of the
    // HSM: D's wrapped key is there, and opens under nothing.
    let backup = KeyStore::open_with(&scenario.vault.keys_config(&scenario.key_backup), None).unwrap();
    assert!(backup.days_with_keys().unwrap().contains(&scenario.day), "the backup holds D's wrapped key");
    assert!(backup.existing_day_key(scenario.day).is_err(), "D's wrapped key no longer opens");
    assert_eq!(scenario.attack(&backup), Recovered::default());
}

/// The operator's path in PKCS#11 custody, through the binary: a day written
/// 400 days ago is destroyed by `retention run`, and `retention verify`
/// shows the HSM's day objects, listed through the module, without one for
/// the destroyed day.
#[test]
fn retention_in_pkcs11_custody_destroys_the_day_s_hsm_object_and_verify_shows_it() {
    let config = hsm("destruction-cli");
    let then = chrono::Utc::now() - Duration::days(400);
    let vault = TestVault::with(VaultOptions { now: then, pkcs11: Some(config.clone()), ..VaultOptions::default() });
    let old_day = vault.today();
    let payloads = (0..20).map(|i| {
        format!(r#"{{"record_id":"x-{i}","service":"sms","start_time":"{old_day}T00:00:{i:02}Z","calling_number":"+452000000{}"}}"#, i % 10)
            .into_bytes()
    });
    assert_eq!(vault.ingest_payloads(payloads).written, 20);
    let hsm_days = |keys: &KeyStore| keys.custody().days_with_keks().unwrap().unwrap();
    assert_eq!(hsm_days(&vault.keys), vec![old_day]);

    let root = vault.root.path();
    let dir = |name: &str| root.join(name).display().to_string();
    let toml = format!(
        "[storage]\ndata_dir = {:?}\n[state]\ndir = {:?}\n[keys]\ndir = {:?}\ncustody = \"pkcs11\"\n\
         [keys.pkcs11]\nmodule = {:?}\ntoken_label = {:?}\npin_file = {:?}\nlabel_prefix = {:?}\n",
        dir("data"),
        dir("state"),
        dir("keys"),
        config.module.display().to_string(),
        config.token_label.clone().unwrap(),
        config.pin_file.clone().unwrap().display().to_string(),
        config.label_prefix,
    );
    let config_file = root.join("cdrvault.toml");
    std::fs::write(&config_file, toml).unwrap();
    // The spawned binary inherits SOFTHSM2_CONF from this process.
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_cdrvault"))
            .arg("--config")
            .arg(&config_file)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{args:?}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        stdout
    };
    run(&["retention", "confirm-clock"]);
    let destroyed = run(&["retention", "run"]);
    assert!(destroyed.contains(&format!("destroyed {old_day}")), "{destroyed}");
    assert!(hsm_days(&vault.keys).is_empty(), "the day's KEK is gone from the HSM");

    let evidence = run(&["retention", "verify"]);
    assert!(
        evidence.contains("key custody: pkcs11: 0 day key-encryption keys listed through the module"),
        "{evidence}"
    );
    assert!(evidence.contains("1 destroyed days checked, none has a token key left"), "{evidence}");
    assert!(!evidence.contains("limit: key custody"), "{evidence}");
}
