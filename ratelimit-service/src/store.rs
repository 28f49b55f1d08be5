//! Where counters live: limitador's in-memory storage (one process), or Redis (shared by every
//! instance pointed at it). Both count the same way: fixed windows that start at a counter's
//! first hit, and a request is counted against all of its enforced counters or none (one over
//! its limit refuses the request without using up the others), as limitador does.

use std::sync::Arc;
use std::time::Duration;

use limitador::counter::Counter;
use limitador::limit::{Context, Expression, Limit};
use limitador::storage::in_memory::InMemoryStorage;
use limitador::storage::{Authorization, CounterStorage};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// One counter a decision touches.
#[derive(Debug, Clone)]
pub struct Count {
    /// The counter's identity: the rule and the request's descriptor values.
    pub key: String,
    /// Hits allowed per window.
    pub max: u64,
    /// The window.
    pub window: Duration,
    /// Hits this request adds.
    pub delta: u64,
    /// Whether being over refuses the request (false: shadow mode, counted only).
    pub enforced: bool,
}

/// A counter as the decision found it, before this request's hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Hits left in the window before this request.
    pub remaining: u64,
    /// Time until the window ends.
    pub reset: Duration,
}

/// The outcome of counting one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// No enforced counter went over: every counter was incremented.
    pub allowed: bool,
    /// Each counter as found, in the order given.
    pub seen: Vec<Seen>,
}

/// The counter store failed (Redis down, slow or answering something unexpected).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer within the timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The script's answer did not have the expected shape.
    #[error("redis: unexpected answer of {0} values")]
    Shape(usize),
    /// limitador refused a counter.
    #[error("in-memory counters: {0}")]
    Memory(String),
}

/// The counter store.
#[derive(Clone)]
pub enum Store {
    /// limitador's in-memory counters (a bounded cache of `max_counters`).
    Memory(Arc<Memory>),
    /// Counters in Redis.
    Redis(Arc<RedisStore>),
}

impl Store {
    /// In-memory counters, at most `max_counters` of them (the least used are dropped first).
    pub fn memory(max_counters: u64) -> Result<Store, StoreError> {
        let variable =
            Expression::parse(COUNTER_VARIABLE).map_err(|e| StoreError::Memory(format!("{e:?}")))?;
        Ok(Store::Memory(Arc::new(Memory { storage: InMemoryStorage::new(max_counters), variable })))
    }

    /// Counters in the Redis at `url`. Connects lazily: the service starts, and answers with
    /// errors, while Redis is away; every command gives up after `timeout`. Async because the
    /// connection's task starts on the calling Tokio runtime.
    pub async fn redis(url: &str, timeout: Duration) -> Result<Store, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // A reconnection is tried again by the next request; one that retried for long would
            // keep requests waiting on it past their timeout.
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Store::Redis(Arc::new(RedisStore {
            connection,
            script: redis::Script::new(CHECK_AND_COUNT),
            timeout,
        })))
    }

    /// Checks and counts one request's counters.
    pub async fn count(&self, counts: &[Count]) -> Result<Counted, StoreError> {
        if counts.is_empty() {
            return Ok(Counted { allowed: true, seen: Vec::new() });
        }
        match self {
            Store::Memory(memory) => memory.count(counts),
            Store::Redis(redis) => redis.count(counts).await,
        }
    }

    /// Asks Redis for a `PONG` (true when in memory): for the start-up message only.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(redis) => {
                let mut connection = redis.connection.clone();
                let command = redis::cmd("PING");
                let ping = command.query_async::<String>(&mut connection);
                tokio::time::timeout(redis.timeout, ping)
                    .await
                    .map_err(|_| StoreError::Timeout(redis.timeout))??;
                Ok(())
            }
        }
    }
}

/// The one variable of every limitador limit the service makes: the counter's key, so that
/// counters of different rules and descriptor values never meet.
const COUNTER_VARIABLE: &str = "counter";

/// limitador's in-memory counters.
pub struct Memory {
    storage: InMemoryStorage,
    variable: Expression,
}

impl Memory {
    fn counter(&self, count: &Count) -> Result<Counter, StoreError> {
        let limit = Limit::new(
            "gatewasm-ratelimit",
            count.max,
            count.window.as_secs().max(1),
            [],
            [self.variable.clone()],
        );
        let values = std::collections::HashMap::from([(COUNTER_VARIABLE.to_string(), count.key.clone())]);
        let ctx = Context::from(values);
        Counter::new(limit, &ctx)
            .map_err(|e| StoreError::Memory(e.to_string()))?
            .ok_or_else(|| StoreError::Memory(format!("no counter for {}", count.key)))
    }

