//! The three ways a limit counts, as pure functions of a counter's state and the clock: token
//! buckets, fixed windows and requests in flight. The table (`crate::table`) keeps each state in
//! shared data and runs these under compare-and-swap, so what is here never sees a host.
//!
//! Times are microseconds since the Unix epoch. A token bucket counts in token-microseconds
//! (`tokens × per`, where `per` is the refill unit in microseconds), so a refill of `elapsed`
//! microseconds at `rate` tokens per unit adds exactly `elapsed × rate`: no rounding, however
//! often a bucket is touched, so a slow bucket (one token an hour) refills under a flood as it
//! does when idle.

/// The unit of a rate or a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// One second.
    Second,
    /// 60 seconds.
    Minute,
    /// 3,600 seconds.
    Hour,
    /// 86,400 seconds.
    Day,
}

/// The words `per` takes, for error messages.
pub const UNITS: &str = "`second`, `minute`, `hour` or `day`";

impl Unit {
    /// The unit named `text` (`second`, `minute`, `hour`, `day`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "second" => Some(Unit::Second),
            "minute" => Some(Unit::Minute),
            "hour" => Some(Unit::Hour),
            "day" => Some(Unit::Day),
            _ => None,
        }
    }

    /// Its length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
        }
    }

    /// Its length in microseconds.
    pub fn micros(self) -> u64 {
        self.seconds() * MICROS
    }
}

/// Microseconds in a second.
pub const MICROS: u64 = 1_000_000;

/// Largest count a limit takes (rate, burst, requests, in flight, hits per request): a token
/// bucket of this many tokens a day still fits its state in 64 bits.
pub const MAX_COUNT: u64 = 100_000_000;

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `rate` tokens every `per`, at most `burst` kept; a request takes its hits.
    TokenBucket {
        /// Tokens added per `per`.
        rate: u64,
        /// The refill unit.
        per: Unit,
        /// Most tokens kept (what an idle client may spend at once).
        burst: u64,
    },
    /// At most `requests` hits in each window of one `per`, windows aligned to the clock.
    FixedWindow {
        /// Hits allowed per window.
        requests: u64,
        /// The window.
        per: Unit,
    },
    /// At most `max` requests in flight at once; a request holds one until its stream ends.
    Concurrency {
        /// Requests in flight allowed.
        max: u64,
        /// `Retry-After` of a refused request, in seconds.
        retry_after: u64,
    },
}

/// A counter's state as the table stores it; what `a` and `b` mean depends on the algorithm:
/// token bucket (token-microseconds left, time of the last refill), fixed window (window index,
/// hits in it), concurrency (requests in flight, unused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// First word.
    pub a: u64,
    /// Second word.
    pub b: u64,
}

/// What a counter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request fits the limit (and was counted).
    pub allowed: bool,
    /// The state to store when allowed; `None` when nothing changes (a refusal counts nothing).
    pub write: Option<(State, u64)>,
    /// Hits left after this request (`r` of the `RateLimit` field).
    pub remaining: u64,
    /// Allowed: microseconds until the counter is back to its fullest (the bucket full, the
    /// window over). Refused: until the request would fit. `None` for concurrency, which frees
    /// by requests ending, not by time.
    pub reset_after: Option<u64>,
}

/// The time at which a state becomes the same as no state at all (a full bucket, a window over,
/// nothing in flight): from then on its counter may be dropped without changing any answer.
/// `u64::MAX` for never (requests in flight, whose ends must find their counter).
pub type IdleAt = u64;

impl Algorithm {
    /// The name of the algorithm in the counter's identity: a change of algorithm or unit makes
    /// a new counter, since the stored words would mean something else.
    pub fn identity(&self) -> String {
        match self {
            Algorithm::TokenBucket { per, .. } => format!("token_bucket/{}", per.seconds()),
            Algorithm::FixedWindow { per, .. } => format!("fixed_window/{}", per.seconds()),
            Algorithm::Concurrency { .. } => "concurrency".to_string(),
        }
    }

