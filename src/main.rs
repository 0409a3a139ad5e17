//! The `cdrvault` command: parses the command line, loads the configuration,
//! sets up logging and metrics, and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use cdrvault::audit::AuditTrail;
use cdrvault::clock::{Clock, SystemClock};
use cdrvault::config::{Config, LogFormat};
use cdrvault::decode::Encoding;
use cdrvault::ingest::{Ingest, IngestReport, StopAfter};
use cdrvault::keys::KeyStore;
use cdrvault::metrics::Metrics;
use cdrvault::models::PartitionDate;
use cdrvault::pipeline::Processor;
use cdrvault::retention::{SweepMode, Sweeper};
use cdrvault::service::AccessService;
use cdrvault::source::KafkaSource;
use cdrvault::source::dead_letter::DeadLetter;
use cdrvault::synth::SynthConfig;
use cdrvault::{api, client, demo, import, produce};

#[derive(Parser)]
#[command(name = "cdrvault", version, about = "Lawful, private retention of telecom call-detail records")]
struct Cli {
    /// TOML configuration file (see deploy/cdrvault.example.toml).
    #[arg(long, global = true, env = "CDRVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides storage.data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Keys directory (overrides keys.dir).
    #[arg(long, global = true)]
    keys_dir: Option<PathBuf>,
    /// State directory: audit trail, registry, sealed results (overrides state.dir).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on an embedded Kafka with synthetic records.
    Demo {
        /// Records to generate and ingest (default 200000 unless --duration is given).
        #[arg(long)]
        records: Option<u64>,
        /// Stop after this long, e.g. 30s or 2m.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Spread start times over this many days before now.
        #[arg(long, default_value_t = 7)]
        days: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Consume CDRs from Kafka and store them (the service).
    Serve,
    /// Produce synthetic CDRs into a Kafka topic.
    Produce {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
        /// Records per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
        /// Records to send (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        #[arg(long, default_value_t = 1)]
        days: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Share of deliberately invalid records.
        #[arg(long, default_value_t = 0.01)]
        invalid_ratio: f64,
    },
    /// Backfill from a file of JSON records, one per line.
    Import {
        file: PathBuf,
        /// Exit non-zero if any line was refused.
        #[arg(long)]
        strict: bool,
    },
    /// Manage keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Destroy expired days, or check that it was done.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Preservation orders ("quick freeze"): keep named targets' records beyond retention.
    Preserve {
        #[command(subcommand)]
        command: PreserveCommand,
    },
    /// Check the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Compact closed days: each day's files become one file per token key,
    /// sorted for lookups, with its index.
    Compact {
        /// Only this day (YYYY-MM-DD); default every closed day inside retention.
        #[arg(long, value_parser = parse_date)]
        day: Option<PartitionDate>,
    },
    /// Run the lawful-access API, or create its first admin.
    Access {
        #[command(subcommand)]
        command: AccessCommand,
    },
    /// Authorities (client of the lawful-access API).
    Authority {
        #[command(subcommand)]
        command: client::AuthorityCommand,
    },
    /// Principals and their tokens (client).
    Principal {
        #[command(subcommand)]
        command: client::PrincipalCommand,
    },
    /// Warrants: register, approve, reject, close, show (client).
    Warrant {
        #[command(subcommand)]
        command: client::WarrantCommand,
    },
    /// Requests under a warrant and their results (client).
    Request {
        #[command(subcommand)]
        command: client::RequestCommand,
    },
    /// The yearly statistics of lawful requests (client, auditor).
    Report {
        #[arg(long)]
        year: i32,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Data-subject access export (client, DPO).
    Subject {
        #[command(subcommand)]
        command: client::SubjectCommand,
    },
}

#[derive(Subcommand)]
enum AccessCommand {
    /// Create the first admin principal in the registry and print its token
    /// once. Works only while the registry has no principal.
    Bootstrap {
        #[arg(long, default_value = "admin")]
        name: String,
    },
    /// Serve the lawful-access gRPC API alone (no ingest).
    Serve {
        /// Overrides access.listen, e.g. 127.0.0.1:50051 (port 0: any free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Destroy every expired day now (the service also does this on its schedule).
    Run {
        /// Act as if today were this date (YYYY-MM-DD); with --dry-run, a preview.
        #[arg(long, value_parser = parse_date)]
        as_of: Option<PartitionDate>,
        /// Only list what would be destroyed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check that no expired day has files, a directory or a key, that every
    /// live day has its key and that the audit trail verifies. Exits non-zero
    /// on any violation.
    Verify {
        #[arg(long, value_parser = parse_date)]
        as_of: Option<PartitionDate>,
    },
}

#[derive(Subcommand)]
enum PreserveCommand {
    /// Place an order.
    Add {
        /// The ordering authority.
        #[arg(long)]
        authority: String,
        /// The order's reference at that authority.
        #[arg(long)]
        reference: String,
        /// A target as kind:value (msisdn, imsi, imei, sip, cell, ip); repeat for several.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// First day of communications covered (YYYY-MM-DD, UTC).
        #[arg(long, value_parser = parse_date)]
        from: PartitionDate,
        /// Last day of communications covered (inclusive).
        #[arg(long, value_parser = parse_date)]
        to: PartitionDate,
        /// The day the order ends; its copies are destroyed after it.
        #[arg(long, value_parser = parse_date)]
        until: PartitionDate,
    },
    /// List orders (no target values are shown).
    List,
    /// Move an order's end date.
    Extend {
        order: String,
        #[arg(long, value_parser = parse_date)]
        until: PartitionDate,
    },
    /// Lift an order: destroy its key and copies now.
    Lift { order: String },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain, the signatures and the signed head; name the
    /// first bad entry. Reads the local trail, or with --remote asks the
    /// lawful-access API (auditor role).
    Verify {
        #[arg(long)]
        remote: bool,
        #[command(flatten)]
        server: client::ServerArgs,
    },
}

fn parse_date(text: &str) -> Result<PartitionDate, String> {
    PartitionDate::parse(text).ok_or_else(|| format!("`{text}` is not a date of the form YYYY-MM-DD"))
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create the master key and the first token key.
    Init {
        /// The keys directory (same as --keys-dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Create a new token key and make it the active one.
    RotateToken {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Protobuf,
}

impl From<Format> for Encoding {
    fn from(f: Format) -> Self {
        match f {
            Format::Json => Encoding::Json,
            Format::Protobuf => Encoding::Protobuf,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(dir) = &cli.data_dir {
        config.storage.data_dir = dir.clone();
    }
    if let Some(dir) = &cli.keys_dir {
        config.keys.dir = dir.clone();
    }
    if let Some(dir) = &cli.state_dir {
        config.state.dir = dir.clone();
    }
    let quiet = matches!(cli.command, Command::Demo { .. } | Command::Import { .. } | Command::Produce { .. });
    init_logging(&config, quiet);

    match cli.command {
        Command::Demo { records, duration, days, seed, format } => {
            let records = records.or(if duration.is_some() { None } else { Some(200_000) });
            run_demo(&config, records, duration, days, seed, format.into())
        }
        Command::Serve => serve(config),
        Command::Produce { brokers, topic, rate, count, format, days, seed, invalid_ratio } => {
            let options = produce::ProduceOptions {
                brokers,
                topic,
                count,
                rate,
                format: format.into(),
                synth: SynthConfig { seed, days, invalid_ratio, until: SystemClock.now(), ..SynthConfig::default() },
            };
            let stop = stop_on_ctrl_c()?;
            let bar = spinner("produced");
            let report = produce::produce(&options, &stop, |_| {}, |n| bar.set_position(n))?;
            bar.finish_and_clear();
            println!(
                "produced {} records ({} deliberately invalid), {} delivery failures",
                report.sent, report.invalid, report.failed
            );
            Ok(if report.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Import { file, strict } => run_import(&config, &file, strict),
        Command::Retention { command } => {
            let sweeper = open_sweeper(&config, None)?;
            match command {
                RetentionCommand::Run { as_of, dry_run } => {
                    let mode = if dry_run { SweepMode::DryRun } else { SweepMode::Delete };
                    let report = sweeper.run(as_of, mode)?;
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
                RetentionCommand::Verify { as_of } => {
                    let keys = KeyStore::open(&config.keys.dir, Some(&config.storage.data_dir))?;
                    let public = audit_public_key(&keys)?;
                    let audit_path = config.state.dir.join(cdrvault::audit::AUDIT_FILE);
                    let report = sweeper.verify(as_of, &public, &audit_path)?;
                    println!(
                        "retention verification as of {} (window: days from {} on)",
                        report.as_of, report.oldest_retained
                    );
                    match (report.live_days.first(), report.live_days.last()) {
                        (Some(first), Some(last)) => println!(
                            "live days: {} ({first} .. {last}), {} files, each with its data key",
                            report.live_days.len(),
                            report.live_files
                        ),
                        _ => println!("live days: none"),
                    }
                    println!("destroyed days on record: {}", report.destroyed_days.len());
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
        Command::Preserve { command } => run_preserve(&config, command),
        Command::Audit { command: AuditCommand::Verify { remote: true, server } } => {
            let intact = block_on(client::verify_audit(server))?;
            Ok(if intact { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Compact { day } => compact(&config, day),
        Command::Access { command: AccessCommand::Bootstrap { name } } => bootstrap(&config, &name),
        Command::Access { command: AccessCommand::Serve { listen } } => serve_access(config, listen),
        Command::Authority { command } => block_on(client::authority(command)).map(|()| ExitCode::SUCCESS),
        Command::Principal { command } => block_on(client::principal(command)).map(|()| ExitCode::SUCCESS),
        Command::Warrant { command } => block_on(client::warrant(command)).map(|()| ExitCode::SUCCESS),
        Command::Request { command } => block_on(client::request(command)).map(|()| ExitCode::SUCCESS),
        Command::Report { year, server } => block_on(client::report(year, server)).map(|()| ExitCode::SUCCESS),
        Command::Subject { command } => block_on(client::subject(command)).map(|()| ExitCode::SUCCESS),
        Command::Audit { command: AuditCommand::Verify { remote: false, .. } } => {
            let keys = KeyStore::open(&config.keys.dir, Some(&config.storage.data_dir))?;
            let public = audit_public_key(&keys)?;
            let path = config.state.dir.join(cdrvault::audit::AUDIT_FILE);
            let check = cdrvault::audit::verify(&path, &public, &keys.audit_head_path())?;
            match check.problem {
                None => {
                    println!(
                        "audit trail {} verifies: {} entries, chain, signatures and signed head intact",
                        path.display(),
                        check.entries
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some((seq, problem)) => {
                    println!("audit trail {} is damaged: first bad entry {seq}: {problem}", path.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Keys { command } => match command {
            KeysCommand::Init { dir } => {
                let dir = dir.unwrap_or(config.keys.dir.clone());
                let report = KeyStore::init(&dir, Some(&config.storage.data_dir))?;
                println!("initialised keys in {} (token key {})", report.dir.display(), report.token_key);
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::RotateToken { dir } => {
                let dir = dir.unwrap_or(config.keys.dir.clone());
                let mut store = KeyStore::open(&dir, Some(&config.storage.data_dir))?;
                let id = store.rotate_token_key()?;
                println!("token key {id} is now active; earlier keys remain for lookups");
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}

fn audit_public_key(keys: &KeyStore) -> anyhow::Result<Vec<u8>> {
    use ring::signature::KeyPair;
    let seed = keys.audit_signing_seed()?;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed.expose())
        .map_err(|_| anyhow::anyhow!("the audit signing key is invalid"))?;
    Ok(pair.public_key().as_ref().to_vec())
}

fn open_sweeper(config: &Config, metrics: Option<Arc<Metrics>>) -> anyhow::Result<Sweeper> {
    config.validate()?;
    let keys = Arc::new(KeyStore::open(&config.keys.dir, Some(&config.storage.data_dir))?);
    let audit = Arc::new(AuditTrail::open(&config.state.dir, &keys)?);
    let orders = Arc::new(cdrvault::orders::OrderStore::open(&config.state.dir)?);
    let mut sweeper =
        Sweeper::new(&config.storage.data_dir, keys, audit, Arc::new(SystemClock), config.retention.clone())
            .with_orders(orders, config.parquet.clone());
    if let Some(metrics) = metrics {
        sweeper = sweeper.with_metrics(metrics);
    }
    Ok(sweeper)
}

fn run_preserve(config: &Config, command: PreserveCommand) -> anyhow::Result<ExitCode> {
    use cdrvault::audit::AuditEvent;
    use cdrvault::orders::{NewOrder, OrderStore, TargetInput};
    config.validate()?;
    let keys = Arc::new(KeyStore::open(&config.keys.dir, Some(&config.storage.data_dir))?);
    let audit = AuditTrail::open(&config.state.dir, &keys)?;
    let orders = OrderStore::open(&config.state.dir)?;
    let now = SystemClock.now();
    let today = cdrvault::models::TimestampMicros::from_datetime(now).partition_date();
    match command {
        PreserveCommand::Add { authority, reference, targets, from, to, until } => {
            let targets =
                targets.iter().enumerate().map(|(i, t)| TargetInput::parse(t, i + 1)).collect::<Result<Vec<_>, _>>()?;
            let window_end = cdrvault::models::TimestampMicros(to.start().0 + 86_400_000_000 - 1);
            let order = orders.place(
                NewOrder {
                    authority,
                    reference,
                    targets,
                    window_start: from.start().to_datetime().unwrap_or(now),
                    window_end: window_end.to_datetime().unwrap_or(now),
                    ends: until,
                },
                &keys,
                today,
                now,
            )?;
            audit.append(
                "cli",
                &AuditEvent::OrderPlaced {
                    order: order.id.clone(),
                    authority: order.authority.clone(),
                    targets: order.targets.len() as u64,
                    window_start: from.to_string(),
                    window_end: to.to_string(),
                    ends: until.to_string(),
                },
                now,
            )?;
            println!(
                "placed preservation order {} ({} targets, {from} .. {to}, until {until})",
                order.id,
                order.targets.len()
            );
        }
        PreserveCommand::List => {
            for order in orders.list()? {
                println!(
                    "{}  {:?}  authority={} reference={} targets={} window={}..{} until={}",
                    order.id,
                    order.status,
                    order.authority,
                    order.reference,
                    order.targets.len(),
                    order.window_start.partition_date(),
                    order.window_end.partition_date(),
                    order.ends
                );
            }
        }
        PreserveCommand::Extend { order, until } => {
            orders.extend(&order, until)?;
            audit.append("cli", &AuditEvent::OrderExtended { order: order.clone(), ends: until.to_string() }, now)?;
            println!("order {order} now ends {until}");
        }
        PreserveCommand::Lift { order } => {
            drop(audit);
            let sweeper = open_sweeper(config, None)?;
            let files = sweeper.lift(&order, "lifted", "cli")?;
            println!("order {order} lifted: key destroyed, {files} preserved files deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init_logging(config: &Config, quiet: bool) {
    // The interactive commands print their own progress; their logs default
    // to warnings so that the progress stays readable.
    let default = if quiet { "warn" } else { config.log.filter.as_str() };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// A flag set by Ctrl-C or SIGTERM: the one shutdown signal.
fn stop_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        runtime.block_on(async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            flag.store(true, Ordering::Relaxed);
        });
    })?;
    Ok(stop)
}

fn spinner(what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} records {msg} ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn run_demo(
    config: &Config,
    records: Option<u64>,
    duration: Option<Duration>,
    days: u32,
    seed: u64,
    format: Encoding,
) -> anyhow::Result<ExitCode> {
    let stop = stop_on_ctrl_c()?;
    if let Some(duration) = duration {
        let flag = Arc::clone(&stop);
        std::thread::spawn(move || {
            // A timer, not synchronisation: the demo's --duration.
            std::thread::sleep(duration);
            flag.store(true, Ordering::Relaxed);
        });
    }
    let options = demo::DemoOptions {
        records,
        days,
        seed,
        format,
        data_dir: config.storage.data_dir.clone(),
        keys_dir: config.keys.dir.clone(),
    };
    let metrics = Metrics::new();
    let bar = match records {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} records ingested ({per_sec}, {msg})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => spinner("ingested"),
    };
    eprintln!(
        "cdrvault demo: embedded Kafka, {} synthetic {} records over {days} days -> {}",
        records.map_or("unbounded".to_string(), |n| n.to_string()),
        format.as_str(),
        config.storage.data_dir.display()
    );
    let summary = demo::run(&options, metrics, stop, |report: &IngestReport| {
        bar.set_position(report.records_in);
        bar.set_message(format!("{} files", report.files));
    })?;
    bar.finish_and_clear();
    println!(
        "produced:        {} ({} deliberately invalid, {} delivery failures)",
        summary.produced.sent, summary.produced.invalid, summary.produced.failed
    );
    print_summary(&summary.ingest, &summary.data_dir);
    let walk = demo::lawful_access(&options, &config.state.dir)?;
    println!(
        "lawful access:   authority {}, warrant {} registered by one reviewer, approved by another",
        walk.authority, walk.warrant
    );
    println!(
        "delivered:       request {} {}: {} records, {} bytes (ETSI XML), sha256 {}",
        walk.request_id, walk.status, walk.records, walk.bytes, walk.sha256
    );
    println!(
        "audit trail:     {} entries, {} ({})",
        walk.audit_entries,
        if walk.audit_intact { "intact" } else { "DAMAGED" },
        walk.state_dir.display()
    );
    Ok(if walk.audit_intact { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_summary(report: &IngestReport, data_dir: &std::path::Path) {
    println!("records in:      {}", report.records_in);
    println!("written:         {}", report.written);
    println!("refused:         {}", report.refused_total());
    for (reason, n) in &report.refused {
        println!("  {reason:<24} {n}");
    }
    println!("files:           {} ({:.1} MiB)", report.files, report.bytes_written as f64 / (1 << 20) as f64);
    let days: Vec<String> = report.days.iter().map(|d| d.to_string()).collect();
    println!("days:            {} ({})", days.len(), days.join(", "));
    println!("data:            {}/cdr/dt=YYYY-MM-DD/*.parquet", data_dir.display());
}

fn serve(config: Config) -> anyhow::Result<ExitCode> {
    config.validate()?;
    let keys = Arc::new(
        KeyStore::open(&config.keys.dir, Some(&config.storage.data_dir))
            .with_context(|| format!("opening keys in {}", config.keys.dir.display()))?,
    );
    let metrics = Metrics::new();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let stop = stop_on_ctrl_c()?;
    let ready = Arc::new(AtomicBool::new(false));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let shutdown_flag = Arc::clone(&stop);
    let (address, http) =
        runtime.block_on(api::serve(config.http.listen, Arc::clone(&metrics), Arc::clone(&ready), async move {
            while !shutdown_flag.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))?;
    tracing::info!(%address, "metrics and health endpoints listening");

    let access = match config.access.listen {
        Some(listen) => {
            let service = access_service(&config, Arc::clone(&keys))?.with_metrics(Arc::clone(&metrics));
            runtime.spawn(cdrvault::periodic::run_periodically(
                service.lookup_engine(),
                CACHE_SWEEP_INTERVAL,
                Arc::clone(&stop),
            ));
            let tls = config.access.tls().map(|files| files.server_config()).transpose()?;
            let listener = runtime.block_on(tokio::net::TcpListener::bind(listen))?;
            tracing::info!(address = %listener.local_addr()?, "lawful-access API listening");
            Some(runtime.spawn(cdrvault::service::serve(listener, service, tls, wait_for(Arc::clone(&stop)))))
        }
        None => None,
    };
    let sweeper = Arc::new(open_sweeper(&config, Some(Arc::clone(&metrics)))?);
    let sweeps =
        runtime.spawn(cdrvault::periodic::run_periodically(sweeper, config.retention.interval, Arc::clone(&stop)));
    let compactions = config.compaction.enabled.then(|| {
        let compactor = Arc::new(compactor(&config, Arc::clone(&keys)).with_metrics(Arc::clone(&metrics)));
        runtime.spawn(cdrvault::periodic::run_periodically(compactor, config.compaction.interval, Arc::clone(&stop)))
    });

    let ingest = Ingest {
        source: KafkaSource::connect(&config.kafka, &config.ingest, Arc::clone(&metrics))?,
        dead_letter: DeadLetter::connect(&config.kafka)?,
        processor: Processor::from_config(&config, keys, clock),
        metrics,
    };
    ready.store(true, Ordering::Relaxed);
    tracing::info!(topics = config.kafka.topics.len(), data_dir = %config.storage.data_dir.display(), "ingest started");
    let result = ingest.run(&stop, StopAfter::default(), |_| {});
    ready.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = runtime.block_on(http);
    let _ = runtime.block_on(sweeps);
    if let Some(compactions) = compactions {
        let _ = runtime.block_on(compactions);
    }
    if let Some(access) = access {
        let _ = runtime.block_on(access);
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

fn compactor(config: &Config, keys: Arc<KeyStore>) -> cdrvault::compact::Compactor {
    let writer = cdrvault::write::ParquetWriter::new(&config.storage.data_dir, config.parquet.clone());
    cdrvault::compact::Compactor::new(writer, keys, Arc::new(SystemClock), config.retention.days)
}

fn compact(config: &Config, day: Option<PartitionDate>) -> anyhow::Result<ExitCode> {
    config.validate()?;
    let keys = Arc::new(KeyStore::open(&config.keys.dir, Some(&config.storage.data_dir))?);
    for report in compactor(config, keys).run(day)? {
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

fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(work)
}

fn bootstrap(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let keys = KeyStore::open(&config.keys.dir, Some(&config.storage.data_dir))?;
    let store = cdrvault::access::AccessStore::open(&config.state.dir)?;
    let now = chrono::Utc::now();
    let roles = [cdrvault::access::Role::Admin].into();
    let (admin, token) = store
        .create_principal(None, name, roles, None, now)
        .context("bootstrap works only while the registry has no principal")?;
    let audit = AuditTrail::open(&config.state.dir, &keys)?;
    let event = cdrvault::audit::AuditEvent::PrincipalCreated {
        principal: admin.id.clone(),
        roles: vec!["admin".into()],
        authority: None,
    };
    audit.append("bootstrap", &event, now)?;
    println!("admin {} created; token (shown once): {}", admin.id, token.expose());
    Ok(ExitCode::SUCCESS)
}

/// How often the lawful-access service forgets cached files of destroyed
/// days (their footers hold a copy of the destroyed key).
const CACHE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The lawful-access service over the configured directories.
fn access_service(config: &Config, keys: Arc<KeyStore>) -> anyhow::Result<AccessService> {
    let audit = Arc::new(AuditTrail::open(&config.state.dir, &keys)?);
    let settings = config.access.settings(config.retention.days);
    Ok(AccessService::new(&config.storage.data_dir, &config.state.dir, keys, audit, Arc::new(SystemClock), settings)?)
}

/// Runs the API until Ctrl-C or SIGTERM.
fn serve_access(config: Config, listen: Option<std::net::SocketAddr>) -> anyhow::Result<ExitCode> {
    config.validate()?;
    let listen = listen.or(config.access.listen).context("no address: set access.listen or pass --listen")?;
    let keys = Arc::new(KeyStore::open(&config.keys.dir, Some(&config.storage.data_dir))?);
    let service = access_service(&config, keys)?;
    let tls = config.access.tls().map(|files| files.server_config()).transpose().context("reading the TLS files")?;
    let stop = stop_on_ctrl_c()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.spawn(cdrvault::periodic::run_periodically(
        service.lookup_engine(),
        CACHE_SWEEP_INTERVAL,
        Arc::clone(&stop),
    ));
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        // The address on stdout, so that scripts binding port 0 can find it.
        println!("lawful-access API listening on {address}");
        use std::io::Write;
        std::io::stdout().flush()?;
        tracing::info!(%address, "lawful-access API listening");
        cdrvault::service::serve(listener, service, tls, wait_for(stop)).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for(stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn run_import(config: &Config, file: &std::path::Path, strict: bool) -> anyhow::Result<ExitCode> {
    let keys = Arc::new(KeyStore::open(&config.keys.dir, Some(&config.storage.data_dir))?);
    let processor = Processor::from_config(config, keys, Arc::new(SystemClock));
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
