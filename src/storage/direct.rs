//! A few rows of a column chunk read straight from their pages: what a
//! lookup needs of a file with a match, one row or a handful.
//!
//! The parquet crate's reader builds, for every column chunk it reads, a
//! page reader with a compression and a decompression context, and for a
//! companion a decryption context, before it skips to the rows selected. A
//! lookup reads three such chunks in each file with a match, and over a
//! 60-day window that machinery costs more than the rows: each zstd context
//! asks the processor for its features, which traps to the hypervisor on a
//! virtual machine (`benches/README.md`). This reader finds the page of
//! each wanted row in the chunk's offset index, decrypts it (for a
//! companion: AES-GCM, with the module AAD of Parquet's modular
//! encryption, so a page moved, swapped or altered fails its tag exactly as
//! in the crate's reader), decompresses it with a context taken from a
//! shared pool, and decodes only the values up to the last wanted one.
//!
//! It reads what cdrvault writes for the columns a lookup returns and for
//! the token index: strings and 32- or 64-bit integers, required or
//! optional, plain, with a dictionary (in clear only) or
//! `DELTA_BINARY_PACKED` ([`super::encodings`]), uncompressed or zstd, in
//! data pages of version 1. For anything else it answers `None` and the
//! caller reads the chunk with the crate's reader.

use std::sync::Mutex;

use bytes::Bytes;
use parquet::basic::{Compression, Encoding, Type};
use parquet::errors::ParquetError;
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::page_index::offset_index::PageLocation;
use parquet::file::reader::ChunkReader;
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use zeroize::Zeroize;

use super::{encodings, thrift};

const SIZE_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The most values a page read here may hold: cdrvault's pages hold 1,024
/// to 8,192. A page that claims more is left to the crate's reader, so that
/// a count read from a file never sizes an allocation here.
const MAX_PAGE_VALUES: usize = 1 << 20;

// Module types of Parquet's modular encryption.
const DATA_PAGE: u8 = 2;
const DATA_PAGE_HEADER: u8 = 4;

fn general(what: impl Into<String>) -> ParquetError {
    ParquetError::General(what.into())
}

/// The decryption of the pages of a file whose footer is encrypted
/// (uniform encryption: one key for the footer and every column), with the
/// file's AAD: the prefix the reader supplies and the unique part the file
/// stores in its crypto metadata.
pub struct PageCipher {
    key: LessSafeKey,
    file_aad: Vec<u8>,
}

impl std::fmt::Debug for PageCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageCipher")
    }
}

impl PageCipher {
    /// The cipher of `file`'s pages under `key` and `aad_prefix`; `None` if
    /// the file is not one this reader decrypts (a plaintext footer,
    /// another algorithm, a key length AES-GCM does not take).
    pub fn of<R: ChunkReader>(file: &R, key: &[u8], aad_prefix: &[u8]) -> Result<Option<PageCipher>, ParquetError> {
        let algorithm = match key.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            _ => return Ok(None),
        };
        let len = file.len();
        let tail = file.get_bytes(len.saturating_sub(8), 8)?;
        if tail.len() != 8 || &tail[4..] != b"PARE" {
            return Ok(None);
        }
        let footer_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
        let start =
            len.checked_sub(8 + footer_len).ok_or_else(|| general("an encrypted footer longer than its file"))?;
        let footer = file.get_bytes(start, footer_len as usize)?;
        let Some(unique) = thrift::aad_file_unique(&footer)? else { return Ok(None) };
        let key = LessSafeKey::new(UnboundKey::new(algorithm, key).map_err(|_| general("an unusable page key"))?);
        Ok(Some(PageCipher { key, file_aad: [aad_prefix, &unique].concat() }))
    }

    /// The AAD of a page's module: the file's, the module type, then the
    /// row group, the column and the page, each as two bytes.
    fn module_aad(&self, module: u8, row_group: usize, column: usize, page: usize) -> Result<Vec<u8>, ParquetError> {
        let ordinal = |n: usize| i16::try_from(n).map(i16::to_le_bytes).map_err(|_| general("an ordinal beyond 32767"));
        let mut aad = Vec::with_capacity(self.file_aad.len() + 7);
        aad.extend_from_slice(&self.file_aad);
        aad.push(module);
        aad.extend(ordinal(row_group)?);
        aad.extend(ordinal(column)?);
        aad.extend(ordinal(page)?);
        Ok(aad)
    }

    /// Decrypts the module at the start of `bytes` (its length, nonce,
    /// ciphertext and tag); returns the plaintext and the module's length.
    fn open(&self, bytes: &[u8], aad: &[u8]) -> Result<(Vec<u8>, usize), ParquetError> {
        let framed = bytes.get(..SIZE_LEN).ok_or_else(|| general("a truncated encrypted module"))?;
        let len = u32::from_le_bytes([framed[0], framed[1], framed[2], framed[3]]) as usize;
        let module = bytes.get(SIZE_LEN..SIZE_LEN + len).filter(|m| m.len() >= NONCE_LEN + TAG_LEN);
        let module = module.ok_or_else(|| general("a truncated encrypted module"))?;
        let nonce = Nonce::try_assume_unique_for_key(&module[..NONCE_LEN]).map_err(|_| general("a malformed nonce"))?;
        let mut sealed = module[NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut sealed)
            .map_err(|_| general("a page does not decrypt: altered, moved, or under another key"))?;
        let plain_len = plain.len();
        sealed.truncate(plain_len);
        Ok((sealed, SIZE_LEN + len))
    }
}

