//! `sqlite://PATH` — the embedded default store: one file in WAL mode, created and migrated at
//! startup (migrations are compiled into the binary). Writes go through one connection so
//! transactions never deadlock; reads use a small pool. Webhooks are committed in groups. `synchronous=FULL`: a committed
//! delivery survives `kill -9` and power loss.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot};

use super::file_watch::FileWatch;
use super::sql::{COLUMNS, claim_statements, from_ms, millis, ms, row_to_delivery, unavailable};
use super::{
    ClosedDigest, Delivery, DigestBuilder, DigestEvent, Enqueued, Error, LastError, NewDelivery,
    NewDigestEvent, QueueStats, Result, State, Store,
};

/// The SQLite store.
pub struct SqliteStore {
    writer: SqlitePool,
    /// `PRAGMA max_page_count` for every writer connection, 0 for SQLite's own (see
    /// [`SqliteStore::limit_pages`]).
    page_limit: Arc<AtomicU64>,
    reader: SqlitePool,
    intake: mpsc::Sender<EnqueueRequest>,
    claim: [String; 2],
    /// The file's identity and free space (`store.min_free_bytes`).
    watch: Arc<FileWatch>,
    /// Set when a write failed: the writer connection is replaced before its next use.
    suspect: Arc<AtomicBool>,
}

/// One webhook waiting for the group commit.
struct EnqueueRequest {
    new: NewDelivery,
    dedup_window: Duration,
    max_queued: u64,
    reply: oneshot::Sender<Result<Enqueued>>,
}

/// Most webhooks committed in one transaction.
const GROUP_COMMIT_MAX: usize = 256;

/// Commits waiting webhooks in groups: one transaction (one fsync) for every webhook that
/// arrived while the previous group was being written, so durable intake keeps up with
/// concurrency. Each webhook is answered only after its group is committed.
async fn group_commit(
    writer: SqlitePool,
    mut intake: mpsc::Receiver<EnqueueRequest>,
    watch: Arc<FileWatch>,
    suspect: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    let mut depth = DepthCache::default();
    while intake.recv_many(&mut batch, GROUP_COMMIT_MAX).await > 0 {
        let requests = std::mem::take(&mut batch);
        // Committed into a file the path no longer names: gone with it, so not stored.
        let committed = commit_group(&writer, &requests, &mut depth)
            .await
            .and_then(|results| match watch.vanished() {
                Some(reason) => Err(Error::Unavailable(reason)),
                None => Ok(results),
            });
        match committed {
            Ok(results) => {
                for (request, result) in requests.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, webhooks = requests.len(), "committing webhooks failed");
                suspect.store(true, Ordering::Release);
                let message = match e {
                    Error::Unavailable(message) => message,
                    other => other.to_string(),
                };
                for request in requests {
                    let _ = request.reply.send(Err(Error::Unavailable(message.clone())));
                }
            }
        }
    }
}

/// The queue depth as last counted, so that the queue is not counted on every group: counting
/// walks every waiting row, which takes milliseconds once the queue is deep. This process is the
/// only writer, so between counts it adds what it queued; deliveries finished meanwhile are not
/// subtracted, so the cached depth only ever overstates the queue, and it is counted again
/// only when it says the queue is full (a webhook is refused only after a fresh count confirms
/// it).
#[derive(Default)]
struct DepthCache {
    counted: Option<u64>,
}

impl DepthCache {
    /// The depth, counted again when never counted yet or `fresh` is asked for.
    async fn get(&mut self, tx: &mut sqlx::SqliteConnection, fresh: bool) -> Result<u64> {
        if let Some(depth) = self.counted
            && !fresh
        {
            return Ok(depth);
        }
        let depth: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE state IN ('queued', 'delivering')",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        let depth = u64::try_from(depth).unwrap_or_default();
        self.counted = Some(depth);
        Ok(depth)
    }

    fn set(&mut self, depth: u64) {
        if self.counted.is_some() {
            self.counted = Some(depth);
        }
    }
}

