//! The tools' commands: `demo` and `produce`, with their progress and
//! summaries.

use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::config::Config;
use crate::ingest::IngestReport;
use crate::ingest::decode::Encoding;
use crate::ops::clock::{Clock, SystemClock};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::tools::synth::SynthConfig;
use crate::tools::{demo, produce};

pub(super) fn demo(
    config: &Config,
    records: Option<u64>,
    duration: Option<Duration>,
    days: u32,
    seed: u64,
    format: Encoding,
) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::on_signals()?;
    if let Some(duration) = duration {
        let timer = shutdown.clone();
        std::thread::spawn(move || {
            // A timer, not synchronisation: the demo's --duration.
            std::thread::sleep(duration);
            timer.trigger();
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
    let summary = demo::run(&options, metrics, shutdown, |report: &IngestReport| {
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

#[allow(clippy::too_many_arguments)]
pub(super) fn produce(
    brokers: String,
    topic: String,
    rate: Option<u64>,
    count: Option<u64>,
    format: Encoding,
    days: u32,
    seed: u64,
    invalid_ratio: f64,
    batch_records: usize,
) -> anyhow::Result<ExitCode> {
    let options = produce::ProduceOptions {
        brokers,
        topic,
        count,
        rate,
        format,
        batch_records,
        synth: SynthConfig { seed, days, invalid_ratio, until: SystemClock.now(), ..SynthConfig::default() },
    };
    let shutdown = Shutdown::on_signals()?;
    let bar = spinner("produced");
    let report = produce::produce(&options, &shutdown, |_| {}, |n| bar.set_position(n))?;
    bar.finish_and_clear();
    println!(
        "produced {} records ({} deliberately invalid), {} delivery failures",
        report.sent, report.invalid, report.failed
    );
    Ok(if report.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