/// A column chunk to read rows of: its metadata, its pages' locations (the
/// offset index), the rows of its row group, and for a companion the
/// cipher with the chunk's row group and column ordinals.
pub struct Chunk<'a> {
    pub column: &'a ColumnChunkMetaData,
    pub pages: &'a [PageLocation],
    pub rows: usize,
    pub sealed: Option<(&'a PageCipher, usize, usize)>,
}

/// Whether this reader can read `column`'s chunk, from its metadata:
/// strings or 32- or 64-bit integers, not nested, uncompressed or zstd; a
/// dictionary only in clear (a companion has dictionaries only for
/// columns a lookup rarely returns).
pub fn readable(column: &ColumnChunkMetaData, sealed: bool) -> bool {
    let descr = column.column_descr();
    matches!(column.column_type(), Type::BYTE_ARRAY | Type::INT32 | Type::INT64)
        && (column.dictionary_page_offset().is_none() || !sealed)
        && matches!(column.compression(), Compression::UNCOMPRESSED | Compression::ZSTD(_))
        && descr.max_rep_level() == 0
        && descr.max_def_level() <= 1
}

/// Values of a chunk, as this reader returns them: strings for byte
/// arrays, integers for 32- and 64-bit integers; `None` for a null. No
/// `Debug`: a companion's values are identifiers in clear.
pub enum Values {
    Strings(Vec<Option<String>>),
    Integers(Vec<Option<i64>>),
}

/// A page's non-null values as decoded: strings borrowed from the page,
/// integers, or indices into the chunk's dictionary. Only the wanted ones
/// are then copied out.
enum Decoded<'a> {
    Strings(Vec<&'a [u8]>),
    Integers(Vec<i64>),
    Indices(Vec<u32>),
}

impl Decoded<'_> {
    fn len(&self) -> usize {
        match self {
            Decoded::Strings(values) => values.len(),
            Decoded::Integers(values) => values.len(),
            Decoded::Indices(values) => values.len(),
        }
    }
}

/// A chunk's dictionary.
enum Dictionary {
    Strings(Vec<Vec<u8>>),
    Integers(Vec<i64>),
}

/// The values of `rows` (ascending, within the chunk's row group) of a
/// chunk [`readable`] says this reader reads. `None` if a page turns out
/// to be of a kind it does not read.
pub fn column_rows<R: ChunkReader>(
    file: &R,
    chunk: &Chunk<'_>,
    rows: &[usize],
) -> Result<Option<Values>, ParquetError> {
    let dictionary = match chunk.column.dictionary_page_offset() {
        None => None,
        Some(_) if chunk.sealed.is_some() => return Ok(None),
        Some(offset) => match dictionary_of(file, chunk, offset)? {
            Some(dictionary) => Some(dictionary),
            None => return Ok(None),
        },
    };
    let mut values = match chunk.column.column_type() {
        Type::BYTE_ARRAY => Values::Strings(Vec::with_capacity(rows.len())),
        _ => Values::Integers(Vec::with_capacity(rows.len())),
    };
    let mut at = 0;
    while at < rows.len() {
        let row = rows[at];
        if row >= chunk.rows {
            return Err(general("a row beyond its row group"));
        }
        let page = page_of(chunk.pages, row).ok_or_else(|| general("a row before the first page"))?;
        let first = chunk.pages[page].first_row_index as usize;
        let end = chunk.pages.get(page + 1).map_or(chunk.rows, |next| next.first_row_index as usize);
        let wanted: Vec<usize> =
            rows[at..].iter().take_while(|r| **r < end).filter_map(|r| r.checked_sub(first)).collect();
        if wanted.is_empty() {
            return Err(general("page locations out of order"));
        }
        if !page_rows(file, chunk, page, &wanted, dictionary.as_ref(), &mut values)? {
            return Ok(None);
        }
        at += wanted.len();
    }
    Ok(Some(values))
}

