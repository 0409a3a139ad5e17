//! The two Thrift structures of the Parquet format that [`super::direct`]
//! reads itself, in the compact protocol: a page's header and, at the tail
//! of a file whose footer is encrypted, the file's crypto metadata (for its
//! AAD). Every other field is skipped, whatever its type; anything
//! malformed is an error, never a guess.

use parquet::errors::ParquetError;

use super::encodings;

/// What a page header says of the page that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageHeader {
    /// `PageType`: 0 a data page (version 1), 2 a dictionary page, 3 a
    /// data page of version 2.
    pub kind: i32,
    pub uncompressed_size: i32,
    pub compressed_size: i32,
    /// Present for a data page of version 1.
    pub data: Option<DataPageHeader>,
    /// The number of values of a dictionary page.
    pub dictionary: Option<i32>,
}

/// The header of a data page of version 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPageHeader {
    /// Values in the page, nulls included.
    pub num_values: i32,
    /// The `Encoding` of the values.
    pub encoding: i32,
    /// The `Encoding` of the definition levels.
    pub definition_encoding: i32,
}

pub const DATA_PAGE: i32 = 0;
pub const DICTIONARY_PAGE: i32 = 2;

// Compact protocol field types.
const BOOLEAN_TRUE: u8 = 1;
const BOOLEAN_FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;

/// Nesting deeper than this is refused: no Parquet structure comes near.
const MAX_DEPTH: usize = 32;

fn malformed(what: &str) -> ParquetError {
    ParquetError::General(format!("malformed thrift: {what}"))
}

/// A reader of compact-protocol bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, ParquetError> {
        let byte = *self.bytes.get(self.at).ok_or_else(|| malformed("truncated"))?;
        self.at += 1;
        Ok(byte)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ParquetError> {
        let end =
            self.at.checked_add(n).filter(|end| *end <= self.bytes.len()).ok_or_else(|| malformed("truncated"))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn varint(&mut self) -> Result<u64, ParquetError> {
        encodings::varint(self.bytes, &mut self.at).ok_or_else(|| malformed("truncated or overlong varint"))
    }

    fn zigzag(&mut self) -> Result<i64, ParquetError> {
        Ok(encodings::zigzag(self.varint()?))
    }

    fn i32(&mut self) -> Result<i32, ParquetError> {
        i32::try_from(self.zigzag()?).map_err(|_| malformed("i32 out of range"))
    }

    fn binary(&mut self) -> Result<&'a [u8], ParquetError> {
        let len = usize::try_from(self.varint()?).map_err(|_| malformed("length"))?;
        self.take(len)
    }

    /// The next field's (id, type) of a struct whose last field was `last`;
    /// `None` at the struct's end.
    fn field(&mut self, last: &mut i16) -> Result<Option<(i16, u8)>, ParquetError> {
        let header = self.byte()?;
        let kind = header & 0x0f;
        if kind == 0 {
            return Ok(None);
        }
        let delta = i16::from(header >> 4);
        let id = match delta {
            0 => i16::try_from(self.zigzag()?).map_err(|_| malformed("field id"))?,
            _ => last.checked_add(delta).ok_or_else(|| malformed("field id"))?,
        };
        *last = id;
        Ok(Some((id, kind)))
    }

    /// Skips a value of compact type `kind`.
    fn skip(&mut self, kind: u8, depth: usize) -> Result<(), ParquetError> {
        if depth > MAX_DEPTH {
            return Err(malformed("nested too deep"));
        }
        match kind {
            BOOLEAN_TRUE | BOOLEAN_FALSE => {}
            BYTE => {
                self.byte()?;
            }
            I16 | I32 | I64 => {
                self.varint()?;
            }
            DOUBLE => {
                self.take(8)?;
            }
            BINARY => {
                self.binary()?;
            }
            LIST | SET => {
                let header = self.byte()?;
                let size = match header >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                let element = header & 0x0f;
                for _ in 0..size {
                    // Booleans in a collection take a byte each.
                    match element {
                        BOOLEAN_TRUE | BOOLEAN_FALSE => {
                            self.byte()?;
                        }
                        other => self.skip(other, depth + 1)?,
                    }
                }
            }
            MAP => {
                let size = self.varint()?;
                if size > 0 {
                    let kinds = self.byte()?;
                    for _ in 0..size {
                        self.skip(kinds >> 4, depth + 1)?;
                        self.skip(kinds & 0x0f, depth + 1)?;
                    }
                }
            }
            STRUCT => {
                let mut last = 0;
                while let Some((_, kind)) = self.field(&mut last)? {
                    self.skip(kind, depth + 1)?;
                }
            }
            _ => return Err(malformed("unknown type")),
        }
        Ok(())
    }
}

