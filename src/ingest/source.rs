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

use bytes::{Bytes, BytesMut};
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

/// A batch, once read to its end: where each record came from, the range
/// of each partition it covers, and the epoch it was read in
/// ([`super::ownership`]). Its records themselves were handed on in
/// [`Part`]s while it filled, in order, under its serial number.
#[derive(Debug, Default)]
pub struct Batch {
    /// Numbers the batches of one source; a batch started again after a
    /// rebalance gets a new number, and the parts sent under the old one
    /// are void.
    pub serial: u64,
    pub positions: Vec<Position>,
    pub bytes: usize,
    pub ranges: Vec<Range>,
    pub epoch: u64,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// The next records of the batch being read, handed on before the batch is
/// complete so that decoding overlaps reading. The parts of a batch, in
/// order, hold its records index for index with its positions.
#[derive(Debug)]
pub struct Part {
    /// The batch they belong to ([`Batch::serial`]).
    pub serial: u64,
    /// The epoch that batch is read in.
    pub epoch: u64,
    pub inputs: Vec<Input>,
}

pub type SourceConsumer = BaseConsumer<Ownership>;

/// The consumer and the encoding of each subscribed topic.
pub struct KafkaSource {
    consumer: Arc<SourceConsumer>,
    encodings: HashMap<Arc<str>, Encoding>,
    limits: BatchLimits,
    /// Per partition, a gap `(expected, found)` already confirmed by
    /// seeking back to `expected` and finding `found` first again.
    gaps: std::sync::Mutex<HashMap<PartitionKey, (i64, i64)>>,
    /// The next batch's serial number.
    serials: std::sync::atomic::AtomicU64,
}

/// When a batch is cut.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    /// Records are handed on in parts of this many.
    pub part_records: usize,
}

impl From<&IngestConfig> for BatchLimits {
    fn from(c: &IngestConfig) -> Self {
        BatchLimits {
            max_records: c.batch_max_records,
            max_bytes: c.batch_max_bytes,
            linger: c.batch_linger,
            // An eighth of a batch: the first batch after a start is then
            // mostly decoded by the time its last record arrives.
            part_records: c.batch_max_records.div_ceil(8).max(PART_RECORDS_MIN),
        }
    }
}

/// The size of the buffers payloads are copied into.
const PAYLOAD_BUFFER: usize = 1 << 20;

