//! One batch through the stages: decode and validate, tokenise, build the
//! columns of each day, write each day's file durably.
//!
//! [`Processor::process`] is blocking, CPU-bound work: callers run it on a
//! dedicated thread (the Kafka ingest loop, `import`) and never on an async
//! worker. It splits the batch across threads for decoding and tokenising,
//! and the Parquet writer encodes the columns of each row group in parallel.
//!
//! The processor knows nothing of Kafka or offsets: it returns which inputs
//! were refused and which files now hold the rest, and the caller decides
//! when offsets may move (only after this returns `Ok`, see
//! [`super::checkpoint`]).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use super::columns::DayColumns;
use super::config::IngestConfig;
use super::decode::{self, Encoding, Refusal, ValidationContext};
use crate::keys::{KeyError, KeyStore};
use crate::model::retention::oldest_retained;
use crate::model::{PartitionDate, RefuseReason, TimestampMicros};
use crate::ops::clock::Clock;
use crate::ops::pool;
use crate::privacy::token::{TokenMemo, Tokeniser};
use crate::storage::error::WriteError;
use crate::storage::write::{ParquetWriter, StagedFile, WrittenFile};

/// One input record, as bytes, with the encoding of its topic or file.
#[derive(Clone)]
pub struct Input {
    pub encoding: Encoding,
    /// Shares its buffer with the other payloads fetched with it
    /// ([`super::source`]).
    pub payload: bytes::Bytes,
}

/// Shows the payload's length only: it holds raw identifiers.
impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input").field("encoding", &self.encoding).field("payload_bytes", &self.payload.len()).finish()
    }
}

/// What became of a batch.
#[derive(Debug)]
pub struct BatchOutcome<F = WrittenFile> {
    /// Records written, over all files.
    pub written: usize,
    /// Refused inputs: their index in the batch and why.
    pub refused: Vec<(usize, Refusal)>,
    /// The files created, complete and durable: published, or staged
    /// ([`Processor::stage`]).
    pub files: Vec<F>,
}

/// A batch whose files are durable but staged, invisible until published.
pub type StagedBatch = BatchOutcome<StagedFile>;

impl StagedBatch {
    /// Publishes every staged file.
    pub fn publish(self) -> Result<BatchOutcome, PipelineError> {
        let files = self.files.into_iter().map(StagedFile::publish).collect::<Result<Vec<_>, _>>();
        let files = files.map_err(WriteError::from)?;
        Ok(BatchOutcome { written: self.written, refused: self.refused, files })
    }

    /// Removes every staged file: a batch that was not committed.
    pub fn discard(&self) -> Result<(), PipelineError> {
        for file in &self.files {
            file.discard().map_err(WriteError::from)?;
        }
        Ok(())
    }
}

/// Errors that stop the pipeline. None of them is about a single record:
/// record problems are refusals, and the stream goes on.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("a pipeline worker thread panicked")]
    WorkerPanicked,
}

impl From<pool::Panicked> for PipelineError {
    fn from(_: pool::Panicked) -> Self {
        PipelineError::WorkerPanicked
    }
}

/// Settings of the processing stage, from the `[ingest]` and `[retention]`
/// config sections.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// How far in the future a `start_time` may lie.
    pub max_clock_skew: std::time::Duration,
    /// Threads that decode and tokenise a batch.
    pub decode_threads: usize,
    /// The retention window in days: records of days beyond it are refused
    /// as expired. `None` disables the check (tools that import old data
    /// on purpose must still never re-create a destroyed day).
    pub retention_days: Option<u32>,
}

impl ProcessorConfig {
    /// The settings of the service: `[ingest]`, and the retention window.
    pub fn new(ingest: &IngestConfig, retention_days: u32) -> Self {
        ProcessorConfig {
            max_clock_skew: ingest.max_clock_skew,
            decode_threads: ingest.effective_decode_threads(),
            retention_days: Some(retention_days),
        }
    }
}

/// Turns batches of inputs into durable Parquet files.
#[derive(Debug)]
pub struct Processor {
    writer: ParquetWriter,
    keys: Arc<KeyStore>,
    clock: Arc<dyn Clock>,
    config: ProcessorConfig,
}

impl Processor {
    pub fn new(writer: ParquetWriter, keys: Arc<KeyStore>, clock: Arc<dyn Clock>, config: ProcessorConfig) -> Self {
        Processor { writer, keys, clock, config }
    }

    pub fn writer(&self) -> &ParquetWriter {
        &self.writer
    }