/// Reads a page header from the start of `bytes`; returns it with the
/// number of bytes it took.
pub fn page_header(bytes: &[u8]) -> Result<(PageHeader, usize), ParquetError> {
    let mut reader = Reader { bytes, at: 0 };
    let (mut kind, mut uncompressed, mut compressed, mut data, mut dictionary) = (None, None, None, None, None);
    let mut last = 0;
    while let Some((id, field)) = reader.field(&mut last)? {
        match (id, field) {
            (1, I32) => kind = Some(reader.i32()?),
            (2, I32) => uncompressed = Some(reader.i32()?),
            (3, I32) => compressed = Some(reader.i32()?),
            (5, STRUCT) => data = Some(data_page_header(&mut reader)?),
            (7, STRUCT) => dictionary = Some(dictionary_page_header(&mut reader)?),
            (_, other) => reader.skip(other, 0)?,
        }
    }
    let header = PageHeader {
        kind: kind.ok_or_else(|| malformed("a page header without its type"))?,
        uncompressed_size: uncompressed.ok_or_else(|| malformed("a page header without its size"))?,
        compressed_size: compressed.ok_or_else(|| malformed("a page header without its size"))?,
        data,
        dictionary,
    };
    Ok((header, reader.at))
}

/// The value count of a dictionary page's header.
fn dictionary_page_header(reader: &mut Reader<'_>) -> Result<i32, ParquetError> {
    let mut num_values = None;
    let mut last = 0;
    while let Some((id, field)) = reader.field(&mut last)? {
        match (id, field) {
            (1, I32) => num_values = Some(reader.i32()?),
            (_, other) => reader.skip(other, 1)?,
        }
    }
    num_values.ok_or_else(|| malformed("a dictionary page header without its value count"))
}

fn data_page_header(reader: &mut Reader<'_>) -> Result<DataPageHeader, ParquetError> {
    let (mut num_values, mut encoding, mut definition) = (None, None, None);
    let mut last = 0;
    while let Some((id, field)) = reader.field(&mut last)? {
        match (id, field) {
            (1, I32) => num_values = Some(reader.i32()?),
            (2, I32) => encoding = Some(reader.i32()?),
            (3, I32) => definition = Some(reader.i32()?),
            (_, other) => reader.skip(other, 1)?,
        }
    }
    Ok(DataPageHeader {
        num_values: num_values.ok_or_else(|| malformed("a data page header without its value count"))?,
        encoding: encoding.ok_or_else(|| malformed("a data page header without its encoding"))?,
        definition_encoding: definition.ok_or_else(|| malformed("a data page header without its level encoding"))?,
    })
}

