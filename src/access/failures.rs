//! Failed authentications, summarised per peer: the first failure of a
//! peer in an interval is audited at once, the rest are counted and
//! audited as one entry when the interval ends
//! ([`super::Desk::flush_failures`]).
//! A caller without credentials so costs the trail at most two entries per
//! interval, however often it calls, and every attempt stays visible.
//!
//! The tally is bounded: past [`MAX_PEERS`] distinct peers in one interval,
//! further peers are counted together under [`OTHER_PEERS`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::audit::AuditEvent;

/// Distinct peers tallied in one interval.
pub const MAX_PEERS: usize = 4096;
/// The peer name under which failures beyond [`MAX_PEERS`] are counted.
pub const OTHER_PEERS: &str = "other";

/// The failures of one peer since its first in this interval.
struct PeerFailures {
    /// Failures after the first (which was audited on its own).
    count: u64,
    reasons: BTreeSet<&'static str>,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
}

/// The current interval's failures, by peer.
#[derive(Default)]
pub(super) struct FailureTally {
    peers: Mutex<HashMap<String, PeerFailures>>,
}

impl FailureTally {
    /// Counts a failure of `peer`; true if it is the peer's first in this
    /// interval (to be audited at once).
    pub(super) fn record(&self, peer: &str, reason: &'static str, now: DateTime<Utc>) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let key = if peers.len() >= MAX_PEERS && !peers.contains_key(peer) { OTHER_PEERS } else { peer };
        match peers.get_mut(key) {
            Some(failures) => {
                failures.count += 1;
                failures.reasons.insert(reason);
                failures.until = now;
                false
            }
            None => {
                let failures = PeerFailures { count: 0, reasons: BTreeSet::new(), since: now, until: now };
                peers.insert(key.to_string(), failures);
                true
            }
        }
    }

    /// Ends the interval: the peers with failures beyond their first.
    fn take(&self) -> Vec<(String, PeerFailures)> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut ended: Vec<_> = peers.drain().filter(|(_, f)| f.count > 0).collect();
        ended.sort_by(|a, b| a.0.cmp(&b.0));
        ended
    }

    /// Ends the interval: one summary entry per peer with failures beyond
    /// its first.
    pub(super) fn summaries(&self) -> Vec<AuditEvent> {
        let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        self.take()
            .into_iter()
            .map(|(peer, failures)| AuditEvent::AuthenticationFailures {
                peer,
                count: failures.count,
                reasons: failures.reasons.iter().map(|r| r.to_string()).collect(),
                since: stamp(failures.since),
                until: stamp(failures.until),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_peer_is_audited_once_then_counted_until_the_interval_ends() {
        let tally = FailureTally::default();
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        assert!(tally.record("10.0.0.1", "bad_token", now));
        for _ in 0..99 {
            assert!(!tally.record("10.0.0.1", "missing_credentials", now));
        }
        assert!(tally.record("10.0.0.2", "bad_token", now), "another peer");
        let ended = tally.take();
        assert_eq!(ended.len(), 1, "a peer with one failure needs no summary");
        assert_eq!(ended[0].0, "10.0.0.1");
        assert_eq!(ended[0].1.count, 99);
        assert_eq!(ended[0].1.reasons.iter().copied().collect::<Vec<_>>(), ["missing_credentials"]);
        assert!(tally.record("10.0.0.1", "bad_token", now), "a new interval audits the first again");
    }

    #[test]
    fn the_tally_is_bounded() {
        let tally = FailureTally::default();
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        for n in 0..MAX_PEERS + 100 {
            tally.record(&format!("peer-{n}"), "bad_token", now);
        }
        let peers = tally.peers.lock().unwrap();
        assert_eq!(peers.len(), MAX_PEERS + 1);
        assert_eq!(peers[OTHER_PEERS].count, 99);
    }
}
