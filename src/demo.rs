//! `cdrvault demo`: the main job on an embedded default.
//!
//! It starts librdkafka's in-process mock cluster, feeds it synthetic CDRs
//! with a realistic mix (including a few invalid ones), and runs the very
//! same ingest loop as `serve` into a local data directory, then reports
//! what it did. Nothing here is a shortcut around the real pipeline: only
//! the broker is embedded.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::mocking::MockCluster;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, TopicConfig};
use crate::decode::Encoding;
use crate::ingest::{Ingest, IngestReport, StopAfter};
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::pipeline::Processor;
use crate::produce::{ProduceOptions, ProduceReport, produce};
use crate::source::KafkaSource;
use crate::source::dead_letter::DeadLetter;
use crate::synth::SynthConfig;

pub const DEMO_TOPIC: &str = "cdr";
pub const DEMO_DEAD_LETTER_TOPIC: &str = "cdr.dead-letter";
const DEMO_PARTITIONS: i32 = 8;
/// How far the demo's producer may run ahead of ingest, in records. The mock
/// cluster keeps only 5 MiB per partition and drops older messages, like a
/// retention limit; this window stays well inside it.
const PRODUCER_WINDOW: u64 = 60_000;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Records to generate; `None` runs until `stop` (duration or Ctrl-C).
    pub records: Option<u64>,
    pub days: u32,
    pub seed: u64,
    pub format: Encoding,
    pub data_dir: PathBuf,
    pub keys_dir: PathBuf,
}

#[derive(Debug)]
pub struct DemoSummary {
    pub produced: ProduceReport,
    pub ingest: IngestReport,
    pub data_dir: PathBuf,
}

/// Runs the demo until `options.records` are ingested or `stop` is set.
/// Blocking.
pub fn run(
    options: &DemoOptions,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    mut on_batch: impl FnMut(&IngestReport) + Send,
) -> anyhow::Result<DemoSummary> {
    let cluster = MockCluster::new(1).map_err(|e| anyhow::anyhow!("cannot start the mock Kafka cluster: {e}"))?;
    cluster.create_topic(DEMO_TOPIC, DEMO_PARTITIONS, 1)?;
    cluster.create_topic(DEMO_DEAD_LETTER_TOPIC, 1, 1)?;
    let brokers = cluster.bootstrap_servers();

    let mut config = Config::default();
    config.storage.data_dir = options.data_dir.clone();
    config.keys.dir = options.keys_dir.clone();
    config.kafka.brokers = brokers.clone();
    config.kafka.group_id = "cdrvault-demo".into();
    config.kafka.topics = vec![TopicConfig { name: DEMO_TOPIC.into(), encoding: options.format }];
    config.kafka.dead_letter_topic = DEMO_DEAD_LETTER_TOPIC.into();
    config.ingest.batch_max_records = 50_000;
    config.ingest.batch_linger = Duration::from_millis(500);
    config.validate()?;

    let keys = Arc::new(KeyStore::open_or_init(&config.keys.dir, Some(&config.storage.data_dir))?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let processor = Processor::from_config(&config, keys, Arc::clone(&clock));
    let ingest = Ingest {
        source: KafkaSource::connect(&config.kafka, &config.ingest, Arc::clone(&metrics))?,
        dead_letter: DeadLetter::connect(&config.kafka)?,
        processor,
        metrics,
    };
    let produce_options = ProduceOptions {
        brokers,
        topic: DEMO_TOPIC.into(),
        count: options.records,
        rate: None,
        format: options.format,
        synth: SynthConfig { seed: options.seed, days: options.days, until: clock.now(), ..SynthConfig::default() },
    };

    let consumed = AtomicU64::new(0);
    let hold_back = |sent: u64| {
        // Backpressure, as a real producer meets it: wait while too far ahead.
        while sent.saturating_sub(consumed.load(Ordering::Relaxed)) >= PRODUCER_WINDOW && !stop.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let (produced, ingested) = std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            let result = produce(&produce_options, &stop, hold_back, |_| {});
            if result.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            result
        });
        let ingested = ingest.run(&stop, StopAfter { records: options.records }, |report| {
            consumed.store(report.records_in, Ordering::Relaxed);
            on_batch(report);
        });
        // When ingest ends first (stop flag, or an error), the producer must
        // end too.
        stop.store(true, Ordering::Relaxed);
        let produced = producer.join().unwrap_or_else(|_| Err(anyhow::anyhow!("producer thread panicked")));
        (produced, ingested)
    });
    drop(cluster);
    Ok(DemoSummary { produced: produced?, ingest: ingested?, data_dir: options.data_dir.clone() })
}
