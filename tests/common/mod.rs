//! Helpers shared by the black-box tests: one [`TestVault`] (keys, data and
//! state directories, a manual clock, ingest through the real processor, and
//! the stores and services built over them), an independent look at what a
//! run wrote (files read back with the parquet crate, a byte scan for raw
//! identifiers), and a minimal HTTP GET for the metrics endpoint.

#![allow(dead_code)]

pub mod api;
pub mod broker;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aho_corasick::AhoCorasick;
use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use chrono::{DateTime, TimeZone, Utc};

use cdrvault::access::config::AccessSettings;
use cdrvault::access::{Desk, DeskParts, results};
use cdrvault::audit::AuditTrail;
use cdrvault::ingest::decode::Encoding;
use cdrvault::ingest::process::{BatchOutcome, Input, Processor, ProcessorConfig};
use cdrvault::keys::custody::Pkcs11Config;
use cdrvault::keys::{CustodyKind, KeyStore, KeysConfig};
use cdrvault::lifecycle::config::RetentionConfig;
use cdrvault::lifecycle::orders::{NewOrder, OrderStore};
use cdrvault::lifecycle::retention::Sweeper;
use cdrvault::model::{IdentifierField, PartitionDate, TimestampMicros};
use cdrvault::ops::clock::{Clock, ManualClock};
use cdrvault::ops::metrics::Metrics;
use cdrvault::registry::{Actor, Order, Registries};
use cdrvault::storage::config::ParquetConfig;
use cdrvault::storage::read;
use cdrvault::storage::write::ParquetWriter;
use cdrvault::tools::synth::{Generator, SynthConfig, SyntheticCdr};

fn keys_config(dir: &Path, options: &VaultOptions) -> KeysConfig {
    match &options.pkcs11 {
        None => KeysConfig::file(dir),
        Some(hsm) => KeysConfig { dir: dir.to_path_buf(), custody: CustodyKind::Pkcs11, pkcs11: Some(hsm.clone()) },
    }
}

/// The instant most tests stand at: 2026-11-24 12:00 UTC.
pub fn noon() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
}

/// A vault for one test, in a temporary directory: a keystore, a data and a
/// state directory, a manual clock, and ingest through the real processor.
/// The stores and services over it are built on demand.
pub struct TestVault {
    pub root: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    pub keys: Arc<KeyStore>,
    pub processor: Processor,
    options: VaultOptions,
}

/// How a [`TestVault`] ingests; `TestVault::new` takes the defaults.
#[derive(Debug, Clone)]
pub struct VaultOptions {
    pub now: DateTime<Utc>,
    pub parquet: ParquetConfig,
    pub decode_threads: usize,
    pub max_clock_skew: Duration,
    /// Key custody in an HSM instead of `master.key`.
    pub pkcs11: Option<Pkcs11Config>,
}

impl Default for VaultOptions {
    fn default() -> Self {
        VaultOptions {
            now: noon(),
            parquet: ParquetConfig::default(),
            decode_threads: 2,
            max_clock_skew: Duration::from_secs(60),
            pkcs11: None,
        }
    }
}

impl TestVault {
    /// A vault standing at `now`, with the default options.
    pub fn new(now: DateTime<Utc>) -> TestVault {
        TestVault::with(VaultOptions { now, ..VaultOptions::default() })
    }

    pub fn with(options: VaultOptions) -> TestVault {
        let root = tempfile::tempdir().unwrap();
        let config = keys_config(&root.path().join("keys"), &options);
        KeyStore::init_with(&config, Some(&root.path().join("data"))).unwrap();
        let keys = Arc::new(KeyStore::open_with(&config, None).unwrap());
        let clock = Arc::new(ManualClock::new(options.now));
        let processor = processor(&root.path().join("data"), &options, Arc::clone(&keys), &clock);
        TestVault { root, clock, keys, processor, options }
    }

    /// A processor like the vault's, over other keys (a rotated keystore).
    pub fn processor_over(&self, keys: Arc<KeyStore>) -> Processor {
        processor(&self.data(), &self.options, keys, &self.clock)
    }

    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn state(&self) -> PathBuf {
        self.root.path().join("state")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.root.path().join("keys")
    }

