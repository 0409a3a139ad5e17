//! Verifying a trail: the chain, the signatures and the signed head, from
//! the first entry to the last, naming the first bad entry.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use ring::digest::{SHA256, digest};
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::AuditError;
use crate::ops::durable::DurableError;

const HASH_DOMAIN: &[u8] = b"cdrvault-audit-v1\n";
const HEAD_DOMAIN: &[u8] = b"cdrvault-audit-head-v1\n";

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

pub(super) fn entry_hash(entry: &Map<String, Value>) -> [u8; 32] {
    // serde_json's map keeps keys sorted, so this serialisation is canonical.
    let canonical = serde_json::to_vec(entry).unwrap_or_default();
    let mut input = HASH_DOMAIN.to_vec();
    input.extend_from_slice(&canonical);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, &input).as_ref());
    out
}

pub(super) fn head_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut message = HEAD_DOMAIN.to_vec();
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(hash);
    message
}

pub(super) fn last_entry(path: &Path) -> Result<(u64, [u8; 32]), AuditError> {
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
