//! Ingest through librdkafka's mock cluster: the real consumer, producer and
//! pipeline, with only the broker embedded. The generated records are the
//! ground truth; the files are read back independently of the writer.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use cdrvault::ingest::config::{IngestConfig, KafkaConfig, TopicConfig};
use cdrvault::ingest::dead_letter::headers;
use cdrvault::ingest::decode::Encoding;
use cdrvault::ingest::{Ingest, StopAfter};
use cdrvault::model::{IdentifierField, IdentifierKind};
use cdrvault::ops::metrics::Metrics;
use cdrvault::ops::shutdown::Shutdown;
use cdrvault::privacy::token::Tokeniser;
use cdrvault::storage::read;
use cdrvault::tools::produce::{ProduceOptions, produce};
use cdrvault::tools::synth::{Defect, Generator, SynthConfig, SyntheticCdr};
use common::TestVault;

const TOPIC: &str = "cdr";
const DEAD_LETTER: &str = "cdr.dead-letter";
const PARTITIONS: i32 = 4;

/// A vault, the topics of a mock cluster holding `records`, and the Kafka
/// settings of the ingest that reads them.
struct Setup {
    vault: TestVault,
    kafka: KafkaConfig,
    ingest: IngestConfig,
    records: Vec<SyntheticCdr>,
}

fn setup(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    count: u64,
    encoding: Encoding,
) -> Setup {
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    cluster.create_topic(DEAD_LETTER, 1, 1).unwrap();
    let vault = TestVault::new(Utc::now());
    let kafka = KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        group_id: "cdrvault-test".into(),
        topics: vec![TopicConfig { name: TOPIC.into(), encoding }],
        dead_letter_topic: DEAD_LETTER.into(),
        ..KafkaConfig::default()
    };
    let ingest =
        IngestConfig { batch_max_records: 4_000, batch_linger: Duration::from_millis(200), ..IngestConfig::default() };

    let synth = SynthConfig { seed: 7, subscribers: 300, days: 3, until: vault.now(), invalid_ratio: 0.03 };
    let mut generator = Generator::new(synth.clone());
    let records: Vec<SyntheticCdr> = (0..count).map(|_| generator.next_record()).collect();
    let options = ProduceOptions {
        brokers: kafka.brokers.clone(),
        topic: TOPIC.into(),
        count: Some(count),
        rate: None,
        format: encoding,
        batch_records: cdrvault::tools::produce::DEFAULT_BATCH_RECORDS,
        synth,
    };
    let report = produce(&options, &Shutdown::new(), |_| {}, |_| {}).unwrap();
    assert_eq!((report.sent, report.failed), (count, 0));
    Setup { vault, kafka, ingest, records }
}

fn ingest(setup: &Setup, metrics: Arc<Metrics>) -> Ingest {
    let processor = setup.vault.processor_over(Arc::clone(&setup.vault.keys));
    Ingest::connect(&setup.kafka, &setup.ingest, "test-instance", processor, metrics).unwrap()
}

/// Log output captured in memory, to be scanned for identifiers.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged in this test binary from the first call on, on every
/// thread. One global subscriber, because a scoped one
/// (`with_default`) misses the threads ingest starts, and tracing caches
/// a callsite's interest from the subscriber of whichever thread meets it
/// first: a test running alongside with no subscriber could silence it.
fn captured_log() -> &'static CapturedLog {
    static LOG: std::sync::OnceLock<CapturedLog> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = CapturedLog::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        log
    })
}

fn committed_total(kafka: &KafkaConfig) -> i64 {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &kafka.brokers).set("group.id", &kafka.group_id).create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(TOPIC, p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

/// Commits `places` (partition → offset) in Kafka for the ingest's group,
/// as a consumer outside cdrvault would have.
fn commit_in_kafka(kafka: &KafkaConfig, places: &BTreeMap<i32, i64>) {
    let mut list = TopicPartitionList::new();
    for (&partition, &offset) in places {
        list.add_partition_offset(TOPIC, partition, Offset::Offset(offset)).unwrap();
    }
    let client: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &kafka.brokers).set("group.id", &kafka.group_id).create().unwrap();
    client.commit(&list, rdkafka::consumer::CommitMode::Sync).unwrap();
}