    /// The vault's keys configuration, for opening `dir` (its keys
    /// directory, or a copy of it) as another process would.
    pub fn keys_config(&self, dir: &Path) -> KeysConfig {
        keys_config(dir, &self.options)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn today(&self) -> PartitionDate {
        TimestampMicros::from_datetime(self.now()).partition_date()
    }

    /// Ingests JSON payloads as one batch.
    pub fn ingest_payloads(&self, payloads: impl IntoIterator<Item = Vec<u8>>) -> BatchOutcome {
        let inputs: Vec<Input> =
            payloads.into_iter().map(|payload| Input { encoding: Encoding::Json, payload: payload.into() }).collect();
        self.processor.process(&inputs).unwrap()
    }

    /// Ingests generated records as one batch; returns the records written.
    pub fn ingest(&self, records: &[SyntheticCdr]) -> usize {
        self.ingest_payloads(records.iter().map(SyntheticCdr::to_json)).written
    }

    pub fn audit(&self) -> Arc<AuditTrail> {
        Arc::new(AuditTrail::open(&self.state(), &self.keys).unwrap())
    }

    pub fn registries(&self) -> Registries {
        Registries::sqlite(&self.state(), &self.keys).unwrap()
    }

    pub fn orders(&self, registries: &Registries, audit: &Arc<AuditTrail>) -> Arc<OrderStore> {
        Arc::new(OrderStore::new(
            Arc::clone(&registries.orders),
            Arc::clone(&self.keys),
            Arc::clone(audit),
            self.data(),
        ))
    }

    /// A sweeper with the default window, honouring `orders`.
    pub fn sweeper(&self, audit: &Arc<AuditTrail>, orders: Arc<OrderStore>) -> Sweeper {
        Sweeper::new(
            &self.data(),
            Arc::clone(&self.keys),
            Arc::clone(audit),
            self.clock.clone() as Arc<dyn Clock>,
            RetentionConfig::default(),
        )
        .with_orders(orders, ParquetConfig::default())
    }

    /// The lawful-access desk over the vault.
    pub fn desk(
        &self,
        audit: &Arc<AuditTrail>,
        registries: Registries,
        settings: AccessSettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Desk> {
        Arc::new(
            Desk::new(DeskParts {
                data_dir: self.data(),
                results_dir: self.state().join(results::RESULTS_DIR),
                keys: Arc::clone(&self.keys),
                audit: Arc::clone(audit),
                orders: self.orders(&registries, audit),
                registries,
                clock: self.clock.clone() as Arc<dyn Clock>,
                metrics,
                settings,
            })
            .unwrap(),
        )
    }
}

fn processor(data: &Path, options: &VaultOptions, keys: Arc<KeyStore>, clock: &Arc<ManualClock>) -> Processor {
    Processor::new(
        ParquetWriter::new(data, options.parquet.clone()),
        keys,
        clock.clone() as Arc<dyn Clock>,
        ProcessorConfig {
            max_clock_skew: options.max_clock_skew,
            decode_threads: options.decode_threads,
            retention_days: Some(RetentionConfig::default().days),
        },
    )
}

/// Registers `new` as one reviewer and approves it as another: an active
/// order, as the API would make it.
pub fn approved_order(orders: &OrderStore, new: NewOrder, now: DateTime<Utc>) -> Order {
    let alice = Actor { principal: "p-alice".into(), person: "alice".into() };
    let order = orders.register(new, &alice, now).unwrap();
    orders.decide(&order.id, true, "p-bob", None, now).unwrap()
}

/// A generated population and `count` of its records, no defects.
pub fn generated(synth: SynthConfig, count: usize) -> (Generator, Vec<SyntheticCdr>) {
    let mut generator = Generator::new(SynthConfig { invalid_ratio: 0.0, ..synth });
    let records = (0..count).map(|_| generator.next_record()).collect();
    (generator, records)
}

/// One row read back: record id, tokens and unsealed values by field.
#[derive(Debug, Clone)]
pub struct Row {
    pub record_id: String,
    pub tokens: BTreeMap<IdentifierField, i64>,
    pub sealed: BTreeMap<IdentifierField, String>,
    pub token_key_id: String,
    pub seal_key_id: String,
}

/// Reads every row of every file, decrypting the sealed columns with the
/// day keys of the keystore.
pub fn read_all_rows(data_dir: &Path, keys: &KeyStore) -> Vec<Row> {
    let mut columns: Vec<&str> = vec!["record_id", "token_key_id", "seal_key_id"];
    for field in IdentifierField::ALL {
        columns.push(field.token_column());
        columns.push(field.sealed_column());
    }
    let mut rows = Vec::new();
    for date in read::list_days(data_dir).unwrap() {
        let key = keys.existing_day_key(date).unwrap().expect("every day with files has a key");
        for file in read::list_files(data_dir, date).unwrap() {
            for batch in read::read_file(&file, Some(&key), &columns).unwrap() {
                let ids = batch.column_by_name("record_id").unwrap().as_string::<i32>();
                let tk = batch.column_by_name("token_key_id").unwrap().as_string::<i32>();
                let sk = batch.column_by_name("seal_key_id").unwrap().as_string::<i32>();
                for i in 0..batch.num_rows() {
                    let mut row = Row {
                        record_id: ids.value(i).to_string(),
                        tokens: BTreeMap::new(),
                        sealed: BTreeMap::new(),
                        token_key_id: tk.value(i).to_string(),
                        seal_key_id: sk.value(i).to_string(),
                    };
                    for field in IdentifierField::ALL {
                        let tokens = batch.column_by_name(field.token_column()).unwrap().as_primitive::<Int64Type>();
                        let sealed = batch.column_by_name(field.sealed_column()).unwrap().as_string::<i32>();
                        assert_eq!(tokens.is_null(i), sealed.is_null(i), "token and sealed value come together");
                        if !tokens.is_null(i) {
                            row.tokens.insert(field, tokens.value(i));
                            row.sealed.insert(field, sealed.value(i).to_string());
                        }
                    }
                    rows.push(row);
                }
            }
        }
    }
    rows
}

/// Every file below `dir`, recursively.
/// The sealed results the registry in `state` keeps, and the files of
/// results in its `results/` directory: what a request leaves behind.
pub fn kept_results(state: &Path) -> usize {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let db = rusqlite::Connection::open_with_flags(state.join(cdrvault::registry::REGISTRY_FILE), flags).unwrap();
    let rows: i64 = db.query_row("SELECT count(*) FROM sealed_results", [], |r| r.get(0)).unwrap();
    rows as usize + files_below(&state.join("results")).len()
}

pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The raw identifiers of generated records, in the forms they may take:
/// as sent, and canonical (normalised) where that differs.
pub fn raw_identifiers(records: &[SyntheticCdr]) -> HashSet<String> {
    let mut set = HashSet::new();
    for record in records {
        for id in record.identifiers() {
            set.insert(id.to_string());
            // The bare digits of a number (without "+") must not leak either.
            if let Some(digits) = id.strip_prefix('+') {
                set.insert(digits.to_string());
            }
        }
    }
    set
}

/// Scans the bytes of `files` (contents and paths) and of `texts` for any of
/// `identifiers`. Returns where each leak was found, naming the place and the
/// length of the match, never the identifier itself.
pub fn find_leaks(files: &[PathBuf], texts: &[(&str, &[u8])], identifiers: &HashSet<String>) -> Vec<String> {
    let patterns: Vec<&String> = identifiers.iter().collect();
    let matcher = AhoCorasick::new(&patterns).unwrap();
    let mut leaks = Vec::new();
    for file in files {
        let path_text = file.to_string_lossy();
        if matcher.is_match(path_text.as_bytes()) {
            leaks.push(format!("file name {}", file.display()));
        }
        let bytes = std::fs::read(file).unwrap();
        if let Some(m) = matcher.find(&bytes) {
            leaks.push(format!("{} at byte {} ({} bytes)", file.display(), m.start(), m.len()));
        }
    }
    for (name, bytes) in texts {
        if let Some(m) = matcher.find(bytes) {
            leaks.push(format!("{name} at byte {} ({} bytes)", m.start(), m.len()));
        }
    }
    leaks
}

/// A plain HTTP/1.0 GET; returns the body.
pub fn http_get(address: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