    /// Processes one batch. On `Ok`, every record not refused is in a
    /// durable, published file; on `Err`, nothing may be acknowledged to
    /// the source.
    pub fn process(&self, inputs: &[Input]) -> Result<BatchOutcome, PipelineError> {
        self.stage(inputs)?.publish()
    }

    /// Processes one batch into staged files: durable, invisible until the
    /// caller commits and publishes them ([`crate::storage::checkpoint`]).
    /// The same as [`Self::decode`] then [`Self::write`].
    pub fn stage(&self, inputs: &[Input]) -> Result<StagedBatch, PipelineError> {
        self.write(self.decode(inputs)?)
    }

    /// The first half of [`Self::stage`]: decodes and validates a batch and
    /// tokenises its identifiers, into the columns of each day. The same as
    /// [`Self::start_batch`] then [`Self::decode_more`] with every input.
    pub fn decode(&self, inputs: &[Input]) -> Result<DecodedBatch, PipelineError> {
        let mut decoded = self.start_batch(inputs.len());
        self.decode_more(&mut decoded, inputs)?;
        Ok(decoded)
    }

    /// An empty batch of about `expected` inputs to decode into, named
    /// after now.
    pub fn start_batch(&self, expected: usize) -> DecodedBatch {
        let threads = self.config.decode_threads.max(1);
        DecodedBatch {
            now_millis: self.clock.now().timestamp_millis(),
            inputs: 0,
            lanes: (0..threads).map(|_| Lane::new(expected.div_ceil(threads))).collect(),
            refused: Vec::new(),
        }
    }

    /// Decodes the next `inputs` of a batch into it: their indices follow
    /// the inputs decoded before. Ingest decodes a batch part by part while
    /// the rest of it is still being read, and the next batch while the one
    /// before is written.
    pub fn decode_more(&self, decoded: &mut DecodedBatch, inputs: &[Input]) -> Result<(), PipelineError> {
        if inputs.is_empty() {
            return Ok(());
        }
        // Each part is validated against its own now: a batch may take a
        // while to fill.
        let now_micros = TimestampMicros::from_datetime(self.clock.now());
        let ctx = ValidationContext {
            now: now_micros,
            max_clock_skew_micros: i64::try_from(self.config.max_clock_skew.as_micros()).unwrap_or(i64::MAX),
            oldest_retained: self.config.retention_days.map(|days| oldest_retained(now_micros.partition_date(), days)),
        };
        // Chunk n goes to lane n, so that each lane's memo serves the whole
        // batch.
        let first = decoded.inputs;
        let chunk_len = inputs.len().div_ceil(decoded.lanes.len());
        let work: Vec<(usize, &[Input], Lane)> = inputs
            .chunks(chunk_len)
            .zip(decoded.lanes.iter_mut())
            .enumerate()
            .map(|(n, (chunk, lane))| (first + n * chunk_len, chunk, std::mem::take(lane)))
            .collect();
        let threads = work.len();
        let done = pool::map(work, threads, |(first, chunk, mut lane)| {
            let refused = lane.decode(chunk, first, &ctx, &self.keys)?;
            Ok::<_, PipelineError>((lane, refused))
        })?;
        for (slot, (lane, refused)) in decoded.lanes.iter_mut().zip(done) {
            *slot = lane;
            // Chunks come back in input order, each one's refusals sorted.
            decoded.refused.extend(refused);
        }
        decoded.inputs += inputs.len();
        Ok(())
    }

    /// The second half of [`Self::stage`]: writes each day's columns into
    /// one staged file. A day destroyed since its records were decoded is
    /// not written: its records are refused as expired, so the outcome's
    /// refusals may be more than the decoded batch's.
    pub fn write(&self, decoded: DecodedBatch) -> Result<StagedBatch, PipelineError> {
        let mut outcome = StagedBatch { written: 0, refused: decoded.refused, files: Vec::new() };
        // The memos go first: what they hold is in the columns.
        let mut days: BTreeMap<PartitionDate, Vec<DayColumns>> = BTreeMap::new();
        for lane in decoded.lanes {
            for (date, (columns, _memo)) in lane.days {
                days.entry(date).or_default().push(columns);
            }
        }
        for (date, parts) in days {
            // A day destroyed by retention is never re-created, even if the
            // clock went back: its records are refused as expired.
            if self.keys.is_destroyed(date) {
                for columns in &parts {
                    outcome.refused.extend(
                        columns.inputs().iter().map(|&i| (i, Refusal::on(RefuseReason::Expired, "start_time"))),
                    );
                }
                continue;
            }
            // The day key is created and made durable before any file that
            // depends on it exists.
            let day_key = self.keys.day_key(date)?;
            let token_key_id = &day_key.token.id;
            let batches = parts
                .into_iter()
                .map(|columns| columns.finish(self.writer.schema(), token_key_id, &day_key.id))
                .collect::<Result<Vec<_>, _>>()
                .map_err(WriteError::from)?;
            let file = self.writer.stage_day(date, &batches, &day_key, token_key_id, decoded.now_millis)?;
            outcome.written += file.file.rows;
            outcome.files.push(file);
        }
        outcome.refused.sort_by_key(|(i, _)| *i);
        Ok(outcome)
    }
}

