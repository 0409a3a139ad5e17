//! The composition root of the service: `serve` (ingest, retention,
//! compaction, the HTTP endpoints and, when configured, the lawful-access
//! API) and `access serve` (the API alone). Everything is opened once here
//! and handed down: one keystore, one audit trail, one registry (as trait
//! objects), one clock, one metrics registry, one shutdown signal. Nothing
//! here decides anything the library does not.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use super::config::Config;
use crate::access::api::{self, AccessService};
use crate::access::{Desk, DeskParts, results};
use crate::audit::{AuditEvent, AuditTrail};
use crate::ingest::process::{Processor, ProcessorConfig};
use crate::ingest::{Ingest, StopAfter};
use crate::keys::KeyStore;
use crate::lifecycle::orders::OrderStore;
use crate::lifecycle::retention::Sweeper;
use crate::ops::clock::{Clock, SystemClock};
use crate::ops::durable::{self, FileMode};
use crate::ops::http;
use crate::ops::lease::{Lease, Leased};
use crate::ops::memory;
use crate::ops::metrics::Metrics;
use crate::ops::periodic::run_periodically;
use crate::ops::shutdown::Shutdown;
use crate::registry::Registries;
use crate::storage::compact::Compactor;
use crate::storage::write::ParquetWriter;
use crate::storage::{layout, recover};

/// The environment variable that names the instance (a pod name).
const INSTANCE_ID_ENV: &str = "CDRVAULT_INSTANCE_ID";

/// The file in the state directory that keeps a made-up instance id.
const INSTANCE_ID_FILE: &str = "instance-id";

/// How often the lawful-access service forgets cached files of destroyed
/// days (their footers hold a copy of the destroyed key).
const CACHE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How often the lawful-access service destroys expired results and audits
/// the interval's failed authentications.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);

/// Starts the lawful-access service's background jobs on `runtime`.
fn spawn_access_jobs(runtime: &tokio::runtime::Runtime, desk: &Arc<Desk>, shutdown: &Shutdown) {
    runtime.spawn(run_periodically(desk.lookup_engine(), CACHE_SWEEP_INTERVAL, shutdown.clone()));
    runtime.spawn(run_periodically(Arc::clone(desk), HOUSEKEEPING_INTERVAL, shutdown.clone()));
}

/// Audits the failed authentications counted since the last housekeeping,
/// so that a shutdown loses none.
fn flush_at_shutdown(desk: &Desk) {
    if let Err(error) = desk.flush_failures() {
        tracing::error!(%error, "could not audit the last failed authentications");
    }
}

/// What the commands open once and share.
pub(super) struct Root {
    pub config: Config,
    pub keys: Arc<KeyStore>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

impl Root {
    /// The validated configuration and its keystore.
    pub fn open(config: Config) -> anyhow::Result<Root> {
        config.validate()?;
        let keys = Arc::new(
            KeyStore::open_with(&config.keys, Some(&config.storage.data_dir))
                .with_context(|| format!("opening keys in {}", config.keys.dir.display()))?,
        );
        Ok(Root { config, keys, clock: Arc::new(SystemClock), metrics: Metrics::new() })
    }

    /// The audit trail, publishing its heads to the witness if one is
    /// configured. The first trail opened also records every day whose
    /// keys this process creates (`day_keys_created`: the automatic
    /// rotation of token keys) and counts it.
    pub fn audit(&self) -> anyhow::Result<Arc<AuditTrail>> {
        let mut trail = AuditTrail::open(&self.config.state.dir, &self.keys)?.with_metrics(Arc::clone(&self.metrics));
        if let Some(witness) = &self.config.audit.witness_file {
            trail = trail.with_witness(witness)?;
        }
        let trail = Arc::new(trail);
        let (audit, metrics, clock) = (Arc::clone(&trail), Arc::clone(&self.metrics), Arc::clone(&self.clock));
        self.keys.on_day_keys_created(Box::new(move |key| {
            metrics.token_keys_created.inc();
            let event = AuditEvent::DayKeysCreated {
                day: key.date.to_string(),
                data_key_id: key.id.to_string(),
                token_key_id: key.token.id.to_string(),
            };
            // The key is durable already; a trail that refuses the entry
            // has failed closed and says so itself (metric, readiness).
            if let Err(error) = audit.append("keystore", &event, clock.now()) {
                tracing::error!(%error, day = %key.date, "the creation of a day's keys was not audited");
            }
        }));
        Ok(trail)
    }

    /// Measures the free space of the data, state and keys directories at
    /// every scrape.
    pub fn watch_volumes(&self) {
        let volumes = [
            ("data", self.config.storage.data_dir.clone()),
            ("state", self.config.state.dir.clone()),
            ("keys", self.config.keys.dir.clone()),
        ];
        self.metrics.on_scrape(move |metrics| metrics.measure_volumes(&volumes));
    }

