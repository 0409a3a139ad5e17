//! The `[kafka]` and `[ingest]` config sections.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::decode::Encoding;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic name.
    pub name: String,
    /// `json` or `protobuf`.
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// Consumer group id: every instance of one deployment shares it.
    pub group_id: String,
    /// This instance's stable id: its static membership of the group
    /// (`group.instance.id`) and its name in the checkpoint. Unique per
    /// running instance; 1 to 64 of `A-Z a-z 0-9 - _` (a StatefulSet pod
    /// name). If unset: the environment variable `CDRVAULT_INSTANCE_ID`,
    /// else an id made once and kept in the state directory.
    pub instance_id: Option<String>,
    /// Joins the group as a static member under the instance id, so that
    /// a restarted instance takes its partitions back at once rather than
    /// after the session timeout. Off: a dynamic member (each start is a
    /// new member; the checkpoint keeps exactly once either way).
    pub static_membership: bool,
    /// The topics to consume and the encoding of each.
    pub topics: Vec<TopicConfig>,
    /// Where refused records go, with their reason in a header.
    pub dead_letter_topic: String,
    /// How often the client reports statistics (consumer lag).
    #[serde(with = "humantime_serde")]
    pub statistics_interval: Duration,
    /// Extra librdkafka properties (security, tuning), passed through as is.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "cdrvault".into(),
            instance_id: None,
            static_membership: true,
            topics: vec![TopicConfig { name: "cdr".into(), encoding: Encoding::Json }],
            dead_letter_topic: "cdr.dead-letter".into(),
            statistics_interval: Duration::from_secs(5),
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// A batch is cut at this many records...
    pub batch_max_records: usize,
    /// ...or this many payload bytes...
    pub batch_max_bytes: usize,
    /// ...or when this much time has passed since its first record.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// How far in the future a `start_time` may lie before it is refused.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Threads that decode and tokenise; 0 means one per core.
    pub decode_threads: usize,
    /// Upper bound of the Kafka client's prefetch queue per partition, in KiB.
    pub fetch_queue_kib: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_max_records: 100_000,
            batch_max_bytes: 64 << 20,
            batch_linger: Duration::from_secs(5),
            max_clock_skew: Duration::from_secs(300),
            decode_threads: 0,
            fetch_queue_kib: 16 * 1024,
        }
    }
}

impl IngestConfig {
    pub fn effective_decode_threads(&self) -> usize {
        if self.decode_threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            self.decode_threads
        }
    }
}