/// The page of `pages` that holds `row`. Pages hold equal numbers of rows
/// but the last, so the first guess is nearly always right: a search would
/// touch a cache line of the locations at each of its steps.
fn page_of(pages: &[PageLocation], row: usize) -> Option<usize> {
    let first = |page: &PageLocation| usize::try_from(page.first_row_index).ok();
    let holds = |page: usize| {
        first(&pages[page]).is_some_and(|start| start <= row)
            && pages.get(page + 1).is_none_or(|next| first(next).is_none_or(|end| row < end))
    };
    let per_page = pages.get(1).and_then(first).filter(|rows| *rows > 0);
    match per_page.map(|rows| (row / rows).min(pages.len() - 1)) {
        Some(guess) if holds(guess) => Some(guess),
        _ => pages.partition_point(|p| first(p).is_some_and(|start| start <= row)).checked_sub(1),
    }
}

/// The dictionary of a chunk in clear, from its dictionary page at
/// `offset`; `None` if it is not a dictionary this reader reads.
fn dictionary_of<R: ChunkReader>(file: &R, chunk: &Chunk<'_>, offset: i64) -> Result<Option<Dictionary>, ParquetError> {
    let end = chunk.pages.first().map(|p| p.offset).ok_or_else(|| general("a chunk without pages"))?;
    let start = u64::try_from(offset).map_err(|_| general("a negative dictionary offset"))?;
    let length = usize::try_from(end - offset).map_err(|_| general("a dictionary after its pages"))?;
    let raw = file.get_bytes(start, length)?;
    let (header, used) = thrift::page_header(&raw)?;
    let Some(count) = header.dictionary.filter(|_| header.kind == thrift::DICTIONARY_PAGE) else { return Ok(None) };
    let size = usize::try_from(header.compressed_size).map_err(|_| general("a negative page size"))?;
    let body = raw.get(used..used + size).ok_or_else(|| general("a dictionary longer than its place"))?;
    let body = match chunk.column.compression() {
        Compression::ZSTD(_) => {
            let size = usize::try_from(header.uncompressed_size).map_err(|_| general("a negative page size"))?;
            decompress(body, size)?
        }
        _ => body.to_vec(),
    };
    let count = usize::try_from(count).map_err(|_| general("a negative value count"))?;
    if count > MAX_PAGE_VALUES {
        return Ok(None);
    }
    Ok(match plain(&body, chunk.column.column_type(), count)? {
        Some(Decoded::Strings(values)) => Some(Dictionary::Strings(values.into_iter().map(<[u8]>::to_vec).collect())),
        Some(Decoded::Integers(values)) => Some(Dictionary::Integers(values)),
        _ => None,
    })
}

/// The first `count` plain-encoded values of physical type `kind`.
fn plain(bytes: &[u8], kind: Type, count: usize) -> Result<Option<Decoded<'_>>, ParquetError> {
    let truncated = || general("a truncated value");
    let fixed = |width: usize| -> Result<Vec<i64>, ParquetError> {
        let bytes = bytes.get(..count * width).ok_or_else(truncated)?;
        Ok(bytes
            .chunks_exact(width)
            .map(|b| match width {
                4 => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                _ => i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            })
            .collect())
    };
    Ok(Some(match kind {
        Type::BYTE_ARRAY => {
            let mut values = Vec::with_capacity(count);
            let mut at = 0;
            for _ in 0..count {
                let len = bytes.get(at..at + 4).ok_or_else(truncated)?;
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                values.push(bytes.get(at + 4..at + 4 + len).ok_or_else(truncated)?);
                at += 4 + len;
            }
            Decoded::Strings(values)
        }
        Type::INT32 => Decoded::Integers(fixed(4)?),
        Type::INT64 => Decoded::Integers(fixed(8)?),
        _ => return Ok(None),
    }))
}