    fn count(&self, counts: &[Count]) -> Result<Counted, StoreError> {
        let memory = |e: limitador::storage::StorageErr| StoreError::Memory(e.to_string());
        let mut pairs: Vec<(Counter, &Count)> =
            counts.iter().map(|c| Ok((self.counter(c)?, c))).collect::<Result<_, StoreError>>()?;
        let deltas: Vec<u64> = counts.iter().filter(|c| c.enforced).map(|c| c.delta).collect();
        let allowed = match deltas.first() {
            None => true,
            // The usual case, one hits_addend for the request: limitador's own check-and-count of
            // all enforced counters at once, which annotates each, refused or not.
            Some(&delta) if deltas.iter().all(|d| *d == delta) => {
                let mut all: Vec<Counter> =
                    pairs.iter().filter(|(_, c)| c.enforced).map(|(counter, _)| counter.clone()).collect();
                let authorization = self.storage.check_and_update(&mut all, delta).map_err(memory)?;
                for ((counter, _), seen) in pairs.iter_mut().filter(|(_, c)| c.enforced).zip(all) {
                    *counter = seen;
                }
                matches!(authorization, Authorization::Ok)
            }
            // Descriptors with hits_addend of their own: each looked at with its own hits, then
            // all counted if none is over (not atomic: a concurrent request may take the room
            // between the look and the count).
            Some(_) => {
                let mut allowed = true;
                for (counter, count) in pairs.iter_mut().filter(|(_, c)| c.enforced) {
                    allowed &= !self.look(counter, count.delta).map_err(memory)?;
                }
                if allowed {
                    for (counter, count) in pairs.iter().filter(|(_, c)| c.enforced) {
                        self.storage.update_counter(counter, count.delta).map_err(memory)?;
                    }
                }
                allowed
            }
        };
        // Shadow counters count what the enforced limits allow, over their own limit or not.
        for (counter, count) in pairs.iter_mut().filter(|(_, c)| !c.enforced) {
            self.look(counter, count.delta).map_err(memory)?;
            if allowed {
                self.storage.update_counter(counter, count.delta).map_err(memory)?;
            }
        }
        let seen = pairs
            .iter()
            .map(|(c, _)| Seen {
                remaining: c.remaining().unwrap_or(c.max_value()),
                reset: c.expires_in().unwrap_or(c.window()),
            })
            .collect();
        Ok(Counted { allowed, seen })
    }

    /// Annotates `counter` with its state, counting nothing; whether `delta` more would be over.
    fn look(&self, counter: &mut Counter, delta: u64) -> Result<bool, limitador::storage::StorageErr> {
        let mut one = vec![counter.clone()];
        let authorization = self.storage.check(&mut one, delta)?;
        if let Some(seen) = one.pop() {
            *counter = seen;
        }
        Ok(matches!(authorization, Authorization::Limited(_)))
    }
}

/// Counters in Redis, one script call per decision.
pub struct RedisStore {
    connection: ConnectionManager,
    script: redis::Script,
    timeout: Duration,
}

/// Prefix of every key the service writes in Redis.
pub const REDIS_KEY_PREFIX: &str = "gatewasm-ratelimit:";

/// Reads every counter and its time to live, then, unless an enforced counter would go over,
/// adds each counter's hits, starting a window (`PEXPIRE`) on a counter that had none. Redis
/// runs a script alone, so two service instances never both take the last hit.
/// KEYS: the counters. ARGV, four per counter: limit, window in ms, hits, enforced (1 or 0).
/// Answer: allowed (1 or 0), then each counter's value and time to live in ms before the hits.
const CHECK_AND_COUNT: &str = r"
local seen = {}
local allowed = 1
for i = 1, #KEYS do
  local a = (i - 1) * 4
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  local ttl = redis.call('PTTL', KEYS[i])
  seen[2 * i - 1] = value
  seen[2 * i] = ttl
  if ARGV[a + 4] == '1' and value + tonumber(ARGV[a + 3]) > tonumber(ARGV[a + 1]) then
    allowed = 0
  end