    pub fn registries(&self) -> anyhow::Result<Registries> {
        Ok(Registries::sqlite(&self.config.state.dir, &self.keys)?)
    }

    pub fn writer(&self) -> ParquetWriter {
        ParquetWriter::new(&self.config.storage.data_dir, self.config.parquet.clone())
    }

    pub fn orders(&self, registries: &Registries, audit: &Arc<AuditTrail>) -> Arc<OrderStore> {
        Arc::new(
            OrderStore::new(
                Arc::clone(&registries.orders),
                Arc::clone(&self.keys),
                Arc::clone(audit),
                self.config.storage.data_dir.clone(),
            )
            .with_max_days(self.config.access.order_max_days),
        )
    }

    /// The retention sweeper, honouring the preservation orders.
    pub fn sweeper(&self, audit: &Arc<AuditTrail>, orders: Arc<OrderStore>) -> Sweeper {
        Sweeper::new(
            &self.config.storage.data_dir,
            Arc::clone(&self.keys),
            Arc::clone(audit),
            Arc::clone(&self.clock),
            self.config.retention.clone(),
        )
        .with_orders(orders, self.config.parquet.clone())
    }

    pub fn compactor(&self) -> Compactor {
        Compactor::new(self.writer(), Arc::clone(&self.keys), Arc::clone(&self.clock), self.config.retention.days)
    }

    /// This instance's id: configured, from `CDRVAULT_INSTANCE_ID`, or made
    /// once and kept in the state directory.
    pub fn instance_id(&self) -> anyhow::Result<String> {
        let chosen = self.config.kafka.instance_id.clone().or_else(|| std::env::var(INSTANCE_ID_ENV).ok());
        let id = match chosen {
            Some(id) => id,
            None => {
                let path = self.config.state.dir.join(INSTANCE_ID_FILE);
                match std::fs::read_to_string(&path) {
                    Ok(id) => id.trim().to_string(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let id = format!("cdrvault-{:08x}", rand::random::<u32>());
                        durable::create_private_dir(&self.config.state.dir)?;
                        durable::write_atomically(&path, format!("{id}\n").as_bytes(), FileMode::Private)?;
                        id
                    }
                    Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
                }
            }
        };
        anyhow::ensure!(layout::is_valid_instance(&id), "instance id {id:?}: 1 to 64 of A-Z a-z 0-9 - _");
        Ok(id)
    }

    /// Removes what crashed writers left in the data directory. After the
    /// checkpoint's recovery ([`Ingest::connect`]), which publishes the
    /// files of committed batches however old.
    pub fn remove_leftovers(&self) {
        match recover::remove_leftovers(&self.config.storage.data_dir) {
            Ok(found) => {
                if found.removed > 0 {
                    tracing::info!(files = found.removed, "removed temporaries left by a crashed writer");
                }
                if found.refused_manifest_entries > 0 {
                    tracing::warn!(
                        entries = found.refused_manifest_entries,
                        "compaction manifests named files outside their day; those were refused and left alone"
                    );
                }
            }
            Err(e) => tracing::warn!(reason = %e, "could not remove leftover temporaries"),
        }
    }

    /// The ingest processor of instance `instance`.
    pub fn processor(&self, instance: &str) -> Processor {
        let config = ProcessorConfig::new(&self.config.ingest, self.config.retention.days);
        Processor::new(self.writer().with_instance(instance), Arc::clone(&self.keys), Arc::clone(&self.clock), config)
    }

