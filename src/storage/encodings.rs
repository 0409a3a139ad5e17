//! The Parquet encodings that [`super::direct`] decodes itself: the
//! RLE/bit-packed hybrid (definition levels, dictionary indices) and
//! `DELTA_BINARY_PACKED` (the first value, then blocks of deltas, each
//! block a minimum delta and miniblocks of bit-packed offsets from it).
//! Delta values are returned as `i64`; a reader of 32-bit values truncates
//! them, which wraps exactly as 32-bit arithmetic would.

use parquet::errors::ParquetError;

fn malformed(what: &str) -> ParquetError {
    ParquetError::General(format!("malformed encoding: {what}"))
}

/// Reads unsigned varints and zigzag varints from a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn varint(&mut self) -> Result<u64, ParquetError> {
        varint(self.bytes, &mut self.at).ok_or_else(|| malformed("truncated or overlong varint"))
    }

    fn zigzag(&mut self) -> Result<i64, ParquetError> {
        Ok(zigzag(self.varint()?))
    }
}

/// The unsigned LEB128 varint at `*at` of `bytes`, moving `at` past it;
/// `None` if truncated or longer than 64 bits. Shared with
/// [`super::thrift`], whose compact protocol uses the same varints.
pub(super) fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// A zigzag-encoded signed value.
pub(super) fn zigzag(raw: u64) -> i64 {
    (raw >> 1) as i64 ^ -((raw & 1) as i64)
}

/// The first `count` values of the RLE/bit-packed hybrid `bytes`, each
/// `width` bits wide (at most 32).
pub fn hybrid(bytes: &[u8], width: usize, count: usize) -> Result<Vec<u32>, ParquetError> {
    if width > 32 {
        return Err(malformed("bit width"));
    }
    let mut cursor = Cursor { bytes, at: 0 };
    let mut values = Vec::with_capacity(count.min(4_096));
    while values.len() < count {
        let header = cursor.varint()?;
        let run = usize::try_from(header >> 1).map_err(|_| malformed("run length"))?;
        if header & 1 == 1 {
            // Bit-packed: `run` groups of eight values, `width` bytes each.
            let len = run.checked_mul(width).ok_or_else(|| malformed("run length"))?;
            let end = cursor.at.checked_add(len).ok_or_else(|| malformed("truncated run"))?;
            let packed = bytes.get(cursor.at..end).ok_or_else(|| malformed("truncated run"))?;
            cursor.at += len;
            let mut bits = Bits::new(packed);
            let decoded = run.saturating_mul(8).min(count - values.len());
            values.extend((0..decoded).map(|_| bits.take(width) as u32));
        } else {
            // A run of one value, in as many bytes as its width needs.
            let len = width.div_ceil(8);
            let stored = bytes.get(cursor.at..cursor.at + len).ok_or_else(|| malformed("truncated run"))?;
            cursor.at += len;
            if run == 0 {
                return Err(malformed("an empty run"));
            }
            let value = stored.iter().rev().fold(0u32, |value, byte| value << 8 | u32::from(*byte));
            values.extend(std::iter::repeat_n(value, run.min(count - values.len())));
        }
    }
    values.truncate(count);
    Ok(values)
}

/// For definition levels `levels` (the hybrid at one bit per row) and
/// `wanted` rows (strictly ascending): which value of the page each wanted
/// row holds (`None`: a null), and how many values the rows up to the last
/// wanted one hold. Walks the runs, never row by row.
pub fn defined(levels: &[u8], wanted: &[usize]) -> Result<(Vec<Option<usize>>, usize), ParquetError> {
    let Some(&last) = wanted.last() else { return Ok((Vec::new(), 0)) };
    if wanted.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(malformed("wanted rows out of order"));
    }
    let mut cursor = Cursor { bytes: levels, at: 0 };
    let mut positions = Vec::with_capacity(wanted.len());
    // The first row of the current run, and the values before it.
    let (mut row, mut values) = (0usize, 0usize);
    let mut next = wanted.iter().copied().peekable();
    while next.peek().is_some() {
        let header = cursor.varint()?;
        let run = usize::try_from(header >> 1).map_err(|_| malformed("run length"))?;
        let (levels_of_run, rows) = if header & 1 == 1 {
            // `run` groups of eight rows, one byte each.
            let end = cursor.at.checked_add(run).ok_or_else(|| malformed("truncated run"))?;
            let packed = levels.get(cursor.at..end).ok_or_else(|| malformed("truncated run"))?;
            cursor.at = end;
            (Levels::Packed(packed), run.saturating_mul(8))
        } else {
            if run == 0 {
                return Err(malformed("an empty run"));
            }
            let value = *levels.get(cursor.at).ok_or_else(|| malformed("truncated run"))?;
            cursor.at += 1;
            (Levels::Repeated(value & 1 == 1), run)
        };
        while let Some(wanted) = next.next_if(|w| *w - row < rows) {
            let offset = wanted - row;
            let before = levels_of_run.defined(offset);
            positions.push((levels_of_run.defined(offset + 1) > before).then_some(values + before));
        }
        values += levels_of_run.defined(rows.min(last - row + 1));
        row = row.saturating_add(rows);
    }
    Ok((positions, values))
}