end
if allowed == 1 then
  for i = 1, #KEYS do
    local a = (i - 1) * 4
    local hits = tonumber(ARGV[a + 3])
    if hits > 0 then
      redis.call('INCRBY', KEYS[i], hits)
      if seen[2 * i] < 0 then
        redis.call('PEXPIRE', KEYS[i], ARGV[a + 2])
      end
    end
  end
end
table.insert(seen, 1, allowed)
return seen
";

impl RedisStore {
    async fn count(&self, counts: &[Count]) -> Result<Counted, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for count in counts {
            let window_ms = u64::try_from(count.window.as_millis()).unwrap_or(u64::MAX);
            invocation
                .key(format!("{REDIS_KEY_PREFIX}{}", count.key))
                .arg(count.max)
                .arg(window_ms)
                .arg(count.delta)
                .arg(u8::from(count.enforced));
        }
        let mut connection = self.connection.clone();
        let answer: Vec<i64> = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??;
        let (allowed, pairs) = match answer.split_first() {
            Some((allowed, pairs)) if pairs.len() == 2 * counts.len() => (*allowed == 1, pairs),
            _ => return Err(StoreError::Shape(answer.len())),
        };
        let seen = pairs
            .chunks_exact(2)
            .zip(counts)
            .map(|(pair, count)| {
                let (value, ttl) = match pair {
                    [value, ttl] => (*value, *ttl),
                    _ => (0, -2),
                };
                Seen {
                    remaining: count.max.saturating_sub(u64::try_from(value).unwrap_or(0)),
                    // No time to live: a new counter, whose window starts now.
                    reset: u64::try_from(ttl).map(Duration::from_millis).unwrap_or(count.window),
                }
            })
            .collect();
        Ok(Counted { allowed, seen })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn count(key: &str, max: u64, delta: u64, enforced: bool) -> Count {
        Count { key: key.into(), max, window: Duration::from_secs(60), delta, enforced }
    }

    #[tokio::test]
    async fn memory_counts_all_or_nothing() {
        let store = Store::memory(1000).unwrap();
        let a = count("a", 3, 1, true);
        let b = count("b", 1, 1, true);
        let first = store.count(&[a.clone(), b.clone()]).await.unwrap();
        assert!(first.allowed);
        assert_eq!(first.seen.iter().map(|s| s.remaining).collect::<Vec<_>>(), [3, 1]);
        // b is full: refused, and a is not used up by the refused request.
        let second = store.count(&[a.clone(), b.clone()]).await.unwrap();
        assert!(!second.allowed);
        assert_eq!(second.seen.iter().map(|s| s.remaining).collect::<Vec<_>>(), [2, 0]);
        let third = store.count(std::slice::from_ref(&a)).await.unwrap();
        assert_eq!((third.allowed, third.seen[0].remaining), (true, 2));
        assert!(
            third.seen[0].reset <= Duration::from_secs(60) && third.seen[0].reset > Duration::from_secs(55)
        );
    }

    #[tokio::test]
    async fn memory_shadow_counters_count_but_never_refuse() {
        let store = Store::memory(1000).unwrap();
        let shadow = count("s", 1, 1, false);
        for expected in [1, 0, 0] {
            let counted = store.count(std::slice::from_ref(&shadow)).await.unwrap();
            assert!(counted.allowed);
            assert_eq!(counted.seen[0].remaining, expected);
        }
    }

    #[tokio::test]
    async fn memory_keys_and_deltas_are_apart() {
        let store = Store::memory(1000).unwrap();
        assert!(store.count(&[count("x", 5, 5, true)]).await.unwrap().allowed);
        assert!(!store.count(&[count("x", 5, 1, true)]).await.unwrap().allowed);
        assert!(
            store.count(&[count("y", 5, 1, true)]).await.unwrap().allowed,
            "another key, another counter"
        );
        // Two deltas in one request: both counted.
        let mixed = [count("m1", 10, 2, true), count("m2", 10, 3, true)];
        assert!(store.count(&mixed).await.unwrap().allowed);
        let seen = store.count(&mixed).await.unwrap().seen;
        assert_eq!(seen.iter().map(|s| s.remaining).collect::<Vec<_>>(), [8, 7]);
        // Zero hits look without counting.
        let look = count("x", 5, 0, true);
        assert!(store.count(std::slice::from_ref(&look)).await.unwrap().allowed);
    }
}
