//! `cdrvault import FILE.jsonl`: backfill from a file of JSON records, one
//! per line, through the same processor as the Kafka path.
//!
//! Refused lines are reported by line number and reason code, never by
//! content.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::ingest::decode::{Encoding, Refusal};
use crate::ingest::process::{Input, Processor};

/// Lines per batch: one file per day per batch.
const IMPORT_BATCH_LINES: usize = 100_000;

#[derive(Debug, Default)]
pub struct ImportReport {
    pub lines: u64,
    pub written: u64,
    pub files: u64,
    /// (1-based line number, refusal), in file order.
    pub refused: Vec<(u64, Refusal)>,
}

/// Imports the file. `on_progress` receives the bytes read so far. Blank
/// lines are skipped and not counted.
pub fn import_file(
    path: &Path,
    processor: &Processor,
    mut on_progress: impl FnMut(u64),
    mut on_refused: impl FnMut(u64, Refusal),
) -> anyhow::Result<ImportReport> {
    let file = File::open(path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut report = ImportReport::default();
    let mut inputs = Vec::with_capacity(IMPORT_BATCH_LINES);
    let mut line_numbers = Vec::with_capacity(IMPORT_BATCH_LINES);
    let mut line = Vec::new();
    let mut line_number = 0u64;
    let mut bytes_read = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n > 0 {
            line_number += 1;
            bytes_read += n as u64;
            let trimmed = line.trim_ascii();
            if !trimmed.is_empty() {
                inputs.push(Input { encoding: Encoding::Json, payload: bytes::Bytes::copy_from_slice(trimmed) });
                line_numbers.push(line_number);
            }
        }
        if inputs.len() >= IMPORT_BATCH_LINES || (n == 0 && !inputs.is_empty()) {
            let outcome = processor.process(&inputs)?;
            report.lines += inputs.len() as u64;
            report.written += outcome.written as u64;
            report.files += outcome.files.len() as u64;
            for (index, refusal) in outcome.refused {
                let number = line_numbers[index];
                on_refused(number, refusal);
                report.refused.push((number, refusal));
            }
            inputs.clear();
            line_numbers.clear();
            on_progress(bytes_read);
        }
        if n == 0 {
            break;
        }
    }
    Ok(report)
}
