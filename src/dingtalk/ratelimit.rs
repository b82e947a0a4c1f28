//! A per-app limit on report/create calls: calls are spaced `1/max_qps` apart, so no calendar
//! second ever sees more than `max_qps` of them (DingTalk counts per second, 90018 above).
//! Replicas sharing a PostgreSQL store share the spacing through a [`SharedLimit`] (each call
//! takes the next free slot from the database); otherwise it is kept in this process.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

/// Send slots shared by every replica (the PostgreSQL store implements it).
#[async_trait]
pub trait SharedLimit: Send + Sync + 'static {
    /// Takes the next send slot of `app_key`, the slots being `interval` apart across every
    /// replica, and returns how long to wait for it. `Err` says why none could be taken.
    async fn reserve(&self, app_key: &str, interval: Duration) -> Result<Duration, String>;
}

/// Spaces calls evenly at `max_qps` per second, in this process or through a [`SharedLimit`].
pub(crate) struct RateLimiter {
    interval: Duration,
    /// When the last caller in this process was let through. Held while a caller waits, so
    /// callers go one at a time in arrival order.
    last: tokio::sync::Mutex<Option<Instant>>,
    shared: Option<(Arc<dyn SharedLimit>, String)>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("interval", &self.interval)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter allowing `max_qps` calls per second (at least 1), kept in this process.
    pub(crate) fn new(max_qps: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / max_qps.max(1),
            last: tokio::sync::Mutex::new(None),
            shared: None,
        }
    }

    /// A limiter whose slots for `app_key` come from `shared`.
    pub(crate) fn shared(max_qps: u32, shared: Arc<dyn SharedLimit>, app_key: &str) -> Self {
        Self {
            shared: Some((shared, app_key.to_owned())),
            ..Self::new(max_qps)
        }
    }

    /// Waits for this caller's slot. Callers in this process go one at a time in arrival
    /// order, each spaced from when the previous one was actually let through, not from when
    /// it was due: a late wake-up (a busy runtime) must not let the next call follow closer
    /// than the interval, or a calendar second could see one call too many. With shared slots
    /// each caller also takes the next slot of every replica together; when they cannot be
    /// reached, this process spaces its own calls (and says so), so a delivery is not held up
    /// by the limiter's store.
    pub(crate) async fn acquire(&self) {
        let mut last = self.last.lock().await;
        if let Some((shared, app_key)) = &self.shared {
            match shared.reserve(app_key, self.interval).await {
                Ok(wait) => tokio::time::sleep(wait).await,
                Err(e) => {
                    tracing::warn!(error = %e, "shared rate limit unavailable; limiting this replica only");
                }
            }
        }
        if let Some(last) = *last {
            tokio::time::sleep_until(last + self.interval).await;
        }
        *last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_max_qps_in_a_second() {
        let limiter = std::sync::Arc::new(RateLimiter::new(20));
        let start = Instant::now();
        let mut handles = Vec::new();
        for _ in 0..100 {
            let l = limiter.clone();
            handles.push(tokio::spawn(async move {
                l.acquire().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for h in handles {
            times.push(h.await.unwrap() - start);
        }
        for second in 0..5u64 {
            let n = times.iter().filter(|t| t.as_secs() == second).count();
            assert_eq!(n, 20, "second {second}");
        }
    }
}
