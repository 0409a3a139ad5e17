//! Tokens per second on one core, for the comparison with
//! `openssl speed -hmac sha256 -bytes 16` in benches/hmac_vs_openssl.sh.
//!
//! Times N tokens (default 10 million) of an 11-digit MSISDN, as
//! `Tokeniser::token` computes them during ingest: a fresh HMAC context from
//! the precomputed key schedule, the domain tag, a separator, the value,
//! then the tag. As a control it also times ring's one-shot
//! `hmac::sign` over a 16-byte message, the input openssl measures. Each
//! figure is the best of three runs, in wall-clock time.
//!
//! Run: `cargo bench --bench hmac` (add `-- N` to change the count).

mod common;

use std::hint::black_box;
use std::time::Instant;

use ring::hmac;

use cdrvault::model::IdentifierKind;

const DEFAULT_TOKENS: u64 = 10_000_000;
const RUNS: usize = 3;

fn main() {
    let n = std::env::args().skip(1).find_map(|a| a.parse::<u64>().ok()).unwrap_or(DEFAULT_TOKENS);
    let tokeniser = common::tokeniser();
    let value: &[u8] = b"+4520000001";
    let tokenise = best_of(n, || {
        black_box(tokeniser.token(IdentifierKind::Msisdn, black_box(value)));
    });
    report("tokenise", "Tokeniser::token(Msisdn, 11-byte value; 30-byte HMAC message)", n, tokenise);

    let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
    let message = [0x5a_u8; 16];
    let ring16 = best_of(n, || {
        black_box(hmac::sign(&key, black_box(&message)));
    });
    report("ring_hmac16", "ring hmac::sign(HMAC-SHA256, 16-byte message)", n, ring16);
}

/// The best wall-clock time of [`RUNS`] runs of `n` calls, in seconds.
fn best_of(n: u64, mut op: impl FnMut()) -> f64 {
    // Warm-up: caches, branch predictors and CPU frequency.
    for _ in 0..n / 20 {
        op();
    }
    (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..n {
                op();
            }
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn report(id: &str, what: &str, n: u64, seconds: f64) {
    let ns = seconds * 1e9 / n as f64;
    let per_second = n as f64 / seconds;
    println!("{what}: {n} ops, best of {RUNS}: {ns:.1} ns/op, {per_second:.0} ops/s");
    // One line per figure for scripts: key=value pairs after RESULT.
    println!("RESULT {id} ns_per_op={ns:.2} ops_per_s={per_second:.0}");
}