    /// Counts `hits` at `now` against `state` (`None`: a counter never used, or dropped).
    pub fn take(&self, state: Option<State>, now: u64, hits: u64) -> Decision {
        match *self {
            Algorithm::TokenBucket { rate, per, burst } => {
                let bucket = Bucket::new(rate, per, burst);
                let (tokens, stamp) = bucket.refill(state, now);
                let need = hits.saturating_mul(bucket.per);
                if tokens >= need {
                    let left = tokens - need;
                    let write =
                        (State { a: left, b: stamp }, stamp.saturating_add(bucket.until(left, bucket.cap)));
                    Decision {
                        allowed: true,
                        write: Some(write),
                        remaining: left / bucket.per,
                        reset_after: Some(bucket.until(left, bucket.cap)),
                    }
                } else {
                    Decision {
                        allowed: false,
                        write: None,
                        remaining: tokens / bucket.per,
                        reset_after: Some(bucket.until(tokens, need)),
                    }
                }
            }
            Algorithm::FixedWindow { requests, per } => {
                let window = per.micros();
                let index = now / window;
                let used = state.filter(|s| s.a == index).map_or(0, |s| s.b);
                let end = index.saturating_add(1).saturating_mul(window);
                let reset_after = Some(end.saturating_sub(now));
                match used.checked_add(hits).filter(|n| *n <= requests) {
                    Some(used) => Decision {
                        allowed: true,
                        write: Some((State { a: index, b: used }, end)),
                        remaining: requests - used,
                        reset_after,
                    },
                    None => Decision {
                        allowed: false,
                        write: None,
                        remaining: requests.saturating_sub(used),
                        reset_after,
                    },
                }
            }
            Algorithm::Concurrency { max, .. } => {
                let in_flight = state.map_or(0, |s| s.a);
                if in_flight < max {
                    Decision {
                        allowed: true,
                        write: Some((State { a: in_flight + 1, b: 0 }, u64::MAX)),
                        remaining: max - in_flight - 1,
                        reset_after: None,
                    }
                } else {
                    Decision { allowed: false, write: None, remaining: 0, reset_after: None }
                }
            }
        }
    }

    /// Gives back `hits` taken at or before `now` (a request another limit refused, or a
    /// concurrency request that ended); `None` when there is nothing to give back (no counter,
    /// or a window that has ended since).
    pub fn give_back(&self, state: Option<State>, now: u64, hits: u64) -> Option<(State, IdleAt)> {
        let state = state?;
        match *self {
            Algorithm::TokenBucket { rate, per, burst } => {
                let bucket = Bucket::new(rate, per, burst);
                let (tokens, stamp) = bucket.refill(Some(state), now);
                let tokens = tokens.saturating_add(hits.saturating_mul(bucket.per)).min(bucket.cap);
                Some((State { a: tokens, b: stamp }, stamp.saturating_add(bucket.until(tokens, bucket.cap))))
            }
            Algorithm::FixedWindow { per, .. } => {
                let window = per.micros();
                let index = now / window;
                (state.a == index).then(|| {
                    (
                        State { a: index, b: state.b.saturating_sub(hits) },
                        index.saturating_add(1).saturating_mul(window),
                    )
                })
            }
            Algorithm::Concurrency { .. } => {
                let in_flight = state.a.saturating_sub(1);
                Some((State { a: in_flight, b: 0 }, if in_flight == 0 { 0 } else { u64::MAX }))
            }
        }
    }
}

/// A token bucket's numbers in token-microseconds.
struct Bucket {
    /// Tokens per `per`.
    rate: u64,
    /// The refill unit in microseconds: one token is `per` token-microseconds.
    per: u64,
    /// `burst × per`.
    cap: u64,
}

impl Bucket {
    fn new(rate: u64, per: Unit, burst: u64) -> Self {
        let per = per.micros();
        // Configuration bounds rate and burst by MAX_COUNT, so cap fits (8.64e18 < 2^64).
        Self { rate: rate.max(1), per, cap: burst.saturating_mul(per) }
    }

