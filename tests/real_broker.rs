//! End to end through a real Kafka-protocol broker (Tansu, started by
//! `scripts/test.sh`, address in `CDRVAULT_TEST_BROKERS`), driving the
//! `cdrvault` binary as an operator would: `keys init`, `produce`, `serve`,
//! SIGTERM; then checking the files, the dead-letter topic, the committed
//! offsets and everything the run wrote for raw identifiers.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use cdrvault::keys::KeyStore;
use cdrvault::tools::synth::{Generator, SynthConfig};
use common::broker::{brokers, create_topics, free_port, run, unique};

const BINARY: &str = env!("CARGO_BIN_EXE_cdrvault");
const PARTITIONS: i32 = 3;

/// Reads a topic from the beginning until `expected` messages have arrived
/// (bounded by a deadline) and returns the reason header of each. Counting
/// to a known number avoids relying on the broker's watermarks.
fn read_dead_letters(brokers: &str, topic: &str, expected: usize) -> Vec<String> {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut reasons = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while reasons.len() < expected && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.unwrap();
        let reason = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "cdrvault-reason").and_then(|h| h.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("every dead letter names its reason");
        reasons.push(reason);
    }
    reasons
}

fn committed(brokers: &str, group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 })
        .sum()
}

#[test]
fn serve_ingests_from_a_real_broker_and_stops_cleanly() {
    let brokers = brokers();
    let suffix = format!("{}-{}", std::process::id(), unique());
    let topic = format!("cdr-e2e-{suffix}");
    let dead_letter = format!("cdr-e2e-{suffix}-dead");
    let group = format!("cdrvault-e2e-{suffix}");
    create_topics(&brokers, &[(&topic, PARTITIONS), (&dead_letter, PARTITIONS)]);

    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let keys = root.path().join("keys");
    run(&["keys", "init", "--dir", keys.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);

    let count = 6_000u64;
    let produced = run(&[
        "produce",
        "--brokers",
        &brokers,
        "--topic",
        &topic,
        "--count",
        &count.to_string(),
        "--format",
        "protobuf",
        "--seed",
        "11",
        "--days",
        "2",
    ]);

    let (port, api_port) = (free_port(), free_port());
    let state_dir = root.path().join("state");
    let state = state_dir.display();
    let witness_path = root.path().join("audit-heads.jsonl");
    let witness = witness_path.display();
    let config_path = root.path().join("cdrvault.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
dead_letter_topic = "{dead_letter}"
statistics_interval = "1s"
[[kafka.topics]]
name = "{topic}"
encoding = "protobuf"
[ingest]
batch_max_records = 2000
batch_linger = "300ms"
[http]
listen = "127.0.0.1:{port}"
[state]
dir = "{state}"
[access]
listen = "127.0.0.1:{api_port}"
[audit]
witness_file = "{witness}"
[compaction]
interval = "1s"
[log]
format = "json"
filter = "debug"
"#
        ),
    )
    .unwrap();
    let dirs = ["--data-dir", data.to_str().unwrap(), "--keys-dir", keys.to_str().unwrap()];
    let bootstrap = run(&[&["--config", config_path.to_str().unwrap()], &dirs[..], &["access", "bootstrap"]].concat());
    let admin = String::from_utf8_lossy(&bootstrap.stdout).rsplit(' ').next().unwrap().trim().to_string();
    let log_path = root.path().join("serve.log");
    let mut serve = Command::new(BINARY)
        .args([
            "serve",
            "--config",
            config_path.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--keys-dir",
            keys.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();

    // Wait (bounded) until the metrics show every record handled.
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut metrics = String::new();
    loop {
        if let Ok(body) = common::http_get(address, "/metrics") {
            metrics = body;
            let written = common::metric(&metrics, "cdrvault_ingest_records_written_total").unwrap_or(0.0);
            let received = common::metric(&metrics, "cdrvault_ingest_records_received_total").unwrap_or(0.0);
            if received as u64 >= count {
                assert!(written > 0.0);
                break;
            }
        }
        assert!(
            serve.try_wait().unwrap().is_none(),
            "serve exited early: {}",
            std::fs::read_to_string(&log_path).unwrap()
        );
        assert!(Instant::now() < deadline, "ingest did not finish in time; last metrics:\n{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Ready, and saying what it does: alone, it holds the maintenance lease
    // and every partition, under the instance id it made and kept.
    let ready = common::http_get(address, "/readyz").unwrap();
    let instance = std::fs::read_to_string(state_dir.join("instance-id")).unwrap();
    assert!(ready.starts_with("ready\n"), "{ready}");
    assert!(ready.contains(&format!("instance: {}", instance.trim())), "{ready}");
    assert!(ready.contains("role: ingest, maintenance"), "{ready}");
    assert!(ready.contains(&format!("partitions owned: {PARTITIONS}")), "{ready}");
    assert_eq!(common::metric(&metrics, "cdrvault_maintenance_leader"), Some(1.0), "{metrics}");
    // The client's statistics (every second here) count the broker as up,
    // and readiness says so.
    assert!(ready.contains("kafka brokers up: "), "{ready}");
    loop {
        metrics = common::http_get(address, "/metrics").unwrap_or_default();
        if common::metric(&metrics, "cdrvault_ingest_brokers_up") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the broker is not counted as up; last metrics:\n{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The records span today and the days before: serve compacts the closed
    // ones itself, beside ingest (checked below: every record still once).
    loop {
        metrics = common::http_get(address, "/metrics").unwrap_or_default();
        if common::metric(&metrics, "cdrvault_compaction_day_partitions_total").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no closed day compacted in time; last metrics:\n{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(common::metric(&metrics, "cdrvault_compaction_failures_total"), Some(0.0), "{metrics}");
    a_cut_trail_fails_closed(address, api_port, &state_dir, &admin);

    let status = Command::new("kill").args(["-TERM", &serve.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = serve.wait().unwrap();
    assert!(exit.success(), "serve exits 0 after SIGTERM: {exit:?}");
    // The trail stays cut, and says so, against its head and its witness.
    let config = ["--config", config_path.to_str().unwrap()];
    for witness in [&[][..], &["--witness", witness_path.to_str().unwrap()][..]] {
        let args = [&config[..], &dirs[..], &["audit", "verify"], witness].concat();
        let verify = Command::new(BINARY).args(&args).output().unwrap();
        assert!(!verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
        assert!(String::from_utf8_lossy(&verify.stdout).contains("truncated"));
    }

    // Ground truth: the same generator, same seed.
    let mut generator = Generator::new(SynthConfig { seed: 11, days: 2, ..SynthConfig::default() });
    let records: Vec<_> = (0..count).map(|_| generator.next_record()).collect();
    let valid: HashSet<&str> = records.iter().filter(|r| r.defect.is_none()).map(|r| r.record_id.as_str()).collect();
    let invalid = records.len() - valid.len();

    let store = KeyStore::open(&keys, None).unwrap();
    let rows = common::read_all_rows(&data, &store);
    let found: HashSet<&str> = rows.iter().map(|r| r.record_id.as_str()).collect();
    assert_eq!(rows.len(), valid.len(), "each valid record exactly once");
    assert_eq!(found, valid);
    let reasons = read_dead_letters(&brokers, &dead_letter, invalid);
    assert_eq!(reasons.len(), invalid, "every refused record reached the dead-letter topic");
    let known: HashSet<&str> = cdrvault::model::RefuseReason::ALL.iter().map(|r| r.code()).collect();
    assert!(reasons.iter().all(|r| known.contains(r.as_str())));
    assert_eq!(committed(&brokers, &group, &topic), count as i64, "offsets committed to the end after a clean stop");

    let log = std::fs::read(&log_path).unwrap();
    assert!(String::from_utf8_lossy(&log).contains("batch durable"), "the service logged its batches");
    let mut files = common::files_below(&data);
    files.extend(common::files_below(&keys));
    files.push(config_path);
    let identifiers = common::raw_identifiers(&records);
    let leaks = common::find_leaks(
        &files,
        &[("serve log", &log), ("produce output", &produced.stdout), ("metrics", metrics.as_bytes())],
        &identifiers,
    );
    assert!(leaks.is_empty(), "raw identifiers leaked: {leaks:?}");
    assert!(
        !Path::new(&data).join("cdr").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.'))
    );
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Someone who can write the state directory cuts the trail's last entry
/// under the running service. The next call that would be audited (here a
/// refused one) finds the cut: it fails, the service turns not ready, and
/// the metric shows it, instead of re-signing the shortened trail.
fn a_cut_trail_fails_closed(http: SocketAddr, api_port: u16, state: &Path, admin: &str) {
    use cdrvault::proto::lawful_access_client::LawfulAccessClient;
    use cdrvault::proto::{SubmitRequestRequest, WhoAmIRequest};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = LawfulAccessClient::connect(format!("http://127.0.0.1:{api_port}")).await.unwrap();
        client.who_am_i(authed(admin, WhoAmIRequest {})).await.unwrap();
        let forged = client.who_am_i(authed("cdv_forged", WhoAmIRequest {})).await.unwrap_err();
        assert_eq!(forged.code(), tonic::Code::Unauthenticated);
        let trail = state.join("audit.jsonl");
        let text = std::fs::read_to_string(&trail).unwrap();
        assert!(text.lines().last().unwrap().contains("authentication_failed"));
        let cut: String = text.split_inclusive('\n').take(text.lines().count() - 1).collect();
        std::fs::write(&trail, cut).unwrap();

        let refused = client.submit_request(authed(admin, SubmitRequestRequest::default())).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        let me = client.who_am_i(authed(admin, WhoAmIRequest {})).await;
        assert!(me.is_ok(), "calls that audit nothing still answer");
    });
    let response = common::http_get(http, "/readyz").unwrap();
    assert!(response.contains("audit trail damaged"), "{response}");
    let metrics = common::http_get(http, "/metrics").unwrap();
    assert_eq!(common::metric(&metrics, "cdrvault_audit_damaged"), Some(1.0), "{metrics}");
}