fn dead_letters(kafka: &KafkaConfig) -> Vec<(String, Option<String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(DEAD_LETTER, 0, Offset::Beginning).unwrap();
    consumer.assign(&list).unwrap();
    let (_, high) = consumer.fetch_watermarks(DEAD_LETTER, 0, Duration::from_secs(10)).unwrap();
    let mut out = Vec::new();
    while (out.len() as i64) < high {
        let Some(message) = consumer.poll(Duration::from_secs(10)) else { panic!("dead-letter topic ended early") };
        let message = message.unwrap();
        let headers = message.headers().expect("dead letters carry headers");
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        out.push((get(headers::REASON).expect("a reason header"), get(headers::FIELD)));
    }
    out
}

#[test]
fn ingest_writes_exactly_the_valid_records_and_dead_letters_the_rest() {
    let cluster = MockCluster::new(1).unwrap();
    let count = 12_000;
    let setup = setup(&cluster, count, Encoding::Json);
    let metrics = Metrics::new();
    let log = captured_log();
    let report =
        ingest(&setup, Arc::clone(&metrics)).run(&Shutdown::new(), StopAfter { records: Some(count) }, |_| {}).unwrap();

    let valid: Vec<&SyntheticCdr> = setup.records.iter().filter(|r| r.defect.is_none()).collect();
    let invalid = setup.records.len() - valid.len();
    assert!(invalid > 100, "the generator spoils about 3% of records");
    assert_eq!(report.records_in, count);
    assert_eq!(report.written as usize, valid.len());
    assert_eq!(report.refused_total() as usize, invalid);

    // The files hold each valid record exactly once.
    let rows = common::read_all_rows(&setup.vault.data(), &setup.vault.keys);
    let ids: Vec<&str> = rows.iter().map(|r| r.record_id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "no record is written twice");
    let expected: HashSet<&str> = valid.iter().map(|r| r.record_id.as_str()).collect();
    assert_eq!(unique, expected);

    // Every record is in the partition of its UTC start date.
    let by_id: BTreeMap<&str, &SyntheticCdr> = valid.iter().map(|r| (r.record_id.as_str(), *r)).collect();
    for date in read::list_days(&setup.vault.data()).unwrap() {
        for file in read::list_files(&setup.vault.data(), date).unwrap() {
            for batch in read::read_file(&file, None, &["record_id"]).unwrap() {
                use arrow_array::cast::AsArray;
                for id in batch.column(0).as_string::<i32>().iter().flatten() {
                    assert_eq!(by_id[id].start_time.unwrap().date_naive(), date.date());
                }
            }
        }
    }

    // A lookup by token finds exactly the ground truth, and unsealing gives
    // back the canonical number.
    // Each day's rows carry its own token key: the target's token is
    // computed under the key each row names.
    let population = Generator::new(SynthConfig { seed: 7, subscribers: 300, ..SynthConfig::default() });
    let target = &population.subscribers()[0].msisdn;
    let mut tokens_by_key: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for row in &rows {
        tokens_by_key.entry(row.token_key_id.clone()).or_insert_with(|| {
            let id = cdrvault::model::KeyId::new(row.token_key_id.as_str()).unwrap();
            let key = setup.vault.keys.token_key(&id).unwrap().expect("every row's token key exists");
            Tokeniser::new(&key).token_for_query(IdentifierKind::Msisdn, target).unwrap().0
        });
    }
    assert!(tokens_by_key.len() > 1, "the records span several days, each with its own token key");
    let distinct: HashSet<i64> = tokens_by_key.values().copied().collect();
    assert_eq!(distinct.len(), tokens_by_key.len(), "one number has a different token each day");
    let number_fields =
        [IdentifierField::CallingNumber, IdentifierField::CalledNumber, IdentifierField::RedirectingNumber];
    let found: HashSet<&str> = rows
        .iter()
        .filter(|r| number_fields.iter().any(|f| r.tokens.get(f) == Some(&tokens_by_key[&r.token_key_id])))
        .map(|r| r.record_id.as_str())
        .collect();
    let truth: HashSet<&str> =
        valid.iter().filter(|r| r.involves_number(target)).map(|r| r.record_id.as_str()).collect();
    assert!(truth.len() > 10, "the first subscriber is a frequent one");
    assert_eq!(found, truth);
    for row in rows.iter().filter(|r| found.contains(r.record_id.as_str())) {
        assert!(number_fields.iter().any(|f| row.sealed.get(f) == Some(target)));
        assert!(row.token_key_id.starts_with("tok-"));
        assert!(row.seal_key_id.starts_with("day-"));
        assert_eq!(row.token_key_id[4..], row.seal_key_id[4..], "the token key is the day's");
    }

    // Refused records are in the dead-letter topic with their reason.
    let letters = dead_letters(&setup.kafka);
    assert_eq!(letters.len(), invalid);
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for (reason, _) in &letters {
        *by_reason.entry(reason.clone()).or_default() += 1;
    }
    let mut expected_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for record in setup.records.iter().filter_map(|r| r.defect) {
        let reason = match record {
            Defect::MalformedJson => "malformed_payload",
            Defect::BadNumber => "invalid_msisdn",
            Defect::EndBeforeStart => "end_before_start",
            Defect::UnknownService => "unknown_service",
            Defect::MissingStartTime => "missing_field",
        };
        *expected_reasons.entry(reason.into()).or_default() += 1;
    }
    assert_eq!(by_reason, expected_reasons);
    assert!(letters.iter().any(|(r, f)| r == "invalid_msisdn" && f.as_deref() == Some("calling_number")));

    // Offsets were committed to the end of every partition.
    assert_eq!(committed_total(&setup.kafka), count as i64);

    // The metrics agree, and are labelled by reason only.
    let text = metrics.encode();
    assert_eq!(common::metric(&text, "cdrvault_ingest_records_written_total"), Some(valid.len() as f64));
    assert!(text.contains(&format!(
        "cdrvault_ingest_records_refused_total{{reason=\"invalid_msisdn\"}} {}",
        expected_reasons["invalid_msisdn"]
    )));

    // No raw identifier anywhere the run wrote: data, keys, logs, metrics.
    let identifiers = common::raw_identifiers(&setup.records);
    let mut files = common::files_below(&setup.vault.data());
    files.extend(common::files_below(&setup.vault.keys_dir()));
    let log_bytes = log.0.lock().unwrap().clone();
    assert!(
        String::from_utf8_lossy(&log_bytes).contains("partitions assigned"),
        "the run's own threads logged, and that is scanned"
    );
    let leaks = common::find_leaks(&files, &[("log", &log_bytes), ("metrics", text.as_bytes())], &identifiers);
    assert!(leaks.is_empty(), "raw identifiers leaked: {leaks:?}");
}

