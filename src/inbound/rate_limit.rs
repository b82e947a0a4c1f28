//! Per-route rate limits (`routes.<name>.rate_limit`): one token bucket per route, holding up to
//! `burst` tokens and refilled at `per_second`. Each authenticated webhook on the route takes a
//! token; with none left it is answered 429 with `Retry-After` (the seconds until the next
//! token). Buckets live in memory, per process: with several replicas each enforces the limit
//! on its own share. Time comes from `tokio::time`, so tests can pause it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

use crate::config::RateLimitSettings;

/// The buckets of every rate-limited route. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    limit: RateLimitSettings,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(limit: RateLimitSettings, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst()),
            updated: now,
        }
    }
}

impl RateLimiter {
    /// Takes a token from `route`'s bucket, or says how many whole seconds (at least 1) until
    /// one is available. A bucket whose limit was changed by a reload starts full again.
    pub fn check(&self, route: &str, limit: RateLimitSettings) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets
            .entry(route.to_owned())
            .or_insert_with(|| Bucket::full(limit, now));
        if bucket.limit != limit {
            *bucket = Bucket::full(limit, now);
        }
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(f64::from(limit.burst()));
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let seconds = ((1.0 - bucket.tokens) / limit.per_second).ceil();
            // Validation keeps per_second positive; the cast saturates for absurdly slow rates.
            Err((seconds as u64).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit(per_second: f64, burst: Option<u32>) -> RateLimitSettings {
        RateLimitSettings { per_second, burst }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_token_per_interval() {
        let limiter = RateLimiter::default();
        let l = limit(2.0, Some(3));
        for _ in 0..3 {
            assert_eq!(limiter.check("ci", l), Ok(()));
        }
        assert_eq!(limiter.check("ci", l), Err(1));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(limiter.check("ci", l), Ok(()));
        assert_eq!(limiter.check("ci", l), Err(1));
        // A long quiet spell refills to the burst, not beyond.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(limiter.check("ci", l), Ok(()));
        }
        assert_eq!(limiter.check("ci", l), Err(1));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_the_wait_for_the_next_token() {
        let limiter = RateLimiter::default();
        // One every ten seconds; burst defaults to 1.
        let l = limit(0.1, None);
        assert_eq!(limiter.check("ci", l), Ok(()));
        assert_eq!(limiter.check("ci", l), Err(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(limiter.check("ci", l), Err(6));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(limiter.check("ci", l), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn routes_have_their_own_buckets_and_a_changed_limit_starts_full() {
        let limiter = RateLimiter::default();
        let l = limit(1.0, Some(1));
        assert_eq!(limiter.check("a", l), Ok(()));
        assert_eq!(limiter.check("a", l), Err(1));
        assert_eq!(limiter.check("b", l), Ok(()));
        // A reload raised the limit.
        let raised = limit(1.0, Some(2));
        assert_eq!(limiter.check("a", raised), Ok(()));
        assert_eq!(limiter.check("a", raised), Ok(()));
        assert_eq!(limiter.check("a", raised), Err(1));
    }

    #[test]
    fn burst_defaults_to_the_rate_rounded_up() {
        assert_eq!(limit(0.2, None).burst(), 1);
        assert_eq!(limit(2.5, None).burst(), 3);
        assert_eq!(limit(2.5, Some(10)).burst(), 10);
    }
}