/// Appends to `values` the values at `wanted` (ascending, within the page)
/// of page `page`; false if the page is of a kind this reader does not
/// read.
fn page_rows<R: ChunkReader>(
    file: &R,
    chunk: &Chunk<'_>,
    page: usize,
    wanted: &[usize],
    dictionary: Option<&Dictionary>,
    values: &mut Values,
) -> Result<bool, ParquetError> {
    let Some((data, body)) = data_page(file, chunk.column, &chunk.pages[page], chunk.sealed, page)? else {
        return Ok(false);
    };
    let optional = chunk.column.column_descr().max_def_level() == 1;
    if optional && data.definition_encoding != Encoding::RLE as i32 {
        return Ok(false);
    }
    let count = usize::try_from(data.num_values).map_err(|_| general("a negative value count"))?;
    if count > MAX_PAGE_VALUES {
        return Ok(false);
    }
    let Some(&last) = wanted.last() else { return Ok(true) };
    if last >= count {
        return Err(general("a row beyond its page"));
    }
    // Definition levels (version 1: their length, then the hybrid at one
    // bit per value), then the values of the rows defined: which of them
    // each wanted row is (`None`: a null), and how many to decode.
    let (positions, index, at) = match optional {
        false => (wanted.iter().map(|row| Some(*row)).collect(), last + 1, 0),
        true => {
            let len = body.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            let levels = len.and_then(|len| body.get(4..4 + len)).ok_or_else(|| general("truncated levels"))?;
            let (positions, index) = encodings::defined(levels, wanted)?;
            (positions, index, 4 + levels.len())
        }
    };
    let body = body.get(at..).ok_or_else(|| general("truncated values"))?;
    let kind = chunk.column.column_type();
    let is = |encoding: Encoding| data.encoding == encoding as i32;
    let decoded = match data.encoding {
        _ if is(Encoding::PLAIN) => plain(body, kind, index)?,
        _ if is(Encoding::RLE_DICTIONARY) || is(Encoding::PLAIN_DICTIONARY) => {
            let width = usize::from(*body.first().ok_or_else(|| general("truncated values"))?);
            Some(Decoded::Indices(encodings::hybrid(&body[1..], width, index)?))
        }
        _ if is(Encoding::DELTA_BINARY_PACKED) && kind != Type::BYTE_ARRAY => {
            let narrow = kind == Type::INT32;
            let values = encodings::delta(body, index)?;
            Some(Decoded::Integers(values.into_iter().map(|v| if narrow { i64::from(v as i32) } else { v }).collect()))
        }
        _ => None,
    };
    let Some(decoded) = decoded.filter(|d| d.len() == index) else { return Ok(false) };
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| general("a value not in UTF-8"));
    let entry = |i: u32| usize::try_from(i).map_err(|_| general("an index beyond the dictionary"));
    let beyond = || general("an index beyond the dictionary");
    for position in positions {
        match (&mut *values, position) {
            (Values::Strings(out), None) => out.push(None),
            (Values::Integers(out), None) => out.push(None),
            (Values::Strings(out), Some(i)) => out.push(Some(match (&decoded, dictionary) {
                (Decoded::Strings(page), _) => text(page[i])?,
                (Decoded::Indices(page), Some(Dictionary::Strings(all))) => {
                    text(all.get(entry(page[i])?).ok_or_else(beyond)?)?
                }
                _ => return Ok(false),
            })),
            (Values::Integers(out), Some(i)) => out.push(Some(match (&decoded, dictionary) {
                (Decoded::Integers(page), _) => page[i],
                (Decoded::Indices(page), Some(Dictionary::Integers(all))) => {
                    *all.get(entry(page[i])?).ok_or_else(beyond)?
                }
                _ => return Ok(false),
            })),
        }
    }
    Ok(true)
}

/// A data page's header and its body, decrypted and decompressed.
type DataPage = (thrift::DataPageHeader, Body);

/// A page's body, ready to decode: a clear page is read where it lies
/// (uncompressed) or decompressed, and holds nothing the data file does not
/// hold in clear; a companion's page holds identifiers in clear once
/// decrypted, and its buffer is wiped when dropped.
enum Body {
    Shared(Bytes),
    Clear(Vec<u8>),
    Secret(Wiped),
}

/// A buffer of identifiers in clear, wiped when dropped: a word at a time,
/// since a page is wiped for every row a lookup reads from it.
struct Wiped(Vec<u8>);

impl Drop for Wiped {
    fn drop(&mut self) {
        // SAFETY: every bit pattern is a valid u64, and the words are only
        // written (with zeros) through the aligned middle of the slice.
        let (head, words, tail) = unsafe { self.0.align_to_mut::<u64>() };
        head.zeroize();
        words.zeroize();
        tail.zeroize();
        self.0.spare_capacity_mut().zeroize();
    }
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Body::Shared(bytes) => bytes,
            Body::Clear(bytes) => bytes,
            Body::Secret(bytes) => &bytes.0,
        }
    }
}

