//! The dead-letter path: refused records go to their own topic, unchanged,
//! with the reason in headers, so that the operator's mediation team can
//! see why and replay them after a fix.
//!
//! The dead-letter topic lives in the same Kafka cluster as the input and
//! so in the same trust domain; the payload is copied there byte for byte
//! and never decoded, printed or logged.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tracing::warn;

use super::config::KafkaConfig;
use super::decode::Refusal;
use super::process::Input;
use super::source::Position;

/// Header names of a dead-lettered record.
pub mod headers {
    pub const REASON: &str = "cdrvault-reason";
    pub const FIELD: &str = "cdrvault-field";
    pub const SOURCE_TOPIC: &str = "cdrvault-source-topic";
    pub const SOURCE_PARTITION: &str = "cdrvault-source-partition";
    pub const SOURCE_OFFSET: &str = "cdrvault-source-offset";
}

/// How long the warm-up waits for the topic's metadata.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused record may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to let the producer drain its queue before trying again.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(10);

pub struct DeadLetter {
    producer: FutureProducer,
    topic: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{failed} refused records could not be delivered to the dead-letter topic: {first}")]
pub struct DeadLetterError {
    pub failed: usize,
    pub first: String,
}

/// Refused records handed to the producer, whose acknowledgements are
/// still to come: [`Pending::wait`] before the batch commits.
#[must_use = "a batch commits only after its refused records are acknowledged"]
pub struct Pending {
    deliveries: Vec<DeliveryFuture>,
}

impl Pending {
    /// Nothing to wait for.
    pub fn none() -> Self {
        Pending { deliveries: Vec::new() }
    }

    /// Waits until the broker has acknowledged every record, or says why
    /// some were not delivered.
    pub fn wait(self) -> Result<(), DeadLetterError> {
        if self.deliveries.is_empty() {
            return Ok(());
        }
        let results = futures::executor::block_on(futures::future::join_all(self.deliveries));
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(|r| match r {
                Ok(Ok(_)) => None,
                Ok(Err((e, _))) => Some(e.to_string()),
                Err(_) => Some("the producer went away before the delivery report".to_string()),
            })
            .collect();
        match failures.first() {
            None => Ok(()),
            Some(first) => Err(DeadLetterError { failed: failures.len(), first: first.clone() }),
        }
    }
}

impl DeadLetter {
    /// Creates the idempotent producer of the dead-letter topic and, on a
    /// thread of its own, connects it (see [`DeadLetter::warm_up`]).
    pub fn connect(kafka: &KafkaConfig) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        for (key, value) in &kafka.properties {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &kafka.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "20");
        let producer: FutureProducer =
            config.create().map_err(|e| anyhow::anyhow!("cannot create the dead-letter producer: {e}"))?;
        let dead_letter = DeadLetter { producer, topic: kafka.dead_letter_topic.clone() };
        let (producer, topic) = (dead_letter.producer.clone(), dead_letter.topic.clone());
        std::thread::Builder::new()
            .name("dead-letter-warm-up".into())
            .spawn(move || Self::warm_up(&producer, &topic))
            .map_err(|e| anyhow::anyhow!("cannot start the dead-letter warm-up thread: {e}"))?;
        Ok(dead_letter)
    }

    /// Asks a broker for the dead-letter topic's metadata, at start. An
    /// idempotent producer sends nothing before the cluster gives it a
    /// producer id, and librdkafka asks for one only when a broker
    /// connection is up, checking every 500 ms; its connections are made
    /// on first use. Without this the first refused record waited up to a
    /// second (0.84 s through the test broker) for a connection and the
    /// next check, and the whole first batch with it. A missing topic is
    /// said here, before a refusal depends on it; ingest does not stop for
    /// it (the topic may be created, or the broker create it on first use).
    fn warm_up(producer: &FutureProducer, topic: &str) {
        match producer.client().fetch_metadata(Some(topic), WARM_UP_TIMEOUT) {
            Ok(metadata) => {
                if let Some(error) = metadata.topics().iter().find_map(|t| t.error()) {
                    warn!(topic, reason = ?error, "the dead-letter topic is not usable yet");
                }
            }
            Err(e) => warn!(topic, reason = %e, "no broker answered for the dead-letter topic yet"),
        }
    }

    /// Hands every refused record to the producer, without waiting for the
    /// broker: the batch's files can be written meanwhile, and the batch
    /// commits only after [`Pending::wait`]. Fails if a record cannot even
    /// be queued (the producer's queue stayed full for [`QUEUE_TIMEOUT`]).
    pub fn send_all(&self, refused: &[(&Input, &Position, Refusal)]) -> Result<Pending, DeadLetterError> {
        let mut deliveries = Vec::with_capacity(refused.len());
        let deadline = Instant::now() + QUEUE_TIMEOUT;
        for (input, position, refusal) in refused {
            let (partition, offset) = (position.partition.to_string(), position.offset.to_string());
            let mut headers = OwnedHeaders::new()
                .insert(Header { key: headers::REASON, value: Some(refusal.reason.code()) })
                .insert(Header { key: headers::SOURCE_TOPIC, value: Some(position.topic.as_ref()) })
                .insert(Header { key: headers::SOURCE_PARTITION, value: Some(partition.as_str()) })
                .insert(Header { key: headers::SOURCE_OFFSET, value: Some(offset.as_str()) });
            if let Some(field) = refusal.field {
                headers = headers.insert(Header { key: headers::FIELD, value: Some(field) });
            }
            let mut record = FutureRecord::<(), [u8]>::to(&self.topic).payload(&input.payload).headers(headers);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        // The producer's own thread drains the queue.
                        record = back;
                        std::thread::sleep(QUEUE_FULL_BACKOFF);
                    }
                    Err((e, _)) => {
                        return Err(DeadLetterError { failed: refused.len() - deliveries.len(), first: e.to_string() });
                    }
                }
            }
        }
        Ok(Pending { deliveries })
    }
}
