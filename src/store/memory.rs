//! `memory:` — a store in process memory, for tests and trials. Everything is lost when the
//! process exits.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    ClosedDigest, Delivery, DigestBuilder, DigestEvent, Enqueued, Error, LastError, NewDelivery,
    NewDigestEvent, QueueStats, Result, State, Store,
};

#[derive(Default)]
struct Inner {
    deliveries: HashMap<String, Delivery>,
    lease_until: HashMap<String, DateTime<Utc>>,
    dedup: HashMap<String, (String, DateTime<Utc>)>,
    /// Kept digest events, in arrival order.
    digest_events: Vec<DigestEvent>,
    /// Route → scheduled times of the digests made.
    digest_runs: HashMap<String, BTreeSet<DateTime<Utc>>>,
}

impl Inner {
    /// The first id of the first of `keys` seen within `window` before `now`.
    fn seen<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Option<String> {
        let cutoff = now
            .checked_sub_signed(chrono_duration(window))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        keys.into_iter().find_map(|key| {
            self.dedup
                .get(key)
                .filter(|(_, at)| *at > cutoff)
                .map(|(id, _)| id.clone())
        })
    }

    /// Claims `keys` for the delivery or event `id`.
    fn claim<'k>(&mut self, keys: impl IntoIterator<Item = &'k str>, id: &str, at: DateTime<Utc>) {
        for key in keys {
            self.dedup.insert(key.to_owned(), (id.to_owned(), at));
        }
    }

    /// Stores a new delivery, queued and due at once, with its dedup keys.
    fn insert(&mut self, new: NewDelivery) {
        self.claim(new.dedup_keys(), &new.id, new.received_at);
        self.deliveries.insert(
            new.id.clone(),
            Delivery {
                id: new.id,
                route: new.route,
                dedup_key: new.dedup_key,
                state: State::Queued,
                attempts: 0,
                next_attempt_at: Some(new.received_at),
                sending_since: None,
                last_error: None,
                report_id: None,
                draft: new.draft,
                created_at: new.received_at,
                updated_at: new.received_at,
            },
        );
    }
}