/// The header and the body (decrypted, decompressed) of the page at
/// `location`, page `page` of its chunk, if it is a data page of version 1;
/// `None` for any other page.
fn data_page<R: ChunkReader>(
    file: &R,
    column: &ColumnChunkMetaData,
    location: &PageLocation,
    sealed: Option<(&PageCipher, usize, usize)>,
    page: usize,
) -> Result<Option<DataPage>, ParquetError> {
    let offset = u64::try_from(location.offset).map_err(|_| general("a negative page offset"))?;
    let length = usize::try_from(location.compressed_page_size).map_err(|_| general("a negative page length"))?;
    let raw: Bytes = file.get_bytes(offset, length)?;
    let (header, body) = match sealed {
        None => {
            let (header, used) = thrift::page_header(&raw)?;
            let size = usize::try_from(header.compressed_size).map_err(|_| general("a negative page size"))?;
            let end = used.checked_add(size).filter(|end| *end <= raw.len());
            let end = end.ok_or_else(|| general("a page longer than its location"))?;
            (header, Body::Shared(raw.slice(used..end)))
        }
        Some((cipher, row_group, column)) => {
            let aad = cipher.module_aad(DATA_PAGE_HEADER, row_group, column, page)?;
            let (plain, used) = cipher.open(&raw, &aad)?;
            let (header, _) = thrift::page_header(&plain)?;
            let aad = cipher.module_aad(DATA_PAGE, row_group, column, page)?;
            let (body, _) = cipher.open(&raw[used..], &aad)?;
            (header, Body::Secret(Wiped(body)))
        }
    };
    let Some(data) = header.data.filter(|_| header.kind == thrift::DATA_PAGE) else { return Ok(None) };
    let body = match column.compression() {
        Compression::ZSTD(_) => {
            let size = usize::try_from(header.uncompressed_size).map_err(|_| general("a negative page size"))?;
            let page = decompress(&body, size)?;
            match body {
                Body::Secret(_) => Body::Secret(Wiped(page)),
                _ => Body::Clear(page),
            }
        }
        _ => body,
    };
    Ok(Some((data, body)))
}

/// Every value of the page at `location` of a required 32- or 64-bit
/// integer column chunk in clear, encoded `DELTA_BINARY_PACKED` (the token
/// index's columns), up to the first for which `enough` holds, or the
/// first `limit`; `None` for a chunk or a page of another kind.
pub fn integer_page<R: ChunkReader>(
    file: &R,
    column: &ColumnChunkMetaData,
    location: &PageLocation,
    limit: usize,
    mut enough: impl FnMut(i64) -> bool,
) -> Result<Option<Vec<i64>>, ParquetError> {
    let descr = column.column_descr();
    let kind = matches!(column.column_type(), Type::INT32 | Type::INT64)
        && column.dictionary_page_offset().is_none()
        && matches!(column.compression(), Compression::UNCOMPRESSED | Compression::ZSTD(_))
        && descr.max_rep_level() == 0
        && descr.max_def_level() == 0;
    if !kind {
        return Ok(None);
    }
    let Some((data, body)) = data_page(file, column, location, None, 0)? else { return Ok(None) };
    if data.encoding != Encoding::DELTA_BINARY_PACKED as i32 {
        return Ok(None);
    }
    let count = usize::try_from(data.num_values).map_err(|_| general("a negative value count"))?;
    if count > MAX_PAGE_VALUES {
        return Ok(None);
    }
    let mut stopped = false;
    let values = encodings::delta_until(&body, count.min(limit), |value| {
        stopped = enough(value);
        stopped
    })?;
    if !stopped && values.len() != count.min(limit) {
        return Err(general("a page with fewer values than its header says"));
    }
    Ok(Some(values))
}

/// zstd decompression contexts, kept between pages and lookups: making
/// one is what this reader exists to avoid.
static DECOMPRESSORS: Mutex<Vec<zstd::bulk::Decompressor<'static>>> = Mutex::new(Vec::new());

fn decompress(bytes: &[u8], size: usize) -> Result<Vec<u8>, ParquetError> {
    let taken = DECOMPRESSORS.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let mut decompressor = match taken {
        Some(decompressor) => decompressor,
        None => zstd::bulk::Decompressor::new().map_err(|e| ParquetError::External(Box::new(e)))?,
    };
    let page = decompressor.decompress(bytes, size).map_err(|e| ParquetError::External(Box::new(e)));
    DECOMPRESSORS.lock().unwrap_or_else(|p| p.into_inner()).push(decompressor);
    let page = page?;
    if page.len() != size {
        return Err(general("a page of another size than its header says"));
    }
    Ok(page)
}

#[cfg(test)]
mod tests;
