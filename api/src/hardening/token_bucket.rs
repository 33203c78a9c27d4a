//! Token buckets in memory, one per key (an API key, a client address), with bounded
//! memory: a bucket that has refilled completely is indistinguishable from a new one, so
//! it is dropped, and when too many keys are active at once the least recently used go.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use domain::access::RateLimit;

/// How often idle buckets are dropped even when the table is not full.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// What a bucket said about one request, in the terms of the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub allowed: bool,
    /// The burst: requests the bucket holds when full.
    pub limit: u32,
    /// Whole requests left after this one.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// Until the next request would be allowed (zero when one would be now).
    pub retry_after: Duration,
}

impl Outcome {
    /// [`Outcome::retry_after`] in whole seconds, at least 1, as `Retry-After` wants.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }

    /// [`Outcome::reset`] in whole seconds.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset)
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// The limit last applied, to tell when the bucket will be full.
    limit: RateLimit,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            updated: now,
            limit,
        }
    }

    /// Adds what accrued since the last update, at the limit that applied until now. A
    /// changed limit applies from now on and keeps what was used: the tokens held move by
    /// the change of burst (10 left of 100, burst 5 → none; 0 left of 2, burst 100 → 98).
    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        let old_burst = f64::from(self.limit.burst);
        self.tokens = (self.tokens + elapsed * self.limit.requests_per_second).min(old_burst);
        if limit.burst != self.limit.burst {
            let burst = f64::from(limit.burst);
            self.tokens = (self.tokens + burst - old_burst).clamp(0.0, burst);
        }
        self.updated = now;
        self.limit = limit;
    }

    fn outcome(&self, allowed: bool) -> Outcome {
        let rate = self.limit.requests_per_second;
        let burst = f64::from(self.limit.burst);
        let wait = |tokens_missing: f64| Duration::from_secs_f64((tokens_missing.max(0.0) / rate).min(1e9));
        Outcome {
            allowed,
            limit: self.limit.burst,
            remaining: self.tokens.max(0.0).floor() as u32,
            reset: wait(burst - self.tokens),
            retry_after: wait(1.0 - self.tokens),
        }
    }

    fn is_full_at(&self, now: Instant) -> bool {
        let mut probe = *self;
        probe.refill(probe.limit, now);
        probe.tokens >= f64::from(self.limit.burst)
    }
}

/// Token buckets by key, behind one lock held for a few arithmetic operations.
pub struct KeyedBuckets<K> {
    inner: Mutex<Table<K>>,
    capacity: usize,
}

