//! The counters of local mode, shared by every worker of one Envoy through the host's shared
//! data, with compare-and-swap.
//!
//! The table is a fixed number of buckets, each one shared-data entry
//! (`gatewasm-rate-limit/<domain>/<bucket>`) holding up to [`WAYS`] counters. A counter is named
//! by its [`Fingerprint`] (a digest of the rule, the limit and the request's descriptor values),
//! which also picks its bucket. So:
//!
//! - the number of counters, and of shared-data keys, is bounded (`max_keys`), whatever clients
//!   send: a shared-data entry can never be removed (proxy-wasm has no call for it), so keys per
//!   client value would grow without end;
//! - keys are short whatever the values (an API key of 8 KB is 16 bytes of its digest);
//! - every bucket is created when the plugin is configured, before any request: Envoy accepts
//!   any version for an entry that does not exist yet, so two workers creating one under load
//!   could both write and lose an update; an entry that exists is only ever written at the
//!   version read.
//!
//! Every change reads a bucket, changes one counter and writes the bucket back at the version
//! read; a write another worker got in first makes it read again (up to [`ATTEMPTS`] times).
//! A new counter takes a free way, else the way of an idle counter (its state is the same as no
//! state: a full bucket, a window that ended, nothing in flight; nothing is lost), else the way
//! of the counter closest to idle (an active eviction: that counter starts afresh next time), but
//! never the way of a concurrency counter with requests in flight, whose ends must find it.

use gatewasm::proxy_wasm::types::Status;
use gatewasm::Root;

use crate::algorithm::{IdleAt, State};

/// Counters per bucket.
pub const WAYS: usize = 8;

/// How many times a change is tried when other workers keep writing the bucket first.
pub const ATTEMPTS: usize = 16;

/// Format of a bucket value; a value of another format reads as an empty bucket.
const VERSION: u8 = 1;

/// Bytes per counter: fingerprint, two state words, idle time.
const ENTRY: usize = 16 + 8 + 8 + 8;

/// What names a counter: the first 16 bytes of a SHA-256 digest of its limit and the request's
/// descriptor values. Its first 8 bytes pick the bucket; logs show its first 6 as hex, so a
/// counter can be followed in logs without its values (which may be credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 16]);

impl Fingerprint {
    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        self.0.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }

    fn word(&self) -> u64 {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        u64::from_le_bytes([a, b, c, d, e, f, g, h])
    }
}

/// One counter in a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Which counter.
    pub fingerprint: Fingerprint,
    /// Its state.
    pub state: State,
    /// When its state becomes the same as none ([`IdleAt`]).
    pub idle_at: IdleAt,
}

/// The counters of one bucket, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    entries: Vec<Entry>,
}

/// Where a new counter goes in a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A free way.
    Free,
    /// The way of an idle counter.
    Idle(usize),
    /// The way of the counter closest to idle.
    Active(usize),
    /// None: every way holds requests in flight.
    Full,
}

/// A counter a new one replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// It was idle: nothing was lost.
    Idle,
    /// It was not: its client starts afresh.
    Active,
}

