//! The operator's commands on the local data, keys and state: `keys`,
//! `retention`, `compact`, `preserve`, `audit verify`, `import`, `config check` and
//! `access bootstrap`. Each opens what it needs through [`Root`], calls the
//! library, and prints what it did.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::config::Config;
use super::serve::Root;
use super::{KeysCommand, RetentionCommand};
use crate::access::AccessStore;
use crate::audit::{self, AUDIT_FILE};
use crate::keys::KeyStore;
use crate::lifecycle::clock_check;
use crate::lifecycle::retention::SweepMode;
use crate::model::{PartitionDate, TimestampMicros};
use crate::ops::durable;
use crate::tools::import;

pub(super) fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Init { dir } => {
            let mut keys = config.keys.clone();
            keys.dir = dir.unwrap_or(keys.dir);
            let report = KeyStore::init_with(&keys, Some(&config.storage.data_dir))?;
            println!("initialised keys in {} ({} custody)", report.dir.display(), report.custody);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn retention(config: &Config, command: RetentionCommand) -> anyhow::Result<ExitCode> {
    /// The actor of the audit entries of this command.
    const ACTOR: &str = "cli";
    let root = Root::open(config.clone())?;
    let audit = root.audit()?;
    let orders = root.orders(&root.registries()?, &audit);
    let sweeper = root.sweeper(&audit, orders);
    match command {
        RetentionCommand::Run { as_of, dry_run } => {
            let mode = match (dry_run, as_of) {
                (true, as_of) => SweepMode::DryRun { as_of },
                (false, None) => SweepMode::Delete,
                (false, Some(_)) => {
                    anyhow::bail!("--as-of only previews: add --dry-run (deletion always happens at the clock's today)")
                }
            };
            let report = sweeper.run(mode)?;
            let verb = if dry_run { "would destroy" } else { "destroyed" };
            println!(
                "retention {} as of {}: days before {} are expired",
                report.run, report.as_of, report.oldest_retained
            );
            for day in &report.days {
                println!(
                    "{verb} {}: {} files, {} rows, key {}",
                    day.day,
                    day.files,
                    day.rows,
                    day.key_id.as_deref().unwrap_or("(already destroyed)")
                );
            }
            println!("{} days {verb} in {:.3}s", report.days.len(), report.elapsed.as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        RetentionCommand::ConfirmClock => {
            let before = sweeper.confirm_clock(ACTOR)?;
            let none = || "none".to_string();
            println!(
                "clock confirmed at {} (last sweep {}, newest day {}); retention now destroys as of {}",
                clock_check::rfc3339(before.now),
                before.last_sweep_text().unwrap_or_else(none),
                before.newest_day_text().unwrap_or_else(none),
                TimestampMicros::from_datetime(before.now).partition_date()
            );
            match before.suspicion(config.retention.max_clock_jump) {
                Some(suspicion) => println!("until now {suspicion}"),
                None => println!("the clock was not suspect"),
            }
            Ok(ExitCode::SUCCESS)
        }
        RetentionCommand::Verify { as_of } => {
            let public = audit::public_key(&root.keys)?;
            let report = sweeper.verify(as_of, &public, &config.state.dir.join(AUDIT_FILE))?;
            println!("retention verification as of {} (window: days from {} on)", report.as_of, report.oldest_retained);
            match (report.live_days.first(), report.live_days.last()) {
                (Some(first), Some(last)) => println!(
                    "live days: {} ({first} .. {last}), {} files, each with its data key",
                    report.live_days.len(),
                    report.live_files
                ),
                _ => println!("live days: none"),
            }
            println!(
                "destroyed days on record: {}, none with a wrapped key file in {}",
                report.destroyed_days.len(),
                root.keys.dir().display()
            );
            println!(
                "token keys: one per day, derived from its data key; {} destroyed days checked, none has a token \
                 key left to reverse its tokens",
                report.token_keys_gone
            );
            match &report.hsm_day_keys {
                Some(days) => println!(
                    "key custody: {}: {} day key-encryption keys listed through the module, none for a destroyed \
                     or expired day; a copy of the keys directory does not open a destroyed day",
                    report.custody,
                    days.len()
                ),
                // What destruction does not reach, said with the evidence (README, "Backups").
                None => println!(
                    "limit: key custody is {}: a copy of the keys directory taken while a day was live, with \
                     master.key, still opens a retained copy of that day's files, sealed and token columns alike; \
                     keep no key backup longer than the retention window, or use custody = \"pkcs11\"",
                    report.custody
                ),
            }
            println!(
                "cached copies: a running service reports destroyed days whose key it still caches as \
                 cdrvault_keys_cached_destroyed (alert CdrvaultDestroyedDayKeyCached)"
            );
            println!("audit trail: {} entries", report.audit_entries);
            for violation in &report.violations {
                println!("VIOLATION: {violation}");
            }
            if report.violations.is_empty() {
                println!("OK: no expired day has files, a directory or a key");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("FAILED: {} violations", report.violations.len());
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

pub(super) fn compact(config: &Config, day: Option<PartitionDate>) -> anyhow::Result<ExitCode> {
    let root = Root::open(config.clone())?;
    for report in root.compactor().run(day)? {
        if report.refused_manifest_entries > 0 {
            let day = report.day.map(|d| d.to_string()).unwrap_or_default();
            println!(
                "{day}: {} compaction manifest entries refused (not data files of the day; left alone)",
                report.refused_manifest_entries
            );
        }
        if report.files_after < report.files_before {
            let day = report.day.map(|d| d.to_string()).unwrap_or_default();
            println!(
                "{day}: {} files -> {}, {} rows, {:.1} MiB -> {:.1} MiB",
                report.files_before,
                report.files_after,
                report.rows,
                report.bytes_before as f64 / (1 << 20) as f64,
                report.bytes_after as f64 / (1 << 20) as f64
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cdrvault audit verify`: the local trail against its signed head and,
/// given a witness copy, against every head the witness kept.
pub(super) fn verify_audit(config: &Config, witness: Option<&Path>) -> anyhow::Result<ExitCode> {
    let keys = KeyStore::open_with(&config.keys, Some(&config.storage.data_dir))?;
    let public = audit::public_key(&keys)?;
    let path = config.state.dir.join(AUDIT_FILE);
    let check = audit::verify(&path, &public, &keys.audit_head_path(&path))?;
    if let Some((seq, problem)) = check.problem {
        println!("audit trail {} is damaged: first bad entry {seq}: {problem}", path.display());
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "audit trail {} verifies: {} entries, chain, signatures and signed head intact",
        path.display(),
        check.entries
    );
    if check.torn_bytes > 0 {
        println!("a torn last line of {} bytes (an interrupted write) is cut at the next append", check.torn_bytes);
    }
    let Some(witness) = witness else { return Ok(ExitCode::SUCCESS) };
    let seen = audit::verify_witness(&path, &public, witness)?;
    match seen.problem {
        None => {
            println!("the trail extends all {} heads of the witness {}", seen.heads, witness.display());
            Ok(ExitCode::SUCCESS)
        }
        Some((seq, problem)) => {
            println!("the trail does not extend the witness {} at entry {seq}: {problem}", witness.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `cdrvault access bootstrap`: the first admin, while the registry has no
/// principal.
pub(super) fn bootstrap(config: &Config, name: &str, person: &str) -> anyhow::Result<ExitCode> {
    let root = Root::open(config.clone())?;
    let store = AccessStore::new(root.registries()?.access);
    let (admin, token) = store
        .bootstrap(&*root.audit()?, name, person, root.clock.now())
        .context("bootstrap works only while the registry has no principal")?;
    println!("admin {} created; token (shown once): {}", admin.id, token.expose());
    Ok(ExitCode::SUCCESS)
}

pub(super) fn import(config: &Config, file: &Path, strict: bool) -> anyhow::Result<ExitCode> {
    let root = Root::open(config.clone())?;
    // Days this import creates keys for are audited.
    let _audit = root.audit()?;
    let processor = root.processor("import");
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let bar = ProgressBar::new(size).with_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = import::import_file(
        file,
        &processor,
        |bytes| bar.set_position(bytes),
        |line, refusal| bar.suspend(|| eprintln!("line {line}: refused: {refusal}")),
    )?;
    bar.finish_and_clear();
    println!(
        "imported {} lines: {} written into {} files, {} refused",
        report.lines,
        report.written,
        report.files,
        report.refused.len()
    );
    Ok(if strict && !report.refused.is_empty() { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

/// `config check`: what `serve` checks before it starts, without opening
/// the audit trail, the registry or Kafka: the configuration is valid, the
/// keys open (in their custody), and the state directory and what is in it
/// are private. Prints what the configuration names; no secret.
pub(super) fn check_config(config: Config) -> anyhow::Result<ExitCode> {
    let root = Root::open(config)?;
    let config = &root.config;
    let state = &config.state.dir;
    durable::ensure_private(state)?;
    if state.is_dir() {
        for entry in std::fs::read_dir(state).with_context(|| format!("listing {}", state.display()))? {
            durable::ensure_private(&entry?.path())?;
        }
    }
    let data = &config.storage.data_dir;
    anyhow::ensure!(!data.exists() || data.is_dir(), "storage.data_dir {} is not a directory", data.display());
    let topics: Vec<&str> = config.kafka.topics.iter().map(|t| t.name.as_str()).collect();
    println!("data: {}", data.display());
    println!("state: {}", state.display());
    println!("keys: {} ({} custody)", config.keys.dir.display(), root.keys.custody().name());
    println!("kafka: {} topics {}", config.kafka.brokers, topics.join(", "));
    println!("metrics and health: {}", config.http.listen);
    match config.access.listen {
        Some(listen) => println!("lawful-access API: {listen}"),
        None => println!("lawful-access API: off"),
    }
    println!("configuration ok");
    Ok(ExitCode::SUCCESS)
}
