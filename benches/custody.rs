//! Key custody figures, `file` against `pkcs11` (SoftHSM2), same records,
//! same run:
//!
//! - the ingest rate of `Processor::process` over records spread across
//!   many days, so that each batch creates day keys (in PKCS#11 custody a
//!   KEK is generated and a day key wrapped inside the HSM for each new
//!   day; nothing else touches the HSM);
//! - the cost of opening every day key once, as a fresh process does
//!   (PKCS#11: one `C_Decrypt` in the HSM per day);
//! - the storage per CDR of the files written.
//!
//! `cargo bench --bench custody` (env `CUSTODY_DAYS`, default 60,
//! `CUSTODY_RECORDS`, default 600,000, and `CUSTODY_ROUNDS`, default 6;
//! rounds alternate the custodies so that a slow moment of the machine hits
//! both). Few records a day exaggerate the HSM's share: a real day brings
//! millions of records for one key creation. Needs `softhsm2-util` and
//! `/usr/lib/softhsm/libsofthsm2.so` (Debian's softhsm2, which
//! scripts/test.sh installs).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cdrvault::ingest::decode::Encoding;
use cdrvault::ingest::process::Processor;
use cdrvault::keys::custody::Pkcs11Config;
use cdrvault::keys::{CustodyKind, KeyStore, KeysConfig};
use cdrvault::ops::clock::{Clock, ManualClock};
use cdrvault::storage::config::ParquetConfig;
use cdrvault::storage::read;
use cdrvault::storage::write::ParquetWriter;
use cdrvault::tools::synth::{Generator, SynthConfig};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const BATCH: usize = 100_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let days = env("CUSTODY_DAYS", 60);
    let count = env("CUSTODY_RECORDS", 600_000);
    let root = tempfile::tempdir().unwrap();
    let hsm = softhsm(root.path());

    let synth =
        SynthConfig { seed: 5, subscribers: 50_000, days: days as u32, until: common::until(), invalid_ratio: 0.0 };
    let mut generator = Generator::new(synth);
    let records: Vec<_> = (0..count).map(|_| generator.next_record()).collect();
    let inputs = common::inputs(&records, Encoding::Json);
    println!("{count} records over {days} days, batches of {BATCH}");

    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut opens: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut bytes = 0;
    let rounds = env("CUSTODY_ROUNDS", 6).max(2);
    for round in 0..rounds {
        let custody = round % 2;
        let dir = root.path().join(format!("round-{round}"));
        let config = match custody {
            0 => KeysConfig::file(&dir.join("keys")),
            _ => KeysConfig {
                dir: dir.join("keys"),
                custody: CustodyKind::Pkcs11,
                pkcs11: Some(Pkcs11Config { label_prefix: format!("bench-{round}-"), ..hsm.clone() }),
            },
        };
        KeyStore::init_with(&config, None).unwrap();
        let keys = Arc::new(KeyStore::open_with(&config, None).unwrap());
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(common::until()));
        let writer = ParquetWriter::new(&dir.join("data"), ParquetConfig::default());
        let processor = Processor::new(writer, Arc::clone(&keys), clock, common::processor_config(2));
        let started = Instant::now();
        let mut written = 0;
        for batch in inputs.chunks(BATCH) {
            written += processor.process(batch).unwrap().written;
        }
        let elapsed = started.elapsed();
        assert_eq!(written, count);
        rates[custody].push(count as f64 / elapsed.as_secs_f64());
        assert_eq!(keys.days_with_keys().unwrap().len(), days, "one key a day");

        // A fresh process opens every day key once.
        let fresh = KeyStore::open_with(&config, None).unwrap();
        let started = Instant::now();
        for day in fresh.days_with_keys().unwrap() {
            fresh.existing_day_key(day).unwrap().unwrap();
        }
        opens[custody].push(started.elapsed() / days as u32);
        bytes = data_bytes(&dir.join("data"));
    }
    for (custody, name) in ["file", "pkcs11"].iter().enumerate() {
        let best = rates[custody].iter().cloned().fold(0.0, f64::max);
        let open = opens[custody].iter().min().unwrap();
        println!(
            "RESULT custody {name}: ingest {best:.0} records/s (best of {}), opening a day key {:.1} µs",
            rates[custody].len(),
            open.as_secs_f64() * 1e6
        );
    }
    let ratio = rates[1].iter().cloned().fold(0.0, f64::max) / rates[0].iter().cloned().fold(0.0, f64::max);
    println!("RESULT ingest rate pkcs11 / file: {ratio:.3}");
    println!("RESULT storage: {:.1} bytes per CDR ({bytes} bytes of data files)", bytes as f64 / count as f64);
}

/// A SoftHSM2 token of this run, and this process pointed at it.
fn softhsm(root: &Path) -> Pkcs11Config {
    let tokens = root.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = root.join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\n", tokens.display()))
        .unwrap();
    let status = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (Debian's softhsm2) is installed");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let pin = root.join("pin");
    std::fs::write(&pin, "1234").unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    // SAFETY: set before any thread starts and before the module is loaded;
    // SoftHSM2 reads it in C_Initialize.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    Pkcs11Config {
        module: PathBuf::from(MODULE),
        slot: None,
        token_label: Some("bench".into()),
        pin_file: Some(pin),
        pin_env: None,
        label_prefix: "bench-".into(),
    }
}

fn data_bytes(data: &Path) -> u64 {
    let mut bytes = 0;
    for day in read::list_days(data).unwrap() {
        for file in read::list_files(data, day).unwrap() {
            bytes += std::fs::metadata(file).unwrap().len();
        }
    }
    bytes
}
