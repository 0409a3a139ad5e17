//! The audit trail: an append-only, hash-chained, signed record of every
//! deletion, preservation order and (later) lawful-access step.
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

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use ring::digest::{SHA256, digest};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::durable::{self, DurableError, FileMode};
use crate::keys::{KeyError, KeyStore};

/// The file name of the trail in the state directory.
pub const AUDIT_FILE: &str = "audit.jsonl";
const HASH_DOMAIN: &[u8] = b"cdrvault-audit-v1\n";
const HEAD_DOMAIN: &[u8] = b"cdrvault-audit-head-v1\n";

/// What happened. Each variant is one kind of entry; its fields are the
/// evidence an auditor needs, and never a raw identifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A day's data key was destroyed and its files deleted.
    DayDeleted {
        day: String,
        files: u64,
        rows: u64,
        key_id: Option<String>,
        run: String,
    },
    /// A retention verification ran.
    RetentionVerified {
        as_of: String,
        violations: u64,
        run: String,
    },
    /// A preservation order was placed.
    OrderPlaced {
        order: String,
        authority: String,
        targets: u64,
        window_start: String,
        window_end: String,
        ends: String,
    },
    /// A preservation order's end was moved.
    OrderExtended {
        order: String,
        ends: String,
    },
    /// A preservation order was lifted (or ended) and its copies destroyed.
    OrderLifted {
        order: String,
        files: u64,
        reason: String,
    },
    /// Records of a day were copied into a preservation area before the day
    /// was deleted.
    RecordsPreserved {
        order: String,
        day: String,
        rows: u64,
    },
    /// A call came without a valid bearer token. The token is never kept.
    AuthenticationFailed {
        method: String,
        reason: String,
    },
    /// A call was refused: role, object, scope, replay, rate or size.
    AccessRefused {
        method: String,
        reason: String,
        detail: String,
        warrant: Option<String>,
        request_id: Option<String>,
    },
    AuthorityCreated {
        authority: String,
        country: String,
    },
    PrincipalCreated {
        principal: String,
        roles: Vec<String>,
        authority: Option<String>,
    },
    /// A warrant was registered; its targets appear as kinds and tokens.
    WarrantRegistered {
        warrant: String,
        authority: String,
        reference: String,
        target_kinds: Vec<String>,
        target_tokens: Vec<String>,
        period_start: String,
        period_end: String,
        categories: Vec<String>,
        valid_until: String,
    },
    WarrantDecided {
        warrant: String,
        decision: String,
        reason: Option<String>,
    },
    /// A warrant was closed and its key (so its sealed targets) destroyed.
    WarrantClosed {
        warrant: String,
    },
    /// A request was executed and its result sealed for delivery.
    RequestAnswered {
        request_id: String,
        warrant: String,
        status: String,
        target_tokens: Vec<String>,
        window_start: String,
        window_end: String,
        categories: Vec<String>,
        records: u64,
        format: String,
        sha256: String,
        bytes: u64,
    },
    /// A result's bytes are about to leave the process (entry made first).
    ResultDelivered {
        request_id: String,
        sha256: String,
        bytes: u64,
    },
    /// A kept result's key and file were destroyed.
    ResultDestroyed {
        request_id: String,
        reason: String,
    },
    /// A data subject's records are about to leave the process.
    SubjectExported {
        reference: String,
        kind: String,
        target_token: String,
        records: u64,
        sha256: String,
        bytes: u64,
    },
    AuditVerified {
        entries: u64,
        intact: bool,
    },
    StatisticsReported {
        year: i32,
    },
}

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

/// The signed head of the trail: the last entry's number and hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub sig: String,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    pub entries: u64,
    /// The first problem found, naming the entry.
    pub problem: Option<(u64, String)>,
}

impl Verification {
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

impl AuditTrail {
    /// Opens (creating if needed) the trail in `state_dir`, signing with the
    /// keystore's audit key. The existing trail is verified first: nothing is
    /// appended to a damaged trail.
    pub fn open(state_dir: &Path, keys: &KeyStore) -> Result<AuditTrail, AuditError> {
        durable::create_dir_all(state_dir)?;
        let path = state_dir.join(AUDIT_FILE);
        let seed = keys.audit_signing_seed()?;
        let signer = Ed25519KeyPair::from_seed_unchecked(seed.expose()).map_err(|_| AuditError::SigningKey)?;
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

fn entry_hash(entry: &Map<String, Value>) -> [u8; 32] {
    // serde_json's map keeps keys sorted, so this serialisation is canonical.
    let canonical = serde_json::to_vec(entry).unwrap_or_default();
    let mut input = HASH_DOMAIN.to_vec();
    input.extend_from_slice(&canonical);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, &input).as_ref());
    out
}

fn head_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut message = HEAD_DOMAIN.to_vec();
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(hash);
    message
}

