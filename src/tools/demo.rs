//! `cdrvault demo`: the main job on an embedded default.
//!
//! It starts librdkafka's in-process mock cluster, feeds it synthetic CDRs
//! with a realistic mix (including a few invalid ones), and runs the very
//! same ingest loop as `serve` into a local data directory, then reports
//! what it did. Nothing here is a shortcut around the real pipeline: only
//! the broker is embedded.
//!
//! It ends with a lawful-access walk-through over the data it just wrote,
//! through the real gRPC API on 127.0.0.1: an authority and its handler,
//! a warrant registered by one legal reviewer and approved by another, one
//! request executed and its result fetched with its digest checked, and the
//! audit trail verified. It uses a fresh registry and trail under the state
//! directory (`demo-<time>`), so the demo can be run again and again.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::mocking::MockCluster;

use super::produce::{ProduceOptions, ProduceReport, produce};
use super::synth::{Generator, SynthConfig};
use crate::access::api::AccessService;
use crate::access::client::Client;
use crate::access::config::AccessSettings;
use crate::access::{AccessStore, Desk, DeskParts};
use crate::audit::AuditTrail;
use crate::ingest::config::{IngestConfig, KafkaConfig, TopicConfig};
use crate::ingest::decode::Encoding;
use crate::ingest::process::{Processor, ProcessorConfig};
use crate::ingest::{Ingest, IngestReport, StopAfter};
use crate::keys::KeyStore;
use crate::lifecycle::config::RetentionConfig;
use crate::lifecycle::orders::OrderStore;
use crate::ops::clock::{Clock, SystemClock};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::proto;
use crate::registry::Registries;
use crate::storage::config::ParquetConfig;
use crate::storage::recover;
use crate::storage::write::ParquetWriter;

/// The demo's topic, named per run: each run has a new mock cluster whose
/// offsets start again at 0, so the checkpoint of an earlier run in the
/// same data directory must not apply to it.
fn demo_topic(now: chrono::DateTime<chrono::Utc>) -> String {
    format!("cdr-{}", now.timestamp_millis())
}
pub const DEMO_DEAD_LETTER_TOPIC: &str = "cdr.dead-letter";
const DEMO_PARTITIONS: i32 = 8;
/// The demo's instance id in the checkpoint.
const DEMO_INSTANCE: &str = "demo";
/// How far the demo's producer may run ahead of ingest, in records. The mock
/// cluster keeps only 5 MiB per partition and drops older messages, like a
/// retention limit; this window stays well inside it.
const PRODUCER_WINDOW: u64 = 60_000;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Records to generate; `None` runs until `stop` (duration or Ctrl-C).
    pub records: Option<u64>,
    pub days: u32,
    pub seed: u64,
    pub format: Encoding,
    pub data_dir: PathBuf,
    pub keys_dir: PathBuf,
}

#[derive(Debug)]
pub struct DemoSummary {
    pub produced: ProduceReport,
    pub ingest: IngestReport,
    pub data_dir: PathBuf,
}

