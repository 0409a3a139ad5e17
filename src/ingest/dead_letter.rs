//! The dead-letter path: refused records go to their own topic, unchanged,
//! with the reason in headers, so that the operator's mediation team can
//! see why and replay them after a fix.
//!
//! The dead-letter topic lives in the same Kafka cluster as the input and
//! so in the same trust domain; the payload is copied there byte for byte
//! and never decoded, printed or logged.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

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

impl DeadLetter {
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
        Ok(DeadLetter { producer, topic: kafka.dead_letter_topic.clone() })
    }

    /// Sends every refused record and waits until the broker has them all.
    /// Only then may the source offsets of the batch move.
    pub async fn send_all(&self, refused: &[(&Input, &Position, Refusal)]) -> Result<(), DeadLetterError> {
        let partitions: Vec<String> = refused.iter().map(|(_, p, _)| p.partition.to_string()).collect();
        let offsets: Vec<String> = refused.iter().map(|(_, p, _)| p.offset.to_string()).collect();
        let sends = refused.iter().enumerate().map(|(i, (input, position, refusal))| {
            let mut headers = OwnedHeaders::new()
                .insert(Header { key: headers::REASON, value: Some(refusal.reason.code()) })
                .insert(Header { key: headers::SOURCE_TOPIC, value: Some(position.topic.as_ref()) })
                .insert(Header { key: headers::SOURCE_PARTITION, value: Some(partitions[i].as_str()) })
                .insert(Header { key: headers::SOURCE_OFFSET, value: Some(offsets[i].as_str()) });
            if let Some(field) = refusal.field {
                headers = headers.insert(Header { key: headers::FIELD, value: Some(field) });
            }
            let record = FutureRecord::<(), [u8]>::to(&self.topic).payload(&input.payload).headers(headers);
            self.producer.send(record, Duration::from_secs(30))
        });
        let results = futures::future::join_all(sends).await;
        let failures: Vec<String> = results.into_iter().filter_map(|r| r.err().map(|(e, _)| e.to_string())).collect();
        match failures.first() {
            None => Ok(()),
            Some(first) => Err(DeadLetterError { failed: failures.len(), first: first.clone() }),
        }
    }
}