/// One run of definition levels at one bit per row.
enum Levels<'a> {
    Repeated(bool),
    Packed(&'a [u8]),
}

impl Levels<'_> {
    /// How many of the run's first `rows` rows are defined.
    fn defined(&self, rows: usize) -> usize {
        match self {
            Levels::Repeated(set) => usize::from(*set) * rows,
            Levels::Packed(packed) => {
                let whole: u32 = packed[..rows / 8].iter().map(|b| b.count_ones()).sum();
                let part = packed.get(rows / 8).map_or(0, |b| (b & ((1u8 << (rows % 8)) - 1)).count_ones());
                (whole + part) as usize
            }
        }
    }
}

/// The first `limit` values (or all, if fewer) of the delta-encoded `bytes`.
pub fn delta(bytes: &[u8], limit: usize) -> Result<Vec<i64>, ParquetError> {
    delta_until(bytes, limit, |_| false)
}

/// The values of the delta-encoded `bytes` up to the first for which
/// `enough` holds (included), or the first `limit` (or all, if fewer).
pub fn delta_until(bytes: &[u8], limit: usize, mut enough: impl FnMut(i64) -> bool) -> Result<Vec<i64>, ParquetError> {
    let mut cursor = Cursor { bytes, at: 0 };
    let block = usize::try_from(cursor.varint()?).map_err(|_| malformed("block size"))?;
    let miniblocks = usize::try_from(cursor.varint()?).map_err(|_| malformed("miniblock count"))?;
    let total = usize::try_from(cursor.varint()?).map_err(|_| malformed("value count"))?;
    let mut value = cursor.zigzag()?;
    if block == 0 || block % 128 != 0 || miniblocks == 0 || block % miniblocks != 0 || (block / miniblocks) % 32 != 0 {
        return Err(malformed("block shape"));
    }
    let per_miniblock = block / miniblocks;
    let wanted = total.min(limit);
    // Grown as values are decoded: a count is not a promise of bytes.
    let mut values = Vec::with_capacity(wanted.min(4_096));
    if wanted > 0 {
        values.push(value);
        if enough(value) {
            return Ok(values);
        }
    }
    while values.len() < wanted {
        let min_delta = cursor.zigzag()?;
        let widths_at = cursor.at;
        cursor.at = cursor.at.checked_add(miniblocks).ok_or_else(|| malformed("truncated widths"))?;
        let widths = bytes.get(widths_at..cursor.at).ok_or_else(|| malformed("truncated widths"))?;
        for &width in widths {
            if values.len() >= wanted {
                break;
            }
            let width = usize::from(width);
            if width > 64 {
                return Err(malformed("bit width"));
            }
            let len = per_miniblock.checked_mul(width).ok_or_else(|| malformed("miniblock size"))? / 8;
            let end = cursor.at.checked_add(len).ok_or_else(|| malformed("truncated miniblock"))?;
            let packed = bytes.get(cursor.at..end).ok_or_else(|| malformed("truncated miniblock"))?;
            cursor.at = end;
            let mut bits = Bits::new(packed);
            for _ in 0..per_miniblock {
                if values.len() >= wanted {
                    break;
                }
                let offset = bits.take(width);
                value = value.wrapping_add(min_delta.wrapping_add(offset as i64));
                values.push(value);
                if enough(value) {
                    return Ok(values);
                }
            }
        }
    }
    Ok(values)
}

/// Bit-packed values, least significant bit first, read one after the
/// other; bits beyond the bytes read as zeros.
struct Bits<'a> {
    bytes: &'a [u8],
    /// The next bit to read.
    at: usize,
}