/// Parts smaller than this would cost more to hand over than to decode.
const PART_RECORDS_MIN: usize = 1024;

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
        // and by default it then backs off fetching for a second. And some
        // brokers hold every fetch for the whole fetch.wait.max.ms (500 ms
        // by default), even with records to return (Tansu does). Apache
        // Kafka answers as soon as it has records, so there the wait only
        // bounds how often an idle consumer asks (100 times a second per
        // broker at 10 ms). Short waits keep the next batch flowing: 50 ms
        // held ingest through the test broker to about 225k records/s, 10 ms
        // let it reach 300k-340k (benches/README.md). Both can be overridden.
        config.set("fetch.queue.backoff.ms", "10").set("fetch.wait.max.ms", "10");
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
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            encodings,
            limits: BatchLimits::from(ingest),
            gaps: std::sync::Mutex::new(HashMap::new()),
            serials: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn consumer(&self) -> &Arc<SourceConsumer> {
        &self.consumer
    }

    pub fn ownership(&self) -> &Ownership {
        self.consumer.context()
    }

    /// How many records a full batch holds.
    pub fn batch_records(&self) -> usize {
        self.limits.max_records
    }

    /// Polls until the batch is full, the linger time has passed since its
    /// first record, or `should_stop` says so, handing its records on to
    /// `hand_on` in parts as they come (the last part before this returns).
    /// Records of partitions this instance does not own are skipped; a
    /// rebalance or a resync while the batch fills drops what it held
    /// (reading restarted from the checkpoint) and starts a batch with a
    /// new serial number. `hand_on` returns false when nobody takes parts
    /// any more; the batch then ends. Blocking: run on a dedicated thread.
    pub fn next_batch(
        &self,
        should_stop: &dyn Fn() -> bool,
        hand_on: &mut dyn FnMut(Part) -> bool,
    ) -> anyhow::Result<Batch> {
        let ownership = self.ownership();
        let mut reading = Reading::new(ownership, self.next_serial());
        let mut deadline: Option<Instant> = None;
        while reading.batch.len() < self.limits.max_records && reading.batch.bytes < self.limits.max_bytes {
            if let Some(failure) = ownership.failure() {
                anyhow::bail!("{failure}");
            }
            ownership.resync_if_asked(&self.consumer)?;
            if ownership.epoch() != reading.batch.epoch {
                self.restart(&mut reading, hand_on);
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
                self.restart(&mut reading, hand_on);
                deadline = None;
            }
            let Some((topic, encoding)) = self.encodings.get_key_value(message.topic()) else { continue };
            let (partition, offset) = (message.partition(), message.offset());
            match reading.take(topic, partition, offset) {
                Take::Taken => {}
                Take::Skipped => continue,
                Take::Gap { expected } => {
                    if !self.confirm_gap(topic, partition, expected, offset) {
                        continue;
                    }
                    reading.take_after_gap(topic, partition, offset);
                }
            }
            let payload = reading.copy(message.payload().unwrap_or_default());
            reading.batch.bytes += payload.len();
            reading.inputs.push(Input { encoding: *encoding, payload });
            deadline.get_or_insert_with(|| Instant::now() + self.limits.linger);
            if reading.inputs.len() >= self.limits.part_records && !hand_on(reading.part(self.limits.part_records)) {
                break;
            }
        }
        if !reading.inputs.is_empty() {
            // Whether taken or not, the batch ends here.
            hand_on(reading.part(0));
        }
        Ok(reading.finish(ownership))
    }

    /// Starts the batch being read again, in the current epoch. If parts
    /// of it were handed on, an empty part of the new batch says at once
    /// that they are void, so that the records in them are not kept in
    /// memory until more come.
    fn restart(&self, reading: &mut Reading, hand_on: &mut dyn FnMut(Part) -> bool) {
        let voided = reading.handed_on;
        *reading = Reading::new(self.ownership(), self.next_serial());
        if voided {
            hand_on(reading.part(0));
        }
    }

    fn next_serial(&self) -> u64 {
        self.serials.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

impl KafkaSource {
    /// A record of `partition` arrived at `found` where `expected` was
    /// next. Offsets may legitimately jump (transaction markers, compacted
    /// topics), but a record fetched before a rebalance or a seek must
    /// never be taken as the start of a range: its range would claim the
    /// records in between. So the first time, the partition is seeked back
    /// to `expected` and the record dropped; if reading from there yields
    /// `found` first again, the gap is real and the record is taken.
    fn confirm_gap(&self, topic: &Arc<str>, partition: i32, expected: i64, found: i64) -> bool {
        let mut gaps = self.gaps.lock().unwrap_or_else(|p| p.into_inner());
        let key = (Arc::clone(topic), partition);
        if gaps.get(&key) == Some(&(expected, found)) {
            gaps.remove(&key);
            // Legitimate after transaction markers or compaction; otherwise
            // the broker did not deliver records that exist.
            warn!(topic = %topic, partition, expected, found, "offsets jump ahead here (confirmed by reading again)");
            self.ownership().count_gap();
            return true;
        }
        gaps.insert(key, (expected, found));
        tracing::debug!(topic = %topic, partition, expected, found, "record ahead of the cursor; reading again from the cursor");
        if let Err(e) = self.consumer.seek(topic, partition, rdkafka::Offset::Offset(expected), Duration::from_secs(10))
        {
            warn!(topic = %topic, partition, reason = %e, "seek back to the cursor failed");
        }
        false
    }
}

/// What became of a record offered to a batch.
enum Take {
    Taken,
    /// Not owned, or below the checkpoint.
    Skipped,
    /// Ahead of the partition's cursor.
    Gap {
        expected: i64,
    },
}

/// A partition, as the records name it.
type PartitionKey = (Arc<str>, i32);

/// What a batch took of a partition: the generation it was read under,
/// where it started, the last offset.
/// `None` as the last offset until a record is taken.
type Taken = (u64, Option<i64>, Option<i64>);

/// A batch being read: the cursors it started from and, per partition,
/// the generation, start and last offset of what it took.
struct Reading {
    batch: Batch,
    /// Records taken and not yet handed on.
    inputs: Vec<Input>,
    /// Whether a part was handed on.
    handed_on: bool,
    /// Where payloads are copied: one buffer shared by many, so that a
    /// batch is not a hundred thousand allocations to make, and to free on
    /// another thread.
    payloads: BytesMut,
    cursors: Cursors,
    /// The partitions met, in the order met. Records come in long runs of
    /// one partition, so the one met last is looked at first.
    partitions: Vec<(PartitionKey, Option<Taken>)>,
    last_met: usize,
    below_checkpoint: u64,
}

impl Reading {
    fn new(ownership: &Ownership, serial: u64) -> Self {
        Reading {
            batch: Batch { serial, epoch: ownership.epoch(), ..Batch::default() },
            inputs: Vec::new(),
            handed_on: false,
            payloads: BytesMut::new(),
            cursors: ownership.cursors(),
            partitions: Vec::new(),
            last_met: 0,
            below_checkpoint: 0,
        }
    }

    /// A copy of a record's payload, in the shared buffer.
    fn copy(&mut self, payload: &[u8]) -> Bytes {
        if self.payloads.capacity() < payload.len() {
            // A new buffer; the payloads in the old one keep it alive.
            self.payloads = BytesMut::with_capacity(PAYLOAD_BUFFER.max(payload.len()));
        }
        self.payloads.extend_from_slice(payload);
        self.payloads.split().freeze()
    }

    /// Where `partition` of `topic` is in `partitions`, added (with its
    /// cursor, if owned) when first met.
    fn slot(&mut self, topic: &Arc<str>, partition: i32) -> usize {
        let is = |((t, p), _): &(PartitionKey, _)| *p == partition && (Arc::ptr_eq(t, topic) || **t == **topic);
        if self.partitions.get(self.last_met).is_some_and(is) {
            return self.last_met;
        }
        self.last_met = match self.partitions.iter().position(is) {
            Some(slot) => slot,
            None => {
                let id = PartitionId { topic: topic.to_string(), partition };
                let taken = self.cursors.get(&id).map(|cursor| (cursor.generation, cursor.from, None));
                self.partitions.push(((Arc::clone(topic), partition), taken));
                self.partitions.len() - 1
            }
        };
        self.last_met
    }

    /// Takes the record at `offset` if its partition is owned and it is
    /// the next one: at the cursor (the partition's first record of the
    /// batch) or after the last one taken.
    fn take(&mut self, topic: &Arc<str>, partition: i32, offset: i64) -> Take {
        let slot = self.slot(topic, partition);
        let Some((_, from, last)) = self.partitions[slot].1 else { return Take::Skipped };
        let expected = last.map(|last| last + 1).or(from);
        match expected {
            Some(expected) if offset < expected => {
                // Below the checkpoint or the last record taken: stored
                // already, or about to be. Never twice.
                self.below_checkpoint += 1;
                return Take::Skipped;
            }
            Some(expected) if offset > expected => return Take::Gap { expected },
            _ => {}
        }
        self.take_after_gap(topic, partition, offset);
        Take::Taken
    }

    /// Takes the record at `offset` of an owned partition.
    fn take_after_gap(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        let slot = self.slot(topic, partition);
        if let Some((_, _, last)) = &mut self.partitions[slot].1 {
            *last = Some(offset);
        }
        self.batch.positions.push(Position { topic: Arc::clone(topic), partition, offset });
    }

    /// The records taken since the last part, handed on; room for
    /// `capacity` more.
    fn part(&mut self, capacity: usize) -> Part {
        self.handed_on = true;
        let inputs = std::mem::replace(&mut self.inputs, Vec::with_capacity(capacity));
        Part { serial: self.batch.serial, epoch: self.batch.epoch, inputs }
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