#[test]
fn protobuf_topics_are_ingested_like_json() {
    let cluster = MockCluster::new(1).unwrap();
    let count = 3_000;
    let setup = setup(&cluster, count, Encoding::Protobuf);
    let report =
        ingest(&setup, Metrics::new()).run(&Shutdown::new(), StopAfter { records: Some(count) }, |_| {}).unwrap();
    let valid = setup.records.iter().filter(|r| r.defect.is_none()).count();
    assert_eq!(report.written as usize, valid);
    let rows = common::read_all_rows(&setup.vault.data(), &setup.vault.keys);
    assert_eq!(rows.len(), valid);
}

#[test]
fn offsets_do_not_move_when_files_cannot_be_made_durable() {
    let cluster = MockCluster::new(1).unwrap();
    let setup = setup(&cluster, 500, Encoding::Json);
    let ingest = ingest(&setup, Metrics::new());
    // A regular file where the files of the days should go: every write fails.
    let cdr = setup.vault.data().join("cdr");
    std::fs::write(&cdr, b"not a directory").unwrap();
    let result = ingest.run(&Shutdown::new(), StopAfter { records: Some(500) }, |_| {});
    assert!(result.is_err(), "a failed write stops ingest");
    assert_eq!(committed_total(&setup.kafka), 0, "no offset moved past records that are not durable");
    assert!(!cdr.is_dir());
}

