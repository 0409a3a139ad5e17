//! Kafka's committed offsets, kept for monitoring (consumer-group lag in
//! the operator's usual tools). Where ingest resumes is decided by the
//! checkpoint committed with the data ([`crate::storage::checkpoint`]);
//! these offsets follow it.
//!
//! The rule still holds here: an offset moves only after every record
//! below it is either in a committed file or durably in the dead-letter
//! topic. [`next_offsets`]
//! computes, per partition, the offset after the last record of a processed
//! batch (the "+1": Kafka commits the next offset to read, not the last one
//! read), and [`store`] hands them to the consumer, which commits them in
//! the background and on shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::source::{Position, SourceConsumer};

/// The next offset to read for each (topic, partition) of a batch.
pub fn next_offsets(positions: &[Position]) -> BTreeMap<(Arc<str>, i32), i64> {
    let mut next: BTreeMap<(Arc<str>, i32), i64> = BTreeMap::new();
    for p in positions {
        let entry = next.entry((Arc::clone(&p.topic), p.partition)).or_insert(i64::MIN);
        *entry = (*entry).max(p.offset + 1);
    }
    next
}

/// Stores the offsets after a batch whose records are all durable. Offsets
/// of partitions revoked in the meantime are refused by the client; that is
/// harmless, because the new owner re-reads from the last commit.
pub fn store(consumer: &SourceConsumer, positions: &[Position]) -> anyhow::Result<()> {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next_offsets(positions) {
        list.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
    }
    if list.count() == 0 {
        return Ok(());
    }
    if let Err(e) = consumer.store_offsets(&list) {
        tracing::warn!(reason = %e, "offsets not stored, the partitions were probably revoked");
    }
    Ok(())
}

/// Commits the stored offsets synchronously: the last step of a shutdown.
pub fn commit_now(consumer: &SourceConsumer) -> anyhow::Result<()> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => Ok(()),
        // Nothing stored since the last commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("final offset commit failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_offset_is_one_past_the_last_record_of_each_partition() {
        let t: Arc<str> = Arc::from("cdr");
        let u: Arc<str> = Arc::from("cdr.packet");
        let positions = vec![
            Position { topic: t.clone(), partition: 0, offset: 7 },
            Position { topic: t.clone(), partition: 0, offset: 5 },
            Position { topic: t.clone(), partition: 1, offset: 0 },
            Position { topic: u.clone(), partition: 0, offset: 41 },
        ];
        let next = next_offsets(&positions);
        assert_eq!(next[&(t.clone(), 0)], 8);
        assert_eq!(next[&(t, 1)], 1);
        assert_eq!(next[&(u, 0)], 42);
        assert_eq!(next.len(), 3);
    }
}
