//! The signed head of the trail (the last entry's number and hash), kept
//! with the keys so that a trail cut short no longer reaches it.
//!
//! The head file holds two slots of [`SLOT_BYTES`] bytes, and head `seq`
//! is written in place into slot `seq % 2`, then fdatasynced: one flush per
//! append, where a new file renamed into place costs two (the file and its
//! directory). A write torn by a crash spoils at most the slot it was
//! writing; the other still holds the head before, one entry behind the
//! trail, which is what a crash between an entry and its head leaves
//! anyway ([`super::verify`] accepts it, the next opening moves it up).
//! Readers take the newest slot whose signature verifies. A head file of
//! one JSON object (written before slots) reads as slot 0. Slots are
//! padded with white space, so the file reads as a stream of JSON heads.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ring::signature::UnparsedPublicKey;
use serde::{Deserialize, Serialize};

use super::AuditError;
use crate::ops::durable::{self, DurableError, FileMode};

const HEAD_DOMAIN: &[u8] = b"cdrvault-audit-head-v1\n";

/// The size of a slot: a page, so that writing one never rewrites the
/// other's sectors.
pub const SLOT_BYTES: usize = 4096;

/// The signed head of the trail: the last entry's number and hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub sig: String,
}

impl Head {
    /// A head for entry `seq` with `hash`, signed by `sign`.
    pub(super) fn signed(seq: u64, hash: &[u8; 32], sign: impl FnOnce(&[u8]) -> Vec<u8>) -> Head {
        Head { seq, hash: hex::encode(hash), sig: hex::encode(sign(&head_message(seq, hash))) }
    }

    /// The head kept at `path`, if there is a file: the newest slot whose
    /// signature verifies under `key`, or else the newest slot that reads
    /// (whose check then fails). A file with no readable slot is damaged.
    pub(super) fn read(path: &Path, key: &UnparsedPublicKey<&[u8]>) -> Result<Option<Head>, AuditError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DurableError::io("read", path, e).into()),
        };
        let slots: Vec<Head> = bytes
            .chunks(SLOT_BYTES)
            .filter_map(|slot| {
                // A file of one head written before slots is shorter than
                // a slot; zeros would be a hole nobody wrote.
                let end = slot.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                serde_json::from_slice::<Head>(&slot[..end]).ok()
            })
            .collect();
        let newest = |heads: &mut dyn Iterator<Item = &Head>| heads.max_by_key(|head| head.seq).cloned();
        let head = newest(&mut slots.iter().filter(|head| head.verified(key).is_ok()))
            .or_else(|| newest(&mut slots.iter()))
            .ok_or_else(|| AuditError::Damaged {
                path: path.to_path_buf(),
                seq: 0,
                problem: "the head is not readable".into(),
            })?;
        Ok(Some(head))
    }

    /// The hash the head names, if its signature verifies under `key`.
    pub(super) fn verified(&self, key: &UnparsedPublicKey<&[u8]>) -> Result<[u8; 32], String> {
        let hash = hex::decode(&self.hash)
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .ok_or_else(|| "the head is malformed".to_string())?;
        let sig = hex::decode(&self.sig).unwrap_or_default();
        key.verify(&head_message(self.seq, &hash), &sig)
            .map_err(|_| "the head's signature does not verify".to_string())?;
        Ok(hash)
    }
}

/// What a head's signature covers.
fn head_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut message = HEAD_DOMAIN.to_vec();
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(hash);
    message
}

/// The head file of one trail, open for writing its slots.
#[derive(Debug)]
pub(super) struct HeadFile {
    path: PathBuf,
    file: Option<File>,
}

impl HeadFile {
    pub(super) fn new(path: PathBuf) -> HeadFile {
        HeadFile { path, file: None }
    }

    /// Writes `head` into its slot and flushes it: durable when this
    /// returns. A missing file, or one of a single head written before
    /// slots, is first written whole, atomically and private; an existing
    /// one must be private.
    pub(super) fn write(&mut self, head: &Head) -> Result<(), DurableError> {
        let mut slot = serde_json::to_vec(head).unwrap_or_default();
        slot.truncate(SLOT_BYTES - 1);
        slot.resize(SLOT_BYTES - 1, b' ');
        slot.push(b'\n');
        let offset = (head.seq % 2) as usize * SLOT_BYTES;
        // A file replaced under this handle (restored from a copy, or
        // rewritten whole by another writer) would take heads nobody
        // reads: the handle follows the name.
        if let Some(file) = &self.file
            && !same_file(file, &self.path)
        {
            self.file = None;
        }
        let file = match &self.file {
            Some(file) => file,
            None => {
                durable::ensure_private(&self.path)?;
                let len = match std::fs::metadata(&self.path) {
                    Ok(metadata) => metadata.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                    Err(e) => return Err(DurableError::io("stat", &self.path, e)),
                };
                let whole = len < 2 * SLOT_BYTES as u64;
                if whole {
                    let mut image = blank_slot();
                    image.extend(blank_slot());
                    image[offset..offset + SLOT_BYTES].copy_from_slice(&slot);
                    durable::write_atomically(&self.path, &image, FileMode::Private)?;
                }
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&self.path)
                    .map_err(|e| DurableError::io("open", &self.path, e))?;
                let file = self.file.insert(file);
                if whole {
                    return Ok(());
                }
                file
            }
        };
        file.write_all_at(&slot, offset as u64).map_err(|e| DurableError::io("write", &self.path, e))?;
        file.sync_data().map_err(|source| DurableError::Fsync { path: self.path.clone(), source })
    }
}

/// True if `file` is still the file at `path`.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// A slot holding no head: spaces and a newline, so that the file always
/// reads as JSON heads separated by white space.
fn blank_slot() -> Vec<u8> {
    let mut slot = vec![b' '; SLOT_BYTES - 1];
    slot.push(b'\n');
    slot
}