    /// The tokens at `now` and the time they are counted from. A clock that went back keeps the
    /// later stamp, so tokens never come from the future twice.
    fn refill(&self, state: Option<State>, now: u64) -> (u64, u64) {
        let Some(state) = state else { return (self.cap, now) };
        let elapsed = u128::from(now.saturating_sub(state.b));
        let tokens = u128::from(state.a).saturating_add(elapsed.saturating_mul(u128::from(self.rate)));
        let tokens = u64::try_from(tokens.min(u128::from(self.cap))).unwrap_or(self.cap);
        (tokens, now.max(state.b))
    }

    /// Microseconds until `tokens` have grown to `target` (rounded up).
    fn until(&self, tokens: u64, target: u64) -> u64 {
        target.saturating_sub(tokens).div_ceil(self.rate)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: u64 = MICROS;
    /// 2024-01-01T00:00:00Z, the start of a day, an hour and a minute.
    const T0: u64 = 1_704_067_200 * S;

    /// Takes one hit and stores the state when allowed; whether it was allowed.
    fn hit(alg: &Algorithm, state: &mut Option<State>, now: u64) -> bool {
        let d = alg.take(*state, now, 1);
        if let Some((s, _)) = d.write {
            *state = Some(s);
        }
        d.allowed
    }

    #[test]
    fn a_token_bucket_spends_its_burst_then_refills_at_its_rate() {
        let alg = Algorithm::TokenBucket { rate: 10, per: Unit::Second, burst: 20 };
        let mut state = None;
        let allowed = (0..25).filter(|_| hit(&alg, &mut state, T0)).count();
        assert_eq!(allowed, 20);
        let refused = alg.take(state, T0, 1);
        assert_eq!((refused.allowed, refused.remaining, refused.write), (false, 0, None));
        assert_eq!(refused.reset_after, Some(100_000), "the next token in 0.1 s");
        // Half a second: five tokens.
        let allowed = (0..10).filter(|_| hit(&alg, &mut state, T0 + S / 2)).count();
        assert_eq!(allowed, 5);
        // Hours later: full again, and never more than the burst.
        let d = alg.take(state, T0 + 3_600 * S, 1);
        assert_eq!((d.allowed, d.remaining), (true, 19));
        assert_eq!(d.reset_after, Some(100_000), "one token short of full");
        let (_, idle_at) = d.write.unwrap();
        assert_eq!(idle_at, T0 + 3_600 * S + 100_000);
    }

    #[test]
    fn a_slow_bucket_refills_exactly_however_often_it_is_touched() {
        // One token an hour, touched every millisecond: no rounding may lose the refill.
        let alg = Algorithm::TokenBucket { rate: 1, per: Unit::Hour, burst: 1 };
        let mut state = None;
        assert!(hit(&alg, &mut state, T0));
        let mut now = T0;
        let mut allowed = 0;
        while now < T0 + 3_600 * S {
            now += 1_000;
            if hit(&alg, &mut state, now) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 1, "the token of the hour arrived once, at the hour");
        assert_eq!(alg.take(state, now, 1).reset_after, Some(3_600 * S));
    }

    #[test]
    fn hits_are_counted_as_many() {
        let alg = Algorithm::TokenBucket { rate: 10, per: Unit::Second, burst: 10 };
        let d = alg.take(None, T0, 4);
        assert_eq!((d.allowed, d.remaining), (true, 6));
        let d2 = alg.take(d.write.map(|w| w.0), T0, 7);
        assert!(!d2.allowed);
        assert_eq!(d2.reset_after, Some(100_000), "one token short");
        let w = Algorithm::FixedWindow { requests: 10, per: Unit::Minute };
        assert!(!w.take(None, T0, 11).allowed);
        assert_eq!(w.take(None, T0, 10).remaining, 0);
    }

    #[test]
    fn a_clock_going_back_never_adds_tokens() {
        let alg = Algorithm::TokenBucket { rate: 1, per: Unit::Second, burst: 1 };
        let mut state = None;
        assert!(hit(&alg, &mut state, T0 + 10 * S));
        assert!(!hit(&alg, &mut state, T0), "earlier time: no refill");
        assert!(!hit(&alg, &mut state, T0 + 10 * S + S / 2));
        assert!(hit(&alg, &mut state, T0 + 11 * S));
    }

    #[test]
    fn fixed_windows_are_aligned_to_the_clock() {
        let alg = Algorithm::FixedWindow { requests: 3, per: Unit::Minute };
        let mut state = None;
        let at = T0 + 50 * S;
        assert_eq!((0..5).filter(|_| hit(&alg, &mut state, at)).count(), 3);
        let refused = alg.take(state, at, 1);
        assert_eq!(refused.reset_after, Some(10 * S), "until the minute ends");
        // The next minute starts afresh: up to twice the limit across the boundary.
        assert_eq!((0..5).filter(|_| hit(&alg, &mut state, T0 + 60 * S)).count(), 3);
        let d = alg.take(None, T0 + 61 * S, 1);
        assert_eq!(d.write.unwrap().1, T0 + 120 * S, "idle when the window ends");
    }

    #[test]
    fn concurrency_counts_requests_in_flight() {
        let alg = Algorithm::Concurrency { max: 2, retry_after: 1 };
        let mut state = None;
        assert!(hit(&alg, &mut state, T0));
        let second = alg.take(state, T0, 1);
        assert_eq!((second.allowed, second.remaining, second.write.unwrap().1), (true, 0, u64::MAX));
        state = second.write.map(|w| w.0);
        assert!(!alg.take(state, T0, 1).allowed);
        let (freed, idle_at) = alg.give_back(state, T0, 1).unwrap();
        assert_eq!((freed.a, idle_at), (1, u64::MAX));
        let (freed, idle_at) = alg.give_back(Some(freed), T0, 1).unwrap();
        assert_eq!((freed.a, idle_at), (0, 0), "nothing in flight: idle at once");
        assert_eq!(alg.give_back(Some(freed), T0, 1).unwrap().0.a, 0, "never below zero");
        assert_eq!(alg.give_back(None, T0, 1), None, "no counter, nothing to give back");
    }

    #[test]
    fn giving_back_restores_what_was_taken() {
        let bucket = Algorithm::TokenBucket { rate: 1, per: Unit::Minute, burst: 5 };
        let taken = bucket.take(None, T0, 2).write.unwrap().0;
        let (back, idle_at) = bucket.give_back(Some(taken), T0, 2).unwrap();
        assert_eq!(bucket.take(Some(back), T0, 1).remaining, 4);
        assert_eq!(idle_at, T0, "full again: idle now");
        let window = Algorithm::FixedWindow { requests: 5, per: Unit::Second };
        let taken = window.take(None, T0, 2).write.unwrap().0;
        assert_eq!(window.give_back(Some(taken), T0 + S / 2, 2).unwrap().0.b, 0);
        assert_eq!(window.give_back(Some(taken), T0 + S, 2), None, "that window is over");
    }

    #[test]
    fn the_largest_limits_do_not_overflow() {
        let alg = Algorithm::TokenBucket { rate: MAX_COUNT, per: Unit::Day, burst: MAX_COUNT };
        let d = alg.take(None, u64::MAX / 2, MAX_COUNT);
        assert_eq!((d.allowed, d.remaining), (true, 0));
        let d = alg.take(d.write.map(|w| w.0), u64::MAX, 1);
        assert!(d.allowed);
        let w = Algorithm::FixedWindow { requests: MAX_COUNT, per: Unit::Day };
        assert!(w.take(Some(State { a: 0, b: u64::MAX }), u64::MAX, 1).allowed, "an old window's count");
        assert!(!w.take(Some(State { a: u64::MAX / Unit::Day.micros(), b: u64::MAX }), u64::MAX, 1).allowed);
        assert!(Unit::parse("week").is_none());
        assert_eq!(Unit::parse("day").map(Unit::seconds), Some(86_400));
    }
}