/// The dead-letter topic's acknowledgements are awaited by the write stage,
/// after the batch's files are written: a refusal the topic did not take
/// must still keep the batch from committing.
#[test]
fn offsets_do_not_move_when_the_dead_letter_topic_does_not_take_the_refused_records() {
    let cluster = MockCluster::new(1).unwrap();
    let setup = setup(&cluster, 500, Encoding::Json);
    assert!(setup.records.iter().any(|r| r.defect.is_some()), "the records include some to refuse");
    // From now on the broker refuses every write: only the dead-letter
    // producer writes.
    cluster
        .request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 256]);
    let metrics = Metrics::new();
    let ingest = ingest(&setup, Arc::clone(&metrics));
    let result = ingest.run(&Shutdown::new(), StopAfter { records: Some(500) }, |_| {});
    let error = result.expect_err("ingest stops when refused records cannot be dead-lettered").to_string();
    assert!(error.contains("dead-letter topic"), "{error}");
    assert!(metrics.dead_letter_failures.get() > 0);
    assert_eq!(committed_total(&setup.kafka), 0, "no offset moved past a refusal the topic does not have");
    let data = setup.vault.data();
    let published: usize =
        read::list_days(&data).unwrap().into_iter().map(|day| read::list_files(&data, day).unwrap().len()).sum();
    assert_eq!(published, 0, "no file of the batch was published");
}

#[test]
fn the_leak_scan_finds_a_planted_identifier() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("planted.bin");
    std::fs::write(&file, b"\x00\x01binary+4520000001\xff").unwrap();
    let identifiers: HashSet<String> = ["+4520000001".to_string()].into();
    assert_eq!(common::find_leaks(&[file], &[], &identifiers).len(), 1);
    assert_eq!(common::find_leaks(&[], &[("log", b"calling 4520000001")], &["4520000001".to_string()].into()).len(), 1);
}

/// A batch started again while it fills (here a resync, as after a fenced
/// commit) voids the parts it handed on, and says so at once: the next
/// part is an empty one of the new batch, so the decode stage drops the
/// records it holds instead of keeping them until more come.
#[test]
fn a_batch_started_again_voids_its_parts_at_once() {
    let cluster = MockCluster::new(1).unwrap();
    let setup = setup(&cluster, 6_000, Encoding::Json);
    let ingest = ingest(&setup, Metrics::new());
    let source = &ingest.source;
    let mut parts: Vec<(u64, usize)> = Vec::new();
    let mut hand_on = |part: cdrvault::ingest::source::Part| {
        if parts.is_empty() {
            // After the first part: read again from the checkpoint.
            source.ownership().request_resync(source.ownership().epoch());
        }
        parts.push((part.serial, part.inputs.len()));
        true
    };
    let batch = source.next_batch(&|| false, &mut hand_on).unwrap();
    let (first, first_len) = parts[0];
    assert!(first_len > 0, "{parts:?}");
    assert_eq!(parts[1], (batch.serial, 0), "an empty part of the new batch right after: {parts:?}");
    assert_ne!(batch.serial, first);
    let taken: usize = parts.iter().filter(|(serial, _)| *serial == batch.serial).map(|(_, len)| len).sum();
    assert_eq!(taken, batch.len(), "the new batch's records are the parts under its number");
    assert_eq!(batch.len(), setup.ingest.batch_max_records);
}

