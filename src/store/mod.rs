//! Store: where accepted deliveries live until they are delivered or given up — the queue,
//! each delivery's state, and the dedup keys. One interface ([`Store`]), several backends
//! selected by `store.url`: `memory:` (tests; loses everything on restart), `sqlite://` and
//! `postgres://` (shared by several replicas).

mod digest_sql;
mod file_watch;
mod memory;
mod observed;
mod postgres;
mod quota;
mod sql;
mod sqlite;
mod stored;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{StoreKind, StoreSettings, store_kind};
use crate::dingtalk::SharedLimit;
use crate::mapping::ReportDraft;
use crate::sources::Event;

pub use memory::MemoryStore;
pub use observed::Observed;
pub use postgres::PostgresStore;
pub use quota::{Exhausted, MemoryQuota, MonthUse, QuotaCalls, QuotaStore, TemplateKey};
pub use sqlite::SqliteStore;

/// Store results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store cannot be reached or failed (webhooks get 503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The queue holds `store.max_queued` deliveries already (webhooks get 503).
    #[error("queue is full ({0} deliveries waiting)")]
    Full(u64),
    /// A digest could not be built (a field template failed); nothing was changed.
    #[error("building the digest failed: {0}")]
    Digest(String),
    /// A stored row could not be read back.
    #[error("stored delivery {id} is unreadable: {message}")]
    Corrupt {
        /// Delivery id.
        id: String,
        /// What failed.
        message: String,
    },
}

/// The state of a delivery (spec §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for its (next) attempt.
    Queued,
    /// A worker holds it.
    Delivering,
    /// The report exists.
    Delivered,
    /// Given up; needs an operator (`POST /v1/deliveries/{id}/retry`).
    Failed,
    /// Accepted but deliberately not reported.
    Ignored,
}

impl State {
    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Delivering => "delivering",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Ignored => "ignored",
        }
    }

    /// Parses a state name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "queued" => Self::Queued,
            "delivering" => Self::Delivering,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            "ignored" => Self::Ignored,
            _ => return None,
        })
    }
}

/// A delivery to store.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Its id (UUID v7).
    pub id: String,
    /// Route name.
    pub route: String,
    /// Dedup key (source delivery id, or route + body hash).
    pub dedup_key: String,
    /// The route + body hash as a second dedup key when `dedup_key` is the source's delivery
    /// id (`None` when `dedup_key` already is the hash): a webhook is a duplicate when either
    /// key was seen, so a replay with a new id header is still one (spec §5).
    pub body_key: Option<String>,
    /// The report to create.
    pub draft: ReportDraft,
    /// When the webhook was accepted.
    pub received_at: DateTime<Utc>,
}

impl NewDelivery {
    /// Its dedup keys: `dedup_key`, then `body_key` when there is one.
    pub fn dedup_keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.dedup_key.as_str()).chain(self.body_key.as_deref())
    }
}

/// The last error of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// DingTalk's effective errcode, when it gave one.
    pub errcode: Option<i64>,
    /// What went wrong (`ambiguous: …` for a create whose outcome is unknown).
    pub errmsg: String,
}

/// A stored delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Id.
    pub id: String,
    /// Route name.
    pub route: String,
    /// Dedup key.
    pub dedup_key: String,
    /// State.
    pub state: State,
    /// Attempts started so far.
    pub attempts: u32,
    /// When the next attempt is due (queued only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When a create request was last started and its outcome not yet recorded: set means a
    /// previous worker may have created the report (it died or lost the answer).
    pub sending_since: Option<DateTime<Utc>>,
    /// Last error.
    pub last_error: Option<LastError>,
    /// DingTalk report id once delivered.
    pub report_id: Option<String>,
    /// The report to create.
    pub draft: ReportDraft,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What `enqueue` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored and queued under this id.
    Queued(String),
    /// The dedup key was seen within the window: the first delivery's id.
    Duplicate(String),
}

/// Queue gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Deliveries queued or delivering.
    pub depth: u64,
    /// Acceptance time of the oldest of them.
    pub oldest: Option<DateTime<Utc>>,
}

