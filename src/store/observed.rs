//! [`Observed`]: the store as the relay uses it — every operation's failure counted in
//! `dingtalk_relay_store_errors_total{op}`, and whether writes currently fail kept for
//! `/readyz`. While they fail, a committed probe write is tried every second, so readiness
//! recovers with the store even when no webhook arrives to find out.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prometheus::IntCounterVec;

use super::{
    ClosedDigest, Delivery, DigestBuilder, DigestEvent, Enqueued, Error, LastError, NewDelivery,
    NewDigestEvent, QueueStats, Result, State, Store,
};
use crate::dingtalk::SharedLimit;
use crate::metrics::Metrics;

/// How often a failing store is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A store whose failures are counted and remembered.
pub struct Observed {
    inner: Arc<dyn Store>,
    errors: IntCounterVec,
    /// Why the last write failed, until a write succeeds again.
    failing: Mutex<Option<String>>,
}

impl Observed {
    /// Wraps `inner`, counting into `metrics`, and starts the probe of a failing store (it
    /// stops with the store).
    pub fn new(inner: Arc<dyn Store>, metrics: &Metrics) -> Arc<Self> {
        let observed = Arc::new(Self {
            inner,
            errors: metrics.store_errors.clone(),
            failing: Mutex::new(None),
        });
        tokio::spawn(probe(Arc::downgrade(&observed)));
        observed
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a failed operation `op`; a failed write also marks the store failing. Only a
    /// write that adds rows as intake does (a webhook, the probe) clears it: a claim or an
    /// update can succeed on a full disk, and would make readiness flicker.
    fn note<T>(&self, op: &str, kind: Kind, result: Result<T>) -> Result<T> {
        match &result {
            Err(Error::Unavailable(message)) => {
                self.errors.with_label_values(&[op]).inc();
                if kind != Kind::Read {
                    let mut failing = self.failing();
                    if failing.is_none() {
                        tracing::error!(op, error = %message, "store writes fail; not ready");
                    }
                    *failing = Some(message.clone());
                }
            }
            Err(Error::Corrupt { .. }) => self.errors.with_label_values(&[op]).inc(),
            Ok(_) if kind == Kind::Intake => self.recovered(),
            _ => {}
        }
        result
    }

    fn recovered(&self) {
        if self.failing().take().is_some() {
            tracing::info!("store writes succeed again; ready");
        }
    }
}

/// What an operation tells about the store's writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Adds rows (webhooks, the probe): its success means writes work.
    Intake,
    /// Changes rows: its failure means writes fail.
    Write,
    /// Reads.
    Read,
}

/// Intake that stored a row tells writes work; a duplicate stored nothing.
fn added(result: &Result<Enqueued>) -> Kind {
    match result {
        Ok(Enqueued::Duplicate(_)) => Kind::Write,
        _ => Kind::Intake,
    }
}

/// Every [`PROBE_EVERY`], while writes fail, tries a committed write.
async fn probe(store: Weak<Observed>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        if store.failing().is_some() {
            let result = store.inner.probe_write().await;
            store.note("probe", Kind::Intake, result).ok();
        }
    }
}

#[async_trait]
impl Store for Observed {
    async fn enqueue(
        &self,
        new: NewDelivery,
        dedup_window: Duration,
        max_queued: u64,
    ) -> Result<Enqueued> {
        let result = self.inner.enqueue(new, dedup_window, max_queued).await;
        self.note("enqueue", added(&result), result)
    }