/// A partition the checkpoint has never seen starts at Kafka's committed
/// offset (an upgrade from a version that kept its place in Kafka keeps
/// it), and one with no committed offset at its earliest record.
#[test]
fn a_partition_never_checkpointed_starts_at_kafka_s_committed_offset_else_at_the_earliest() {
    let cluster = MockCluster::new(1).unwrap();
    let count = 2_000;
    let setup = setup(&cluster, count, Encoding::Json);
    // Kafka holds a place for two of the four partitions.
    let places: BTreeMap<i32, i64> = [(0, 100), (2, 37)].into();
    commit_in_kafka(&setup.kafka, &places);

    // The records before those places, read from the topic itself.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &setup.kafka.brokers)
        .set("group.id", "before-the-places")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for &partition in places.keys() {
        list.add_partition_offset(TOPIC, partition, Offset::Beginning).unwrap();
    }
    reader.assign(&list).unwrap();
    let mut before: HashSet<String> = HashSet::new();
    let mut left: BTreeMap<i32, i64> = places.clone();
    while left.values().any(|n| *n > 0) {
        let message = reader.poll(Duration::from_secs(10)).expect("the topic holds the records").unwrap();
        if message.offset() < places[&message.partition()] {
            *left.get_mut(&message.partition()).unwrap() -= 1;
            let record: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap_or_default();
            if let Some(id) = record.get("record_id").and_then(|id| id.as_str()) {
                before.insert(id.to_string());
            }
        }
    }
    assert!(before.len() > 100, "{} records before the places", before.len());

    let skipped: i64 = places.values().sum();
    let report = ingest(&setup, Metrics::new())
        .run(&Shutdown::new(), StopAfter { records: Some(count - skipped as u64) }, |_| {})
        .unwrap();
    assert_eq!(report.records_in, count - skipped as u64);
    let rows = common::read_all_rows(&setup.vault.data(), &setup.vault.keys);
    let written: HashSet<&str> = rows.iter().map(|r| r.record_id.as_str()).collect();
    let expected: HashSet<&str> = setup
        .records
        .iter()
        .filter(|r| r.defect.is_none())
        .map(|r| r.record_id.as_str())
        .filter(|id| !before.contains(*id))
        .collect();
    assert_eq!(written.len(), rows.len(), "no record is written twice");
    assert_eq!(written, expected, "every record from the places on, and none before");
}

/// A resync before a partition's first checkpoint (a fenced commit) reads
/// it again from where the assignment started it, Kafka's committed
/// offset, not from its earliest record: records before that offset were
/// taken care of before the checkpoint existed.
#[test]
fn a_resync_before_the_first_checkpoint_goes_back_to_kafka_s_committed_offset() {
    let cluster = MockCluster::new(1).unwrap();
    let setup = setup(&cluster, 6_000, Encoding::Json);
    let places: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 100)).collect();
    commit_in_kafka(&setup.kafka, &places);

    let ingest = ingest(&setup, Metrics::new());
    let source = &ingest.source;
    let mut resynced = false;
    let mut hand_on = |_part: cdrvault::ingest::source::Part| {
        if !resynced {
            // After the first part: read again from the checkpoint, which
            // has nothing for these partitions yet.
            source.ownership().request_resync(source.ownership().epoch());
            resynced = true;
        }
        true
    };
    let batch = source.next_batch(&|| false, &mut hand_on).unwrap();
    assert!(resynced);
    assert_eq!(batch.len(), setup.ingest.batch_max_records);
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    for position in &batch.positions {
        first.entry(position.partition).or_insert(position.offset);
    }
    assert!(!first.is_empty());
    for (partition, offset) in first {
        assert_eq!(offset, places[&partition], "partition {partition} read again from Kafka's committed offset");
    }
}
