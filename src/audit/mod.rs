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

pub mod config;
mod event;
mod head;
mod verify;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, SecondsFormat, Utc};
use ring::hmac;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Map, Value};

pub use event::AuditEvent;
pub use head::Head;
use head::HeadFile;
pub use verify::{Verification, WitnessCheck, verify, verify_witness};

use crate::keys::{KeyError, KeyStore};
use crate::model::IdentifierKind;
use crate::ops::durable::{self, DurableError};
use crate::ops::metrics::Metrics;
use verify::{Signatures, entry_hash, inspect};

/// The file name of the trail in the state directory.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// The domain of the key that makes the trail's target references.
const REFERENCE_DOMAIN: &[u8] = b"cdrvault/v1/audit-reference";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The trail or its head was cut, edited or rewritten: nothing more is
    /// appended to it.
    #[error("audit trail {path} is damaged at entry {seq}: {problem}")]
    Damaged { path: PathBuf, seq: u64, problem: String },
    #[error("audit signing key is invalid")]
    SigningKey,
    #[error("the witness file {0} must be outside the state and keys directories")]
    WitnessInside(PathBuf),
}

impl AuditError {
    /// True when the process must stop: an fsync failed.
    pub fn is_fatal(&self) -> bool {
        match self {
            AuditError::Durable(e) => e.is_fatal(),
            AuditError::Keys(e) => e.is_fatal(),
            _ => false,
        }
    }
}

/// The state after the last entry: what the next entry chains to.
struct Tail {
    file: File,
    seq: u64,
    hash: [u8; 32],
    /// The file's length after the last entry this process wrote or
    /// verified, and that entry's line: if the file's end is no longer
    /// that line, someone else wrote to it, and the trail is verified again
    /// against its signed head before anything is appended.
    len: u64,
    last_line: Vec<u8>,
    /// Where each signed head is kept, with the keys.
    head: HeadFile,
    /// Where each signed head is also published, if configured.
    witness: Option<File>,
}

/// An open trail, ready to append. Appends are serialised by a mutex, and
/// across processes by an exclusive lock on the file.
pub struct AuditTrail {
    path: PathBuf,
    head_path: PathBuf,
    /// The directories a witness must stay out of.
    guarded: [PathBuf; 2],
    signer: Ed25519KeyPair,
    references: hmac::Key,
    tail: Mutex<Tail>,
    witness_path: Option<PathBuf>,
    /// The damage found while running; set once, and then every append is
    /// refused.
    damage: OnceLock<(u64, String)>,
    metrics: OnceLock<Arc<Metrics>>,
    failing: AtomicBool,
    failing_fsync: AtomicBool,
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail").field("path", &self.path).finish_non_exhaustive()
    }
}