/// An event of a digest route to keep until the route's next digest.
#[derive(Debug, Clone)]
pub struct NewDigestEvent {
    /// Its id (UUID v7).
    pub id: String,
    /// Route name.
    pub route: String,
    /// The group whose report it goes into.
    pub group: String,
    /// Dedup key, as for deliveries.
    pub dedup_key: String,
    /// Second dedup key (route + body hash), as for deliveries.
    pub body_key: Option<String>,
    /// The event.
    pub event: Event,
    /// When the webhook was accepted.
    pub received_at: DateTime<Utc>,
}

impl NewDigestEvent {
    /// Its dedup keys: `dedup_key`, then `body_key` when there is one.
    pub fn dedup_keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.dedup_key.as_str()).chain(self.body_key.as_deref())
    }
}

/// A kept digest event.
#[derive(Debug, Clone, PartialEq)]
pub struct DigestEvent {
    /// Id.
    pub id: String,
    /// Route name.
    pub route: String,
    /// Group.
    pub group: String,
    /// The event.
    pub event: Event,
    /// Accepted at.
    pub received_at: DateTime<Utc>,
}

/// A kept digest event this relay cannot read: shown in the digest preview, and made a
/// `failed` delivery with the same id and reason when its digest is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndecodableDigestEvent {
    /// Id (the failed delivery's id once the digest is made).
    pub id: String,
    /// Why it cannot be read: `undecodable: event: …`.
    pub reason: String,
}

/// What closing a digest did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedDigest {
    /// Events folded (and removed from the pending ones).
    pub events: u64,
    /// Ids of the deliveries queued (one per report).
    pub deliveries: Vec<String>,
}

/// Turns a period's events (and the end of the previous digest, if any) into the deliveries
/// to queue; `Err` aborts the close with nothing changed.
pub type DigestBuilder<'a> = &'a (
        dyn Fn(&[DigestEvent], Option<DateTime<Utc>>) -> Result<Vec<NewDelivery>, String>
            + Send
            + Sync
    );

