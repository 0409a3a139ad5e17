//! The real Kafka-protocol broker of the black-box tests (Tansu, started by
//! `scripts/test.sh`, address in `CDRVAULT_TEST_BROKERS`), and what tests
//! that drive the binary against it share: topics, free ports, names that
//! no other run uses, the sum of a metric family.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// The broker's address; panics (never skips) outside `scripts/test.sh`.
pub fn brokers() -> String {
    std::env::var("CDRVAULT_TEST_BROKERS").expect(
        "CDRVAULT_TEST_BROKERS is not set: run the tests with scripts/test.sh, which starts a Kafka-protocol broker",
    )
}

/// Creates each `(name, partitions)` topic.
pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let topics: Vec<NewTopic<'_>> =
        topics.iter().map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1))).collect();
    let results = futures::executor::block_on(admin.create_topics(&topics, &AdminOptions::new())).unwrap();
    for result in results {
        result.unwrap();
    }
}

/// Runs the `cdrvault` binary of this build with `args`; panics with its
/// stderr unless it succeeded.
pub fn run(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_cdrvault")).args(args).output().unwrap();
    assert!(output.status.success(), "cdrvault {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// A port of 127.0.0.1 free when asked.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A number no other run of this test shares: topic and group names.
pub fn unique() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The sum of every sample of a metric family (labelled or not), if the
/// family is exported.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let samples: Vec<f64> = text
        .lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}