/// One row of a group, as the insert statements read it from a JSON array (`json_each`).
#[derive(Serialize)]
struct GroupRow<'a> {
    id: &'a str,
    route: &'a str,
    key: &'a str,
    /// The second dedup key, claimed with `key` (omitted when there is none).
    #[serde(skip_serializing_if = "Option::is_none")]
    body_key: Option<&'a str>,
    at: i64,
    draft: String,
}

/// Looks up every dedup key of the group at once.
const GROUP_DEDUP_LOOKUP: &str = "SELECT key, delivery_id, created_at FROM dedup \
     WHERE key IN (SELECT value FROM json_each(?1))";
/// Claims the dedup keys (both, when a row has a `body_key`) of the group's new deliveries.
const GROUP_DEDUP_INSERT: &str = "INSERT OR REPLACE INTO dedup (key, delivery_id, created_at) \
     SELECT value ->> 'key', value ->> 'id', value ->> 'at' FROM json_each(?1) \
     UNION ALL SELECT value ->> 'body_key', value ->> 'id', value ->> 'at' FROM json_each(?1) \
       WHERE value ->> 'body_key' IS NOT NULL";
/// Inserts the group's new deliveries.
const GROUP_DELIVERIES_INSERT: &str = "INSERT INTO deliveries \
     (id, route, dedup_key, state, attempts, next_attempt_at, draft, created_at, updated_at) \
     SELECT value ->> 'id', value ->> 'route', value ->> 'key', 'queued', 0, value ->> 'at', \
       value ->> 'draft', value ->> 'at', value ->> 'at' FROM json_each(?1)";