struct Table<K> {
    buckets: HashMap<K, Bucket>,
    last_sweep: Instant,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    /// Holds at most `capacity` buckets (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Table {
                buckets: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            capacity: capacity.max(1),
        }
    }

    /// Takes one token from `key`'s bucket if it has one.
    pub fn take(&self, key: &K, limit: RateLimit, now: Instant) -> Outcome {
        self.with_bucket(key, limit, now, |bucket| {
            let allowed = bucket.tokens >= 1.0;
            if allowed {
                bucket.tokens -= 1.0;
            }
            bucket.outcome(allowed)
        })
    }

    /// Whether `key` has a token left, without taking it.
    pub fn peek(&self, key: &K, limit: RateLimit, now: Instant) -> Outcome {
        let table = self.lock();
        match table.buckets.get(key) {
            Some(bucket) => {
                let mut probe = *bucket;
                probe.refill(limit, now);
                probe.outcome(probe.tokens >= 1.0)
            }
            None => Bucket::full(limit, now).outcome(true),
        }
    }

    /// Buckets currently held.
    pub fn len(&self) -> usize {
        self.lock().buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with_bucket<T>(&self, key: &K, limit: RateLimit, now: Instant, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let mut table = self.lock();
        if now.saturating_duration_since(table.last_sweep) >= SWEEP_EVERY {
            table.sweep(now, self.capacity);
        }
        if let Some(bucket) = table.buckets.get_mut(key) {
            bucket.refill(limit, now);
            return f(bucket);
        }
        if table.buckets.len() >= self.capacity {
            table.sweep(now, self.capacity);
        }
        let bucket = table
            .buckets
            .entry(key.clone())
            .or_insert(Bucket::full(limit, now));
        f(bucket)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table<K>> {
        // The table stays consistent whatever panicked while holding it: each update is a
        // single assignment.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<K: Hash + Eq + Clone> Table<K> {
    /// Drops full buckets; if the table is still full, the least recently used half.
    fn sweep(&mut self, now: Instant, capacity: usize) {
        self.last_sweep = now;
        self.buckets.retain(|_, bucket| !bucket.is_full_at(now));
        if self.buckets.len() >= capacity {
            let mut updated: Vec<Instant> = self.buckets.values().map(|b| b.updated).collect();
            let cut = updated.len() / 2;
            let (_, &mut threshold, _) = updated.select_nth_unstable(cut);
            self.buckets.retain(|_, bucket| bucket.updated > threshold);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests_per_second: f64, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_second,
            burst,
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let buckets = KeyedBuckets::new(10);
        let start = Instant::now();
        let two_per_second = limit(2.0, 3);
        for remaining in [2, 1, 0] {
            let outcome = buckets.take(&"k", two_per_second, start);
            assert!(outcome.allowed);
            assert_eq!(outcome.remaining, remaining);
            assert_eq!(outcome.limit, 3);
        }
        let refused = buckets.take(&"k", two_per_second, start);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.retry_after_secs(), 1);
        assert_eq!(refused.reset, Duration::from_millis(1500));
        assert_eq!(refused.reset_secs(), 2);
        let later = buckets.take(&"k", two_per_second, start + Duration::from_millis(500));
        assert!(later.allowed, "one token accrued in half a second");
        assert!(
            !buckets
                .take(&"k", two_per_second, start + Duration::from_millis(500))
                .allowed
        );
        assert!(
            buckets.take(&"other", two_per_second, start).allowed,
            "keys are independent"
        );
    }

    #[test]
    fn a_changed_limit_applies_at_once_and_keeps_what_was_used() {
        let buckets = KeyedBuckets::new(10);
        let now = Instant::now();
        for _ in 0..90 {
            buckets.take(&1, limit(1.0, 100), now);
        }
        let tightened = buckets.take(&1, limit(1.0, 5), now);
        assert!(!tightened.allowed, "90 used is more than a burst of 5");
        assert_eq!(tightened.limit, 5);
        let raised = buckets.take(&1, limit(1.0, 1000), now);
        assert!(raised.allowed);
        assert_eq!(
            raised.remaining, 994,
            "1000 less the 5 used under the old burst, less this one"
        );
    }

    #[test]
    fn peeking_takes_nothing() {
        let buckets = KeyedBuckets::new(10);
        let now = Instant::now();
        let one = limit(0.1, 1);
        assert!(buckets.peek(&"a", one, now).allowed);
        assert!(buckets.take(&"a", one, now).allowed);
        assert!(!buckets.peek(&"a", one, now).allowed);
        assert!(buckets.peek(&"a", one, now + Duration::from_secs(10)).allowed);
    }

    #[test]
    fn memory_stays_bounded_and_idle_buckets_go() {
        let buckets = KeyedBuckets::new(100);
        let start = Instant::now();
        let fast = limit(10.0, 10);
        for key in 0..10_000u32 {
            buckets.take(&key, fast, start);
            assert!(buckets.len() <= 100, "held {} buckets", buckets.len());
        }
        // A second later every bucket has refilled: the next sweep drops them all.
        buckets.take(&u32::MAX, fast, start + SWEEP_EVERY);
        assert_eq!(buckets.len(), 1);
    }

    #[test]
    fn an_exhausted_bucket_survives_sweeps_while_idle_ones_go() {
        let buckets = KeyedBuckets::new(3);
        let start = Instant::now();
        let slow = limit(0.001, 1);
        let fast = limit(1000.0, 1);
        assert!(buckets.take(&"attacker", slow, start).allowed);
        buckets.take(&"a", fast, start);
        buckets.take(&"b", fast, start);
        // The table is full; "a" and "b" have refilled and make room for "c".
        let later = start + Duration::from_secs(1);
        buckets.take(&"c", fast, later);
        assert_eq!(buckets.len(), 2);
        assert!(!buckets.take(&"attacker", slow, later).allowed, "still limited");
    }
}
