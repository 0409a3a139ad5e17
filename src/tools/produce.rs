//! `cdrvault produce`: synthetic CDRs into a real Kafka topic, for tests,
//! benchmarks and SREs checking a deployment end to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use super::synth::{Generator, SynthConfig};
use crate::ingest::decode::Encoding;
use crate::ops::shutdown::Shutdown;

/// What to produce and where.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub brokers: String,
    pub topic: String,
    /// Stop after this many records; `None` runs until stopped.
    pub count: Option<u64>,
    /// Records per second; `None` is as fast as the client goes.
    pub rate: Option<u64>,
    pub format: Encoding,
    /// Most records per producer batch.
    pub batch_records: usize,
    pub synth: SynthConfig,
}

/// Records per producer batch unless told otherwise.
pub const DEFAULT_BATCH_RECORDS: usize = 10_000;

#[derive(Debug, Default, Clone, Copy)]
pub struct ProduceReport {
    pub sent: u64,
    pub failed: u64,
    pub invalid: u64,
}

#[derive(Default)]
struct DeliveryCounter {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Produces until `count` is reached or `shutdown`, then waits until
/// every record is delivered. Blocking.
///
/// `before_send` runs before every record with the count sent so far; the
/// demo uses it to hold the producer a bounded distance ahead of the consumer.
pub fn produce(
    options: &ProduceOptions,
    shutdown: &Shutdown,
    before_send: impl Fn(u64),
    mut on_progress: impl FnMut(u64),
) -> anyhow::Result<ProduceReport> {
    let context = DeliveryCounter::default();
    let producer: ThreadedProducer<DeliveryCounter> = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", options.batch_records.max(1).to_string())
        .set("queue.buffering.max.kbytes", "65536")
        .create_with_context(context)
        .map_err(|e| anyhow::anyhow!("cannot create the producer: {e}"))?;
    let producer = Arc::new(producer);
    let mut generator = Generator::new(options.synth.clone());
    let mut report = ProduceReport::default();
    let started = Instant::now();
    while options.count.is_none_or(|c| report.sent < c) && !shutdown.is_triggered() {
        before_send(report.sent);
        let record = generator.next_record();
        report.invalid += u64::from(record.defect.is_some());
        let payload = match options.format {
            Encoding::Json => record.to_json(),
            Encoding::Protobuf => record.to_protobuf(),
        };
        // Keyed by record id, so a record always lands on the same partition.
        let mut message = BaseRecord::to(&options.topic).key(record.record_id.as_bytes()).payload(&payload);
        loop {
            match producer.send(message) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    message = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => anyhow::bail!("produce failed: {e}"),
            }
        }
        report.sent += 1;
        if report.sent % 10_000 == 0 {
            on_progress(report.sent);
        }
        if let Some(rate) = options.rate.filter(|r| *r > 0) {
            // Pacing, not synchronisation: hold the requested rate.
            let due = Duration::from_secs_f64(report.sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    producer.flush(Duration::from_secs(60)).map_err(|e| anyhow::anyhow!("records not delivered within 60s: {e}"))?;
    on_progress(report.sent);
    report.failed = producer.context().failed.load(Ordering::Relaxed);
    Ok(report)
}
