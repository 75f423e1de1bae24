//! Rate and concurrency limits: per-IP connections (concurrent and new per second) and
//! publish rate per token subject or IP. Token buckets; checked once per connection or
//! publish request, never per event.
//!
//! Tables are bounded: an IP or subject entry that holds nothing and whose bucket is full
//! again carries no information and is removed, and a full table sweeps such entries
//! before refusing to track more (then the request is refused as limited, fail-closed).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most entries a limit table keeps.
const MAX_ENTRIES: usize = 100_000;

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Rate settings of a bucket; `rate == 0` disables the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens stored (the largest burst).
    pub burst: f64,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Self = Self { per_second: 0.0, burst: 0.0 };

    fn is_unlimited(self) -> bool {
        self.per_second <= 0.0
    }
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self { tokens: rate.burst, last: now }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.last = now;
    }

    /// Takes `n` tokens, or says how long until they would be there.
    fn take(&mut self, n: f64, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(((n - self.tokens) / rate.per_second).min(3600.0)))
        }
    }
}

/// A request refused by a limit: answer 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}; retry in {}s", retry_after_secs(*.retry_after))]
pub struct Limited {
    /// What was exceeded, for the response body.
    pub what: String,
    /// When a retry may succeed.
    pub retry_after: Duration,
}

impl Limited {
    /// The `Retry-After` header value (whole seconds, at least 1).
    pub fn retry_after_header(&self) -> String {
        retry_after_secs(self.retry_after).to_string()
    }
}

fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[derive(Debug)]
struct IpEntry {
    open: usize,
    bucket: Bucket,
}

/// Per-IP connection limits.
#[derive(Debug)]
pub struct IpLimits {
    max_open: usize,
    rate: Rate,
    table: Mutex<HashMap<IpAddr, IpEntry>>,
}

impl IpLimits {
    /// `max_open == 0` and an unlimited rate disable the checks.
    pub fn new(max_open: usize, rate: Rate) -> Arc<Self> {
        Arc::new(Self { max_open, rate, table: Mutex::new(HashMap::new()) })
    }

    /// Admits a new connection from `ip`, or refuses it. The guard releases the slot.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<IpGuard, Limited> {
        if self.max_open == 0 && self.rate.is_unlimited() {
            return Ok(IpGuard { limits: None, ip });
        }
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= MAX_ENTRIES && !table.contains_key(&ip) {
            let rate = self.rate;
            table.retain(|_, entry| entry.open > 0 || !is_full(&mut entry.bucket, rate, now));
            if table.len() >= MAX_ENTRIES {
                return Err(Limited {
                    what: "too many clients are being tracked".into(),
                    retry_after: Duration::from_secs(5),
                });
            }
        }
        let entry = table.entry(ip).or_insert_with(|| IpEntry { open: 0, bucket: Bucket::full(self.rate, now) });
        if self.max_open > 0 && entry.open >= self.max_open {
            return Err(Limited {
                what: format!("too many connections from {ip} (limit {})", self.max_open),
                retry_after: Duration::from_secs(1),
            });
        }
        if !self.rate.is_unlimited() {
            entry.bucket.take(1.0, self.rate, now).map_err(|retry_after| Limited {
                what: format!("too many new connections from {ip} (limit {}/s)", self.rate.per_second),
                retry_after,
            })?;
        }
        entry.open += 1;
        Ok(IpGuard { limits: Some(Arc::clone(self)), ip })
    }

    fn release(&self, ip: IpAddr) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = table.get_mut(&ip) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 && is_full(&mut entry.bucket, self.rate, Instant::now()) {
                table.remove(&ip);
            }
        }
    }

    /// Entries tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

fn is_full(bucket: &mut Bucket, rate: Rate, now: Instant) -> bool {
    if rate.is_unlimited() {
        return true;
    }
    bucket.refill(rate, now);
    bucket.tokens >= rate.burst
}

/// Holds one connection slot of an IP; dropping it frees the slot.
#[derive(Debug)]
pub struct IpGuard {
    limits: Option<Arc<IpLimits>>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        if let Some(limits) = &self.limits {
            limits.release(self.ip);
        }
    }
}

/// Publish rate per key (token subject, else client IP), counted in events.
#[derive(Debug)]
pub struct RateLimits<K> {
    rate: Rate,
    table: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone + std::fmt::Display> RateLimits<K> {
    /// A table of buckets of `rate` (unlimited: no checks).
    pub fn new(rate: Rate) -> Self {
        Self { rate, table: Mutex::new(HashMap::new()) }
    }

    /// Takes `n` tokens for `key`, or refuses.
    pub fn take(&self, key: &K, n: usize) -> Result<(), Limited> {
        if self.rate.is_unlimited() {
            return Ok(());
        }
        let now = Instant::now();
        let rate = self.rate;
        #[expect(clippy::cast_precision_loss, reason = "event counts are far below 2^52")]
        let n = n as f64;
        if n > rate.burst {
            return Err(Limited {
                what: format!("a request of {n} events is larger than the burst limit of {}", rate.burst),
                retry_after: Duration::from_secs(3600),
            });
        }
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= MAX_ENTRIES && !table.contains_key(key) {
            table.retain(|_, bucket| !is_full(bucket, rate, now));
            if table.len() >= MAX_ENTRIES {
                return Err(Limited {
                    what: "too many publishers are being tracked".into(),
                    retry_after: Duration::from_secs(5),
                });
            }
        }
        let bucket = table.entry(key.clone()).or_insert_with(|| Bucket::full(rate, now));
        bucket.take(n, rate, now).map_err(|retry_after| Limited {
            what: format!("publish rate limit for {key} ({}/s) exceeded", rate.per_second),
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn concurrent_connections_per_ip() {
        let limits = IpLimits::new(2, Rate::UNLIMITED);
        let a = limits.admit(ip(1)).expect("1st");
        let _b = limits.admit(ip(1)).expect("2nd");
        let refused = limits.admit(ip(1)).expect_err("3rd");
        assert!(refused.what.contains("too many connections from 127.0.0.1"), "{refused}");
        assert!(limits.admit(ip(2)).is_ok(), "other IPs are separate");
        drop(a);
        assert!(limits.admit(ip(1)).is_ok(), "a slot was freed");
    }

    #[test]
    fn new_connection_rate_per_ip() {
        let limits = IpLimits::new(0, Rate { per_second: 1.0, burst: 3.0 });
        let guards: Vec<_> = (0..3).map(|_| limits.admit(ip(1)).expect("burst")).collect();
        let refused = limits.admit(ip(1)).expect_err("over the burst");
        assert_eq!(refused.retry_after_header(), "1");
        drop(guards);
        assert_eq!(limits.tracked(), 1, "an entry with an empty bucket is kept: it holds the rate history");
    }

    #[test]
    fn publish_rate_counts_events() {
        let limits = RateLimits::new(Rate { per_second: 10.0, burst: 20.0 });
        let key = "sub:u1".to_owned();
        assert!(limits.take(&key, 15).is_ok());
        let refused = limits.take(&key, 10).expect_err("5 left");
        assert!(refused.retry_after >= Duration::from_millis(400), "{refused:?}");
        assert!(limits.take(&"ip:1".to_owned(), 20).is_ok(), "keys are separate");
        assert!(limits.take(&key, 50).is_err(), "larger than the burst");
    }

    #[test]
    fn unlimited_is_free() {
        let limits = IpLimits::new(0, Rate::UNLIMITED);
        let guards: Vec<_> = (0..1000).map(|_| limits.admit(ip(1)).expect("no limit")).collect();
        assert_eq!(limits.tracked(), 0);
        drop(guards);
    }
}
