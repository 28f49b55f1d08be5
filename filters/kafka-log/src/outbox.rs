//! The per-worker buffer of records and the batches made from it: size, bytes and age
//! triggers, a bound on everything held (waiting, in flight and waiting to be retried), and
//! retries with exponential backoff. Pure: time and randomness are passed in, so every rule is
//! unit-tested.

use std::collections::VecDeque;
use std::ops::Range;

use crate::config::Limits;
use crate::produce::{self, Answer, RecordStatus};

/// One record: its JSON text, where its key is inside that text, and when it was buffered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The record as a JSON object.
    pub text: String,
    /// The key's JSON value, as a range of `text`.
    pub key: Option<Range<usize>>,
    /// When it was buffered, in milliseconds of the host clock.
    pub at_ms: u64,
}

impl Entry {
    /// Bytes it counts for in the buffer and batch bounds.
    pub fn size(&self) -> usize {
        self.text.len()
    }

    fn key_text(&self) -> Option<&str> {
        self.key.clone().and_then(|r| self.text.get(r))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InFlight,
    RetryAt(u64),
}

#[derive(Debug)]
struct Batch {
    id: u64,
    /// The idempotency key of its next attempt: kept after an attempt whose outcome is
    /// unknown (the same request goes again, and a proxy that remembers the key answers what
    /// it did), replaced after any answer that says what was stored (what goes next is another
    /// request).
    key: u64,
    entries: Vec<Entry>,
    attempts: u32,
    /// Its last attempt's outcome is unknown: its records may be in Kafka.
    unconfirmed: bool,
    state: State,
}

/// Cumulative record counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Stored in Kafka.
    pub sent: u64,
    /// Given up on (non-retriable errors, or out of attempts).
    pub failed: u64,
    /// Sent again after a retriable failure (once per record per retry).
    pub retried: u64,
    /// Not buffered because the buffer was full.
    pub dropped: u64,
    /// Answered by the proxy as not stored, retriable (once per record per answer).
    pub retriable: u64,
    /// In an attempt whose outcome is unknown: timeout, connection lost, an answer the proxy
    /// did not write (once per record per attempt).
    pub unconfirmed: u64,
    /// Of `failed`, records given up while their last attempt's outcome was unknown: they may
    /// be in Kafka.
    pub failed_unconfirmed: u64,
}

/// A batch ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// Batch id, for [`Outbox::complete`].
    pub id: u64,
    /// Idempotency key of this attempt: the same when the same records go again after an
    /// attempt whose outcome is unknown.
    pub key: u64,
    /// The produce request body.
    pub body: Vec<u8>,
    /// Records in it.
    pub records: usize,
}

/// The buffer and its batches.
#[derive(Debug)]
pub struct Outbox {
    limits: Limits,
    waiting: VecDeque<Entry>,
    waiting_bytes: usize,
    batches: Vec<Batch>,
    held_records: usize,
    held_bytes: usize,
    next_id: u64,
    next_key: u64,
    stats: Stats,
}

impl Outbox {
    /// An empty outbox.
    pub fn new(limits: Limits) -> Self {
        Outbox {
            limits,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            batches: Vec::new(),
            held_records: 0,
            held_bytes: 0,
            next_id: 1,
            next_key: 1,
            stats: Stats::default(),
        }
    }

    /// Buffers a record, or drops it (counted) when the buffer would exceed its bounds.
    /// Returns whether it was kept.
    pub fn push(&mut self, entry: Entry) -> bool {
        let size = entry.size();
        if self.held_records + 1 > self.limits.buffer_max_records
            || self.held_bytes.saturating_add(size) > self.limits.buffer_max_bytes
        {
            self.stats.dropped += 1;
            return false;
        }
        self.held_records += 1;
        self.held_bytes += size;
        self.waiting_bytes += size;
        self.waiting.push_back(entry);
        true
    }

    /// Records and bytes held: waiting, in flight, and waiting to be retried.
    pub fn held(&self) -> (usize, usize) {
        (self.held_records, self.held_bytes)
    }

    /// Batches in flight.
    pub fn in_flight(&self) -> usize {
        self.batches.iter().filter(|b| b.state == State::InFlight).count()
    }

    /// Records in batch `id`, if it exists.
    pub fn records_in(&self, id: u64) -> Option<usize> {
        self.batches.iter().find(|b| b.id == id).map(|b| b.entries.len())
    }