    /// The lawful-access desk over the data directory and the registry.
    pub fn desk(&self, audit: &Arc<AuditTrail>, registries: Registries) -> anyhow::Result<Arc<Desk>> {
        let config = &self.config;
        Ok(Arc::new(Desk::new(DeskParts {
            data_dir: config.storage.data_dir.clone(),
            results_dir: config.state.dir.join(results::RESULTS_DIR),
            keys: Arc::clone(&self.keys),
            audit: Arc::clone(audit),
            orders: self.orders(&registries, audit),
            registries,
            clock: Arc::clone(&self.clock),
            metrics: Arc::clone(&self.metrics),
            settings: config.access.settings(config.retention.days),
        })?))
    }
}

/// `cdrvault serve`: runs until Ctrl-C or SIGTERM, or a fatal error.
pub(super) fn serve(config: Config) -> anyhow::Result<ExitCode> {
    memory::keep_freed_memory();
    let root = Root::open(config)?;
    let config = &root.config;
    let instance = root.instance_id()?;
    let shutdown = Shutdown::on_signals()?;
    let ready = Arc::new(AtomicBool::new(false));
    let audit = root.audit()?;
    let registries = root.registries()?;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    // Retention and compaction run on one instance of those sharing the
    // data directory at a time: the holder of the maintenance lease.
    let lease = Arc::new(Lease::new(&layout::maintenance_lock(&config.storage.data_dir), Arc::clone(&root.metrics)));
    let readiness = {
        let (ready, audit, lease, metrics) =
            (Arc::clone(&ready), Arc::clone(&audit), Arc::clone(&lease), Arc::clone(&root.metrics));
        let instance = instance.clone();
        move || match (ready.load(Ordering::Relaxed), audit.damage()) {
            (_, Some(_)) => Err("audit trail damaged: audited actions are refused"),
            (false, None) => Err("starting"),
            // Kafka out of reach leaves the instance ready: lookups and
            // the lawful-access API do not need it, and a stalled ingest
            // has its own alert (docs/operations.md).
            (true, None) => Ok(format!(
                "instance: {instance}\nrole: {}\npartitions owned: {}\nkafka brokers up: {}\n",
                if lease.is_held() { "ingest, maintenance (retention, compaction)" } else { "ingest" },
                metrics.partitions_owned.get(),
                metrics.brokers_up.get()
            )),
        }
    };
    let (address, http) = runtime.block_on(http::serve(
        config.http.listen,
        Arc::clone(&root.metrics),
        Arc::new(readiness),
        shutdown.clone(),
    ))?;
    tracing::info!(%address, "metrics and health endpoints listening");

    let access = match config.access.listen {
        Some(listen) => {
            let desk = root.desk(&audit, registries.clone())?;
            spawn_access_jobs(&runtime, &desk, &shutdown);
            let tls = config.access.tls().map(|files| files.server_config()).transpose()?;
            let listener = runtime.block_on(tokio::net::TcpListener::bind(listen))?;
            tracing::info!(address = %listener.local_addr()?, "lawful-access API listening");
            let stop = shutdown.clone();
            let service = AccessService::new(Arc::clone(&desk)).with_shutdown(shutdown.clone());
            Some((desk, runtime.spawn(api::serve(listener, service, tls, async move { stop.wait().await }))))
        }
        None => None,
    };
    let sweeper =
        Arc::new(root.sweeper(&audit, root.orders(&registries, &audit)).with_metrics(Arc::clone(&root.metrics)));
    // Every instance reports the oldest day and the overdue days at each
    // scrape, leader or not (a weak reference: the metrics do not keep the
    // sweeper alive).
    let gauges = Arc::downgrade(&sweeper);
    root.metrics.on_scrape(move |_| {
        if let Some(sweeper) = gauges.upgrade() {
            sweeper.refresh_gauges();
        }
    });
    root.watch_volumes();
    let sweeper = Arc::new(Leased::new(sweeper, Arc::clone(&lease)));
    let sweeps = runtime.spawn(run_periodically(sweeper, config.retention.interval, shutdown.clone()));
    let compactions = config.compaction.enabled.then(|| {
        let compactor = Arc::new(root.compactor().with_metrics(Arc::clone(&root.metrics)));
        let compactor = Arc::new(Leased::new(compactor, Arc::clone(&lease)));
        runtime.spawn(run_periodically(compactor, config.compaction.interval, shutdown.clone()))
    });

    let processor = root.processor(&instance);
    let ingest = Ingest::connect(&config.kafka, &config.ingest, &instance, processor, Arc::clone(&root.metrics))?;
    root.remove_leftovers();
    ready.store(true, Ordering::Relaxed);
    tracing::info!(topics = config.kafka.topics.len(), data_dir = %config.storage.data_dir.display(), "ingest started");
    let result = ingest.run(&shutdown, StopAfter::default(), |_| {});
    ready.store(false, Ordering::Relaxed);
    shutdown.trigger();
    let _ = runtime.block_on(http);
    let _ = runtime.block_on(sweeps);
    if let Some(compactions) = compactions {
        let _ = runtime.block_on(compactions);
    }
    if let Some((desk, access)) = access {
        let _ = runtime.block_on(access);
        flush_at_shutdown(&desk);
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `cdrvault access serve`: the API alone, until Ctrl-C or SIGTERM.
pub(super) fn serve_access(config: Config, listen: Option<SocketAddr>) -> anyhow::Result<ExitCode> {
    memory::keep_freed_memory();
    let root = Root::open(config)?;
    let listen = listen.or(root.config.access.listen).context("no address: set access.listen or pass --listen")?;
    let audit = root.audit()?;
    let desk = root.desk(&audit, root.registries()?)?;
    let shutdown = Shutdown::on_signals()?;
    let service = AccessService::new(Arc::clone(&desk)).with_shutdown(shutdown.clone());
    let tls =
        root.config.access.tls().map(|files| files.server_config()).transpose().context("reading the TLS files")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    spawn_access_jobs(&runtime, &desk, &shutdown);
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        // The address on stdout, so that scripts binding port 0 can find it.
        println!("lawful-access API listening on {address}");
        use std::io::Write;
        std::io::stdout().flush()?;
        tracing::info!(%address, "lawful-access API listening");
        api::serve(listener, service, tls, async move { shutdown.wait().await }).await?;
        anyhow::Ok(())
    })?;
    flush_at_shutdown(&desk);
    Ok(ExitCode::SUCCESS)
}