/// Runs the demo until `options.records` are ingested or `shutdown`.
/// Blocking.
pub fn run(
    options: &DemoOptions,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    mut on_batch: impl FnMut(&IngestReport) + Send,
) -> anyhow::Result<DemoSummary> {
    let cluster = MockCluster::new(1).map_err(|e| anyhow::anyhow!("cannot start the mock Kafka cluster: {e}"))?;
    let topic = demo_topic(chrono::Utc::now());
    cluster.create_topic(&topic, DEMO_PARTITIONS, 1)?;
    cluster.create_topic(DEMO_DEAD_LETTER_TOPIC, 1, 1)?;
    let brokers = cluster.bootstrap_servers();

    let kafka = KafkaConfig {
        brokers: brokers.clone(),
        group_id: "cdrvault-demo".into(),
        topics: vec![TopicConfig { name: topic.clone(), encoding: options.format }],
        dead_letter_topic: DEMO_DEAD_LETTER_TOPIC.into(),
        ..KafkaConfig::default()
    };
    let ingest_config =
        IngestConfig { batch_max_records: 50_000, batch_linger: Duration::from_millis(500), ..IngestConfig::default() };

    let keys = Arc::new(KeyStore::open_or_init(&options.keys_dir, Some(&options.data_dir))?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let processor = Processor::new(
        ParquetWriter::new(&options.data_dir, ParquetConfig::default()).with_instance(DEMO_INSTANCE),
        keys,
        Arc::clone(&clock),
        ProcessorConfig::new(&ingest_config, RetentionConfig::default().days),
    );
    let ingest = Ingest::connect(&kafka, &ingest_config, DEMO_INSTANCE, processor, metrics)?;
    recover::remove_leftovers(&options.data_dir)?;
    let produce_options = ProduceOptions {
        brokers,
        topic,
        count: options.records,
        rate: None,
        format: options.format,
        batch_records: super::produce::DEFAULT_BATCH_RECORDS,
        synth: SynthConfig { seed: options.seed, days: options.days, until: clock.now(), ..SynthConfig::default() },
    };

    let consumed = AtomicU64::new(0);
    let hold_back = |sent: u64| {
        // Backpressure, as a real producer meets it: wait while too far ahead.
        while sent.saturating_sub(consumed.load(Ordering::Relaxed)) >= PRODUCER_WINDOW && !shutdown.is_triggered() {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let (produced, ingested) = std::thread::scope(|scope| {
        let producer = scope.spawn(|| {
            let result = produce(&produce_options, &shutdown, hold_back, |_| {});
            if result.is_err() {
                shutdown.trigger();
            }
            result
        });
        let ingested = ingest.run(&shutdown, StopAfter { records: options.records }, |report| {
            consumed.store(report.records_in, Ordering::Relaxed);
            on_batch(report);
        });
        // When ingest ends first (shutdown, or an error), the producer must
        // end too.
        shutdown.trigger();
        let produced = producer.join().unwrap_or_else(|_| Err(anyhow::anyhow!("producer thread panicked")));
        (produced, ingested)
    });
    drop(cluster);
    Ok(DemoSummary { produced: produced?, ingest: ingested?, data_dir: options.data_dir.clone() })
}

/// What the lawful-access walk-through did (no identifiers).
#[derive(Debug, Clone)]
pub struct Walkthrough {
    pub state_dir: PathBuf,
    pub authority: String,
    pub warrant: String,
    pub request_id: String,
    pub status: String,
    pub records: u64,
    pub sha256: String,
    pub bytes: u64,
    pub audit_entries: u64,
    pub audit_intact: bool,
}

/// Runs the walk-through over the demo's data: one subscriber of the demo
/// population is the target.
pub fn lawful_access(options: &DemoOptions, state_dir: &std::path::Path) -> anyhow::Result<Walkthrough> {
    let now = chrono::Utc::now();
    let state_dir = state_dir.join(format!("demo-{}", now.format("%Y%m%dT%H%M%S%.3f")));
    let keys = Arc::new(KeyStore::open(&options.keys_dir, Some(&options.data_dir))?);
    let registries = Registries::sqlite(&state_dir, &keys)?;
    let audit = Arc::new(AuditTrail::open(&state_dir, &keys)?);
    let (_, admin) =
        AccessStore::new(Arc::clone(&registries.access)).bootstrap(&audit, "demo admin", "demo admin", now)?;
    let orders = Arc::new(OrderStore::new(
        Arc::clone(&registries.orders),
        Arc::clone(&keys),
        Arc::clone(&audit),
        options.data_dir.clone(),
    ));
    let desk = Desk::new(DeskParts {
        data_dir: options.data_dir.clone(),
        results_dir: state_dir.join(crate::access::results::RESULTS_DIR),
        keys,
        audit,
        orders,
        registries,
        clock: Arc::new(SystemClock),
        metrics: Metrics::new(),
        settings: AccessSettings { csp_id: "cdrvault-demo".into(), ..AccessSettings::default() },
    })?;
    let service = AccessService::new(Arc::new(desk));
    let population = Generator::new(SynthConfig { seed: options.seed, days: options.days, ..SynthConfig::default() });
    let target = format!("msisdn:{}", population.subscribers()[0].msisdn);
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let window_start = time(now - chrono::Duration::days(i64::from(options.days) + 1));
    let window_end = time(now + chrono::Duration::minutes(5));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::access::api::serve(listener, service, None, async {
            let _ = stopped.await;
        }));

        let mut admin = Client::connect(&url, Some(admin.expose().to_string()), None).await?;
        let authority = "demo-police".to_string();
        admin
            .create_authority(proto::CreateAuthorityRequest {
                id: authority.clone(),
                country: "DK".into(),
                name: "Demo police".into(),
            })
            .await?;
        let mut person = async |name: &str, role: &str, authority: &str| -> anyhow::Result<Client> {
            let created = admin
                .create_principal(proto::CreatePrincipalRequest {
                    name: name.into(),
                    person: name.into(),
                    roles: vec![role.into()],
                    authority: authority.into(),
                    ..proto::CreatePrincipalRequest::default()
                })
                .await?;
            Client::connect(&url, Some(created.token), None).await
        };
        let mut alice = person("alice (legal)", "legal_reviewer", "").await?;
        let mut bob = person("bob (legal)", "legal_reviewer", "").await?;
        let mut handler = person("demo handler", "authority_handler", &authority).await?;
        let mut auditor = person("auditor", "auditor", "").await?;

        let warrant = alice
            .register_warrant(proto::RegisterWarrantRequest {
                authority: authority.clone(),
                reference: "DEMO-1".into(),
                issued_by: "Demo district court".into(),
                legal_basis: "demo".into(),
                targets: vec![target.clone()],
                period_start: window_start.clone(),
                period_end: window_end.clone(),
                categories: vec!["traffic".into(), "location".into()],
                valid_until: time(now + chrono::Duration::days(30)),
                cell_dump: false,
            })
            .await?;
        bob.decide_warrant(proto::DecideWarrantRequest {
            warrant: warrant.id.clone(),
            approve: true,
            reason: String::new(),
        })
        .await?;
        let answered = handler
            .submit_request(proto::SubmitRequestRequest {
                warrant: warrant.id.clone(),
                request_number: 1,
                targets: vec![target.clone()],
                window_start,
                window_end,
                categories: vec!["traffic".into(), "location".into()],
                format: proto::ResultFormat::EtsiXml as i32,
            })
            .await?;
        // The client checks the bytes against the audited digest; the bytes
        // themselves (raw identifiers) are dropped, never printed.
        let (info, bytes) = handler.fetch_result(&answered.request_id).await?;
        let check = auditor.verify_audit().await?;
        let _ = stop.send(());
        server.await??;
        Ok(Walkthrough {
            state_dir: state_dir.clone(),
            authority,
            warrant: warrant.id,
            request_id: info.request_id,
            status: info.status,
            records: info.records,
            sha256: info.sha256,
            bytes: bytes.len() as u64,
            audit_entries: check.entries,
            audit_intact: check.intact,
        })
    })
}