    /// Cumulative counts.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The next batch to send at `now_ms`, marked in flight: a batch whose backoff is over
    /// first, else a new one when the waiting records fill a batch (by count or bytes) or the
    /// oldest waited `flush_interval`. `None` when nothing is due or `max_in_flight` batches
    /// are already out.
    pub fn due(&mut self, now_ms: u64) -> Option<Send> {
        self.next(now_ms, false)
    }

    /// As [`Outbox::due`] when the plugin is being removed: waiting records leave whatever
    /// their age, still at most `max_in_flight` batches at once. Call
    /// [`Outbox::give_up_retries`] first: nothing waits for a backoff any more.
    pub fn due_closing(&mut self, now_ms: u64) -> Option<Send> {
        self.next(now_ms, true)
    }

    /// Gives up every batch waiting for a retry (counted failed): a plugin being removed sends
    /// what it holds once and lets go. Returns the records given up.
    pub fn give_up_retries(&mut self) -> u64 {
        let (mut records, mut bytes, mut unconfirmed) = (0usize, 0usize, 0u64);
        self.batches.retain(|b| {
            if b.state == State::InFlight {
                return true;
            }
            records += b.entries.len();
            bytes += b.entries.iter().map(Entry::size).sum::<usize>();
            if b.unconfirmed {
                unconfirmed += b.entries.len() as u64;
            }
            false
        });
        self.stats.failed += records as u64;
        self.stats.failed_unconfirmed += unconfirmed;
        self.held_records -= records;
        self.held_bytes -= bytes;
        records as u64
    }

    fn next(&mut self, now_ms: u64, closing: bool) -> Option<Send> {
        if self.in_flight() >= self.limits.max_in_flight {
            return None;
        }
        let retry = self
            .batches
            .iter_mut()
            .filter_map(|b| match b.state {
                State::RetryAt(at) if at <= now_ms => Some((at, b)),
                _ => None,
            })
            .min_by_key(|(at, _)| *at)
            .map(|(_, b)| b);
        if let Some(batch) = retry {
            batch.state = State::InFlight;
            return Some(send_of(batch));
        }
        let front_at = self.waiting.front()?.at_ms;
        let flush_ms = u64::try_from(self.limits.flush_interval.as_millis()).unwrap_or(u64::MAX);
        let full = self.waiting.len() >= self.limits.batch_max_size
            || self.waiting_bytes >= self.limits.batch_max_bytes;
        if !closing && !full && now_ms.saturating_sub(front_at) < flush_ms {
            return None;
        }
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        while let Some(next) = self.waiting.front() {
            if entries.len() >= self.limits.batch_max_size
                || (!entries.is_empty() && bytes + next.size() > self.limits.batch_max_bytes)
            {
                break;
            }
            let Some(entry) = self.waiting.pop_front() else { break };
            bytes += entry.size();
            entries.push(entry);
        }
        self.waiting_bytes -= bytes;
        let id = self.next_id;
        self.next_id += 1;
        let key = self.new_key();
        self.batches.push(Batch {
            id,
            key,
            entries,
            attempts: 0,
            unconfirmed: false,
            state: State::InFlight,
        });
        self.batches.last().map(send_of)
    }