    async fn claim(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>> {
        let result = self.inner.claim(now, limit, lease).await;
        self.note("claim", Kind::Write, result)
    }

    async fn mark_sending(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        let result = self.inner.mark_sending(id, now).await;
        self.note("mark_sending", Kind::Write, result)
    }

    async fn mark_delivered(&self, id: &str, report_id: &str, now: DateTime<Utc>) -> Result<()> {
        let result = self.inner.mark_delivered(id, report_id, now).await;
        self.note("mark_delivered", Kind::Write, result)
    }

    async fn schedule_retry(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &LastError,
        sending_since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let result = self
            .inner
            .schedule_retry(id, at, error, sending_since, now)
            .await;
        self.note("schedule_retry", Kind::Write, result)
    }

    async fn defer(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &LastError,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let result = self.inner.defer(id, at, error, now).await;
        self.note("defer", Kind::Write, result)
    }

    async fn hold(
        &self,
        id: &str,
        at: DateTime<Utc>,
        reason: &LastError,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let result = self.inner.hold(id, at, reason, now).await;
        self.note("hold", Kind::Write, result)
    }

    // The quota ledger is the inner store's own (its counting is best effort: a failed count
    // never stops a delivery).
    fn quota(&self) -> Arc<dyn super::QuotaStore> {
        self.inner.quota()
    }

    async fn mark_failed(&self, id: &str, error: &LastError, now: DateTime<Utc>) -> Result<()> {
        let result = self.inner.mark_failed(id, error, now).await;
        self.note("mark_failed", Kind::Write, result)
    }

    async fn release(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        let result = self.inner.release(id, now).await;
        self.note("release", Kind::Write, result)
    }

    async fn get(&self, id: &str) -> Result<Option<Delivery>> {
        let result = self.inner.get(id).await;
        self.note("get", Kind::Read, result)
    }

    async fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<Delivery>> {
        let result = self.inner.list(state, limit).await;
        self.note("list", Kind::Read, result)
    }

    async fn retry(&self, id: &str, now: DateTime<Utc>) -> Result<Option<State>> {
        let result = self.inner.retry(id, now).await;
        self.note("retry", Kind::Write, result)
    }

    async fn stats(&self) -> Result<QueueStats> {
        let result = self.inner.stats().await;
        self.note("stats", Kind::Read, result)
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let result = self.inner.next_due().await;
        self.note("next_due", Kind::Read, result)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        let result = self.inner.prune(before).await;
        self.note("prune", Kind::Write, result)
    }

    async fn ping(&self) -> Result<()> {
        let result = self.inner.ping().await;
        self.note("ping", Kind::Read, result)
    }

    async fn add_digest_event(
        &self,
        new: NewDigestEvent,
        dedup_window: Duration,
        max_queued: u64,
    ) -> Result<Enqueued> {
        let result = self
            .inner
            .add_digest_event(new, dedup_window, max_queued)
            .await;
        self.note("add_digest_event", added(&result), result)
    }

    async fn undecodable_digest_events(
        &self,
        route: &str,
    ) -> Result<Vec<super::UndecodableDigestEvent>> {
        let result = self.inner.undecodable_digest_events(route).await;
        self.note("undecodable_digest_events", Kind::Read, result)
    }

    async fn digest_events(&self, route: &str) -> Result<Vec<DigestEvent>> {
        let result = self.inner.digest_events(route).await;
        self.note("digest_events", Kind::Read, result)
    }

    async fn last_digest(&self, route: &str) -> Result<Option<DateTime<Utc>>> {
        let result = self.inner.last_digest(route).await;
        self.note("last_digest", Kind::Read, result)
    }

    async fn close_digest(
        &self,
        route: &str,
        period_end: DateTime<Utc>,
        now: DateTime<Utc>,
        build: DigestBuilder<'_>,
    ) -> Result<Option<ClosedDigest>> {
        let result = self.inner.close_digest(route, period_end, now, build).await;
        self.note("close_digest", Kind::Write, result)
    }

    fn shared_limit(&self) -> Option<Arc<dyn SharedLimit>> {
        self.inner.shared_limit()
    }

    async fn probe_write(&self) -> Result<()> {
        let result = self.inner.probe_write().await;
        self.note("probe", Kind::Intake, result)
    }

    fn problem(&self) -> Option<String> {
        self.inner
            .problem()
            .or_else(|| self.failing().clone().map(|m| strip(&m).to_owned()))
    }
}

/// A database error as readiness says it: `database or disk is full`, not sqlx's wrapping.
fn strip(message: &str) -> &str {
    let message = message
        .strip_prefix("error returned from database: ")
        .unwrap_or(message);
    match message.strip_prefix("(code: ") {
        Some(rest) => rest.split_once(") ").map_or(message, |(_, m)| m),
        None => message,
    }
}