/// The in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    quota: std::sync::Arc<super::MemoryQuota>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written delivery: every update
        // below is a single assignment.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Back to the queue until `at` without spending the attempt, noting why: `defer` forgets
    /// `sending_since`, `hold` keeps it (`keep_sending_since`).
    fn requeue(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &LastError,
        now: DateTime<Utc>,
        keep_sending_since: bool,
    ) {
        self.update(id, now, |d| {
            d.state = State::Queued;
            d.attempts = d.attempts.saturating_sub(1);
            d.next_attempt_at = Some(at);
            d.last_error = Some(error.clone());
            if !keep_sending_since {
                d.sending_since = None;
            }
        });
    }

    fn update(&self, id: &str, now: DateTime<Utc>, f: impl FnOnce(&mut Delivery)) {
        let mut inner = self.lock();
        inner.lease_until.remove(id);
        if let Some(d) = inner.deliveries.get_mut(id) {
            f(d);
            d.updated_at = now;
        }
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[async_trait]
impl Store for MemoryStore {
    async fn enqueue(
        &self,
        new: NewDelivery,
        dedup_window: Duration,
        max_queued: u64,
    ) -> Result<Enqueued> {
        let mut inner = self.lock();
        if let Some(id) = inner.seen(new.dedup_keys(), new.received_at, dedup_window) {
            return Ok(Enqueued::Duplicate(id));
        }
        let depth = inner
            .deliveries
            .values()
            .filter(|d| matches!(d.state, State::Queued | State::Delivering))
            .count() as u64;
        if depth >= max_queued {
            return Err(super::Error::Full(depth));
        }
        let id = new.id.clone();
        inner.insert(new);
        Ok(Enqueued::Queued(id))
    }

    async fn claim(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>> {
        let mut inner = self.lock();
        let Inner {
            deliveries,
            lease_until,
            ..
        } = &mut *inner;
        let mut due: Vec<&mut Delivery> = deliveries
            .values_mut()
            .filter(|d| match d.state {
                State::Queued => d.next_attempt_at.is_none_or(|at| at <= now),
                State::Delivering => lease_until.get(&d.id).is_none_or(|until| *until <= now),
                _ => false,
            })
            .collect();
        due.sort_by_key(|d| (d.next_attempt_at, d.created_at));
        let mut claimed = Vec::new();
        for d in due.into_iter().take(limit) {
            d.state = State::Delivering;
            d.attempts += 1;
            d.next_attempt_at = None;
            d.updated_at = now;
            let until = now
                .checked_add_signed(chrono_duration(lease))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            lease_until.insert(d.id.clone(), until);
            claimed.push(d.clone());
        }
        Ok(claimed)
    }

    async fn mark_sending(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        let mut inner = self.lock();
        if let Some(d) = inner.deliveries.get_mut(id) {
            d.sending_since = Some(now);
            d.updated_at = now;
        }
        Ok(())
    }

    async fn mark_delivered(&self, id: &str, report_id: &str, now: DateTime<Utc>) -> Result<()> {
        self.update(id, now, |d| {
            d.state = State::Delivered;
            d.report_id = Some(report_id.to_owned());
            d.sending_since = None;
            d.next_attempt_at = None;
        });
        Ok(())
    }

    async fn schedule_retry(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &LastError,
        sending_since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.update(id, now, |d| {
            d.state = State::Queued;
            d.next_attempt_at = Some(at);
            d.last_error = Some(error.clone());
            d.sending_since = sending_since;
        });
        Ok(())
    }

    async fn defer(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &LastError,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.requeue(id, at, error, now, false);
        Ok(())
    }

    async fn mark_failed(&self, id: &str, error: &LastError, now: DateTime<Utc>) -> Result<()> {
        self.update(id, now, |d| {
            d.state = State::Failed;
            d.next_attempt_at = None;
            d.last_error = Some(error.clone());
            d.sending_since = None;
        });
        Ok(())
    }

    async fn release(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        let delivering = self
            .lock()
            .deliveries
            .get(id)
            .is_some_and(|d| d.state == State::Delivering);
        if delivering {
            self.update(id, now, |d| {
                d.state = State::Queued;
                d.attempts = d.attempts.saturating_sub(1);
                d.next_attempt_at = Some(now);
            });
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Delivery>> {
        Ok(self.lock().deliveries.get(id).cloned())
    }

    async fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<Delivery>> {
        let inner = self.lock();
        let mut list: Vec<Delivery> = inner
            .deliveries
            .values()
            .filter(|d| state.is_none_or(|s| d.state == s))
            .cloned()
            .collect();
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        list.truncate(limit);
        Ok(list)
    }

    async fn retry(&self, id: &str, now: DateTime<Utc>) -> Result<Option<State>> {
        let mut inner = self.lock();
        let Some(d) = inner.deliveries.get_mut(id) else {
            return Ok(None);
        };
        let was = d.state;
        if was == State::Failed {
            d.state = State::Queued;
            d.attempts = 0;
            d.sending_since = None;
            d.next_attempt_at = Some(now);
            d.updated_at = now;
        }
        Ok(Some(was))
    }

    async fn stats(&self) -> Result<QueueStats> {
        let inner = self.lock();
        let waiting = inner
            .deliveries
            .values()
            .filter(|d| matches!(d.state, State::Queued | State::Delivering));
        let mut stats = QueueStats::default();
        for d in waiting {
            stats.depth += 1;
            stats.oldest = Some(stats.oldest.map_or(d.created_at, |o| o.min(d.created_at)));
        }
        Ok(stats)
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let inner = self.lock();
        Ok(inner
            .deliveries
            .values()
            .filter(|d| d.state == State::Queued)
            .filter_map(|d| d.next_attempt_at)
            .min())
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut inner = self.lock();
        let old_deliveries = inner.deliveries.len();
        inner.deliveries.retain(|_, d| {
            !(matches!(d.state, State::Delivered | State::Ignored) && d.updated_at < before)
        });
        let old_dedup = inner.dedup.len();
        inner.dedup.retain(|_, (_, at)| *at >= before);
        Ok((old_deliveries - inner.deliveries.len() + old_dedup - inner.dedup.len()) as u64)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn add_digest_event(
        &self,
        new: NewDigestEvent,
        dedup_window: Duration,
        max_queued: u64,
    ) -> Result<Enqueued> {
        let mut inner = self.lock();
        if let Some(id) = inner.seen(new.dedup_keys(), new.received_at, dedup_window) {
            return Ok(Enqueued::Duplicate(id));
        }
        let waiting = inner
            .deliveries
            .values()
            .filter(|d| matches!(d.state, State::Queued | State::Delivering))
            .count()
            + inner.digest_events.len();
        if waiting as u64 >= max_queued {
            return Err(Error::Full(waiting as u64));
        }
        inner.claim(new.dedup_keys(), &new.id, new.received_at);
        inner.digest_events.push(DigestEvent {
            id: new.id.clone(),
            route: new.route,
            group: new.group,
            event: new.event,
            received_at: new.received_at,
        });
        Ok(Enqueued::Queued(new.id))
    }

    async fn undecodable_digest_events(
        &self,
        _route: &str,
    ) -> Result<Vec<super::UndecodableDigestEvent>> {
        // Kept as values, never encoded: nothing here can be unreadable.
        Ok(Vec::new())
    }

    async fn digest_events(&self, route: &str) -> Result<Vec<DigestEvent>> {
        let mut events: Vec<DigestEvent> = self
            .lock()
            .digest_events
            .iter()
            .filter(|e| e.route == route)
            .cloned()
            .collect();
        events.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
        Ok(events)
    }

    async fn last_digest(&self, route: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self
            .lock()
            .digest_runs
            .get(route)
            .and_then(|runs| runs.last().copied()))
    }

    async fn close_digest(
        &self,
        route: &str,
        period_end: DateTime<Utc>,
        _now: DateTime<Utc>,
        build: DigestBuilder<'_>,
    ) -> Result<Option<ClosedDigest>> {
        let mut inner = self.lock();
        let last = inner
            .digest_runs
            .get(route)
            .and_then(|runs| runs.last().copied());
        if last.is_some_and(|last| last >= period_end) {
            return Ok(None);
        }
        let (mut events, kept): (Vec<DigestEvent>, Vec<DigestEvent>) =
            std::mem::take(&mut inner.digest_events)
                .into_iter()
                .partition(|e| e.route == route && e.received_at <= period_end);
        events.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
        let deliveries = match build(&events, last) {
            Ok(deliveries) => deliveries,
            Err(e) => {
                // Nothing changes: the events go back.
                inner.digest_events = kept.into_iter().chain(events).collect();
                return Err(super::Error::Digest(e));
            }
        };
        inner.digest_events = kept;
        let ids = deliveries.iter().map(|d| d.id.clone()).collect();
        for new in deliveries {
            inner.insert(new);
        }
        inner
            .digest_runs
            .entry(route.to_owned())
            .or_default()
            .insert(period_end);
        Ok(Some(ClosedDigest {
            events: events.len() as u64,
            deliveries: ids,
        }))
    }

    fn quota(&self) -> std::sync::Arc<dyn super::QuotaStore> {
        self.quota.clone()
    }

    async fn hold(
        &self,
        id: &str,
        at: DateTime<Utc>,
        reason: &LastError,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.requeue(id, at, reason, now, true);
        Ok(())
    }
}
