//! A per-app limit on report/create calls: calls are spaced `1/max_qps` apart, so no calendar
//! second ever sees more than `max_qps` of them (DingTalk counts per second, 90018 above).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Spaces calls evenly at `max_qps` per second.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter allowing `max_qps` calls per second (at least 1).
    pub(crate) fn new(max_qps: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / max_qps.max(1),
            next: Mutex::new(None),
        }
    }

    /// Waits for this caller's slot.
    pub(crate) async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
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
