//! The baseline of `benches/e2e_broker.sh`: how fast a plain librdkafka
//! consumer drains the same topic with no processing at all. Partitions are
//! assigned directly (no consumer group, so no join), read from the
//! beginning until `--count` messages arrived; the time is from the
//! client's creation to the last message.
//!
//!   cargo bench --bench raw_read -- --brokers 127.0.0.1:29092 --topic cdr --partitions 2 --count 500000
//!
//! Prints `RESULT raw <count> records in <s> s: <rate> records/s` and the
//! process's CPU time.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value =
        |name: &str| -> Option<String> { args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned() };
    let brokers = value("--brokers").expect("--brokers HOST:PORT");
    let topic = value("--topic").expect("--topic NAME");
    let partitions: i32 = value("--partitions").map_or(1, |p| p.parse().expect("--partitions N"));
    let count: u64 = value("--count").expect("--count N").parse().expect("--count N");

    let started = Instant::now();
    // What the fastest plain read of a local broker needs: short fetch
    // waits, no backoff, a deep prefetch queue.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "cdrvault-raw-read")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.queue.backoff.ms", "0")
        .set("queued.min.messages", "1000000")
        .create()
        .expect("a consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(&topic, partition, Offset::Beginning).expect("an assignment");
    }
    consumer.assign(&assignment).expect("assigned");

    let (mut received, mut bytes) = (0u64, 0u64);
    // When the first message came: the start-up (connection, metadata,
    // offsets, first fetch) that the rate includes.
    let mut first: Option<f64> = None;
    let deadline = started + Duration::from_secs(600);
    while received < count {
        assert!(Instant::now() < deadline, "timed out at {received} of {count} messages");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                use rdkafka::Message;
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
                received += 1;
                bytes += message.payload().map_or(0, |p| p.len() as u64);
            }
            Some(Err(error)) => panic!("read failed: {error}"),
            None => {}
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("raw read: {received} messages, {:.1} MiB", bytes as f64 / 1_048_576.0);
    let first = first.unwrap_or(elapsed);
    println!(
        "raw read: first message after {first:.2} s, then {:.0} records/s",
        received.saturating_sub(1) as f64 / (elapsed - first).max(f64::EPSILON)
    );
    println!("RESULT raw {received} records in {elapsed:.2} s: {:.0} records/s", received as f64 / elapsed);
}
