//! The audit trail: an append-only, hash-chained, signed record of every
//! deletion, preservation order and lawful-access step.
//!
//! One JSON object per line in `<state_dir>/audit.jsonl`:
//!
//! ```text
//! {"action":"day_deleted", …, "actor":"retention", "prev":"<hex>", "seq":7,
//!  "time":"…", "hash":"<hex>", "sig":"<hex>"}
//! ```
//!
//! `hash` is SHA-256 over a domain tag and the canonical JSON of the entry
//! without `hash` and `sig` (keys sorted), and `prev` is the hash of the
//! entry before (zeros for the first), so editing, removing or reordering
//! any entry breaks the chain. `sig` is an Ed25519 signature of `hash` by a
//! key kept with the other keys, so the chain cannot be rebuilt by someone
//! who can only write the trail. The signed head (last `seq` and `hash`) is
//! also kept with the keys: a trail cut short no longer reaches it.
//!
//! An entry is durable (written and fsynced) before [`AuditTrail::append`]
//! returns; callers report an action only after that. Entries hold key ids,
//! dates, counts, order ids, tokens and digests, never a raw identifier.

mod event;
mod verify;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Map, Value};

pub use event::AuditEvent;
pub use verify::{Head, Verification, verify};

use crate::keys::{KeyError, KeyStore};
use crate::ops::durable::{self, DurableError, FileMode};
use verify::{entry_hash, head_message, last_entry};

/// The file name of the trail in the state directory.
pub const AUDIT_FILE: &str = "audit.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("audit trail {path} is damaged at entry {seq}: {problem}")]
    Damaged { path: PathBuf, seq: u64, problem: String },
    #[error("audit signing key is invalid")]
    SigningKey,
}

/// The state after the last entry: what the next entry chains to.
struct Tail {
    file: File,
    seq: u64,
    hash: [u8; 32],
    /// The file's length after our last append: if it differs, another
    /// process appended, and the tail is read again.
    len: u64,
}

/// An open trail, ready to append. Appends are serialised by a mutex.
pub struct AuditTrail {
    path: PathBuf,
    head_path: PathBuf,
    signer: Ed25519KeyPair,
    tail: Mutex<Tail>,
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail").field("path", &self.path).finish_non_exhaustive()
    }
}