/// The delivery store. Implementations are safe to share between tasks and, for the durable
/// ones, between processes.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a delivery unless its dedup key was seen within `dedup_window`; refuses with
    /// [`Error::Full`] when `max_queued` deliveries are waiting. Durable once it returns.
    async fn enqueue(
        &self,
        new: NewDelivery,
        dedup_window: Duration,
        max_queued: u64,
    ) -> Result<Enqueued>;
    /// Takes up to `limit` deliveries that are due (queued with `next_attempt_at <= now`, or
    /// delivering with an expired lease), marks them delivering until `now + lease` and counts
    /// an attempt.
    async fn claim(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>>;
    /// Records that a create request is about to be sent (see [`Delivery::sending_since`]).
    async fn mark_sending(&self, id: &str, now: DateTime<Utc>) -> Result<()>;
    /// The report was created.
    async fn mark_delivered(&self, id: &str, report_id: &str, now: DateTime<Utc>) -> Result<()>;
    /// Back to the queue until `at`, keeping the error. `sending_since` stays set when the
    /// last create's outcome is unknown, so the next attempt reconciles before sending.
    async fn schedule_retry(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &LastError,
        sending_since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Back to the queue until `at` without spending the attempt (the cause is not this
    /// delivery's: the app's credentials, the monthly quota), keeping the error.
    async fn defer(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &LastError,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Given up.
    async fn mark_failed(&self, id: &str, error: &LastError, now: DateTime<Utc>) -> Result<()>;
    /// Returns a claimed delivery unworked (shutdown): queued again, the attempt not counted.
    async fn release(&self, id: &str, now: DateTime<Utc>) -> Result<()>;
    /// One delivery.
    async fn get(&self, id: &str) -> Result<Option<Delivery>>;
    /// Deliveries, newest first, optionally in one state.
    async fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<Delivery>>;
    /// Puts a failed delivery back in the queue now, with a fresh attempt count (an operator
    /// has checked it, so an unknown earlier outcome is forgotten). Returns the
    /// state it had, or `None` when there is no such delivery.
    async fn retry(&self, id: &str, now: DateTime<Utc>) -> Result<Option<State>>;
    /// Queue depth and age.
    async fn stats(&self) -> Result<QueueStats>;
    /// When the earliest queued delivery is due.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>>;
    /// Deletes delivered deliveries and dedup keys older than `before`; returns how many rows.
    async fn prune(&self, before: DateTime<Utc>) -> Result<u64>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<()>;
    /// Keeps an event for its route's next digest unless its dedup key was seen within
    /// `dedup_window` (the same keys as deliveries); refuses with [`Error::Full`] when
    /// `max_queued` deliveries and kept events together are waiting. Durable once it returns.
    async fn add_digest_event(
        &self,
        new: NewDigestEvent,
        dedup_window: Duration,
        max_queued: u64,
    ) -> Result<Enqueued>;
    /// The events `route` keeps for its next digest, oldest first.
    async fn digest_events(&self, route: &str) -> Result<Vec<DigestEvent>>;
    /// The events `route` keeps that this relay cannot read (left out of
    /// [`Store::digest_events`]), oldest first.
    async fn undecodable_digest_events(&self, route: &str) -> Result<Vec<UndecodableDigestEvent>>;
    /// The scheduled time of `route`'s latest digest.
    async fn last_digest(&self, route: &str) -> Result<Option<DateTime<Utc>>>;
    /// Makes `route`'s digest for the period ending at `period_end`, once: in one transaction
    /// it records the digest, hands every kept event received up to `period_end` to `build`,
    /// queues the deliveries it returns and removes the events. Returns `None`, changing
    /// nothing, when this digest (or a later one) was already made, by this process or
    /// another replica.
    async fn close_digest(
        &self,
        route: &str,
        period_end: DateTime<Utc>,
        now: DateTime<Utc>,
        build: DigestBuilder<'_>,
    ) -> Result<Option<ClosedDigest>>;
    /// DingTalk's rate limit shared through this store by every replica using it, when the
    /// store is shared (PostgreSQL); `None` keeps the limit in each process.
    fn shared_limit(&self) -> Option<Arc<dyn SharedLimit>> {
        None
    }
    /// A small committed write, to find out whether writes work again after they failed.
    async fn probe_write(&self) -> Result<()> {
        Ok(())
    }
    /// Why the store refuses or fails writes right now (e.g. `database or disk is full`, below
    /// `store.min_free_bytes`, the database file replaced), for `/readyz`; `None` when it
    /// takes writes.
    fn problem(&self) -> Option<String> {
        None
    }
    /// The quota ledger kept in this store (shared by every replica on PostgreSQL).
    fn quota(&self) -> Arc<dyn QuotaStore>;
    /// Back to the queue until `at` without spending the attempt, keeping `sending_since` and
    /// noting why (the monthly quota holds it): unlike [`Store::defer`], an earlier create
    /// whose outcome is unknown is still reconciled before anything is sent.
    async fn hold(
        &self,
        id: &str,
        at: DateTime<Utc>,
        reason: &LastError,
        now: DateTime<Utc>,
    ) -> Result<()>;
}

/// Opens the store `url` selects (creating and migrating a SQLite file as needed).
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    open_with(url, 0).await
}

/// Opens the store `settings.url` selects, with its free-space floor.
pub async fn open_settings(settings: &StoreSettings) -> Result<Arc<dyn Store>> {
    open_with(&settings.url, settings.min_free_bytes).await
}

async fn open_with(url: &str, min_free_bytes: u64) -> Result<Arc<dyn Store>> {
    match store_kind(url).map_err(Error::Unavailable)? {
        StoreKind::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreKind::Sqlite(path) => Ok(Arc::new(
            SqliteStore::open_with(&path, min_free_bytes).await?,
        )),
        StoreKind::Postgres(url) => Ok(Arc::new(PostgresStore::open(&url).await?)),
    }
}
