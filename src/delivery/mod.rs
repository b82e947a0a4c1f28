//! Delivery: the workers that take due deliveries from the [`Store`], create their reports
//! through the [`DingTalkClient`], and record the outcome — delivered, retried with
//! exponential backoff and jitter, or failed. A create whose answer was lost is reconciled with
//! report/list before anything is resent. Waiters (`?wait=`) are told of final outcomes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::DeliverySettings;
use crate::dingtalk::{self, DingTalkClient, Disposition, Reconciliation};
use crate::metrics::Metrics;
use crate::quota::{self, Decision, Quota};
use crate::state::SharedRuntime;
use crate::store::{Delivery, LastError, State, Store};

/// A final outcome, for `?wait=` callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Created: the report id.
    Delivered(String),
    /// Given up: the last error.
    Failed(LastError),
}

/// Wakes the workers and tells waiters about outcomes. Cheap to clone.
#[derive(Clone, Default)]
pub struct DeliveryHandle {
    wake: Arc<Notify>,
    waiters: Arc<Mutex<HashMap<String, Vec<oneshot::Sender<Outcome>>>>>,
}

impl DeliveryHandle {
    /// A new handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tells the workers a delivery was queued.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Registers interest in `id`'s final outcome (call before checking the store, so nothing
    /// is missed in between).
    pub fn subscribe(&self, id: &str) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.lock().entry(id.to_owned()).or_default().push(tx);
        rx
    }

    /// Forgets waiters of `id` that gave up.
    pub fn unsubscribe(&self, id: &str) {
        let mut waiters = self.lock();
        if let Some(list) = waiters.get_mut(id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiters.remove(id);
            }
        }
    }

    fn publish(&self, id: &str, outcome: &Outcome) {
        let senders = self.lock().remove(id).unwrap_or_default();
        for tx in senders {
            let _ = tx.send(outcome.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<oneshot::Sender<Outcome>>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The outcome a stored delivery already has, if final.
pub fn final_outcome(delivery: &Delivery) -> Option<Outcome> {
    match delivery.state {
        State::Delivered => Some(Outcome::Delivered(
            delivery.report_id.clone().unwrap_or_default(),
        )),
        State::Failed => Some(Outcome::Failed(delivery.last_error.clone().unwrap_or(
            LastError {
                errcode: None,
                errmsg: "failed".to_owned(),
            },
        ))),
        _ => None,
    }
}

/// Everything a worker needs.
#[derive(Clone)]
pub struct Worker {
    /// The queue.
    pub store: Arc<dyn Store>,
    /// The current configuration and DingTalk client (swapped on reload).
    pub runtime: SharedRuntime,
    /// Series to update.
    pub metrics: Metrics,
    /// Wake-ups and waiters.
    pub handle: DeliveryHandle,
    /// How long a claimed delivery is held before another worker may take it.
    pub lease: Duration,
    /// The monthly DingTalk call budget: whether a delivery may spend a call now.
    pub quota: Arc<Quota>,
}

/// How often the queue is checked when nothing wakes the workers (other replicas' work,
/// retries coming due).
const POLL: Duration = Duration::from_secs(1);
/// First wait before writing a created report's id again after the store failed it; doubled
/// up to [`MARK_DELIVERED_RETRY_MAX`].
const MARK_DELIVERED_RETRY: Duration = Duration::from_millis(50);
/// Longest wait between two tries of that write.
const MARK_DELIVERED_RETRY_MAX: Duration = Duration::from_secs(2);
/// The least pause after a create whose outcome is unknown, before report/list is asked: long
/// enough for a slow create to land.
const AMBIGUOUS_PAUSE: Duration = Duration::from_secs(2);
/// How often delivered rows and old dedup keys are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

impl Worker {
    fn client(&self) -> DingTalkClient {
        self.runtime.load().client.clone()
    }

    fn delivery_settings(&self) -> DeliverySettings {
        self.runtime.load().settings.delivery.clone()
    }

    /// Runs until `cancel` fires, then stops claiming, lets in-flight deliveries finish (each
    /// is bounded by the DingTalk timeout) and returns.
    pub async fn run(self, cancel: CancellationToken) {
        // Concurrency is fixed at start; a reload that changes it takes effect on restart.
        let concurrency = self.delivery_settings().concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let mut tasks = JoinSet::new();
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if cancel.is_cancelled() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            if tokio::time::Instant::now() >= next_prune {
                next_prune += PRUNE_EVERY;
                self.prune().await;
            }
            let free = permits.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                match self.store.claim(Utc::now(), free, self.lease).await {
                    Ok(claimed) => claimed,
                    Err(e) => {
                        tracing::error!(error = %e, "claiming deliveries failed");
                        Vec::new()
                    }
                }
            };
            let idle = claimed.is_empty();
            for delivery in claimed {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let worker = self.clone();
                let cancel = cancel.clone();
                tasks.spawn(async move {
                    let route = delivery.route.clone();
                    quota::spending_for(&route, worker.deliver(delivery, &cancel)).await;
                    drop(permit);
                });
            }
            if permits.available_permits() == 0 {
                // Every worker is busy, so nothing can be claimed until one finishes: a
                // webhook's wake-up is not worth a store query (during intake bursts that
                // was one query per webhook).
                tokio::select! {
                    () = cancel.cancelled() => break,
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            } else if idle {
                let wait = self.idle_wait().await;
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = self.handle.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
            }
        }
        tracing::info!(in_flight = tasks.len(), "delivery workers stopping");
        while tasks.join_next().await.is_some() {}
    }

    async fn idle_wait(&self) -> Duration {
        match self.store.next_due().await {
            Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or_default().min(POLL),
            _ => POLL,
        }
    }

    async fn prune(&self) {
        let window = chrono::Duration::from_std(self.delivery_settings().dedup_window)
            .unwrap_or(chrono::Duration::MAX);
        let before = Utc::now().checked_sub_signed(window).unwrap_or_default();
        match self.store.prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned finished deliveries and old dedup keys"),
            Err(e) => tracing::warn!(error = %e, "pruning failed"),
        }
    }

    /// Works one claimed delivery to its next state.
    #[tracing::instrument(skip_all, fields(delivery_id = %delivery.id, route = %delivery.route, attempt = delivery.attempts))]
    async fn deliver(&self, delivery: Delivery, cancel: &CancellationToken) {
        if cancel.is_cancelled() {
            self.release(&delivery).await;
            return;
        }
        if self.held_for_quota(&delivery).await {
            return;
        }
        // One snapshot for the whole attempt: a reload meanwhile must not mix two clients.
        let client = self.client();
        let draft = &delivery.draft;
        let template = match client
            .resolve_template(&draft.app, &draft.template, &draft.author)
            .await
        {
            Ok(t) => t,
            Err(e) => return self.settle(&delivery, e, None).await,
        };
        let param = match dingtalk::create_param(draft, &template) {
            Ok(p) => p,
            Err(e) => return self.settle(&delivery, e, None).await,
        };
        if let Some(since) = delivery.sending_since {
            // A previous attempt may have created the report: look before sending again.
            match self
                .reconcile(&client, &delivery, &template.name, &param, since)
                .await
            {
                Some(Reconciliation::Found(report_id)) => {
                    tracing::info!(report_id, "report found by reconciliation; not resending");
                    return self.delivered(&delivery, Some(&report_id), cancel).await;
                }
                Some(Reconciliation::Absent) => {}
                Some(Reconciliation::Undecided(_)) | None => return,
            }
        }
        let started = Utc::now();
        if let Err(e) = self.store.mark_sending(&delivery.id, started).await {
            tracing::error!(error = %e, "could not record the attempt; trying later");
            self.release(&delivery).await;
            return;
        }
        match client.create_report(&draft.app, &param).await {
            Ok(created) => {
                self.delivered(&delivery, created.report_id.as_deref(), cancel)
                    .await
            }
            Err(e) => self.settle(&delivery, e, Some(started)).await,
        }
    }

    /// Keeps the delivery queued, without spending its attempt, when the month's quota is
    /// exhausted or its route holds at the reserve. `true` when it was held.
    async fn held_for_quota(&self, delivery: &Delivery) -> bool {
        let policy = self
            .runtime
            .load()
            .settings
            .routes
            .get(&delivery.route)
            .map(|r| r.on_quota_low)
            .unwrap_or_default();
        let (reason, wait) = match self.quota.decide(&delivery.route, policy).await {
            Ok(Decision::Send) => return false,
            Ok(Decision::Hold { reason, wait }) => (reason, wait),
            Err(e) => {
                // Not knowing the count is no reason to stop: DingTalk still says 90020.
                tracing::warn!(error = %e, "quota unknown (store); sending");
                return false;
            }
        };
        let now = Utc::now();
        self.count(delivery, "held");
        let last = LastError {
            errcode: None,
            errmsg: reason,
        };
        if let Err(e) = self
            .store
            .hold(&delivery.id, later(now, wait), &last, now)
            .await
        {
            tracing::error!(error = %e, "could not hold the delivery; its lease will expire");
        }
        true
    }

    /// Asks report/list whether the report exists. `None` (or `Undecided`): the delivery
    /// has been settled here — parked as `failed` (`ambiguous`) when the listing cannot
    /// tell, report/list is refused for good or kept failing past [`Self::attempt_budget`],
    /// or held (no attempt spent, keeping the attempt's time, so the next attempt reconciles
    /// again) after a transient error.
    async fn reconcile(
        &self,
        client: &DingTalkClient,
        delivery: &Delivery,
        template_name: &str,
        param: &dingtalk::CreateReportParam,
        since: DateTime<Utc>,
    ) -> Option<Reconciliation> {
        let found = client
            .find_report(
                &delivery.draft.app,
                template_name,
                param,
                since.timestamp_millis(),
            )
            .await;
        let (errcode, why) = match found {
            Ok(Reconciliation::Undecided(why)) => (None, why),
            Ok(found) => return Some(found),
            Err(e) => {
                // Measured from the create whose outcome is unknown, not from acceptance: a
                // delivery held for the quota for days is not out of time when it is sent.
                let age = (Utc::now() - since).to_std().unwrap_or_default();
                let transient = match e.disposition(true) {
                    Disposition::Retry => Some(self.age_backoff(age, e.min_backoff())),
                    Disposition::Defer(wait) => Some(wait.max(self.age_backoff(age, None))),
                    _ => None,
                };
                let budget = self.attempt_budget();
                match transient {
                    Some(wait) if age < budget => {
                        // Not a verdict: look again later, without spending a create attempt
                        // (nothing is sent meanwhile) and still marked as possibly sent.
                        let last = LastError {
                            errcode: e.code(),
                            errmsg: format!(
                                "ambiguous: a create request may have reached DingTalk; report/list failed for now ({}), will look again",
                                e.message()
                            ),
                        };
                        self.hold_for_list(delivery, &last, wait).await;
                        return None;
                    }
                    Some(_) => (
                        e.code(),
                        format!(
                            "report/list kept failing for {}s, longer than the attempt budget ({}s; last: {})",
                            age.as_secs(),
                            budget.as_secs(),
                            e.message()
                        ),
                    ),
                    None => (
                        e.code(),
                        format!("report/list could not tell ({})", e.message()),
                    ),
                }
            }
        };
        tracing::warn!(reason = %why, "cannot tell whether the report was created");
        self.count(delivery, "ambiguous");
        let error = LastError {
            errcode,
            errmsg: format!(
                "ambiguous: a create request may have reached DingTalk and {why}; check the author's reports, then retry or leave it"
            ),
        };
        self.failed(delivery, error).await;
        None
    }

    /// Records a created report. A failing store is retried with the report id kept (never a
    /// new create) for half the lease, or until shutdown; after that the row still says
    /// sending, so whoever claims it next reconciles with report/list rather than sending
    /// again. `report_id` `None`: DingTalk said `errcode 0` without a usable id; the delivery
    /// is delivered all the same (never resent), with an empty report id.
    async fn delivered(
        &self,
        delivery: &Delivery,
        report_id: Option<&str>,
        cancel: &CancellationToken,
    ) {
        if report_id.is_none() {
            tracing::warn!("report created, but DingTalk gave no usable report id");
            self.count(delivery, "delivered_without_id");
        }
        let report_id = report_id.unwrap_or_default();
        let now = Utc::now();
        let deadline = tokio::time::Instant::now() + self.lease / 2;
        let mut wait = MARK_DELIVERED_RETRY;
        while let Err(e) = self
            .store
            .mark_delivered(&delivery.id, report_id, Utc::now())
            .await
        {
            let give_up = tokio::time::Instant::now() + wait >= deadline;
            if give_up || cancel.is_cancelled() {
                tracing::error!(error = %e, report_id, "report created but not recorded; it will be reconciled");
                return;
            }
            tracing::warn!(error = %e, report_id, retry_in = ?wait, "report created but not recorded yet; retrying the write");
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(MARK_DELIVERED_RETRY_MAX);
        }
        self.count(delivery, "delivered");
        let latency = (now - delivery.created_at).to_std().unwrap_or_default();
        self.metrics.delivery_latency.observe(latency.as_secs_f64());
        tracing::info!(report_id, "report created");
        self.handle
            .publish(&delivery.id, &Outcome::Delivered(report_id.to_owned()));
    }

    /// Decides what an error means for the delivery: retry later, reconcile, or give up.
    async fn settle(
        &self,
        delivery: &Delivery,
        error: dingtalk::Error,
        sent_at: Option<DateTime<Utc>>,
    ) {
        let last = LastError {
            errcode: error.code(),
            errmsg: error.message(),
        };
        let create_sent = error.api() == Some(dingtalk::api::REPORT_CREATE);
        match error.disposition(false) {
            // gettoken or getbyname failed for now: the create was not sent, so this is no
            // verdict on the delivery and spends no attempt.
            Disposition::Retry if !create_sent => {
                let age = (Utc::now() - delivery.created_at)
                    .to_std()
                    .unwrap_or_default();
                let wait = self.age_backoff(age, error.min_backoff());
                self.defer(delivery, &last, wait).await;
            }
            Disposition::Retry if delivery.attempts < self.delivery_settings().max_attempts => {
                let wait = self.backoff(delivery.attempts, error.min_backoff());
                self.retry_later(delivery, &last, wait, None).await;
            }
            Disposition::Retry => {
                let last = LastError {
                    errmsg: format!(
                        "gave up after {} attempts: {}",
                        delivery.attempts, last.errmsg
                    ),
                    ..last
                };
                self.failed(delivery, last).await;
            }
            Disposition::Ambiguous => {
                // Do not resend now: the next attempt first asks report/list, after a pause
                // long enough for a slow create to land (and an IP ban to end).
                self.count(delivery, "ambiguous");
                let last = LastError {
                    errmsg: format!("ambiguous: {}", last.errmsg),
                    ..last
                };
                let at_least = error.min_backoff().unwrap_or_default().max(AMBIGUOUS_PAUSE);
                let wait = self.backoff(delivery.attempts, Some(at_least));
                self.retry_later(delivery, &last, wait, sent_at).await;
            }
            Disposition::Defer(wait) => self.defer(delivery, &last, wait).await,
            // The client already refreshed the token and retried once.
            Disposition::RefreshToken | Disposition::Permanent => {
                self.failed(delivery, last).await;
            }
        }
    }

    /// Queues the delivery again in `wait` without spending its attempt (and forgetting the
    /// attempt's time: nothing was sent).
    async fn defer(&self, delivery: &Delivery, last: &LastError, wait: Duration) {
        let now = Utc::now();
        let at = later(now, wait);
        tracing::warn!(error = %last.errmsg, errcode = ?last.errcode, retry_in = ?wait, "delivery waits: DingTalk cannot be used for now");
        self.count(delivery, "deferred");
        if let Err(e) = self.store.defer(&delivery.id, at, last, now).await {
            tracing::error!(error = %e, "could not defer the delivery; its lease will expire");
        }
    }

    /// Queues the delivery again in `wait` without spending its attempt and keeping its
    /// `sending_since`, so the next attempt asks report/list again before any create.
    async fn hold_for_list(&self, delivery: &Delivery, last: &LastError, wait: Duration) {
        let now = Utc::now();
        tracing::warn!(error = %last.errmsg, errcode = ?last.errcode, retry_in = ?wait, "report/list failed for now; will look again");
        self.count(delivery, "deferred");
        if let Err(e) = self
            .store
            .hold(&delivery.id, later(now, wait), last, now)
            .await
        {
            tracing::error!(error = %e, "could not hold the delivery; its lease will expire");
        }
    }

    async fn retry_later(
        &self,
        delivery: &Delivery,
        last: &LastError,
        wait: Duration,
        sending_since: Option<DateTime<Utc>>,
    ) {
        let now = Utc::now();
        let at = later(now, wait);
        tracing::warn!(error = %last.errmsg, errcode = ?last.errcode, retry_in = ?wait, "delivery failed; will retry");
        self.count(delivery, "retried");
        if let Err(e) = self
            .store
            .schedule_retry(&delivery.id, at, last, sending_since, now)
            .await
        {
            tracing::error!(error = %e, "could not schedule the retry; the lease will expire and it will be retried");
        }
    }

    async fn failed(&self, delivery: &Delivery, last: LastError) {
        tracing::error!(error = %last.errmsg, errcode = ?last.errcode, "delivery failed for good");
        self.count(delivery, "failed");
        if let Err(e) = self
            .store
            .mark_failed(&delivery.id, &last, Utc::now())
            .await
        {
            tracing::error!(error = %e, "could not record the failure");
        }
        self.handle.publish(&delivery.id, &Outcome::Failed(last));
    }

    async fn release(&self, delivery: &Delivery) {
        if let Err(e) = self.store.release(&delivery.id, Utc::now()).await {
            tracing::warn!(error = %e, "could not release the delivery; its lease will expire");
        }
    }

    fn count(&self, delivery: &Delivery, outcome: &str) {
        self.metrics
            .deliveries
            .with_label_values(&[delivery.route.as_str(), outcome])
            .inc();
    }

    /// The backoff of a retry that spends no attempt, so the attempt count cannot grow it:
    /// the age of what is retried does (a quarter of it, within initial..max backoff), so a
    /// long outage is not polled every second; at least what DingTalk asked for.
    fn age_backoff(&self, age: Duration, at_least: Option<Duration>) -> Duration {
        let settings = self.delivery_settings();
        (age / 4)
            .clamp(
                settings.initial_backoff,
                settings.max_backoff.max(settings.initial_backoff),
            )
            .max(at_least.unwrap_or_default())
    }

    /// How long after an unknown create transient report/list errors are retried without
    /// spending attempts before the delivery is parked as `ambiguous`: the longest its attempt
    /// budget could have taken — the create's timeout, then `max_attempts` waits of the
    /// longest backoff (at least the ambiguous pause each). Generous on purpose: waiting
    /// longer sends nothing, and as the waits grow to `max_backoff` it costs only about
    /// `max_attempts` report/list calls.
    fn attempt_budget(&self) -> Duration {
        let runtime = self.runtime.load();
        let settings = &runtime.settings;
        attempt_budget(
            settings.dingtalk.timeout,
            settings.delivery.max_backoff.max(AMBIGUOUS_PAUSE),
            settings.delivery.max_attempts,
        )
    }

    /// `initial_backoff × 2^(attempt−1)`, capped at `max_backoff`, with ±20 % jitter, and at
    /// least what DingTalk asked for.
    fn backoff(&self, attempt: u32, at_least: Option<Duration>) -> Duration {
        let settings = self.delivery_settings();
        backoff(
            settings.initial_backoff,
            settings.max_backoff,
            attempt,
            at_least,
            rand::rng().random_range(0.8..=1.2),
        )
    }
}

/// `now + wait`, saturating far in the future instead of overflowing.
fn later(now: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(wait)
        .ok()
        .and_then(|w| now.checked_add_signed(w))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The backoff schedule, with the jitter factor given (pure, for tests).
pub fn backoff(
    initial: Duration,
    max: Duration,
    attempt: u32,
    at_least: Option<Duration>,
    jitter: f64,
) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exponent).min(max);
    let jittered = Duration::try_from_secs_f64(base.as_secs_f64() * jitter.clamp(0.0, 2.0))
        .unwrap_or(max)
        .min(max);
    jittered.max(at_least.unwrap_or_default())
}

/// `timeout + max_attempts × longest_wait`, saturating (pure, for tests).
pub fn attempt_budget(timeout: Duration, longest_wait: Duration, max_attempts: u32) -> Duration {
    timeout.saturating_add(longest_wait.saturating_mul(max_attempts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempt_budget_is_the_timeout_and_the_longest_waits() {
        let s = Duration::from_secs;
        assert_eq!(attempt_budget(s(10), s(600), 0), s(10));
        assert_eq!(attempt_budget(s(10), s(600), 4), s(2410));
        assert_eq!(attempt_budget(s(10), Duration::MAX, 2), Duration::MAX);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        let cases = [
            (1, None, 1.0, s(1)),
            (2, None, 1.0, s(2)),
            (5, None, 1.0, s(16)),
            (20, None, 1.0, s(600)),
            (20, None, 1.2, s(600)),
            (3, None, 0.8, Duration::from_millis(3200)),
            (1, Some(s(300)), 1.0, s(300)),
            (0, None, 1.0, s(1)),
        ];
        for (attempt, at_least, jitter, expected) in cases {
            assert_eq!(
                backoff(s(1), s(600), attempt, at_least, jitter),
                expected,
                "attempt {attempt}"
            );
        }
    }
}