impl AuditTrail {
    /// Opens (creating if needed) the trail in `state_dir`, signing with the
    /// keystore's audit key. The existing trail is verified first: nothing is
    /// appended to a damaged trail.
    pub fn open(state_dir: &Path, keys: &KeyStore) -> Result<AuditTrail, AuditError> {
        durable::create_dir_all(state_dir)?;
        let path = state_dir.join(AUDIT_FILE);
        let signer = signer(keys)?;
        let head_path = keys.audit_head_path();
        let check = verify(&path, signer.public_key().as_ref(), &head_path)?;
        if let Some((seq, problem)) = check.problem {
            return Err(AuditError::Damaged { path, seq, problem });
        }
        let (seq, hash) = last_entry(&path)?;
        let existed = path.exists();
        let file =
            OpenOptions::new().create(true).append(true).open(&path).map_err(|e| DurableError::io("open", &path, e))?;
        if !existed {
            durable::fsync_dir(state_dir)?;
        }
        let len = file.metadata().map_err(|e| DurableError::io("stat", &path, e))?.len();
        Ok(AuditTrail { path, head_path, signer, tail: Mutex::new(Tail { file, seq, hash, len }) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key that verifies this trail's signatures.
    pub fn public_key(&self) -> Vec<u8> {
        self.signer.public_key().as_ref().to_vec()
    }

    /// Appends an entry and makes it durable before returning its number.
    pub fn append(&self, actor: &str, event: &AuditEvent, now: DateTime<Utc>) -> Result<u64, AuditError> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        // The service and an operator's command may append at the same
        // time: an exclusive file lock orders them, and the chain continues
        // from whatever the other wrote.
        tail.file.lock().map_err(|e| DurableError::io("lock", &self.path, e))?;
        let result = self.append_locked(&mut tail, actor, event, now);
        let _ = tail.file.unlock();
        result
    }

    fn append_locked(
        &self,
        tail: &mut Tail,
        actor: &str,
        event: &AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<u64, AuditError> {
        let len = tail.file.metadata().map_err(|e| DurableError::io("stat", &self.path, e))?.len();
        if len != tail.len {
            (tail.seq, tail.hash) = last_entry(&self.path)?;
        }
        let seq = tail.seq + 1;
        let mut entry = match serde_json::to_value(event) {
            Ok(Value::Object(map)) => map,
            // An enum with named fields always serialises to an object.
            _ => Map::new(),
        };
        entry.insert("seq".into(), seq.into());
        entry.insert("time".into(), now.to_rfc3339_opts(SecondsFormat::Micros, true).into());
        entry.insert("actor".into(), actor.into());
        entry.insert("prev".into(), hex::encode(tail.hash).into());
        let hash = entry_hash(&entry);
        let sig = self.signer.sign(&hash);
        entry.insert("hash".into(), hex::encode(hash).into());
        entry.insert("sig".into(), hex::encode(sig.as_ref()).into());
        let mut line = serde_json::to_vec(&Value::Object(entry)).unwrap_or_default();
        line.push(b'\n');
        tail.file.write_all(&line).map_err(|e| DurableError::io("append", &self.path, e))?;
        durable::fsync_file(&tail.file, &self.path)?;
        tail.seq = seq;
        tail.hash = hash;
        tail.len = len + line.len() as u64;
        // The head moves after the entry is durable: a crash in between
        // leaves the trail one entry ahead of its head, which verify accepts.
        let head = Head {
            seq,
            hash: hex::encode(hash),
            sig: hex::encode(self.signer.sign(&head_message(seq, &hash)).as_ref()),
        };
        let bytes = serde_json::to_vec(&head).unwrap_or_default();
        durable::write_atomically(&self.head_path, &bytes, FileMode::Private)?;
        Ok(seq)
    }
}

/// The public key that verifies the trails signed with `keys`' audit key.
pub fn public_key(keys: &KeyStore) -> Result<Vec<u8>, AuditError> {
    Ok(signer(keys)?.public_key().as_ref().to_vec())
}

fn signer(keys: &KeyStore) -> Result<Ed25519KeyPair, AuditError> {
    let seed = keys.audit_signing_seed()?;
    Ed25519KeyPair::from_seed_unchecked(seed.expose()).map_err(|_| AuditError::SigningKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, KeyStore, AuditTrail) {
        let root = tempfile::tempdir().unwrap();
        KeyStore::init(&root.path().join("keys"), None).unwrap();
        let keys = KeyStore::open(&root.path().join("keys"), None).unwrap();
        let trail = AuditTrail::open(&root.path().join("state"), &keys).unwrap();
        (root, keys, trail)
    }

    fn day(n: u64) -> AuditEvent {
        AuditEvent::DayDeleted {
            day: format!("2025-01-{n:02}"),
            files: n,
            rows: n * 10,
            key_id: None,
            run: "r1".into(),
        }
    }

    fn fill(trail: &AuditTrail, n: u64) {
        for i in 1..=n {
            trail.append("retention", &day(i), Utc::now()).unwrap();
        }
    }

    fn check(root: &Path, keys: &KeyStore, trail_key: &[u8]) -> Verification {
        verify(&root.join("state").join(AUDIT_FILE), trail_key, &keys.audit_head_path()).unwrap()
    }

    fn rewrite(root: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let path = root.join("state").join(AUDIT_FILE);
        let mut lines: Vec<String> = std::fs::read_to_string(&path).unwrap().lines().map(String::from).collect();
        f(&mut lines);
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&path, text).unwrap();
    }

    #[test]
    fn an_untouched_trail_verifies_and_reopens() {
        let (root, keys, trail) = setup();
        fill(&trail, 5);
        let public = trail.public_key();
        drop(trail);
        assert_eq!(check(root.path(), &keys, &public), Verification { entries: 5, problem: None });
        let reopened = AuditTrail::open(&root.path().join("state"), &keys).unwrap();
        assert_eq!(reopened.append("retention", &day(6), Utc::now()).unwrap(), 6);
        assert!(check(root.path(), &keys, &public).is_intact());
    }

    #[test]
    fn every_kind_of_tampering_is_found_and_named() {
        type Tamper = fn(&mut Vec<String>);
        let cases: [(&str, Tamper, u64); 5] = [
            ("edited", |l| l[2] = l[2].replace("\"rows\":30", "\"rows\":31"), 3),
            (
                "removed",
                |l| {
                    l.remove(1);
                },
                2,
            ),
            ("reordered", |l| l.swap(1, 2), 2),
            ("truncated", |l| l.truncate(3), 4),
            ("garbage", |l| l[0] = "not json".into(), 1),
        ];
        for (name, tamper, first_bad) in cases {
            let (root, keys, trail) = setup();
            fill(&trail, 5);
            let public = trail.public_key();
            drop(trail);
            rewrite(root.path(), tamper);
            let result = check(root.path(), &keys, &public);
            let (seq, problem) = result.problem.unwrap_or_else(|| panic!("{name} not detected"));
            assert_eq!(seq, first_bad, "{name}: {problem}");
            assert!(
                AuditTrail::open(&root.path().join("state"), &keys).is_err(),
                "{name}: nothing is appended to a damaged trail"
            );
        }
    }

    #[test]
    fn two_writers_keep_one_chain() {
        let (root, keys, first) = setup();
        let second = AuditTrail::open(&root.path().join("state"), &keys).unwrap();
        for i in 1..=6 {
            let writer = if i % 2 == 0 { &first } else { &second };
            writer.append("retention", &day(i), Utc::now()).unwrap();
        }
        let public = first.public_key();
        assert_eq!(check(root.path(), &keys, &public), Verification { entries: 6, problem: None });
    }

    #[test]
    fn a_rebuilt_chain_without_the_key_is_a_forgery() {
        let (root, keys, trail) = setup();
        fill(&trail, 2);
        let public = trail.public_key();
        drop(trail);
        // Recompute the hash of an edited entry: the chain holds, the
        // signature does not.
        rewrite(root.path(), |lines| {
            let Value::Object(mut entry) = serde_json::from_str(&lines[1]).unwrap() else { panic!() };
            entry.insert("rows".into(), 999.into());
            entry.remove("hash");
            let sig = entry.remove("sig").unwrap();
            let hash = entry_hash(&entry);
            entry.insert("hash".into(), hex::encode(hash).into());
            entry.insert("sig".into(), sig);
            lines[1] = serde_json::to_string(&entry).unwrap();
        });
        let result = check(root.path(), &keys, &public);
        assert_eq!(result.problem.unwrap().0, 2);
    }
}
