//! Helpers shared by the black-box tests: an independent look at what a run
//! wrote (files read back with the parquet crate, a byte scan for raw
//! identifiers) and a minimal HTTP GET for the metrics endpoint.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use cdrvault::keys::KeyStore;
use cdrvault::models::IdentifierField;
use cdrvault::read;
use cdrvault::synth::SyntheticCdr;

/// One row read back: record id, tokens and unsealed values by field.
#[derive(Debug, Clone)]
pub struct Row {
    pub record_id: String,
    pub tokens: BTreeMap<IdentifierField, i64>,
    pub sealed: BTreeMap<IdentifierField, String>,
    pub token_key_id: String,
    pub seal_key_id: String,
}

/// Reads every row of every file, decrypting the sealed columns with the
/// day keys of the keystore.
pub fn read_all_rows(data_dir: &Path, keys: &KeyStore) -> Vec<Row> {
    let mut columns: Vec<&str> = vec!["record_id", "token_key_id", "seal_key_id"];
    for field in IdentifierField::ALL {
        columns.push(field.token_column());
        columns.push(field.sealed_column());
    }
    let mut rows = Vec::new();
    for date in read::list_days(data_dir).unwrap() {
        let key = keys.existing_day_key(date).unwrap().expect("every day with files has a key");
        for file in read::list_files(data_dir, date).unwrap() {
            for batch in read::read_file(&file, Some(&key), &columns).unwrap() {
                let ids = batch.column_by_name("record_id").unwrap().as_string::<i32>();
                let tk = batch.column_by_name("token_key_id").unwrap().as_string::<i32>();
                let sk = batch.column_by_name("seal_key_id").unwrap().as_string::<i32>();
                for i in 0..batch.num_rows() {
                    let mut row = Row {
                        record_id: ids.value(i).to_string(),
                        tokens: BTreeMap::new(),
                        sealed: BTreeMap::new(),
                        token_key_id: tk.value(i).to_string(),
                        seal_key_id: sk.value(i).to_string(),
                    };
                    for field in IdentifierField::ALL {
                        let tokens = batch.column_by_name(field.token_column()).unwrap().as_primitive::<Int64Type>();
                        let sealed = batch.column_by_name(field.sealed_column()).unwrap().as_string::<i32>();
                        assert_eq!(tokens.is_null(i), sealed.is_null(i), "token and sealed value come together");
                        if !tokens.is_null(i) {
                            row.tokens.insert(field, tokens.value(i));
                            row.sealed.insert(field, sealed.value(i).to_string());
                        }
                    }
                    rows.push(row);
                }
            }
        }
    }
    rows
}

/// Every file below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The raw identifiers of generated records, in the forms they may take:
/// as sent, and canonical (normalised) where that differs.
pub fn raw_identifiers(records: &[SyntheticCdr]) -> HashSet<String> {
    let mut set = HashSet::new();
    for record in records {
        for id in record.identifiers() {
            set.insert(id.to_string());
            // The bare digits of a number (without "+") must not leak either.
            if let Some(digits) = id.strip_prefix('+') {
                set.insert(digits.to_string());
            }
        }
    }
    set
}

/// Scans the bytes of `files` (contents and paths) and of `texts` for any of
/// `identifiers`. Returns where each leak was found, naming the place and the
/// length of the match, never the identifier itself.
pub fn find_leaks(files: &[PathBuf], texts: &[(&str, &[u8])], identifiers: &HashSet<String>) -> Vec<String> {
    let patterns: Vec<&String> = identifiers.iter().collect();
    let matcher = AhoCorasick::new(&patterns).unwrap();
    let mut leaks = Vec::new();
    for file in files {
        let path_text = file.to_string_lossy();
        if matcher.is_match(path_text.as_bytes()) {
            leaks.push(format!("file name {}", file.display()));
        }
        let bytes = std::fs::read(file).unwrap();
        if let Some(m) = matcher.find(&bytes) {
            leaks.push(format!("{} at byte {} ({} bytes)", file.display(), m.start(), m.len()));
        }
    }
    for (name, bytes) in texts {
        if let Some(m) = matcher.find(bytes) {
            leaks.push(format!("{name} at byte {} ({} bytes)", m.start(), m.len()));
        }
    }
    leaks
}

/// A plain HTTP/1.0 GET; returns the body.
pub fn http_get(address: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