impl<'a> Bits<'a> {
    fn new(bytes: &'a [u8]) -> Bits<'a> {
        Bits { bytes, at: 0 }
    }

    /// The next `width`-bit value (`width` at most 64).
    fn take(&mut self, width: usize) -> u64 {
        let (byte, shift) = (self.at / 8, self.at % 8);
        self.at += width;
        let mask = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
        // One load of eight bytes holds any value up to 56 bits wide.
        if let Some(word) = self.bytes.get(byte..byte + 8) {
            let word = u64::from_le_bytes([word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7]]);
            if width + shift <= 64 {
                return (word >> shift) & mask;
            }
        }
        let mut value = 0u128;
        for (i, b) in self.bytes.iter().skip(byte).take(width.div_ceil(8) + 1).enumerate() {
            value |= u128::from(*b) << (8 * i);
        }
        (value >> shift) as u64 & mask
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch};
    use bytes::Bytes;
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, Encoding};
    use parquet::file::properties::WriterProperties;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    /// The pages of a one-column file, as the crate's writer wrote them.
    fn pages_of(column: ArrayRef) -> Vec<Vec<u8>> {
        let batch = RecordBatch::try_from_iter([("v", column)]).unwrap();
        let properties = WriterProperties::builder()
            .set_dictionary_enabled(false)
            .set_encoding(Encoding::DELTA_BINARY_PACKED)
            .set_compression(Compression::UNCOMPRESSED)
            .set_data_page_row_count_limit(1_000)
            .set_write_batch_size(1_000)
            .build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let reader = SerializedFileReader::new(Bytes::from(out)).unwrap();
        let mut pages = Vec::new();
        let mut page_reader = reader.get_row_group(0).unwrap().get_column_page_reader(0).unwrap();
        while let Some(page) = page_reader.get_next_page().unwrap() {
            pages.push(page.buffer().to_vec());
        }
        pages
    }

    /// `pages` decode to `values`, read as `truncate` reads them.
    fn check(values: Vec<i64>, pages: Vec<Vec<u8>>, truncate: fn(i64) -> i64) {
        let decoded: Vec<i64> = pages.iter().flat_map(|page| delta(page, usize::MAX).unwrap()).map(truncate).collect();
        assert_eq!(decoded, values);
        // A limit stops early, with the same values.
        let first: Vec<i64> = delta(&pages[0], 5).unwrap().into_iter().map(truncate).collect();
        assert_eq!(first, values[..5.min(values.len())]);
        // So does the first value found enough, included.
        let sought = values[values.len().min(40) - 1];
        let through = values.iter().position(|v| *v == sought).unwrap();
        let until: Vec<i64> =
            delta_until(&pages[0], usize::MAX, |v| truncate(v) == sought).unwrap().into_iter().map(truncate).collect();
        assert_eq!(until, values[..=through]);
    }

    /// A reproducible stream of pseudo-random numbers from `state`.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[test]
    fn values_the_crates_writer_encoded_decode_to_what_it_wrote() {
        // Random 32-bit values wrap around; sorted ones make small deltas.
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let random: Vec<i32> = (0..2_500).map(|_| next() as i32).chain([i32::MIN, i32::MAX, 0, -1]).collect();
        let mut sorted = random.clone();
        sorted.sort_unstable();
        for values in [random, sorted, vec![7; 300], vec![42]] {
            let pages = pages_of(Arc::new(Int32Array::from(values.clone())));
            check(values.iter().map(|v| i64::from(*v)).collect(), pages, |v| i64::from(v as i32));
        }
        let wide: Vec<i64> = (0..1_500).map(|_| next() as i64).chain([i64::MIN, i64::MAX]).collect();
        check(wide.clone(), pages_of(Arc::new(Int64Array::from(wide))), |v| v);
    }

    #[test]
    fn the_hybrid_reads_runs_and_bit_packed_groups() {
        // Width 1: a run of 5 ones, then one bit-packed group of 8: 0b1010_0110.
        let bytes = [5 << 1, 1, 1 << 1 | 1, 0b1010_0110];
        let expected = [1; 5].into_iter().chain([0, 1, 1, 0, 0, 1, 0, 1]);
        assert_eq!(hybrid(&bytes, 1, 13).unwrap(), expected.collect::<Vec<_>>());
        assert_eq!(hybrid(&bytes, 1, 3).unwrap(), vec![1; 3]);
        assert!(hybrid(&bytes[..3], 1, 13).is_err(), "a truncated group");
        assert!(hybrid(&[0, 1], 1, 1).is_err(), "an empty run never ends");
        // Width 10: a run of 3 of 700 (two bytes), then 8 packed values.
        let packed: Vec<u32> = vec![0, 1, 1023, 512, 7, 300, 999, 2];
        let mut bytes = vec![3 << 1, (700 & 0xff) as u8, (700 >> 8) as u8, 1 << 1 | 1];
        let mut acc = 0u128;
        for (i, v) in packed.iter().enumerate() {
            acc |= u128::from(*v) << (i * 10);
        }
        bytes.extend(&acc.to_le_bytes()[..10]);
        let expected: Vec<u32> = [700; 3].into_iter().chain(packed).collect();
        assert_eq!(hybrid(&bytes, 10, 11).unwrap(), expected);
    }

    /// Definition levels of `rows` rows in runs of both kinds: repeated
    /// runs of either level, and bit-packed groups.
    fn levels_of(rows: usize, next: &mut impl FnMut() -> u64) -> (Vec<u8>, Vec<u32>) {
        let (mut bytes, mut levels) = (Vec::new(), Vec::new());
        while levels.len() < rows {
            let left = rows - levels.len();
            if next().is_multiple_of(2) {
                let run = (next() as usize % 40 + 1).min(left);
                let level = (next() % 2) as u8;
                bytes.extend([(run << 1) as u8, level]);
                levels.extend(std::iter::repeat_n(u32::from(level), run));
            } else {
                let groups = next() as usize % 5 + 1;
                bytes.push((groups << 1 | 1) as u8);
                for _ in 0..groups {
                    let byte = next() as u8;
                    bytes.push(byte);
                    levels.extend((0..8).map(|bit| u32::from(byte >> bit & 1)));
                }
            }
        }
        levels.truncate(rows);
        (bytes, levels)
    }

    #[test]
    fn the_values_of_wanted_rows_are_counted_over_runs_of_both_kinds() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..300 {
            let rows = next() as usize % 300 + 1;
            let (bytes, levels) = levels_of(rows, &mut next);
            assert_eq!(hybrid(&bytes, 1, rows).unwrap(), levels);
            let wanted: Vec<usize> = (0..rows).filter(|_| next().is_multiple_of(7)).collect();
            let expected: Vec<Option<usize>> = wanted
                .iter()
                .map(|&row| (levels[row] == 1).then(|| levels[..row].iter().filter(|l| **l == 1).count()))
                .collect();
            let through_last = wanted.last().map_or(0, |last| levels[..=*last].iter().filter(|l| **l == 1).count());
            assert_eq!(defined(&bytes, &wanted).unwrap(), (expected, through_last), "{bytes:?} at {wanted:?}");
        }
        assert!(defined(&[4 << 1, 1], &[4]).is_err(), "a row beyond the levels");
        assert!(defined(&[4 << 1, 1], &[2, 1]).is_err(), "rows out of order");
        assert!(defined(&[0, 1], &[0]).is_err(), "an empty run never ends");
    }

    #[test]
    fn truncated_or_misshapen_encodings_are_errors() {
        let pages = pages_of(Arc::new(Int32Array::from((0..600).map(|i| i * 37 % 1_000).collect::<Vec<_>>())));
        let page = &pages[0];
        for cut in [1, 3, page.len() / 2, page.len() - 1] {
            assert!(delta(&page[..cut], usize::MAX).is_err(), "cut at {cut}");
        }
        // A block of 100 values is not a shape the format allows.
        assert!(delta(&[100, 4, 10, 0], usize::MAX).is_err());
        // Counts read from a file size nothing beyond what is asked for and
        // overflow nothing: a bit-packed run of 2^60 groups of width 0, a
        // block of 2^62 values in one miniblock of width 64.
        let mut huge_run = vec![0xff; 8];
        huge_run.push(0x7f);
        assert_eq!(hybrid(&huge_run, 0, 10).unwrap(), vec![0; 10]);
        let mut huge_block = vec![0x80; 8];
        huge_block.extend([0x40, 1, 5, 0, 0, 64]);
        assert!(delta(&huge_block, 5).is_err());
    }
}
