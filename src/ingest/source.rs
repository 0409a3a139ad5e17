//! The Kafka source: a consumer-group member that hands out bounded batches.
//!
//! This module owns the Kafka consumer and its settings. It never stores or
//! commits an offset on its own: `enable.auto.offset.store` is off, and
//! offsets are stored only through [`super::checkpoint`] after the files
//! holding the records are durable. Memory is bounded twice: librdkafka's
//! prefetch queue has a size cap, and a batch is cut at a record and a byte
//! limit; while a batch is being written nothing more is taken from the queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use tracing::warn;

use super::config::{IngestConfig, KafkaConfig};
use super::decode::Encoding;
use super::ownership::{Cursors, Ownership};
use super::process::Input;
use crate::storage::checkpoint::{PartitionId, Range};

/// Where a record came from: enough to store its offset and to point at it
/// from the dead-letter topic, nothing about its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// A batch: the inputs and, index for index, where each came from; the
/// range of each partition it covers, and the epoch it was read in
/// ([`super::ownership`]).
#[derive(Debug, Default)]
pub struct Batch {
    pub inputs: Vec<Input>,
    pub positions: Vec<Position>,
    pub bytes: usize,
    pub ranges: Vec<Range>,
    pub epoch: u64,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }
}

pub type SourceConsumer = BaseConsumer<Ownership>;

/// The consumer and the encoding of each subscribed topic.
pub struct KafkaSource {
    consumer: Arc<SourceConsumer>,
    encodings: HashMap<Arc<str>, Encoding>,
    limits: BatchLimits,
}

/// When a batch is cut.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

impl From<&IngestConfig> for BatchLimits {
    fn from(c: &IngestConfig) -> Self {
        BatchLimits { max_records: c.batch_max_records, max_bytes: c.batch_max_bytes, linger: c.batch_linger }
    }
}

/// How often the poll loop wakes to check for shutdown.
const POLL_SLICE: Duration = Duration::from_millis(100);

impl KafkaSource {
    /// Creates the consumer, a static member of its group under `instance`
    /// unless configured otherwise (`group.instance.id`: a restarted
    /// instance takes its partitions back at once), and subscribes to the configured topics. Every assignment
    /// is claimed in the checkpoint and read from there (`ownership`).
    pub fn connect(
        kafka: &KafkaConfig,
        ingest: &IngestConfig,
        instance: &str,
        ownership: Ownership,
    ) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        // Fetch pacing: while a batch is processed librdkafka's queue fills,
        // and by default it then backs off fetching for a second, and some
        // brokers hold each fetch up to fetch.wait.max.ms (500 ms). Short
        // waits keep the next batch flowing; both can be overridden.
        config.set("fetch.queue.backoff.ms", "10").set("fetch.wait.max.ms", "50");
        for (key, value) in &kafka.properties {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &kafka.brokers)
            .set("group.id", &kafka.group_id)
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("queued.max.messages.kbytes", ingest.fetch_queue_kib.to_string())
            .set("statistics.interval.ms", kafka.statistics_interval.as_millis().to_string());
        if kafka.static_membership {
            config.set("group.instance.id", instance);
        }
        let consumer: SourceConsumer = config
            .create_with_context(ownership)
            .map_err(|e| anyhow::anyhow!("cannot create the Kafka consumer: {e}"))?;
        let topics: Vec<&str> = kafka.topics.iter().map(|t| t.name.as_str()).collect();
        consumer.subscribe(&topics).map_err(|e| anyhow::anyhow!("cannot subscribe to {topics:?}: {e}"))?;
        let encodings = kafka.topics.iter().map(|t| (Arc::from(t.name.as_str()), t.encoding)).collect();
        Ok(KafkaSource { consumer: Arc::new(consumer), encodings, limits: BatchLimits::from(ingest) })
    }

    pub fn consumer(&self) -> &Arc<SourceConsumer> {
        &self.consumer
    }

    pub fn ownership(&self) -> &Ownership {
        self.consumer.context()
    }

    /// Polls until the batch is full, the linger time has passed since its
    /// first record, or `should_stop` says so. Records of partitions this
    /// instance does not own are skipped; a rebalance or a resync while the
    /// batch fills drops what it held (reading restarted from the
    /// checkpoint). Blocking: run on a dedicated thread.
    pub fn next_batch(&self, should_stop: &dyn Fn() -> bool) -> anyhow::Result<Batch> {
        let ownership = self.ownership();
        let mut reading = Reading::new(ownership);
        let mut deadline: Option<Instant> = None;
        while reading.batch.len() < self.limits.max_records && reading.batch.bytes < self.limits.max_bytes {
            if let Some(failure) = ownership.failure() {
                anyhow::bail!("{failure}");
            }
            ownership.resync_if_asked(&self.consumer)?;
            if ownership.epoch() != reading.batch.epoch {
                reading = Reading::new(ownership);
                deadline = None;
            }
            if should_stop() {
                break;
            }
            let timeout = match deadline {
                None => POLL_SLICE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    left.min(POLL_SLICE)
                }
            };
            let Some(result) = self.consumer.poll(timeout) else { continue };
            let message = match result {
                Ok(message) => message,
                Err(e) => {
                    // Transport errors are retried by librdkafka itself; log
                    // them (they carry no record content) and keep polling.
                    warn!(reason = %e, "kafka consumer error");
                    continue;
                }
            };
            if ownership.epoch() != reading.batch.epoch {
                // The poll served a rebalance before returning this record,
                // the first of the new assignment: start the batch again
                // from it (older records were purged with the assignment).
                reading = Reading::new(ownership);
                deadline = None;
            }
            let Some((topic, encoding)) = self.encodings.get_key_value(message.topic()) else { continue };
            if !reading.take(topic, message.partition(), message.offset()) {
                continue;
            }
            let payload = message.payload().unwrap_or_default().to_vec();
            reading.batch.bytes += payload.len();
            reading.batch.inputs.push(Input { encoding: *encoding, payload });
            deadline.get_or_insert_with(|| Instant::now() + self.limits.linger);
        }
        Ok(reading.finish(ownership))
    }
}