impl Bucket {
    /// Reads a stored bucket. Anything but this format (an empty value, another version, a
    /// length that is not whole counters) reads as empty: the next write puts it right.
    pub fn decode(bytes: &[u8]) -> Self {
        let Some((&VERSION, rest)) = bytes.split_first() else { return Self::default() };
        if rest.len() % ENTRY != 0 || rest.len() / ENTRY > WAYS {
            return Self::default();
        }
        let entries = rest
            .chunks_exact(ENTRY)
            .map(|c| {
                // `chunks_exact` hands out ENTRY bytes: every range below is inside.
                let word = |at: usize| {
                    c.get(at..at + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()).map_or(0, u64::from_le_bytes)
                };
                let fingerprint = c.get(..16).and_then(|f| <[u8; 16]>::try_from(f).ok()).unwrap_or_default();
                Entry {
                    fingerprint: Fingerprint(fingerprint),
                    state: State { a: word(16), b: word(24) },
                    idle_at: word(32),
                }
            })
            .collect();
        Self { entries }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.entries.len() * ENTRY);
        out.push(VERSION);
        for e in &self.entries {
            out.extend_from_slice(&e.fingerprint.0);
            out.extend_from_slice(&e.state.a.to_le_bytes());
            out.extend_from_slice(&e.state.b.to_le_bytes());
            out.extend_from_slice(&e.idle_at.to_le_bytes());
        }
        out
    }

    /// The counters.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The way of counter `fingerprint`.
    pub fn find(&self, fingerprint: &Fingerprint) -> Option<usize> {
        self.entries.iter().position(|e| e.fingerprint == *fingerprint)
    }

    /// Where a new counter goes at `now`.
    pub fn place(&self, now: u64) -> Place {
        if self.entries.len() < WAYS {
            return Place::Free;
        }
        if let Some(i) = self.entries.iter().position(|e| e.idle_at <= now) {
            return Place::Idle(i);
        }
        match self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.idle_at != u64::MAX)
            .min_by_key(|(_, e)| e.idle_at)
        {
            Some((i, _)) => Place::Active(i),
            None => Place::Full,
        }
    }

    /// Stores `entry` at `place` (from [`Bucket::place`]); what it replaced.
    fn put(&mut self, place: Place, entry: Entry) -> Option<Eviction> {
        match place {
            Place::Free => {
                self.entries.push(entry);
                None
            }
            Place::Idle(i) | Place::Active(i) => {
                let slot = self.entries.get_mut(i)?;
                *slot = entry;
                Some(if matches!(place, Place::Idle(_)) { Eviction::Idle } else { Eviction::Active })
            }
            Place::Full => None,
        }
    }
}

/// Why a request could not be counted (it is let through, and counted in a metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untracked {
    /// A new counter found every way of its bucket holding requests in flight.
    Full,
    /// Other workers wrote the bucket first [`ATTEMPTS`] times in a row.
    Contention,
    /// The host refused a shared-data call.
    Host(Status),
}

/// The result of a change: what the step returned, the counter it evicted, if any, and how many
/// times another worker's write came first.
#[derive(Debug)]
pub struct Changed<T> {
    /// The step's value.
    pub value: T,
    /// A counter the new one replaced.
    pub evicted: Option<Eviction>,
    /// Writes refused because the bucket had changed since it was read (each then read again).
    pub retries: u32,
}

/// The shared table of one domain.
#[derive(Debug, Clone)]
pub struct Table {
    prefix: String,
    buckets: u64,
}

impl Table {
    /// The table of `domain` with room for `max_keys` counters (rounded up to whole buckets).
    pub fn new(domain: &str, max_keys: u64) -> Self {
        Self {
            prefix: format!("gatewasm-rate-limit/{domain}/"),
            buckets: max_keys.div_ceil(WAYS as u64).max(1),
        }
    }

    /// Number of buckets.
    pub fn buckets(&self) -> u64 {
        self.buckets
    }

    /// The bucket of a counter.
    pub fn bucket_of(&self, fingerprint: &Fingerprint) -> u64 {
        fingerprint.word() % self.buckets
    }

    /// The shared-data key of bucket `bucket`.
    pub fn key(&self, bucket: u64) -> String {
        format!("{}{bucket}", self.prefix)
    }

    /// Creates every bucket no VM created yet (a read per bucket, and a write for each one
    /// created); the number created. Run while the plugin is configured, before any request.
    pub fn create(&self, root: &Root) -> Result<u64, Status> {
        let empty = Bucket::default().encode();
        let mut created = 0;
        for bucket in 0..self.buckets {
            let key = self.key(bucket);
            if root.shared_data(&key)?.0.is_none() {
                root.set_shared_data(&key, &empty, None)?;
                created += 1;
            }
        }
        Ok(created)
    }

