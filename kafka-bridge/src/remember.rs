//! Produce requests the bridge recognises when a client sends them again: a request carrying an
//! `Idempotency-Key` header is remembered under that key while Kafka works on it and after, so a
//! client that timed out or lost its connection and sends the same request again joins the
//! produce still in flight, or gets the first answer, instead of storing the records twice.
//!
//! Bounded: answers are kept for the last `max_records` records answered (oldest forgotten
//! first); requests still in flight are bounded by the bridge's queue, not here. Pure (the
//! waiter type is a parameter), so every rule is unit-tested.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;

use crate::api::Outcome;

/// Longest accepted `Idempotency-Key` value.
pub const MAX_KEY_BYTES: usize = 256;

/// What the bridge knows about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<W> {
    /// Never seen, or forgotten: produce.
    Unknown,
    /// Being produced: wait for that produce's answer.
    Join(W),
    /// Answered before: give the same answer.
    Answer(Arc<Vec<Outcome>>),
    /// Seen with another topic or body: refuse (nothing is produced).
    Conflict,
}

#[derive(Debug)]
enum Slot<W> {
    InFlight { digest: u64, waiter: W },
    Done { digest: u64, outcomes: Arc<Vec<Outcome>> },
}

/// Keys in flight and answered.
#[derive(Debug)]
pub struct Memory<W> {
    slots: HashMap<String, Slot<W>>,
    /// Answered keys, oldest first, with their record counts.
    done: VecDeque<(String, usize)>,
    done_records: usize,
    max_records: usize,
}

/// The digest a key is checked against: the topic and the exact body.
pub fn digest(topic: &str, body: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    topic.hash(&mut h);
    body.hash(&mut h);
    h.finish()
}

/// A usable key: 1 to [`MAX_KEY_BYTES`] visible ASCII characters.
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES && key.iter().all(|b| b.is_ascii_graphic())
}

impl<W: Clone> Memory<W> {
    /// Remembers answers for at most `max_records` records (0: answers are not kept, only
    /// requests in flight are joined).
    pub fn new(max_records: usize) -> Self {
        Memory { slots: HashMap::new(), done: VecDeque::new(), done_records: 0, max_records }
    }

    /// What is known about `key` for a request whose digest is `digest`.
    pub fn lookup(&self, key: &str, digest: u64) -> Lookup<W> {
        match self.slots.get(key) {
            None => Lookup::Unknown,
            Some(Slot::InFlight { digest: d, .. } | Slot::Done { digest: d, .. }) if *d != digest => {
                Lookup::Conflict
            }
            Some(Slot::InFlight { waiter, .. }) => Lookup::Join(waiter.clone()),
            Some(Slot::Done { outcomes, .. }) => Lookup::Answer(Arc::clone(outcomes)),
        }
    }

    /// `key` is being produced; later requests with it wait on `waiter`. Replaces a forgotten
    /// or unknown key only: call after [`Memory::lookup`] answered `Unknown`.
    pub fn start(&mut self, key: String, digest: u64, waiter: W) {
        if let Entry::Vacant(slot) = self.slots.entry(key) {
            slot.insert(Slot::InFlight { digest, waiter });
        }
    }

    /// `key`'s produce answered `outcomes`: kept for later requests, and the oldest answers
    /// forgotten beyond the bound.
    pub fn finish(&mut self, key: &str, outcomes: Arc<Vec<Outcome>>) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        let Slot::InFlight { digest, .. } = slot else { return };
        let n = outcomes.len();
        *slot = Slot::Done { digest: *digest, outcomes };
        self.done.push_back((key.to_string(), n));
        self.done_records += n;
        while self.done_records > self.max_records {
            let Some((old, n)) = self.done.pop_front() else { break };
            self.done_records -= n;
            self.slots.remove(&old);
        }
    }

    /// Keys remembered (in flight and answered).
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stored(n: usize) -> Arc<Vec<Outcome>> {
        Arc::new((0..n).map(|i| Outcome::Stored { partition: 0, offset: i as i64 }).collect())
    }

    #[test]
    fn in_flight_is_joined_then_answered_again() {
        let mut m: Memory<u32> = Memory::new(10);
        let d = digest("t", b"body");
        assert_eq!(m.lookup("k1", d), Lookup::Unknown);
        m.start("k1".into(), d, 7);
        assert_eq!(m.lookup("k1", d), Lookup::Join(7));
        m.finish("k1", stored(2));
        assert_eq!(m.lookup("k1", d), Lookup::Answer(stored(2)));
        // Another body or topic under the same key is refused, in flight or answered.
        assert_eq!(m.lookup("k1", digest("t", b"other")), Lookup::Conflict);
        assert_eq!(m.lookup("k1", digest("u", b"body")), Lookup::Conflict);
        m.start("k2".into(), d, 8);
        assert_eq!(m.lookup("k2", digest("t", b"x")), Lookup::Conflict);
        // A second start for a known key changes nothing.
        m.start("k1".into(), d, 9);
        assert_eq!(m.lookup("k1", d), Lookup::Answer(stored(2)));
    }

    #[test]
    fn answers_are_forgotten_oldest_first_beyond_the_bound_in_flight_never() {
        let mut m: Memory<u32> = Memory::new(5);
        let d = 1;
        for k in ["a", "b", "c"] {
            m.start(k.into(), d, 0);
        }
        m.start("busy".into(), d, 0);
        m.finish("a", stored(2));
        m.finish("b", stored(2));
        assert_eq!(m.len(), 4);
        m.finish("c", stored(2));
        assert_eq!(m.lookup("a", d), Lookup::Unknown, "6 records answered, 5 kept: a goes");
        assert_eq!(m.lookup("b", d), Lookup::Answer(stored(2)));
        assert_eq!(m.lookup("busy", d), Lookup::Join(0));
        m.finish("unknown", stored(1));
        assert_eq!(m.len(), 3);
        let mut none: Memory<u32> = Memory::new(0);
        none.start("k".into(), d, 3);
        assert_eq!(none.lookup("k", d), Lookup::Join(3));
        none.finish("k", stored(1));
        assert_eq!(none.lookup("k", d), Lookup::Unknown);
    }

    #[test]
    fn keys_are_checked() {
        assert!(valid_key(b"5f3a9c-17"));
        assert!(!valid_key(b""));
        assert!(!valid_key(b"a b"));
        assert!(!valid_key("é".as_bytes()));
        assert!(!valid_key(&[b'k'; MAX_KEY_BYTES + 1]));
        assert!(valid_key(&[b'k'; MAX_KEY_BYTES]));
    }
}