/// What a batch took of a partition: the generation it was read under,
/// where it started, the last offset.
/// `None` as the last offset until a record is taken.
type Taken = (u64, Option<i64>, Option<i64>);

/// A batch being read: the cursors it started from and, per partition,
/// the generation, start and last offset of what it took.
struct Reading {
    batch: Batch,
    cursors: Cursors,
    partitions: HashMap<(Arc<str>, i32), Option<Taken>>,
    below_checkpoint: u64,
}

impl Reading {
    fn new(ownership: &Ownership) -> Self {
        Reading {
            batch: Batch { epoch: ownership.epoch(), ..Batch::default() },
            cursors: ownership.cursors(),
            partitions: HashMap::new(),
            below_checkpoint: 0,
        }
    }

    /// Takes the record at `offset` if its partition is owned.
    fn take(&mut self, topic: &Arc<str>, partition: i32, offset: i64) -> bool {
        let cursors = &self.cursors;
        let entry = self.partitions.entry((Arc::clone(topic), partition)).or_insert_with(|| {
            let id = PartitionId { topic: topic.to_string(), partition };
            cursors.get(&id).map(|cursor| (cursor.generation, cursor.from, None))
        });
        let Some((_, from, last)) = entry else { return false };
        if from.is_some_and(|from| offset < from) {
            // Below the checkpoint: stored already (a fetch from before a
            // seek, or a topic whose offsets went back). Never twice.
            self.below_checkpoint += 1;
            return false;
        }
        *last = Some(last.map_or(offset, |last| last.max(offset)));
        self.batch.positions.push(Position { topic: Arc::clone(topic), partition, offset });
        true
    }

    fn finish(mut self, ownership: &Ownership) -> Batch {
        if self.below_checkpoint > 0 {
            warn!(records = self.below_checkpoint, "skipped records below the checkpoint (stored already)");
        }
        self.batch.ranges = self
            .partitions
            .into_iter()
            .filter_map(|((topic, partition), taken)| {
                let (generation, from, last) = taken?;
                let last = last?;
                Some(Range {
                    id: PartitionId { topic: topic.to_string(), partition },
                    generation,
                    from,
                    next: last + 1,
                })
            })
            .collect();
        self.batch.ranges.sort_by(|a, b| a.id.cmp(&b.id));
        ownership.advance(self.batch.epoch, &self.batch.ranges);
        self.batch
    }
}