impl AuditTrail {
    /// Opens (creating if needed) the trail in `state_dir`, signing with the
    /// keystore's audit key. The state directory and the trail must be
    /// private to the service's user. The existing trail is verified
    /// against its signed head first, and nothing is appended to a damaged
    /// one; a torn last line (a crash during a write, never acknowledged)
    /// is cut, with an entry recording the cut.
    pub fn open(state_dir: &Path, keys: &KeyStore) -> Result<AuditTrail, AuditError> {
        durable::create_private_dir(state_dir)?;
        durable::ensure_private(state_dir)?;
        let path = state_dir.join(AUDIT_FILE);
        let file = durable::open_private_append(&path)?;
        let seed = keys.audit_signing_seed()?;
        let signer = Ed25519KeyPair::from_seed_unchecked(seed.expose()).map_err(|_| AuditError::SigningKey)?;
        let reference_seed = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, seed.expose()), REFERENCE_DOMAIN);
        let head_path = keys.audit_head_path(&path);
        let head = HeadFile::new(head_path.clone());
        let trail = AuditTrail {
            head_path,
            path,
            guarded: [state_dir.to_path_buf(), keys.dir().to_path_buf()],
            signer,
            references: hmac::Key::new(hmac::HMAC_SHA256, reference_seed.as_ref()),
            // An impossible length: the first append verifies the trail.
            tail: Mutex::new(Tail {
                file,
                seq: 0,
                hash: [0; 32],
                len: u64::MAX,
                last_line: Vec::new(),
                head,
                witness: None,
            }),
            witness_path: None,
            damage: OnceLock::new(),
            metrics: OnceLock::new(),
            failing: AtomicBool::new(false),
            failing_fsync: AtomicBool::new(false),
        };
        trail.locked(|tail| trail.settle(tail, Utc::now()))?;
        Ok(trail)
    }

    /// Also publishes every signed head to `path`, one JSON line each, so
    /// that an auditor's copy can show a rollback by someone holding the
    /// signing key ([`verify_witness`]). The file must lie outside the
    /// state and keys directories.
    pub fn with_witness(mut self, path: &Path) -> Result<AuditTrail, AuditError> {
        let witness = durable::resolved(path);
        if self.guarded.iter().any(|dir| witness.starts_with(durable::resolved(dir))) {
            return Err(AuditError::WitnessInside(path.to_path_buf()));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| DurableError::io("open", path, e))?;
        self.tail.get_mut().unwrap_or_else(|p| p.into_inner()).witness = Some(file);
        self.witness_path = Some(path.to_path_buf());
        Ok(self)
    }

    /// Counts appends and shows damage in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> AuditTrail {
        let _ = self.metrics.set(metrics);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key that verifies this trail's signatures.
    pub fn public_key(&self) -> Vec<u8> {
        self.signer.public_key().as_ref().to_vec()
    }

    /// The damage found while running (the entry and the problem), if any:
    /// the service is then not ready, and appends are refused.
    pub fn damage(&self) -> Option<&(u64, String)> {
        self.damage.get()
    }

    /// The trail's reference of a target: a keyed digest of its kind and
    /// canonical value, under a key derived from the audit key. It names
    /// the same target the same way across entries, so an auditor holding
    /// the keys can confirm which target an entry concerns, but it matches
    /// no token in the data files: the trail cannot be used to follow a
    /// target through the data.
    pub fn target_ref(&self, kind: IdentifierKind, value: &str) -> String {
        let mut context = hmac::Context::with_key(&self.references);
        context.update(kind.as_str().as_bytes());
        context.update(b":");
        context.update(value.as_bytes());
        hex::encode(&context.sign().as_ref()[..16])
    }

    /// Makes every append fail as an unwritable trail would, for tests of
    /// what callers do when the audit cannot be written.
    #[doc(hidden)]
    pub fn fail_appends(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes every append fail as a failed fsync of the trail would (a
    /// fatal error), for tests of what callers do then.
    #[doc(hidden)]
    pub fn fail_fsyncs(&self, failing: bool) {
        self.failing_fsync.store(failing, Ordering::SeqCst);
    }

    /// Appends an entry and makes it durable before returning its number.
    pub fn append(&self, actor: &str, event: &AuditEvent, now: DateTime<Utc>) -> Result<u64, AuditError> {
        let result = self.try_append(actor, event, now);
        if result.is_err()
            && let Some(metrics) = self.metrics.get()
        {
            metrics.audit_write_failures.inc();
        }
        result
    }

    fn try_append(&self, actor: &str, event: &AuditEvent, now: DateTime<Utc>) -> Result<u64, AuditError> {
        if self.failing.load(Ordering::SeqCst) {
            let error = std::io::Error::other("appends fail (injected)");
            return Err(DurableError::io("append", &self.path, error).into());
        }
        if self.failing_fsync.load(Ordering::SeqCst) {
            let source = std::io::Error::other("fsync fails (injected)");
            return Err(DurableError::Fsync { path: self.path.clone(), source }.into());
        }
        if let Some((seq, problem)) = self.damage.get() {
            return Err(AuditError::Damaged { path: self.path.clone(), seq: *seq, problem: problem.clone() });
        }
        let result = self.locked(|tail| {
            self.settle(tail, now)?;
            self.write_entry(tail, actor, event, now)
        });
        if let Err(AuditError::Damaged { seq, problem, .. }) = &result {
            self.found_damage(*seq, problem);
        }
        result
    }

    /// Runs `f` on the tail under the mutex and the exclusive file lock: the
    /// service and an operator's command may append at the same time, and
    /// the chain continues from whatever the other wrote.
    fn locked<T>(&self, f: impl FnOnce(&mut Tail) -> Result<T, AuditError>) -> Result<T, AuditError> {
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.file.lock().map_err(|e| DurableError::io("lock", &self.path, e))?;
        let result = f(&mut tail);
        let _ = tail.file.unlock();
        result
    }

    fn found_damage(&self, seq: u64, problem: &str) {
        if self.damage.set((seq, problem.to_string())).is_ok() {
            tracing::error!(
                path = %self.path.display(),
                entry = seq,
                problem,
                "the audit trail does not extend its signed head: it was cut or rewritten; \
                 nothing more is appended and every audited action is refused"
            );
            if let Some(metrics) = self.metrics.get() {
                metrics.audit_damaged.set(1);
            }
        }
    }

    /// Brings the tail up to date with the file: nothing to do if the file
    /// still ends with the last entry seen; otherwise the whole trail is
    /// verified against the signed head (another process appended, or
    /// someone cut or edited the file), a torn last line is cut and
    /// recorded, and a head one entry behind is moved up.
    fn settle(&self, tail: &mut Tail, now: DateTime<Utc>) -> Result<(), AuditError> {
        let len = tail.file.metadata().map_err(|e| DurableError::io("stat", &self.path, e))?.len();
        if len == tail.len && self.ends_with_last_line(tail)? {
            return Ok(());
        }
        let found = inspect(&self.path, self.signer.public_key().as_ref(), &self.head_path, Signatures::BeyondHead)?;
        if let Some((seq, problem)) = found.verification.problem {
            return Err(AuditError::Damaged { path: self.path.clone(), seq, problem });
        }
        (tail.seq, tail.hash) = found.last;
        tail.len = found.verified_len;
        tail.last_line = found.last_line;
        let torn = found.verification.torn_bytes;
        if torn > 0 {
            tail.file.set_len(tail.len).map_err(|e| DurableError::io("truncate", &self.path, e))?;
            durable::fsync_file(&tail.file, &self.path)?;
            tracing::warn!(bytes = torn, after = tail.seq, "cut a torn last line from the audit trail");
            let event = AuditEvent::TrailRepaired { cut_bytes: torn, after_seq: tail.seq };
            self.write_entry(tail, "cdrvault", &event, now)?;
        } else if tail.seq > 0 && found.head_seq != Some(tail.seq) {
            self.publish_head(tail)?;
        }
        Ok(())
    }

    fn ends_with_last_line(&self, tail: &Tail) -> Result<bool, AuditError> {
        let n = tail.last_line.len() as u64;
        if n == 0 {
            return Ok(tail.len == 0);
        }
        let mut end = vec![0u8; tail.last_line.len()];
        match tail.file.read_exact_at(&mut end, tail.len - n) {
            Ok(()) => Ok(end == tail.last_line),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(DurableError::io("read", &self.path, e).into()),
        }
    }

    fn write_entry(
        &self,
        tail: &mut Tail,
        actor: &str,
        event: &AuditEvent,
        now: DateTime<Utc>,
    ) -> Result<u64, AuditError> {
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
        tail.len += line.len() as u64;
        tail.last_line = line;
        if let Some(metrics) = self.metrics.get() {
            metrics.audit_entries.inc();
        }
        // The head moves after the entry is durable: a crash in between
        // leaves the trail one entry ahead of its head, which verify
        // accepts and the next opening repairs.
        self.publish_head(tail)?;
        Ok(seq)
    }

    /// Signs the head over the tail's last entry, keeps it with the keys
    /// (in its slot of the head file, [`head`]) and publishes it to the
    /// witness.
    fn publish_head(&self, tail: &mut Tail) -> Result<(), AuditError> {
        let head = Head::signed(tail.seq, &tail.hash, |message| self.signer.sign(message).as_ref().to_vec());
        tail.head.write(&head)?;
        let mut bytes = serde_json::to_vec(&head).unwrap_or_default();
        if let (Some(file), Some(path)) = (tail.witness.as_mut(), self.witness_path.as_deref()) {
            bytes.push(b'\n');
            file.write_all(&bytes).map_err(|e| DurableError::io("append", path, e))?;
            durable::fsync_file(file, path)?;
        }
        Ok(())
    }
}

/// The public key that verifies the trails signed with `keys`' audit key.
pub fn public_key(keys: &KeyStore) -> Result<Vec<u8>, AuditError> {
    let seed = keys.audit_signing_seed()?;
    let signer = Ed25519KeyPair::from_seed_unchecked(seed.expose()).map_err(|_| AuditError::SigningKey)?;
    Ok(signer.public_key().as_ref().to_vec())
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
        {
            let trail = root.join("state").join(AUDIT_FILE);
            verify(&trail, trail_key, &keys.audit_head_path(&trail)).unwrap()
        }
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
        assert_eq!(check(root.path(), &keys, &public), Verification { entries: 5, problem: None, torn_bytes: 0 });
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
        assert_eq!(check(root.path(), &keys, &public), Verification { entries: 6, problem: None, torn_bytes: 0 });
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
        assert!(
            AuditTrail::open(&root.path().join("state"), &keys).is_err(),
            "the check before appending finds it through the signed head"
        );
    }

    /// The check before appending verifies the chain up to the signed head
    /// and the signatures beyond it: an edit anywhere is found, while a
    /// damaged signature on intact content up to the head is left to
    /// `audit verify`, which names it.
    #[test]
    fn the_check_before_appending_relies_on_the_signed_head_for_the_entries_it_covers() {
        let (root, keys, trail) = setup();
        fill(&trail, 4);
        let public = trail.public_key();
        drop(trail);
        rewrite(root.path(), |lines| {
            let Value::Object(mut entry) = serde_json::from_str(&lines[1]).unwrap() else { panic!() };
            entry.insert("sig".into(), hex::encode([7u8; 64]).into());
            lines[1] = serde_json::to_string(&entry).unwrap();
        });
        assert_eq!(check(root.path(), &keys, &public).problem.unwrap().0, 2, "audit verify names it");
        let reopened = AuditTrail::open(&root.path().join("state"), &keys).unwrap();
        assert_eq!(reopened.append("retention", &day(5), Utc::now()).unwrap(), 5);
        drop(reopened);
        rewrite(root.path(), |l| l[1] = l[1].replace("\"rows\":20", "\"rows\":21"));
        assert!(AuditTrail::open(&root.path().join("state"), &keys).is_err(), "an edit is found all the same");
    }
}