/// Writes a group in one transaction with three statements whatever its size (the rows travel
/// as one JSON array each way, so the cost per webhook is not a round trip to SQLite's thread
/// per statement). The outer error fails the whole group (nothing of it is committed); the
/// inner results are each webhook's answer, the same as if the group's webhooks had been
/// stored one after the other in arrival order.
async fn commit_group(
    writer: &SqlitePool,
    requests: &[EnqueueRequest],
    cache: &mut DepthCache,
) -> Result<Vec<Result<Enqueued>>> {
    let keys: Vec<&str> = requests.iter().flat_map(|r| r.new.dedup_keys()).collect();
    let keys = serde_json::to_string(&keys).map_err(unavailable)?;
    let mut tx = writer.begin().await.map_err(unavailable)?;
    let seen: Vec<(String, String, i64)> = sqlx::query_as(GROUP_DEDUP_LOOKUP)
        .bind(keys)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
    // Key → (delivery id, when), updated as the group queues deliveries.
    let mut seen: HashMap<String, (String, i64)> = seen
        .into_iter()
        .map(|(key, id, at)| (key, (id, at)))
        .collect();
    let mut depth = cache.get(&mut tx, false).await?;
    let mut recounted = false;
    let mut results = Vec::with_capacity(requests.len());
    let mut rows = Vec::with_capacity(requests.len());
    for request in requests {
        let new = &request.new;
        let now = ms(new.received_at);
        let cutoff = now - millis(request.dedup_window);
        if let Some(id) = new
            .dedup_keys()
            .find_map(|key| seen.get(key).filter(|(_, at)| *at > cutoff))
            .map(|(id, _)| id)
        {
            results.push(Ok(Enqueued::Duplicate(id.clone())));
            continue;
        }
        if depth >= request.max_queued && !recounted {
            // The cached count may include deliveries finished since: look again, once. The
            // count does not see this group's rows yet; they are added.
            depth = cache.get(&mut tx, true).await? + rows.len() as u64;
            recounted = true;
        }
        if depth >= request.max_queued {
            results.push(Err(Error::Full(depth)));
            continue;
        }
        let draft = match super::stored::encode_draft(&new.draft) {
            Ok(d) => d,
            Err(e) => {
                results.push(Err(unavailable(e)));
                continue;
            }
        };
        for key in new.dedup_keys() {
            seen.insert(key.to_owned(), (new.id.clone(), now));
        }
        rows.push(GroupRow {
            id: &new.id,
            route: &new.route,
            key: &new.dedup_key,
            body_key: new.body_key.as_deref(),
            at: now,
            draft,
        });
        depth += 1;
        results.push(Ok(Enqueued::Queued(new.id.clone())));
    }
    if !rows.is_empty() {
        let rows = serde_json::to_string(&rows).map_err(unavailable)?;
        for statement in [GROUP_DEDUP_INSERT, GROUP_DELIVERIES_INSERT] {
            sqlx::query(statement)
                .bind(rows.as_str())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
    }
    tx.commit().await.map_err(unavailable)?;
    cache.set(depth);
    Ok(results)
}

impl SqliteStore {
    /// Back to the queue until `at` without spending the attempt, noting why: [`Store::defer`]
    /// forgets `sending_since`, [`Store::hold`] keeps it (`keep_sending_since`).
    async fn requeue(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &LastError,
        now: DateTime<Utc>,
        keep_sending_since: bool,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'queued', attempts = MAX(attempts - 1, 0), \
             next_attempt_at = ?, last_errcode = ?, last_errmsg = ?, \
             sending_since = CASE WHEN ? THEN sending_since ELSE NULL END, \
             lease_until = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(ms(at))
        .bind(error.errcode)
        .bind(&error.errmsg)
        .bind(keep_sending_since)
        .bind(ms(now))
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(|e| self.write_error(e))?;
        Ok(())
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies the migrations, with no
    /// free-space floor.
    pub async fn open(path: &str) -> Result<Self> {
        Self::open_with(path, 0).await
    }

    /// Opens the database at `path`; below `min_free_bytes` available on its filesystem
    /// webhooks are refused (0: no floor).
    pub async fn open_with(path: &str, min_free_bytes: u64) -> Result<Self> {
        if let Some(dir) = std::path::Path::new(path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("creating {}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(unavailable)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            // Statement journals and the group statements' temporary tables stay in memory:
            // as files, each group created, wrote and deleted one in /var/tmp.
            .pragma("temp_store", "memory");
        let page_limit = Arc::new(AtomicU64::new(0));
        let suspect = Arc::new(AtomicBool::new(false));
        let suspect_on_acquire = suspect.clone();
        let limit = page_limit.clone();
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                let pages = limit.load(Ordering::Relaxed);
                Box::pin(async move {
                    if pages > 0 {
                        sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .after_release(|conn, _| Box::pin(super::sql::state_known(conn)))
            // After a failed write the connection itself may be what is wrong: SQLite opens a
            // file it cannot write (e.g. `chattr +i`) read-only, and such a connection stays
            // read-only after the file is writable again. A fresh one is opened instead.
            .before_acquire(move |_, _| {
                let reopen = suspect_on_acquire.swap(false, Ordering::AcqRel);
                Box::pin(async move { Ok(!reopen) })
            })
            .connect_with(options.clone())
            .await
            .map_err(|e| unavailable(format!("opening {path}: {e}")))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| unavailable(format!("migrating {path}: {e}")))?;
        // One process owns the file, so deliveries a killed predecessor held are free now; their
        // `sending_since` still makes the next attempt reconcile before sending.
        sqlx::query("UPDATE deliveries SET lease_until = 0 WHERE state = 'delivering'")
            .execute(&writer)
            .await
            .map_err(unavailable)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| unavailable(format!("opening {path}: {e}")))?;
        let watch = FileWatch::start(std::path::Path::new(path), min_free_bytes);
        let (intake, queue) = mpsc::channel(4 * GROUP_COMMIT_MAX);
        tokio::spawn(group_commit(
            writer.clone(),
            queue,
            watch.clone(),
            suspect.clone(),
        ));
        Ok(Self {
            suspect,
            watch,
            writer,
            page_limit,
            reader,
            intake,
            claim: claim_statements(|n| format!("?{n}"), ""),
        })
    }
}

/// SQLite's own page limit (`max_page_count` cannot be unset, only raised back).
const NO_PAGE_LIMIT: u64 = 4_294_967_294;

impl SqliteStore {
    /// A failed write: reported, and the writer connection replaced before its next use.
    fn write_error(&self, e: impl std::fmt::Display) -> Error {
        self.suspect.store(true, Ordering::Release);
        unavailable(e)
    }

    /// Fault injection for tests: caps the database file at `pages` pages (`PRAGMA
    /// max_page_count` on the writer connection, and on any it reopens), so that writes fail
    /// with SQLITE_FULL as on a full disk; `None` lifts the cap. A cap below the file's size
    /// holds it at its size.
    pub async fn limit_pages(&self, pages: Option<u64>) -> Result<()> {
        let pages = pages.unwrap_or(0);
        self.page_limit.store(pages, Ordering::Relaxed);
        let effective = if pages == 0 { NO_PAGE_LIMIT } else { pages };
        sqlx::query(&format!("PRAGMA max_page_count = {effective}"))
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Pages the database file holds now.
    pub async fn page_count(&self) -> Result<u64> {
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(pages).unwrap_or_default())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn enqueue(
        &self,
        new: NewDelivery,
        dedup_window: Duration,
        max_queued: u64,
    ) -> Result<Enqueued> {
        if let Some(reason) = self.watch.refusal() {
            return Err(Error::Unavailable(reason));
        }
        let (reply, answer) = oneshot::channel();
        let request = EnqueueRequest {
            new,
            dedup_window,
            max_queued,
            reply,
        };
        self.intake
            .send(request)
            .await
            .map_err(|_| unavailable("the store's writer has stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the store's writer has stopped"))?
    }

    async fn claim(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>> {
        let now = ms(now);
        let until = now + millis(lease);
        let mut claimed = Vec::new();
        // Two index walks that stop at the limit (a single `… OR …` query sorts every due
        // row first, which is slow when the queue is deep): leases that expired, then queued
        // deliveries in due order.
        for due in &self.claim {
            let room = limit.saturating_sub(claimed.len());
            if room == 0 {
                break;
            }
            let rows = sqlx::query(due.as_str())
                .bind(until)
                .bind(now)
                .bind(i64::try_from(room).unwrap_or(i64::MAX))
                .fetch_all(&self.writer)
                .await
                .map_err(|e| self.write_error(e))?;
            for row in &rows {
                let delivery = row_to_delivery(row)?;
                // A claimed row is delivering; one read back as failed has a draft this relay
                // cannot read: record that, and never work it.
                match (delivery.state, &delivery.last_error) {
                    (State::Failed, Some(error)) => {
                        tracing::error!(delivery_id = %delivery.id, error = %error.errmsg, "queued delivery is undecodable; marked failed");
                        self.mark_failed(&delivery.id, error, from_ms(now)).await?;
                    }
                    _ => claimed.push(delivery),
                }
            }
        }
        Ok(claimed)
    }

    async fn mark_sending(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE deliveries SET sending_since = ?, updated_at = ? WHERE id = ?")
            .bind(ms(now))
            .bind(ms(now))
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(|e| self.write_error(e))?;
        Ok(())
    }

    async fn mark_delivered(&self, id: &str, report_id: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'delivered', report_id = ?, sending_since = NULL, \
             lease_until = NULL, next_attempt_at = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(report_id)
        .bind(ms(now))
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(|e| self.write_error(e))?;
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
        sqlx::query(
            "UPDATE deliveries SET state = 'queued', next_attempt_at = ?, last_errcode = ?, \
             last_errmsg = ?, sending_since = ?, lease_until = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(ms(at))
        .bind(error.errcode)
        .bind(&error.errmsg)
        .bind(sending_since.map(ms))
        .bind(ms(now))
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(|e| self.write_error(e))?;
        Ok(())
    }

    async fn defer(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &LastError,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.requeue(id, at, error, now, false).await
    }

    async fn mark_failed(&self, id: &str, error: &LastError, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'failed', next_attempt_at = NULL, last_errcode = ?, \
             last_errmsg = ?, sending_since = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(error.errcode)
        .bind(&error.errmsg)
        .bind(ms(now))
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(|e| self.write_error(e))?;
        Ok(())
    }

    async fn release(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'queued', attempts = MAX(attempts - 1, 0), \
             next_attempt_at = ?, lease_until = NULL, updated_at = ? \
             WHERE id = ? AND state = 'delivering'",
        )
        .bind(ms(now))
        .bind(ms(now))
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(|e| self.write_error(e))?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Delivery>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM deliveries WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(row_to_delivery).transpose()
    }

    async fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<Delivery>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let filtered = format!(
            "SELECT {COLUMNS} FROM deliveries WHERE state = ? ORDER BY created_at DESC, id DESC LIMIT ?"
        );
        let all =
            format!("SELECT {COLUMNS} FROM deliveries ORDER BY created_at DESC, id DESC LIMIT ?");
        let rows = match state {
            Some(state) => sqlx::query(&filtered).bind(state.as_str()).bind(limit),
            None => sqlx::query(&all).bind(limit),
        }
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?;
        rows.iter().map(row_to_delivery).collect()
    }

    async fn retry(&self, id: &str, now: DateTime<Utc>) -> Result<Option<State>> {
        let mut tx = self.writer.begin().await.map_err(|e| self.write_error(e))?;
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM deliveries WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.write_error(e))?;
        let Some(state) = state.as_deref().and_then(State::parse) else {
            return Ok(None);
        };
        if state == State::Failed {
            sqlx::query(
                "UPDATE deliveries SET state = 'queued', attempts = 0, next_attempt_at = ?, \
                 sending_since = NULL, updated_at = ? WHERE id = ?",
            )
            .bind(ms(now))
            .bind(ms(now))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.write_error(e))?;
        }
        tx.commit().await.map_err(|e| self.write_error(e))?;
        Ok(Some(state))
    }

    async fn stats(&self) -> Result<QueueStats> {
        let (depth, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(created_at) FROM deliveries WHERE state IN ('queued', 'delivering')",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(unavailable)?;
        Ok(QueueStats {
            depth: u64::try_from(depth).unwrap_or_default(),
            oldest: oldest.map(from_ms),
        })
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'queued'",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(unavailable)?;
        Ok(next.map(from_ms))
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        let before = ms(before);
        let deliveries = sqlx::query(
            "DELETE FROM deliveries WHERE state IN ('delivered', 'ignored') AND updated_at < ?",
        )
        .bind(before)
        .execute(&self.writer)
        .await
        .map_err(|e| self.write_error(e))?;
        let dedup = sqlx::query("DELETE FROM dedup WHERE created_at < ?")
            .bind(before)
            .execute(&self.writer)
            .await
            .map_err(|e| self.write_error(e))?;
        Ok(deliveries.rows_affected() + dedup.rows_affected())
    }

    async fn probe_write(&self) -> Result<()> {
        let (id, padding) = super::sql::probe_row();
        let mut tx = self.writer.begin().await.map_err(|e| self.write_error(e))?;
        sqlx::query(super::sql::PROBE_INSERT)
            .bind(&id)
            .bind(&padding)
            .bind(ms(Utc::now()))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.write_error(e))?;
        sqlx::query(super::sql::PROBE_DELETE)
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.write_error(e))?;
        tx.commit().await.map_err(|e| self.write_error(e))
    }

    fn problem(&self) -> Option<String> {
        self.watch.refusal()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn add_digest_event(
        &self,
        new: NewDigestEvent,
        dedup_window: Duration,
        max_queued: u64,
    ) -> Result<Enqueued> {
        if let Some(reason) = self.watch.refusal() {
            return Err(Error::Unavailable(reason));
        }
        let kept =
            super::digest_sql::sqlite::add_event(&self.writer, &new, dedup_window, max_queued)
                .await
                .inspect_err(|e| {
                    if matches!(e, Error::Unavailable(_)) {
                        self.suspect.store(true, Ordering::Release);
                    }
                })?;
        match self.watch.vanished() {
            Some(reason) => Err(Error::Unavailable(reason)),
            None => Ok(kept),
        }
    }

    async fn undecodable_digest_events(
        &self,
        route: &str,
    ) -> Result<Vec<super::UndecodableDigestEvent>> {
        super::digest_sql::sqlite::undecodable(&self.reader, route).await
    }

    async fn digest_events(&self, route: &str) -> Result<Vec<DigestEvent>> {
        super::digest_sql::sqlite::events(&self.reader, route).await
    }

    async fn last_digest(&self, route: &str) -> Result<Option<DateTime<Utc>>> {
        super::digest_sql::sqlite::last(&self.reader, route).await
    }

    async fn close_digest(
        &self,
        route: &str,
        period_end: DateTime<Utc>,
        now: DateTime<Utc>,
        build: DigestBuilder<'_>,
    ) -> Result<Option<ClosedDigest>> {
        super::digest_sql::sqlite::close(&self.writer, route, period_end, now, build)
            .await
            .inspect_err(|e| {
                if matches!(e, Error::Unavailable(_)) {
                    self.suspect.store(true, Ordering::Release);
                }
            })
    }

    async fn hold(
        &self,
        id: &str,
        at: DateTime<Utc>,
        reason: &LastError,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.requeue(id, at, reason, now, true).await
    }

    fn quota(&self) -> std::sync::Arc<dyn super::QuotaStore> {
        std::sync::Arc::new(super::quota::SqliteQuota {
            writer: self.writer.clone(),
            reader: self.reader.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TemplateSettings;
    use crate::mapping::{DraftContent, ReportDraft};

    fn delivery(n: usize, size: usize) -> NewDelivery {
        NewDelivery {
            id: format!("d{n}"),
            route: "ci".to_owned(),
            dedup_key: format!("key-{n}"),
            body_key: None,
            draft: ReportDraft {
                app: "default".to_owned(),
                template: TemplateSettings {
                    name: Some("日报".to_owned()),
                    id: None,
                    fields: None,
                    owner: None,
                },
                author: "manager01".to_owned(),
                to_userids: vec!["user01".to_owned()],
                to_cids: Vec::new(),
                to_chat: false,
                dd_from: "dingtalk-relay".to_owned(),
                contents: vec![DraftContent {
                    field: "今日完成工作".to_owned(),
                    content: "x".repeat(size),
                }],
            },
            received_at: Utc::now(),
        }
    }

    /// The state SQLite leaves when it rolls a transaction back by itself (SQLITE_FULL or
    /// SQLITE_IOERR during COMMIT): the connection is in autocommit while sqlx still counts
    /// the transaction open, because its `ROLLBACK` on drop fails. Before the writer pool
    /// closed such connections, the next failed group left a savepoint open and every later
    /// group "committed" into that never-committed transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_ended_by_sqlite_does_not_swallow_later_groups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.db");
        let store = SqliteStore::open(path.to_str().unwrap())
            .await
            .expect("open");
        let window = Duration::from_secs(3600);
        {
            let mut tx = store.writer.begin().await.expect("begin");
            sqlx::query("INSERT INTO dedup (key, delivery_id, created_at) VALUES ('k', 'd', 0)")
                .execute(&mut *tx)
                .await
                .expect("insert");
            // What SQLite does on its own after a failed COMMIT.
            sqlx::query("ROLLBACK")
                .execute(&mut *tx)
                .await
                .expect("rollback");
        }
        // A group that fails (SQLITE_FULL at statement level, rolled back by sqlx).
        let pages = store.page_count().await.expect("pages");
        store.limit_pages(Some(pages)).await.expect("limit");
        let refused = store.enqueue(delivery(1, 50_000), window, 100).await;
        assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
        store.limit_pages(None).await.expect("unlimit");
        // Later groups are committed: another connection sees them.
        for n in 2..5 {
            let answer = store.enqueue(delivery(n, 10), window, 100).await;
            assert_eq!(answer.expect("enqueue"), Enqueued::Queued(format!("d{n}")));
            assert!(
                store.get(&format!("d{n}")).await.expect("get").is_some(),
                "d{n} was answered queued but is not committed"
            );
        }
    }
}
