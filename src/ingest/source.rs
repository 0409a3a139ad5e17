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

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Statistics};
use tracing::{info, warn};

use super::config::{IngestConfig, KafkaConfig};
use super::decode::Encoding;
use super::process::Input;
use crate::ops::metrics::{Metrics, PartitionLabels};

/// Where a record came from: enough to store its offset and to point at it
/// from the dead-letter topic, nothing about its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// A batch: the inputs and, index for index, where each came from.
#[derive(Debug, Default)]
pub struct Batch {
    pub inputs: Vec<Input>,
    pub positions: Vec<Position>,
    pub bytes: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }
}

/// Reports the client's statistics into the metrics and logs rebalances.
pub struct SourceContext {
    metrics: Arc<Metrics>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in statistics.topics {
            for (partition, p) in stats.partitions {
                // librdkafka reports an internal "unassigned" partition -1.
                if partition < 0 || !p.desired {
                    continue;
                }
                let lag = if p.consumer_lag_stored >= 0 { p.consumer_lag_stored } else { p.consumer_lag };
                if lag >= 0 {
                    let labels = PartitionLabels { topic: topic.clone(), partition };
                    self.metrics.consumer_lag.get_or_create(&labels).set(lag);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => info!(partitions = tpl.count(), "partitions assigned"),
            Rebalance::Revoke(tpl) => info!(partitions = tpl.count(), "partitions revoked"),
            Rebalance::Error(e) => warn!(reason = %e, "rebalance failed"),
        }
    }
}

pub type SourceConsumer = BaseConsumer<SourceContext>;

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
    /// Creates the consumer and subscribes to the configured topics.
    pub fn connect(kafka: &KafkaConfig, ingest: &IngestConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
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
        let consumer: SourceConsumer = config
            .create_with_context(SourceContext { metrics })
            .map_err(|e| anyhow::anyhow!("cannot create the Kafka consumer: {e}"))?;
        let topics: Vec<&str> = kafka.topics.iter().map(|t| t.name.as_str()).collect();
        consumer.subscribe(&topics).map_err(|e| anyhow::anyhow!("cannot subscribe to {topics:?}: {e}"))?;
        let encodings = kafka.topics.iter().map(|t| (Arc::from(t.name.as_str()), t.encoding)).collect();
        Ok(KafkaSource { consumer: Arc::new(consumer), encodings, limits: BatchLimits::from(ingest) })
    }

    pub fn consumer(&self) -> &Arc<SourceConsumer> {
        &self.consumer
    }

    /// Polls until the batch is full, the linger time has passed since its
    /// first record, or `should_stop` says so. Blocking: run on a dedicated
    /// thread.
    pub fn next_batch(&self, should_stop: &dyn Fn() -> bool) -> anyhow::Result<Batch> {
        let mut batch = Batch::default();
        let mut deadline: Option<Instant> = None;
        while batch.len() < self.limits.max_records && batch.bytes < self.limits.max_bytes {
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
            let topic = message.topic();
            let Some((topic, encoding)) = self.encodings.get_key_value(topic) else { continue };
            let payload = message.payload().unwrap_or_default().to_vec();
            batch.bytes += payload.len();
            batch.positions.push(Position {
                topic: Arc::clone(topic),
                partition: message.partition(),
                offset: message.offset(),
            });
            batch.inputs.push(Input { encoding: *encoding, payload });
            deadline.get_or_insert_with(|| Instant::now() + self.limits.linger);
        }
        Ok(batch)
    }
}
