//! Verifying a trail: the chain, the signatures and the signed head, from
//! the first entry to the last, naming the first bad entry; and checking
//! the trail against the heads a witness kept.
//!
//! The trail is read as a stream, one line at a time, so a trail of
//! millions of entries is verified in constant memory.
//!
//! The signed head is authoritative. A trail that stops before its head,
//! or whose entry at the head's number is not the one the head signed, was
//! cut or rewritten. A trail may be one complete entry ahead of its head (a
//! crash between the entry and the head), never more. An unreadable last
//! line beyond the head is a write torn by a crash: never acknowledged, it
//! is not tampering; [`super::AuditTrail`] cuts it, recording what it cut.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use ring::digest::{SHA256, digest};
use ring::signature::{ED25519, UnparsedPublicKey};
use serde_json::{Map, Value};

use super::AuditError;
use super::head::Head;
use crate::ops::durable::DurableError;

const HASH_DOMAIN: &[u8] = b"cdrvault-audit-v1\n";

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// Entries that verify, from the first.
    pub entries: u64,
    /// The first problem found, naming the entry.
    pub problem: Option<(u64, String)>,
    /// Bytes of a torn last line beyond the head (an interrupted write, cut
    /// at the next append); 0 if none.
    pub torn_bytes: u64,
}

impl Verification {
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

/// What a reading of the trail found, beyond the verdict: where its
/// verified part ends.
#[derive(Debug, Clone)]
pub(super) struct Inspection {
    pub verification: Verification,
    /// The last verified entry's number and hash (0 and zeros for none).
    pub last: (u64, [u8; 32]),
    /// The length of the verified part of the file, in bytes.
    pub verified_len: u64,
    /// The last verified line, newline included.
    pub last_line: Vec<u8>,
    /// The head's entry number, if there is a head.
    pub head_seq: Option<u64>,
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

/// Which entries' own signatures [`inspect`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signatures {
    /// Every entry's: names a forged entry as such, wherever it is
    /// (`audit verify`, `VerifyAudit`).
    Every,
    /// Only those of entries beyond the signed head. The head signs the
    /// hash at its number and every hash covers the one before, so an
    /// entry up to the head cannot change without the head failing to
    /// match: its own signature adds no assurance, only time (the check
    /// before appending). A signature field damaged on an entry whose
    /// content is intact is then left to `audit verify` to name.
    BeyondHead,
}

/// Checks one line as entry `number` chained to `prev`, and its signature
/// when `signed`; its hash, or why it fails.
fn check_line(
    line: &[u8],
    number: u64,
    prev: &[u8; 32],
    key: &UnparsedPublicKey<&[u8]>,
    signed: bool,
) -> Result<[u8; 32], &'static str> {
    let Ok(Value::Object(mut entry)) = serde_json::from_slice::<Value>(line) else {
        return Err("not a JSON object (edited)");
    };
    let hash = entry.remove("hash").and_then(|v| v.as_str().and_then(|h| hex::decode(h).ok()));
    let sig = entry.remove("sig").and_then(|v| v.as_str().and_then(|s| hex::decode(s).ok()));
    let (Some(hash), Some(sig)) = (hash, sig) else { return Err("hash or signature missing (edited)") };
    if entry.get("seq").and_then(Value::as_u64) != Some(number) {
        return Err("out of sequence (an entry was removed, inserted or reordered)");
    }
    let chained = entry.get("prev").and_then(Value::as_str).and_then(|p| hex::decode(p).ok());
    if chained.as_deref() != Some(&prev[..]) {
        return Err("does not chain to the entry before (removed or reordered)");
    }
    let computed = entry_hash(&entry);
    if hash != computed {
        return Err("content does not match its hash (edited)");
    }
    if signed && key.verify(&computed, &sig).is_err() {
        return Err("signature does not verify (forged)");
    }
    Ok(computed)
}