    /// Runs `step` on counter `fingerprint` (`None`: no such counter) and stores the state it
    /// returns, if any, at the version read; again from a fresh read while other workers write
    /// the bucket first. A new counter is placed as [`Bucket::place`] says at `now`.
    pub fn change<T>(
        &self,
        root: &Root,
        fingerprint: &Fingerprint,
        now: u64,
        mut step: impl FnMut(Option<State>) -> (Option<(State, IdleAt)>, T),
    ) -> Result<Changed<T>, Untracked> {
        let key = self.key(self.bucket_of(fingerprint));
        for retries in 0..ATTEMPTS as u32 {
            let (value, cas) = root.shared_data(&key).map_err(Untracked::Host)?;
            let mut bucket = Bucket::decode(value.as_deref().unwrap_or_default());
            let way = bucket.find(fingerprint);
            let (write, value) = step(way.and_then(|i| bucket.entries.get(i)).map(|e| e.state));
            let Some((state, idle_at)) = write else { return Ok(Changed { value, evicted: None, retries }) };
            let entry = Entry { fingerprint: *fingerprint, state, idle_at };
            let evicted = match way.and_then(|i| bucket.entries.get_mut(i)) {
                Some(slot) => {
                    *slot = entry;
                    None
                }
                None => match bucket.place(now) {
                    Place::Full => return Err(Untracked::Full),
                    place => bucket.put(place, entry),
                },
            };
            match root.set_shared_data(&key, &bucket.encode(), cas) {
                Ok(()) => return Ok(Changed { value, evicted, retries }),
                Err(Status::CasMismatch) => continue,
                Err(status) => return Err(Untracked::Host(status)),
            }
        }
        Err(Untracked::Contention)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint([n; 16])
    }

    fn entry(n: u8, idle_at: u64) -> Entry {
        Entry { fingerprint: fp(n), state: State { a: u64::from(n), b: 7 }, idle_at }
    }

    #[test]
    fn buckets_round_trip_and_odd_values_read_as_empty() {
        let bucket = Bucket { entries: vec![entry(1, 5), entry(2, u64::MAX)] };
        let bytes = bucket.encode();
        assert_eq!(bytes.len(), 1 + 2 * ENTRY);
        assert_eq!(Bucket::decode(&bytes), bucket);
        assert_eq!(Bucket::decode(&[]), Bucket::default());
        assert_eq!(Bucket::decode(&bytes[..bytes.len() - 1]), Bucket::default());
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(Bucket::decode(&other), Bucket::default());
        let too_many = Bucket { entries: (0..=WAYS as u8).map(|n| entry(n, 0)).collect() };
        assert_eq!(Bucket::decode(&too_many.encode()), Bucket::default());
    }

    #[test]
    fn new_counters_take_free_then_idle_then_the_soonest_idle_ways_never_in_flight_ones() {
        let mut bucket = Bucket::default();
        assert_eq!(bucket.place(100), Place::Free);
        bucket.entries = (0..WAYS as u8).map(|n| entry(n, 200 + u64::from(n))).collect();
        assert_eq!(bucket.place(100), Place::Active(0), "the counter idle soonest");
        assert_eq!(bucket.place(203), Place::Idle(0));
        bucket.entries[0].idle_at = u64::MAX;
        bucket.entries[1].idle_at = u64::MAX;
        assert_eq!(bucket.place(100), Place::Active(2), "requests in flight are never evicted");
        for e in &mut bucket.entries {
            e.idle_at = u64::MAX;
        }
        assert_eq!(bucket.place(u64::MAX - 1), Place::Full);
        assert_eq!(bucket.put(Place::Idle(3), entry(42, 0)), Some(Eviction::Idle));
        assert_eq!(bucket.find(&fp(42)), Some(3));
    }

    #[test]
    fn keys_are_bounded_whatever_the_counters() {
        let table = Table::new("gateway", 100_000);
        assert_eq!(table.buckets(), 12_500);
        assert_eq!(Table::new("d", 1).buckets(), 1);
        assert_eq!(Table::new("d", 9).buckets(), 2);
        let long = Fingerprint([0xff; 16]);
        assert!(table.bucket_of(&long) < table.buckets());
        assert_eq!(table.key(12_499), "gatewasm-rate-limit/gateway/12499");
        assert_eq!(long.short(), "ffffffffffff");
    }
}