    /// A key no attempt of this outbox used before.
    fn new_key(&mut self) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        key
    }

    /// When the next batch is due (for the caller's timer), if anything is waiting.
    pub fn next_due_ms(&self) -> Option<u64> {
        let retry = self
            .batches
            .iter()
            .filter_map(|b| match b.state {
                State::RetryAt(at) => Some(at),
                State::InFlight => None,
            })
            .min();
        let flush_ms = u64::try_from(self.limits.flush_interval.as_millis()).unwrap_or(u64::MAX);
        let fresh = self.waiting.front().map(|e| e.at_ms.saturating_add(flush_ms));
        match (retry, fresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies the answer to batch `id`: stored and failed records leave the buffer, retriable
    /// ones wait `backoff` and go again (or fail once out of attempts). `random` jitters the
    /// backoff. Returns false for an unknown id.
    pub fn complete(&mut self, id: u64, answer: &Answer, now_ms: u64, random: u64) -> bool {
        let Some(at) = self.batches.iter().position(|b| b.id == id && b.state == State::InFlight) else {
            return false;
        };
        let mut batch = self.batches.swap_remove(at);
        let before = batch.entries.len();
        let before_bytes: usize = batch.entries.iter().map(Entry::size).sum();
        let mut unconfirmed = false;
        match answer {
            Answer::Records(statuses) => {
                let mut statuses = statuses.iter();
                let stats = &mut self.stats;
                batch.entries.retain(|_| match statuses.next().copied().unwrap_or(RecordStatus::Retriable) {
                    RecordStatus::Stored => {
                        stats.sent += 1;
                        false
                    }
                    RecordStatus::Failed => {
                        stats.failed += 1;
                        false
                    }
                    RecordStatus::Retriable => {
                        stats.retriable += 1;
                        true
                    }
                });
            }
            Answer::RetryAll(_) => self.stats.retriable += before as u64,
            Answer::Unconfirmed(_) => {
                self.stats.unconfirmed += before as u64;
                unconfirmed = true;
            }
            Answer::FailAll(_) => {
                self.stats.failed += before as u64;
                batch.entries.clear();
            }
        }
        batch.unconfirmed = unconfirmed;
        if !unconfirmed {
            // The proxy said what it did: the records left form another request.
            batch.key = self.new_key();
        }
        if !batch.entries.is_empty() {
            batch.attempts += 1;
            let left = batch.entries.len() as u64;
            let max = self.limits.retry.max_attempts;
            if max > 0 && batch.attempts >= max {
                self.stats.failed += left;
                if unconfirmed {
                    self.stats.failed_unconfirmed += left;
                }
                batch.entries.clear();
            } else {
                self.stats.retried += left;
                batch.state = State::RetryAt(now_ms.saturating_add(self.backoff_ms(batch.attempts, random)));
            }
        }
        let after_bytes: usize = batch.entries.iter().map(Entry::size).sum();
        self.held_records -= before - batch.entries.len();
        self.held_bytes -= before_bytes - after_bytes;
        if !batch.entries.is_empty() {
            self.batches.push(batch);
        }
        true
    }

    /// Backoff before attempt `attempts + 1`: `initial * 2^(attempts-1)`, at most `max`, with
    /// "equal jitter" (half fixed, half random) so the workers' retries spread out.
    pub fn backoff_ms(&self, attempts: u32, random: u64) -> u64 {
        let initial = u64::try_from(self.limits.retry.initial_backoff.as_millis()).unwrap_or(u64::MAX);
        let max = u64::try_from(self.limits.retry.max_backoff.as_millis()).unwrap_or(u64::MAX);
        let exp = attempts.saturating_sub(1).min(32);
        let base = initial.saturating_mul(1u64 << exp).min(max);
        let half = base / 2;
        base - half + random % (half + 1)
    }
}

fn send_of(batch: &Batch) -> Send {
    let bytes: usize = batch.entries.iter().map(|e| e.size() + 32).sum();
    let body = produce::body(batch.entries.iter().map(|e| (e.key_text(), e.text.as_str())), bytes);
    Send { id: batch.id, key: batch.key, body, records: batch.entries.len() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::Retry;
    use serde_json::Value;
    use std::time::Duration;
    use RecordStatus::*;

    fn limits() -> Limits {
        Limits {
            batch_max_size: 3,
            batch_max_bytes: 1000,
            flush_interval: Duration::from_millis(100),
            buffer_max_records: 10,
            buffer_max_bytes: 10_000,
            max_in_flight: 2,
            retry: Retry {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(1000),
                max_attempts: 0,
            },
        }
    }

    fn entry(i: usize, at_ms: u64) -> Entry {
        let text = format!("{{\"id\":\"r{i}\"}}");
        Entry { key: Some(6..10), text, at_ms }
    }

    fn ids(send: &Send) -> Vec<String> {
        let v: Value = serde_json::from_slice(&send.body).unwrap();
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value"]["id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn batches_by_size_then_by_age() {
        let mut o = Outbox::new(limits());
        for i in 0..4 {
            assert!(o.push(entry(i, 0)));
        }
        let first = o.due(0).unwrap();
        assert_eq!(ids(&first), ["r0", "r1", "r2"]);
        let v: Value = serde_json::from_slice(&first.body).unwrap();
        assert_eq!(v["records"][0]["key"], "r0");
        // One record left: not due until it is 100 ms old.
        assert!(o.due(50).is_none());
        assert_eq!(o.next_due_ms(), Some(100));
        assert_eq!(ids(&o.due(100).unwrap()), ["r3"]);
        assert_eq!(o.in_flight(), 2);
        assert_eq!(o.held(), (4, 4 * 11));
    }

    #[test]
    fn batches_by_bytes_and_big_records_go_alone() {
        let mut l = limits();
        l.batch_max_bytes = 25;
        l.batch_max_size = 100;
        let mut o = Outbox::new(l);
        for i in 0..3 {
            o.push(entry(i, 0));
        }
        o.push(Entry { text: format!("{{\"id\":\"{}\"}}", "x".repeat(40)), key: None, at_ms: 0 });
        assert_eq!(o.due(0).unwrap().records, 2);
        assert_eq!(o.due(0).unwrap().records, 1);
        o.complete(1, &Answer::Records(vec![Stored, Stored]), 1, 0);
        let big = o.due(1000).unwrap();
        assert_eq!(big.records, 1);
        assert!(serde_json::from_slice::<Value>(&big.body).unwrap()["records"][0].get("key").is_none());
    }

    #[test]
    fn in_flight_is_bounded() {
        let mut o = Outbox::new(limits());
        for i in 0..9 {
            o.push(entry(i, 0));
        }
        assert!(o.due(0).is_some());
        assert!(o.due(0).is_some());
        assert!(o.due(0).is_none(), "max_in_flight is 2");
        assert!(o.complete(1, &Answer::Records(vec![Stored; 3]), 5, 0));
        assert!(!o.complete(1, &Answer::Records(vec![Stored; 3]), 5, 0), "already completed");
        assert!(o.due(5).is_some());
    }

    #[test]
    fn buffer_bounds_drop_and_count() {
        let mut o = Outbox::new(limits());
        for i in 0..12 {
            o.push(entry(i, 0));
        }
        assert_eq!(o.stats().dropped, 2);
        assert_eq!(o.held().0, 10);
        // Records in flight still count: sending does not make room.
        o.due(0).unwrap();
        assert!(!o.push(entry(99, 0)));
        o.complete(1, &Answer::Records(vec![Stored; 3]), 0, 0);
        assert!(o.push(entry(99, 0)));
        assert_eq!(o.stats().dropped, 3);
        // Bytes bound.
        let mut l = limits();
        l.buffer_max_bytes = 30;
        let mut o = Outbox::new(l);
        assert!(o.push(entry(1, 0)) && o.push(entry(2, 0)));
        assert!(!o.push(entry(3, 0)));
        assert_eq!(o.held(), (2, 22));
    }

    #[test]
    fn partial_failures_retry_only_what_failed_with_backoff() {
        let mut o = Outbox::new(limits());
        for i in 0..3 {
            o.push(entry(i, 0));
        }
        let s = o.due(0).unwrap();
        o.complete(s.id, &Answer::Records(vec![Stored, Retriable, Failed]), 1000, 0);
        assert_eq!(o.stats(), Stats { sent: 1, failed: 1, retried: 1, retriable: 1, ..Stats::default() });
        assert_eq!(o.held(), (1, 11));
        // Backoff 100 ms with no jitter drawn: half of it, 50 ms.
        assert!(o.due(1049).is_none());
        let again = o.due(1050).unwrap();
        assert_eq!(ids(&again), ["r1"]);
        o.complete(again.id, &Answer::RetryAll("HTTP 503".into()), 2000, 0);
        assert_eq!(o.stats().retried, 2);
        assert_eq!(o.next_due_ms(), Some(2100));
        let third = o.due(2100).unwrap();
        o.complete(third.id, &Answer::Records(vec![Stored]), 2200, 0);
        assert_eq!(o.stats().sent, 2);
        assert_eq!(o.held(), (0, 0));
    }

    #[test]
    fn non_retriable_and_out_of_attempts_fail() {
        let mut l = limits();
        l.retry.max_attempts = 2;
        let mut o = Outbox::new(l);
        for i in 0..2 {
            o.push(entry(i, 0));
        }
        let s = o.due(100).unwrap();
        o.complete(s.id, &Answer::RetryAll("HTTP 503".into()), 100, 0);
        let s = o.due(10_000).unwrap();
        o.complete(s.id, &Answer::Unconfirmed("timeout".into()), 10_000, 0);
        // Given up after a timeout: failed, and counted as possibly stored.
        assert_eq!(
            o.stats(),
            Stats {
                failed: 2,
                retried: 2,
                retriable: 2,
                unconfirmed: 2,
                failed_unconfirmed: 2,
                ..Stats::default()
            }
        );
        assert_eq!(o.held(), (0, 0));
        o.push(entry(5, 0));
        let s = o.due(20_000).unwrap();
        o.complete(s.id, &Answer::FailAll("HTTP 404".into()), 20_000, 0);
        assert_eq!(o.stats().failed, 3);
    }

    #[test]
    fn a_batch_keeps_its_key_only_while_its_outcome_is_unknown() {
        let mut o = Outbox::new(limits());
        for i in 0..3 {
            o.push(entry(i, 0));
        }
        let first = o.due(0).unwrap();
        o.complete(first.id, &Answer::Unconfirmed("timeout".into()), 0, 0);
        let same = o.due(10_000).unwrap();
        assert_eq!(
            (same.id, same.key, &same.body),
            (first.id, first.key, &first.body),
            "the same request again"
        );
        o.complete(same.id, &Answer::Unconfirmed("no answer".into()), 10_000, 0);
        let again = o.due(20_000).unwrap();
        assert_eq!(again.key, first.key);
        // The proxy answered: one stored, two retriable. What goes next is another request.
        o.complete(again.id, &Answer::Records(vec![Stored, Retriable, Retriable]), 20_000, 0);
        let next = o.due(30_000).unwrap();
        assert_ne!(next.key, first.key);
        assert_eq!(ids(&next), ["r1", "r2"]);
        // A retriable refusal of the whole batch (nothing stored) also gets a new key.
        o.complete(next.id, &Answer::RetryAll("HTTP 503".into()), 30_000, 0);
        let last = o.due(40_000).unwrap();
        assert_ne!(last.key, next.key);
        assert_eq!(
            o.stats(),
            Stats { sent: 1, retried: 10, retriable: 4, unconfirmed: 6, ..Stats::default() }
        );
        // Keys differ between batches.
        o.push(entry(9, 40_000));
        let other = o.due(50_000).unwrap();
        assert!(other.key != last.key && other.key != first.key && other.key != next.key);
    }

    #[test]
    fn giving_up_after_an_unknown_outcome_counts_it() {
        let mut o = Outbox::new(limits());
        for i in 0..4 {
            o.push(entry(i, 0));
        }
        let s = o.due(0).unwrap();
        let t = o.due(100).unwrap();
        o.complete(s.id, &Answer::Unconfirmed("timeout".into()), 100, 0);
        o.complete(t.id, &Answer::RetryAll("HTTP 503".into()), 100, 0);
        assert_eq!(o.give_up_retries(), 4);
        let stats = o.stats();
        assert_eq!((stats.failed, stats.failed_unconfirmed), (4, 3));
    }

    #[test]
    fn closing_sends_young_records_and_gives_up_retries() {
        let mut o = Outbox::new(limits());
        for i in 0..2 {
            o.push(entry(i, 0));
        }
        let s = o.due(100).unwrap();
        o.complete(s.id, &Answer::RetryAll("HTTP 503".into()), 110, 0);
        for i in 2..9 {
            o.push(entry(i, 110));
        }
        assert_eq!(o.held(), (9, 9 * 11));
        assert_eq!(o.give_up_retries(), 2);
        assert_eq!(o.stats().failed, 2);
        assert_eq!(o.held(), (7, 7 * 11));
        // Young records leave at once, still two batches at most in flight.
        assert_eq!(ids(&o.due_closing(111).unwrap()), ["r2", "r3", "r4"]);
        assert_eq!(ids(&o.due_closing(111).unwrap()), ["r5", "r6", "r7"]);
        assert!(o.due_closing(111).is_none(), "max_in_flight is 2");
        o.complete(2, &Answer::Records(vec![Stored; 3]), 112, 0);
        assert_eq!(ids(&o.due_closing(112).unwrap()), ["r8"]);
        assert!(o.due_closing(112).is_none());
        assert_eq!(o.give_up_retries(), 0, "batches in flight are not given up");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_range() {
        let o = Outbox::new(limits());
        assert_eq!(o.backoff_ms(1, 0), 50);
        assert_eq!(o.backoff_ms(1, 50), 100);
        assert_eq!(o.backoff_ms(2, 0), 100);
        assert_eq!(o.backoff_ms(3, 0), 200);
        assert_eq!(o.backoff_ms(5, 0), 500);
        assert_eq!(o.backoff_ms(6, 0), 500, "capped at 1000 ms, half of it fixed");
        assert_eq!(o.backoff_ms(60, u64::MAX), 500 + u64::MAX % 501);
        for r in 0..1000 {
            let b = o.backoff_ms(4, r * 7919);
            assert!((400..=800).contains(&b), "{b}");
        }
    }
}
