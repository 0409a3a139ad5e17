//! The whole command line: the server (`serve`, `access serve`), the
//! operator's commands on local data (`keys`, `retention`, `compact`,
//! `preserve`, `audit verify`, `import`, `access bootstrap`), the clients of
//! the lawful-access API (`authority`, `principal`, `warrant`, `request`,
//! `report`, `subject`), the tools (`demo`, `produce`), the configuration
//! they all read ([`config`]), and the targets files the clients read
//! targets from ([`targets`]: never from an argument).
//!
//! The binary is [`main`]. Commands open what they need once
//! ([`serve`] is the composition root of the service) and hand it down;
//! they print, and decide nothing the library does not.

mod access;
pub mod config;
mod demo;
mod local;
mod orders;
mod serve;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::ingest::decode::Encoding;
use crate::model::PartitionDate;
use crate::ops::config::LogFormat;
use config::Config;

#[derive(Parser)]
#[command(name = "cdrvault", version, about = "Lawful, private retention of telecom call-detail records")]
pub struct Cli {
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
        /// Most records per producer batch (the broker stores each batch
        /// as one unit).
        #[arg(long, default_value_t = crate::tools::produce::DEFAULT_BATCH_RECORDS)]
        batch_records: usize,
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
    /// Preservation orders ("quick freeze") through the lawful-access API:
    /// keep named subscribers' records beyond retention, under review.
    Preserve {
        #[command(subcommand)]
        command: orders::PreserveCommand,
    },
    /// Check the configuration and the directories and keys it names,
    /// without starting anything (a service manager's pre-start check).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
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
        command: access::AuthorityCommand,
    },
    /// Principals and their tokens (client).
    Principal {
        #[command(subcommand)]
        command: access::PrincipalCommand,
    },
    /// Warrants: register, approve, reject, close, show (client).
    Warrant {
        #[command(subcommand)]
        command: access::WarrantCommand,
    },
    /// Requests under a warrant and their results (client).
    Request {
        #[command(subcommand)]
        command: access::RequestCommand,
    },
    /// The yearly statistics of lawful requests (client, auditor).
    Report {
        #[arg(long)]
        year: i32,
        #[command(flatten)]
        server: access::ServerArgs,
    },
    /// Data-subject access export (client, DPO).
    Subject {
        #[command(subcommand)]
        command: access::SubjectCommand,
    },
}

#[derive(Subcommand)]
enum AccessCommand {
    /// Create the first admin principal in the registry and print its token
    /// once. Works only while the registry has no principal.
    Bootstrap {
        #[arg(long, default_value = "admin")]
        name: String,
        /// The person the admin principal belongs to (default: its name).
        #[arg(long)]
        person: Option<String>,
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
    /// Destroy every day expired today (the service also does this on its
    /// schedule). Refused while the clock is suspect: see confirm-clock.
    Run {
        /// With --dry-run only: preview as if today were this date
        /// (YYYY-MM-DD). Deletion always happens at the clock's today.
        #[arg(long, value_parser = parse_date)]
        as_of: Option<PartitionDate>,
        /// Only list what would be destroyed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Vouch for the clock after a sweep was refused because the clock went
    /// back before the last sweep or jumped beyond it and the newest data:
    /// audited, then "now" is recorded as the last sweep, so the next sweep
    /// destroys as of today. Check the time first, and what would go with
    /// `retention run --dry-run`.
    ConfirmClock,
    /// Check that no expired day has files, a directory or a key, that every
    /// live day has its key and that the audit trail verifies. Exits non-zero
    /// on any violation.
    Verify {
        #[arg(long, value_parser = parse_date)]
        as_of: Option<PartitionDate>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration, open the keys, and check that
    /// the state directory is private; print what it names, exit non-zero
    /// on the first problem.
    Check,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain, the signatures and the signed head; name the
    /// first bad entry. Reads the local trail, or with --remote asks the
    /// lawful-access API (auditor role).
    Verify {
        #[arg(long)]
        remote: bool,
        /// Also check that the trail extends every head in this copy of the
        /// witness file (`audit.witness_file`): a rollback or rewrite by a
        /// holder of the signing key fails here.
        #[arg(long, conflicts_with = "remote")]
        witness: Option<PathBuf>,
        #[command(flatten)]
        server: access::ServerArgs,
    },
}

fn parse_date(text: &str) -> Result<PartitionDate, String> {
    PartitionDate::parse(text).ok_or_else(|| format!("`{text}` is not a date of the form YYYY-MM-DD"))
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create the root key (in `master.key`, or in the HSM with
    /// `[keys] custody = "pkcs11"`) and the audit signing key. Each day's
    /// data and token keys are created when the day is first written.
    Init {
        /// The keys directory (same as --keys-dir).
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

/// The `cdrvault` binary: parses the command line and runs it.
pub fn main() -> ExitCode {
    match run(Cli::parse()) {
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
            demo::demo(&config, records, duration, days, seed, format.into())
        }
        Command::Produce { brokers, topic, rate, count, format, days, seed, invalid_ratio, batch_records } => {
            demo::produce(brokers, topic, rate, count, format.into(), days, seed, invalid_ratio, batch_records)
        }
        Command::Serve => serve::serve(config),
        Command::Access { command: AccessCommand::Serve { listen } } => serve::serve_access(config, listen),
        Command::Access { command: AccessCommand::Bootstrap { name, person } } => {
            local::bootstrap(&config, &name, person.as_deref().unwrap_or(&name))
        }
        Command::Import { file, strict } => local::import(&config, &file, strict),
        Command::Keys { command } => local::keys(&config, command),
        Command::Retention { command } => local::retention(&config, command),
        Command::Preserve { command } => block_on(orders::preserve(command)).map(|()| ExitCode::SUCCESS),
        Command::Compact { day } => local::compact(&config, day),
        Command::Config { command: ConfigCommand::Check } => local::check_config(config),
        Command::Audit { command: AuditCommand::Verify { remote: false, witness, .. } } => {
            local::verify_audit(&config, witness.as_deref())
        }
        Command::Audit { command: AuditCommand::Verify { remote: true, server, .. } } => {
            let intact = block_on(access::verify_audit(server))?;
            Ok(if intact { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Authority { command } => block_on(access::authority(command)).map(|()| ExitCode::SUCCESS),
        Command::Principal { command } => block_on(access::principal(command)).map(|()| ExitCode::SUCCESS),
        Command::Warrant { command } => block_on(access::warrant(command)).map(|()| ExitCode::SUCCESS),
        Command::Request { command } => block_on(access::request(command)).map(|()| ExitCode::SUCCESS),
        Command::Report { year, server } => block_on(access::report(year, server)).map(|()| ExitCode::SUCCESS),
        Command::Subject { command } => block_on(access::subject(command)).map(|()| ExitCode::SUCCESS),
    }
}

fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(work)
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