/// Reads the whole trail against the public key and the signed head.
pub(super) fn inspect(
    path: &Path,
    public_key: &[u8],
    head_path: &Path,
    signatures: Signatures,
) -> Result<Inspection, AuditError> {
    let key = UnparsedPublicKey::new(&ED25519, public_key);
    let head = Head::read(head_path, &key)?;
    // Without a head that verifies, every signature counts.
    let signed_up_to = match (&head, signatures) {
        (Some(head), Signatures::BeyondHead) if head.verified(&key).is_ok() => head.seq,
        _ => 0,
    };
    let mut entries = 0u64;
    let mut last = (0u64, [0u8; 32]);
    let mut verified_len = 0u64;
    let mut last_line = Vec::new();
    let mut at_head: Option<[u8; 32]> = None;
    // The first line that does not verify, and whether it is the last one.
    let mut bad: Option<(u64, &'static str, bool)> = None;
    let mut torn_bytes = 0u64;
    if let Ok(file) = File::open(path) {
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line).map_err(|e| DurableError::io("read", path, e))?;
            if read == 0 {
                break;
            }
            let number = entries + 1;
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            match check_line(text, number, &last.1, &key, number > signed_up_to) {
                Ok(hash) => {
                    entries = number;
                    last = (number, hash);
                    verified_len += read as u64;
                    last_line.clone_from(&line);
                    if head.as_ref().is_some_and(|h| h.seq == number) {
                        at_head = Some(hash);
                    }
                }
                Err(problem) => {
                    let rest = reader.fill_buf().map_err(|e| DurableError::io("read", path, e))?;
                    let is_last = rest.is_empty();
                    torn_bytes = read as u64 + rest.len() as u64;
                    bad = Some((number, problem, is_last));
                    break;
                }
            }
        }
    }

    let mut verification = Verification { entries, problem: None, torn_bytes: 0 };
    let fail = |seq: u64, problem: String| Some((seq, problem));
    let head_seq = head.as_ref().map(|h| h.seq);
    match (&head, bad) {
        // A bad line with more after it, or before the head: edited.
        (_, Some((seq, problem, false))) => verification.problem = fail(seq, problem.into()),
        (Some(h), Some((seq, problem, true))) if h.seq >= seq => verification.problem = fail(seq, problem.into()),
        (None, Some((seq, problem, true))) if seq > 2 => verification.problem = fail(seq, problem.into()),
        // An unreadable last line beyond the head: a torn write.
        (_, Some((_, _, true))) => verification.torn_bytes = torn_bytes,
        (_, None) => {}
    }
    if verification.problem.is_some() {
        return Ok(Inspection { verification, last, verified_len, last_line, head_seq });
    }
    match &head {
        Some(head) => match head.verified(&key) {
            Err(problem) => verification.problem = fail(head.seq, problem),
            // The trail may be one entry ahead of its head (a crash between
            // the two writes), never behind it.
            Ok(_) if head.seq > entries => {
                verification.problem = fail(
                    entries + 1,
                    format!("the trail has {entries} entries but its signed head says {} (truncated)", head.seq),
                )
            }
            Ok(_) if entries > head.seq + 1 => {
                verification.problem = fail(head.seq + 2, "entries beyond the signed head (appended)".into())
            }
            Ok(hash) if head.seq > 0 && at_head != Some(hash) => {
                verification.problem = fail(head.seq, "does not match the signed head (rewritten)".into())
            }
            Ok(_) => {}
        },
        None if entries > 1 => verification.problem = fail(1, "the signed head is missing".into()),
        None => {}
    }
    Ok(Inspection { verification, last, verified_len, last_line, head_seq })
}

/// Verifies the whole trail against the public key and the signed head, and
/// names the first bad entry: edited (hash or signature), removed or
/// reordered (sequence or chain), truncated (ends before the head),
/// rewritten (differs from the head). Reads the trail as a stream.
pub fn verify(path: &Path, public_key: &[u8], head_path: &Path) -> Result<Verification, AuditError> {
    Ok(inspect(path, public_key, head_path, Signatures::Every)?.verification)
}

/// The outcome of [`verify_witness`].
#[derive(Debug, Clone, PartialEq)]
pub struct WitnessCheck {
    /// Heads the witness holds.
    pub heads: u64,
    /// The first head the trail does not extend, and why.
    pub problem: Option<(u64, String)>,
}

/// Checks that the trail extends every head a witness published: each
/// head's signature verifies and the trail's entry at its number has its
/// hash. A trail rolled back or rewritten by someone holding the signing
/// key fails here, as the witness kept heads it no longer has. Both files
/// are read as streams, in order.
pub fn verify_witness(path: &Path, public_key: &[u8], witness_path: &Path) -> Result<WitnessCheck, AuditError> {
    let key = UnparsedPublicKey::new(&ED25519, public_key);
    let witness = File::open(witness_path).map_err(|e| DurableError::io("open", witness_path, e))?;
    let mut trail = File::open(path).ok().map(BufReader::new);
    let (mut trail_seq, mut trail_hash) = (0u64, [0u8; 32]);
    let mut heads = 0u64;
    for line in BufReader::new(witness).lines() {
        let line = line.map_err(|e| DurableError::io("read", witness_path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        heads += 1;
        let problem = |seq: u64, text: String| Ok(WitnessCheck { heads, problem: Some((seq, text)) });
        let Ok(head) = serde_json::from_str::<Head>(&line) else {
            return problem(0, format!("witness line {heads} is not a head"));
        };
        let hash = match head.verified(&key) {
            Ok(hash) => hash,
            Err(text) => return problem(head.seq, text),
        };
        if head.seq < trail_seq {
            return problem(head.seq, format!("witness line {heads} goes back from entry {trail_seq} (reordered)"));
        }
        // Advance the trail to the head's entry.
        while trail_seq < head.seq {
            let mut entry = Vec::new();
            let read = match trail.as_mut() {
                Some(reader) => reader.read_until(b'\n', &mut entry).map_err(|e| DurableError::io("read", path, e))?,
                None => 0,
            };
            if read == 0 {
                return problem(
                    head.seq,
                    format!("the witness saw entry {} but the trail ends at {trail_seq} (rolled back)", head.seq),
                );
            }
            let text = entry.strip_suffix(b"\n").unwrap_or(&entry);
            match check_line(text, trail_seq + 1, &trail_hash, &key, true) {
                Ok(next) => (trail_seq, trail_hash) = (trail_seq + 1, next),
                Err(text) => return problem(trail_seq + 1, text.into()),
            }
        }
        if trail_seq == head.seq && trail_hash != hash {
            return problem(head.seq, "differs from the head the witness saw (rewritten)".into());
        }
    }
    Ok(WitnessCheck { heads, problem: None })
}