/// The `aad_file_unique` of the crypto metadata at the start of `bytes`
/// (`FileCryptoMetaData`, algorithm `AES_GCM_V1`); `None` for any other
/// algorithm or none stored.
pub fn aad_file_unique(bytes: &[u8]) -> Result<Option<Vec<u8>>, ParquetError> {
    let mut reader = Reader { bytes, at: 0 };
    let mut unique = None;
    let mut last = 0;
    while let Some((id, field)) = reader.field(&mut last)? {
        match (id, field) {
            // The algorithm, a union: field 1 is AES_GCM_V1.
            (1, STRUCT) => {
                let mut last = 0;
                while let Some((id, field)) = reader.field(&mut last)? {
                    match (id, field) {
                        (1, STRUCT) => {
                            let mut last = 0;
                            while let Some((id, field)) = reader.field(&mut last)? {
                                match (id, field) {
                                    (2, BINARY) => unique = Some(reader.binary()?.to_vec()),
                                    (_, other) => reader.skip(other, 2)?,
                                }
                            }
                        }
                        (_, other) => reader.skip(other, 1)?,
                    }
                }
            }
            (_, other) => reader.skip(other, 0)?,
        }
    }
    Ok(unique)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compact-protocol writer of just what the tests need.
    fn field(out: &mut Vec<u8>, delta: u8, kind: u8) {
        out.push(delta << 4 | kind);
    }

    fn zigzag(out: &mut Vec<u8>, value: i64) {
        let mut raw = ((value << 1) ^ (value >> 63)) as u64;
        loop {
            let byte = (raw & 0x7f) as u8;
            raw >>= 7;
            if raw == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn a_page_header_is_read_with_its_length_and_unknown_fields_skipped() {
        let mut bytes = Vec::new();
        field(&mut bytes, 1, I32);
        zigzag(&mut bytes, 0);
        field(&mut bytes, 1, I32);
        zigzag(&mut bytes, 5000);
        field(&mut bytes, 1, I32);
        zigzag(&mut bytes, 1234);
        field(&mut bytes, 1, I32); // crc, skipped
        zigzag(&mut bytes, -7);
        field(&mut bytes, 1, STRUCT); // the data page header
        field(&mut bytes, 1, I32);
        zigzag(&mut bytes, 1024);
        field(&mut bytes, 1, I32);
        zigzag(&mut bytes, 0);
        field(&mut bytes, 1, I32);
        zigzag(&mut bytes, 3);
        field(&mut bytes, 1, I32);
        zigzag(&mut bytes, 3);
        field(&mut bytes, 1, STRUCT); // statistics, skipped
        field(&mut bytes, 1, BINARY);
        bytes.extend([3, b'a', b'b', b'c']);
        field(&mut bytes, 2, LIST);
        bytes.push(2 << 4 | I64);
        zigzag(&mut bytes, 1);
        zigzag(&mut bytes, 2);
        bytes.push(0);
        bytes.push(0);
        bytes.push(0);
        let len = bytes.len();
        bytes.extend([9, 9, 9]); // the page itself
        let (header, read) = page_header(&bytes).unwrap();
        assert_eq!(read, len);
        assert_eq!(
            header,
            PageHeader {
                kind: DATA_PAGE,
                uncompressed_size: 5000,
                compressed_size: 1234,
                data: Some(DataPageHeader { num_values: 1024, encoding: 0, definition_encoding: 3 }),
                dictionary: None,
            }
        );
    }

    #[test]
    fn truncated_or_incomplete_headers_are_errors() {
        let mut bytes = Vec::new();
        field(&mut bytes, 1, I32);
        zigzag(&mut bytes, 0);
        field(&mut bytes, 1, I32);
        zigzag(&mut bytes, 5000);
        bytes.push(0);
        assert!(page_header(&bytes).is_err(), "no compressed size");
        for cut in 0..bytes.len() - 1 {
            assert!(page_header(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Nesting without end is refused, not followed.
        let deep = vec![1 << 4 | STRUCT; 100];
        assert!(page_header(&deep).is_err());
    }

    #[test]
    fn the_file_unique_aad_is_found_in_the_crypto_metadata() {
        let mut bytes = Vec::new();
        field(&mut bytes, 1, STRUCT); // encryption_algorithm
        field(&mut bytes, 1, STRUCT); // AES_GCM_V1
        field(&mut bytes, 2, BINARY); // aad_file_unique
        bytes.extend([4, 1, 2, 3, 4]);
        field(&mut bytes, 1, BOOLEAN_TRUE); // supply_aad_prefix
        bytes.push(0);
        bytes.push(0);
        field(&mut bytes, 2, BINARY); // key_metadata
        bytes.extend([2, b'k', b'1']);
        bytes.push(0);
        assert_eq!(aad_file_unique(&bytes).unwrap(), Some(vec![1, 2, 3, 4]));
        // AES_GCM_CTR_V1 (union field 2) is not read.
        bytes[1] = 2 << 4 | STRUCT;
        assert_eq!(aad_file_unique(&bytes).unwrap(), None);
    }
}
