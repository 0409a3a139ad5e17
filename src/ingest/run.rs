//! The ingest loop: source → decode (refused records to the dead-letter
//! topic) → write (files staged) → checkpoint commit (files published) →
//! Kafka offsets (monitoring).
//!
//! It runs on dedicated threads, one per stage, because every step in it
//! blocks: polling librdkafka, tokenising, encoding Parquet, fsync. The
//! order of the steps is the durability invariant, and the commit makes it
//! exactly once: a batch's files and its offset ranges commit together in
//! the data directory ([`crate::storage::checkpoint`]) only after the files
//! are durable and the dead-letter topic has acknowledged every refused
//! record. A commit refused because the batch's partitions were claimed
//! since (fenced) discards the batch and rereads from the checkpoint; any
//! other error stops the loop, and the next start resumes from the
//! checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{error, info, warn};

use super::checkpoint;
use super::config::{IngestConfig, KafkaConfig};
use super::dead_letter::{DeadLetter, DeadLetterError, Pending};
use super::decode::Refusal;
use super::ownership::Ownership;
use super::process::{DecodedBatch, Input, Processor};
use super::source::{Batch, KafkaSource, Part};
use crate::model::{PartitionDate, RefuseReason};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::storage::checkpoint::{CheckpointError, CheckpointLog, Recovered};

/// Totals of a run, for the summary and the demo's progress line.
#[derive(Debug, Default, Clone)]
pub struct IngestReport {
    pub records_in: u64,
    pub written: u64,
    pub refused: BTreeMap<&'static str, u64>,
    pub files: u64,
    pub bytes_written: u64,
    pub days: BTreeSet<PartitionDate>,
    pub batches: u64,
}