/// A batch decoded and tokenised ([`Processor::decode`]), waiting to be
/// written ([`Processor::write`]). It holds the raw identifiers on their
/// way to being sealed, in memory only, and so has no `Debug`.
pub struct DecodedBatch {
    /// When the batch was started: it names the files.
    now_millis: i64,
    /// How many inputs were decoded into it.
    inputs: usize,
    /// What each decode thread built.
    lanes: Vec<Lane>,
    /// Inputs refused while decoding, in input order.
    pub refused: Vec<(usize, Refusal)>,
}

impl DecodedBatch {
    /// How many inputs were decoded into it, refused ones included.
    pub fn len(&self) -> usize {
        self.inputs
    }

    pub fn is_empty(&self) -> bool {
        self.inputs == 0
    }
}

/// What one decode thread builds of a batch, part after part: the columns
/// of each day, each with the memo of the tokens computed for it.
#[derive(Default)]
struct Lane {
    days: BTreeMap<PartitionDate, (DayColumns, TokenMemo)>,
    /// Room for the first day's columns.
    expected: usize,
}

impl Lane {
    fn new(expected: usize) -> Self {
        Lane { days: BTreeMap::new(), expected }
    }

    /// Decodes a chunk, inputs `first..`, into the columns of each day,
    /// tokenising every identifier under the token key of its record's day
    /// (the day's key is created, durably, before the first token of the
    /// day is computed). Returns the refused inputs; a record of a day
    /// destroyed by retention is refused as expired.
    fn decode(
        &mut self,
        chunk: &[Input],
        first: usize,
        ctx: &ValidationContext,
        keys: &KeyStore,
    ) -> Result<Vec<(usize, Refusal)>, PipelineError> {
        let mut refused = Vec::new();
        for (i, input) in chunk.iter().enumerate() {
            let index = first + i;
            let cdr = match decode::decode(input.encoding, &input.payload, ctx) {
                Ok(cdr) => cdr,
                Err(refusal) => {
                    refused.push((index, refusal));
                    continue;
                }
            };
            // Most records of a batch share one day: the first day met gets
            // room for the whole lane, later ones grow as needed.
            let capacity = if self.days.is_empty() { self.expected.max(chunk.len()) } else { chunk.len().min(4096) };
            let (columns, tokens) = match self.days.entry(cdr.partition_date()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    let key = match keys.day_key(*entry.key()) {
                        Ok(key) => key,
                        Err(KeyError::DayDestroyed(_)) => {
                            refused.push((index, Refusal::on(RefuseReason::Expired, "start_time")));
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    entry.insert((DayColumns::with_capacity(capacity), TokenMemo::new(Tokeniser::new(&key.token))))
                }
            };
            columns.append(index, &cdr, tokens);
        }
        Ok(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::Encoding;
    use crate::ops::clock::ManualClock;
    use crate::storage::config::ParquetConfig;

    fn record(i: usize, day: &str) -> Input {
        let payload = format!(
            r#"{{"record_id":"r-{i}","service":"sms","start_time":"{day}T10:00:00Z","calling_number":"+45200{i:05}"}}"#
        );
        Input { encoding: Encoding::Json, payload: payload.into_bytes().into() }
    }

    fn processor(root: &std::path::Path, decode_threads: usize) -> (Processor, Arc<KeyStore>) {
        let keys_dir = root.join("keys");
        if !keys_dir.exists() {
            KeyStore::init(&keys_dir, None).unwrap();
        }
        let keys = Arc::new(KeyStore::open(&keys_dir, None).unwrap());
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z").unwrap().to_utc();
        let config = ProcessorConfig {
            max_clock_skew: std::time::Duration::from_secs(60),
            decode_threads,
            retention_days: Some(365),
        };
        let writer = ParquetWriter::new(&root.join(format!("data-{decode_threads}")), ParquetConfig::default());
        (Processor::new(writer, Arc::clone(&keys), Arc::new(ManualClock::new(now)), config), keys)
    }

    /// The record ids of a staged file, in the order written.
    fn record_ids(file: &StagedFile) -> Vec<String> {
        use arrow_array::cast::AsArray;
        let reader = std::fs::File::open(&file.staged).unwrap();
        let batches = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(reader, 1024).unwrap();
        let mut ids = Vec::new();
        for batch in batches {
            let batch = batch.unwrap();
            let column = batch.column_by_name("record_id").unwrap().as_string::<i32>();
            ids.extend(column.iter().map(|id| id.unwrap().to_owned()));
        }
        ids
    }

    #[test]
    fn an_input_shows_no_payload() {
        let shown = format!("{:?}", record(7, "2026-11-24"));
        assert!(!shown.contains("4520000007") && !shown.contains("r-7"), "{shown}");
        assert!(shown.contains("payload_bytes"), "{shown}");
    }

    #[test]
    fn a_batch_decoded_in_parts_is_the_batch_decoded_at_once() {
        // Two days, a refused record now and then, parts of uneven sizes
        // that split the threads' chunks anywhere.
        let inputs: Vec<Input> = (0..301)
            .map(|i| match i % 37 {
                0 => Input { encoding: Encoding::Json, payload: bytes::Bytes::from_static(b"{not json") },
                _ => record(i, if i % 3 == 0 { "2026-11-23" } else { "2026-11-24" }),
            })
            .collect();
        // One key store, so that the rows sort alike (by calling token).
        let root = tempfile::tempdir().unwrap();
        let at_once = {
            let (processor, _keys) = processor(root.path(), 4);
            let outcome = processor.stage(&inputs).unwrap();
            let files: Vec<_> = outcome.files.iter().map(|f| (f.file.date, record_ids(f))).collect();
            (outcome.written, outcome.refused, files)
        };
        for threads in [1, 2, 3] {
            let (processor, _keys) = processor(root.path(), threads);
            let mut decoded = processor.start_batch(inputs.len());
            let mut rest = &inputs[..];
            for size in [1, 0, 50, 7, 120].into_iter().cycle() {
                let (part, after) = rest.split_at(size.min(rest.len()));
                processor.decode_more(&mut decoded, part).unwrap();
                rest = after;
                if rest.is_empty() {
                    break;
                }
            }
            assert_eq!(decoded.len(), inputs.len());
            let outcome = processor.write(decoded).unwrap();
            let files: Vec<_> = outcome.files.iter().map(|f| (f.file.date, record_ids(f))).collect();
            assert_eq!(outcome.written, at_once.0, "{threads} threads");
            assert_eq!(outcome.refused, at_once.1, "{threads} threads");
            assert_eq!(files, at_once.2, "{threads} threads: the same rows in the same order");
            assert_eq!(files.iter().map(|(_, ids)| ids.len()).sum::<usize>(), 301 - 9);
        }
    }

    #[test]
    fn a_day_destroyed_between_decoding_and_writing_refuses_its_records_and_gets_no_file() {
        let root = tempfile::tempdir().unwrap();
        let (processor, keys) = processor(root.path(), 2);
        // Records of two days, interleaved, and one that cannot be decoded.
        let mut inputs: Vec<Input> =
            (0..10).map(|i| record(i, if i % 2 == 0 { "2026-11-23" } else { "2026-11-24" })).collect();
        inputs.push(Input { encoding: Encoding::Json, payload: bytes::Bytes::from_static(b"{not json") });

        let decoded = processor.decode(&inputs).unwrap();
        assert_eq!(decoded.refused.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![10]);
        // Retention destroys the first day before the batch is written.
        let gone = PartitionDate::parse("2026-11-23").unwrap();
        keys.write_tombstone(gone, b"destroyed by the test").unwrap();
        keys.destroy_day_key(gone).unwrap();

        let outcome = processor.write(decoded).unwrap();
        assert_eq!(outcome.written, 5);
        assert_eq!(outcome.files.len(), 1);
        assert_eq!(outcome.files[0].file.date, PartitionDate::parse("2026-11-24").unwrap());
        let refused: Vec<(usize, RefuseReason)> = outcome.refused.iter().map(|(i, r)| (*i, r.reason)).collect();
        let mut expected: Vec<(usize, RefuseReason)> = (0..10).step_by(2).map(|i| (i, RefuseReason::Expired)).collect();
        expected.push((10, refused.last().unwrap().1));
        assert_eq!(refused, expected, "the late refusals, in input order, with the decoder's");
        assert_ne!(refused.last().unwrap().1, RefuseReason::Expired);
        assert!(!crate::storage::layout::day_dir(processor.writer().data_dir(), gone).exists());
    }
}