fn last_entry(path: &Path) -> Result<(u64, [u8; 32]), AuditError> {
    let Ok(file) = File::open(path) else { return Ok((0, [0; 32])) };
    let mut last = (0, [0u8; 32]);
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| DurableError::io("read", path, e))?;
        let Ok(Value::Object(entry)) = serde_json::from_str::<Value>(&line) else { continue };
        let seq = entry.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let hash = entry.get("hash").and_then(Value::as_str).and_then(|h| hex::decode(h).ok());
        if let Some(hash) = hash.and_then(|h| <[u8; 32]>::try_from(h).ok()) {
            last = (seq, hash);
        }
    }
    Ok(last)
}

/// Verifies the whole trail against the public key and the signed head, and
/// names the first bad entry: edited (hash or signature), removed or
/// reordered (sequence or chain), truncated (ends before the head).
pub fn verify(path: &Path, public_key: &[u8], head_path: &Path) -> Result<Verification, AuditError> {
    let key = UnparsedPublicKey::new(&ED25519, public_key);
    let head: Option<Head> = match std::fs::read(head_path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|_| AuditError::Damaged {
            path: head_path.to_path_buf(),
            seq: 0,
            problem: "the head is not readable".into(),
        })?),
        Err(_) => None,
    };
    let lines: Vec<String> = match File::open(path) {
        Ok(file) => {
            BufReader::new(file).lines().collect::<Result<_, _>>().map_err(|e| DurableError::io("read", path, e))?
        }
        Err(_) => Vec::new(),
    };
    let mut expected_prev = [0u8; 32];
    let mut hashes = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let number = index as u64 + 1;
        let fail =
            |problem: &str| Ok(Verification { entries: index as u64, problem: Some((number, problem.to_string())) });
        let Ok(Value::Object(mut entry)) = serde_json::from_str::<Value>(line) else {
            return fail("not a JSON object (edited)");
        };
        let hash = entry.remove("hash").and_then(|v| v.as_str().and_then(|h| hex::decode(h).ok()));
        let sig = entry.remove("sig").and_then(|v| v.as_str().and_then(|s| hex::decode(s).ok()));
        let (Some(hash), Some(sig)) = (hash, sig) else { return fail("hash or signature missing (edited)") };
        if entry.get("seq").and_then(Value::as_u64) != Some(number) {
            return fail("out of sequence (an entry was removed, inserted or reordered)");
        }
        let prev = entry.get("prev").and_then(Value::as_str).and_then(|p| hex::decode(p).ok());
        if prev.as_deref() != Some(&expected_prev[..]) {
            return fail("does not chain to the entry before (removed or reordered)");
        }
        let computed = entry_hash(&entry);
        if hash != computed {
            return fail("content does not match its hash (edited)");
        }
        if key.verify(&computed, &sig).is_err() {
            return fail("signature does not verify (forged)");
        }
        expected_prev = computed;
        hashes.push(computed);
    }
    let entries = lines.len() as u64;
    if let Some(head) = head {
        let head_hash = hex::decode(&head.hash).ok().and_then(|h| <[u8; 32]>::try_from(h).ok());
        let Some(head_hash) = head_hash else {
            return Ok(Verification { entries, problem: Some((head.seq, "the head is malformed".into())) });
        };
        let head_sig = hex::decode(&head.sig).unwrap_or_default();
        if key.verify(&head_message(head.seq, &head_hash), &head_sig).is_err() {
            return Ok(Verification {
                entries,
                problem: Some((head.seq, "the head's signature does not verify".into())),
            });
        }
        // The trail may be one entry ahead of its head (a crash between the
        // two writes), never behind it.
        if head.seq > entries || entries > head.seq + 1 {
            return Ok(Verification {
                entries,
                problem: Some((
                    entries + 1,
                    format!("the trail has {entries} entries but its signed head says {} (truncated)", head.seq),
                )),
            });
        }
        if head.seq > 0 && hashes[(head.seq - 1) as usize] != head_hash {
            return Ok(Verification {
                entries,
                problem: Some((head.seq, "does not match the signed head (rewritten)".into())),
            });
        }
    } else if entries > 1 {
        return Ok(Verification { entries, problem: Some((1, "the signed head is missing".into())) });
    }
    Ok(Verification { entries, problem: None })
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