impl IngestReport {
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

/// When the loop ends by itself (besides the shutdown signal).
#[derive(Debug, Clone, Copy, Default)]
pub struct StopAfter {
    /// Stop once this many records have been read and handled.
    pub records: Option<u64>,
}

pub struct Ingest {
    pub source: KafkaSource,
    pub dead_letter: DeadLetter,
    pub processor: Processor,
    pub metrics: Arc<Metrics>,
}

/// What the fetch stage hands to the decode stage.
enum Fetched {
    /// The next records of the batch being read.
    Part(Part),
    /// The batch read to its end: its records came in the parts before.
    End(Batch),
}

/// A batch between the decode and the write stage.
struct Decoded {
    batch: Batch,
    /// Its records, index for index with `batch.positions`.
    inputs: Vec<Input>,
    columns: DecodedBatch,
    /// Its refused records, sent to the dead-letter topic.
    dead_lettered: Pending,
    /// The time the decode stage spent on it.
    busy: std::time::Duration,
}

impl Ingest {
    /// Opens the checkpoint of the processor's data directory for
    /// `instance`, finishing what a crash left (committed batches still
    /// staged are published, this instance's uncommitted ones removed),
    /// then joins the consumer group as `instance` and connects the
    /// dead-letter producer.
    pub fn connect(
        kafka: &KafkaConfig,
        config: &IngestConfig,
        instance: &str,
        processor: Processor,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Ingest> {
        let data_dir = processor.writer().data_dir().to_path_buf();
        let (log, recovered) = CheckpointLog::open(&data_dir, instance)?;
        metrics.recovered_batches.inc_by(recovered.completed_batches);
        metrics.discarded_staged_files.inc_by(recovered.discarded_files);
        if recovered != Recovered::default() {
            info!(
                completed_batches = recovered.completed_batches,
                discarded_files = recovered.discarded_files,
                "recovered the checkpoint: committed batches published, uncommitted files removed"
            );
        }
        let ownership = Ownership::new(Arc::clone(&metrics), Arc::new(Mutex::new(log)));
        // The producer first: it needs a producer id before its first send
        // (see `DeadLetter::connect`), and asks for one while the consumer joins.
        let dead_letter = DeadLetter::connect(kafka)?;
        Ok(Ingest {
            source: KafkaSource::connect(kafka, config, instance, ownership)?,
            dead_letter,
            processor,
            metrics,
        })
    }

    /// Runs until `shutdown` or `stop_after` is reached, then commits the
    /// offsets of everything made durable. Blocking.
    pub fn run(
        self,
        shutdown: &Shutdown,
        stop_after: StopAfter,
        mut on_batch: impl FnMut(&IngestReport),
    ) -> anyhow::Result<IngestReport> {
        let mut report = IngestReport::default();
        let result = self.run_batches(shutdown, stop_after, &mut report, &mut on_batch);
        if let Err(e) = &result {
            error!(reason = %e, "ingest stopped on an error; offsets of the failed batch were not stored");
            return result.map(|_| report);
        }
        // Drained: everything polled was processed, so this commit covers
        // exactly the durable records.
        checkpoint::commit_now(self.source.consumer())?;
        info!(
            records = report.records_in,
            written = report.written,
            refused = report.refused_total(),
            "ingest stopped"
        );
        Ok(report)
    }

    /// Three stages overlap, each on a thread of its own: fetching fills a
    /// batch and hands its records on in parts as they come, decoding
    /// tokenises each part as it arrives and, once its batch is complete,
    /// sends the batch's refused records to the dead-letter topic, and this
    /// thread writes the batch before and commits it. So even the first
    /// batch after a start is mostly decoded when its last record arrives.
    /// The channels hold two parts and one decoded batch, so memory stays
    /// bounded (about four batches at most: one filling, one being decoded,
    /// one in the channel and one being written). Offsets are stored here,
    /// after durability, never by another stage. On stop the fetch thread
    /// ends its batch early and every batch already fetched is written
    /// before the final commit.
    fn run_batches(
        &self,
        shutdown: &Shutdown,
        stop_after: StopAfter,
        report: &mut IngestReport,
        on_batch: &mut impl FnMut(&IngestReport),
    ) -> anyhow::Result<()> {
        let abort = AtomicBool::new(false);
        let should_stop = || shutdown.is_triggered() || abort.load(Ordering::Relaxed);
        std::thread::scope(|scope| {
            let (fetched_tx, fetched_rx) = std::sync::mpsc::sync_channel::<Fetched>(2);
            let (decoded_tx, decoded_rx) = std::sync::mpsc::sync_channel::<Decoded>(1);
            let should_stop = &should_stop;
            let abort = &abort;
            let fetcher = scope.spawn(move || -> anyhow::Result<()> {
                let mut fetched = 0u64;
                while !should_stop() && stop_after.records.is_none_or(|limit| fetched < limit) {
                    let mut hand_on = |part| fetched_tx.send(Fetched::Part(part)).is_ok();
                    let batch = self.source.next_batch(&should_stop, &mut hand_on)?;
                    if batch.is_empty() {
                        continue;
                    }
                    fetched += batch.len() as u64;
                    if fetched_tx.send(Fetched::End(batch)).is_err() {
                        break;
                    }
                }
                Ok(())
            });
            let decoder = scope.spawn(move || -> anyhow::Result<()> {
                let decoded = self.decode_batches(fetched_rx, decoded_tx, abort);
                if decoded.is_err() {
                    // Stop fetching; the receiver is gone, so a blocked send returns.
                    abort.store(true, Ordering::Relaxed);
                }
                decoded
            });
            let written = self.write_batches(decoded_rx, report, on_batch);
            if written.is_err() {
                // Stop the other stages; their receivers go with them.
                abort.store(true, Ordering::Relaxed);
            }
            let panicked = |stage: &str| anyhow::anyhow!("the {stage} thread panicked");
            let decoded = decoder.join().unwrap_or_else(|_| Err(panicked("decode")));
            let fetched = fetcher.join().unwrap_or_else(|_| Err(panicked("fetch")));
            written.and(decoded).and(fetched)
        })
    }

    /// The decode stage: tokenises the parts of each batch as they come
    /// into the columns of its days, and once the batch is complete sends
    /// its refused records to the dead-letter topic, which must have them
    /// all before the batch commits (the write stage waits for that, after
    /// writing the batch's files). Parts of a batch that was started again
    /// (another serial number) are dropped. Once another stage failed
    /// (`abort`), nothing more is decoded or dead-lettered: no batch will
    /// be committed.
    fn decode_batches(
        &self,
        fetched: std::sync::mpsc::Receiver<Fetched>,
        decoded: std::sync::mpsc::SyncSender<Decoded>,
        abort: &AtomicBool,
    ) -> anyhow::Result<()> {
        let mut assembling: Option<Assembling> = None;
        for message in fetched {
            if abort.load(Ordering::Relaxed) {
                break;
            }
            match message {
                Fetched::Part(part) => {
                    let current = match assembling.take() {
                        Some(current) if current.serial == part.serial => current,
                        _ => Assembling::new(&part, self.processor.start_batch(self.source.batch_records())),
                    };
                    assembling = Some(current.with(part, self.source.ownership().epoch(), &self.processor)?);
                }
                Fetched::End(batch) => {
                    let current = assembling.take();
                    if self.dropped_as_stale(&batch) {
                        continue;
                    }
                    // A batch of the current epoch whose records were not
                    // all decoded must never be skipped: the next batch
                    // starts after it.
                    let complete = |current: &Assembling| {
                        current.serial == batch.serial
                            && current.inputs.len() == batch.len()
                            && current.columns.len() == batch.len()
                    };
                    let current = current
                        .filter(complete)
                        .ok_or_else(|| anyhow::anyhow!("the decode stage did not get every record of a batch"))?;
                    let started = Instant::now();
                    let dead_lettered = self.dead_letter(&batch, &current.inputs, &current.columns.refused)?;
                    let busy = current.busy + started.elapsed();
                    let Assembling { inputs, columns, .. } = current;
                    if decoded.send(Decoded { batch, inputs, columns, dead_lettered, busy }).is_err() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `batch` was read before a rebalance or a resync, and is
    /// dropped (and counted): reading restarted from the checkpoint since,
    /// so its records come again. Both stages check, so that a stale batch
    /// is neither decoded nor written.
    fn dropped_as_stale(&self, batch: &Batch) -> bool {
        let stale = batch.epoch != self.source.ownership().epoch();
        if stale {
            self.metrics.batches_dropped.inc();
        }
        stale
    }

    /// Sends refused records to the dead-letter topic; the broker's
    /// acknowledgements are awaited with [`Self::acknowledged`].
    fn dead_letter(&self, batch: &Batch, inputs: &[Input], refused: &[(usize, Refusal)]) -> anyhow::Result<Pending> {
        if refused.is_empty() {
            return Ok(Pending::none());
        }
        let refused: Vec<_> =
            refused.iter().map(|(i, refusal)| (&inputs[*i], &batch.positions[*i], *refusal)).collect();
        self.dead_letter.send_all(&refused).map_err(|e| self.dead_letter_failed(e))
    }

    /// Waits until the dead-letter topic has every record of `pending`.
    fn acknowledged(&self, pending: Pending) -> anyhow::Result<()> {
        pending.wait().map_err(|e| self.dead_letter_failed(e))
    }

    fn dead_letter_failed(&self, e: DeadLetterError) -> anyhow::Error {
        self.metrics.dead_letter_failures.inc_by(e.failed as u64);
        e.into()
    }

    /// The write stage: writes each decoded batch's files, commits them with
    /// the batch's offsets and publishes them.
    fn write_batches(
        &self,
        receiver: std::sync::mpsc::Receiver<Decoded>,
        report: &mut IngestReport,
        on_batch: &mut impl FnMut(&IngestReport),
    ) -> anyhow::Result<()> {
        let ownership = self.source.ownership();
        for Decoded { batch, inputs, columns, dead_lettered, busy } in receiver {
            // The check that counts: the epoch may have moved since decoding.
            if self.dropped_as_stale(&batch) {
                continue;
            }
            let started = Instant::now();
            let decode_refused: Vec<usize> = columns.refused.iter().map(|(i, _)| *i).collect();
            let outcome = self.processor.write(columns)?;
            // A day destroyed since decoding refuses its records here.
            let late: Vec<_> =
                outcome.refused.iter().filter(|(i, _)| decode_refused.binary_search(i).is_err()).copied().collect();
            let late = self.dead_letter(&batch, &inputs, &late)?;
            // Every refused record acknowledged, before the commit.
            self.acknowledged(dead_lettered)?;
            self.acknowledged(late)?;
            match ownership.commit(&batch.ranges, &outcome.files) {
                Ok(_) => {}
                Err(e @ CheckpointError::Fenced { .. }) => {
                    warn!(reason = %e, "batch discarded: its partitions were claimed since it was read");
                    outcome.discard()?;
                    self.metrics.fenced_commits.inc();
                    ownership.request_resync(batch.epoch);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            // Kafka's committed offsets follow the checkpoint, for monitoring.
            checkpoint::store(self.source.consumer(), &batch.positions)?;

            // Time spent on the batch, decoding and writing, not waiting.
            let elapsed = busy + started.elapsed();
            self.metrics.batches.inc();
            self.metrics.batch_duration.observe(elapsed.as_secs_f64());
            self.metrics.records_received.inc_by(batch.len() as u64);
            self.metrics.bytes_received.inc_by(batch.bytes as u64);
            self.metrics.records_written.inc_by(outcome.written as u64);
            self.metrics.files_written.inc_by(outcome.files.len() as u64);
            let file_bytes: u64 = outcome.files.iter().map(|f| f.file.bytes + f.file.sealed_bytes).sum();
            self.metrics.bytes_written.inc_by(file_bytes);
            self.metrics.last_commit_timestamp.set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
            let mut refused_here: BTreeMap<RefuseReason, u64> = BTreeMap::new();
            for (_, refusal) in &outcome.refused {
                *refused_here.entry(refusal.reason).or_default() += 1;
            }
            for (reason, n) in refused_here {
                self.metrics.refused(reason).inc_by(n);
                *report.refused.entry(reason.code()).or_default() += n;
            }

            report.batches += 1;
            report.records_in += batch.len() as u64;
            report.written += outcome.written as u64;
            report.files += outcome.files.len() as u64;
            report.bytes_written += file_bytes;
            report.days.extend(outcome.files.iter().map(|f| f.file.date));
            info!(
                records = batch.len(),
                written = outcome.written,
                refused = outcome.refused.len(),
                files = outcome.files.len(),
                elapsed_ms = elapsed.as_millis() as u64,
                "batch durable"
            );
            on_batch(report);
        }
        Ok(())
    }
}

/// A batch whose parts are being decoded as they come.
struct Assembling {
    serial: u64,
    /// Its records so far.
    inputs: Vec<Input>,
    columns: DecodedBatch,
    /// The time spent decoding it.
    busy: std::time::Duration,
}

impl Assembling {
    fn new(first: &Part, columns: DecodedBatch) -> Self {
        Assembling { serial: first.serial, inputs: Vec::new(), columns, busy: std::time::Duration::ZERO }
    }

    /// Decodes the next part of the batch and keeps its records, unless the
    /// batch was read in an epoch that has passed (`epoch` is the current
    /// one): the batch will be dropped as stale, so the part is dropped now.
    fn with(mut self, part: Part, epoch: u64, processor: &Processor) -> anyhow::Result<Self> {
        if part.epoch == epoch {
            let started = Instant::now();
            processor.decode_more(&mut self.columns, &part.inputs)?;
            self.busy += started.elapsed();
            self.inputs.extend(part.inputs);
        }
        Ok(self)
    }
}
