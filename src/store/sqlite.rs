//! `sqlite://PATH` — the embedded default store: one file in WAL mode, created and migrated at
//! startup (migrations are compiled into the binary). Writes go through one connection so
//! transactions never deadlock; reads use a small pool. Webhooks are committed in groups. `synchronous=FULL`: a committed
//! delivery survives `kill -9` and power loss.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot};

use super::sql::{COLUMNS, claim_statements, from_ms, millis, ms, row_to_delivery, unavailable};
use super::{
    ClosedDigest, Delivery, DigestBuilder, DigestEvent, Enqueued, Error, LastError, NewDelivery,
    NewDigestEvent, QueueStats, Result, State, Store,
};

/// The SQLite store.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    intake: mpsc::Sender<EnqueueRequest>,
    claim: [String; 2],
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
async fn group_commit(writer: SqlitePool, mut intake: mpsc::Receiver<EnqueueRequest>) {
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    let mut depth = DepthCache::default();
    while intake.recv_many(&mut batch, GROUP_COMMIT_MAX).await > 0 {
        let requests = std::mem::take(&mut batch);
        match commit_group(&writer, &requests, &mut depth).await {
            Ok(results) => {
                for (request, result) in requests.into_iter().zip(results) {
                    let _ = request.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, webhooks = requests.len(), "committing webhooks failed");
                for request in requests {
                    let _ = request.reply.send(Err(unavailable(&e)));
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
    at: i64,
    draft: String,
}

/// Looks up every dedup key of the group at once.
const GROUP_DEDUP_LOOKUP: &str = "SELECT key, delivery_id, created_at FROM dedup \
     WHERE key IN (SELECT value FROM json_each(?1))";
/// Claims the dedup keys of the group's new deliveries.
const GROUP_DEDUP_INSERT: &str = "INSERT OR REPLACE INTO dedup (key, delivery_id, created_at) \
     SELECT value ->> 'key', value ->> 'id', value ->> 'at' FROM json_each(?1)";
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
    let keys: Vec<&str> = requests.iter().map(|r| r.new.dedup_key.as_str()).collect();
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
        if let Some((id, at)) = seen.get(&new.dedup_key)
            && *at > now - millis(request.dedup_window)
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
        let draft = match serde_json::to_string(&new.draft) {
            Ok(d) => d,
            Err(e) => {
                results.push(Err(unavailable(e)));
                continue;
            }
        };
        seen.insert(new.dedup_key.clone(), (new.id.clone(), now));
        rows.push(GroupRow {
            id: &new.id,
            route: &new.route,
            key: &new.dedup_key,
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
    /// Opens (creating if needed) the database at `path` and applies the migrations.
    pub async fn open(path: &str) -> Result<Self> {
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
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
        let (intake, queue) = mpsc::channel(4 * GROUP_COMMIT_MAX);
        tokio::spawn(group_commit(writer.clone(), queue));
        Ok(Self {
            writer,
            reader,
            intake,
            claim: claim_statements(|n| format!("?{n}"), ""),
        })
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
                .map_err(unavailable)?;
            for row in &rows {
                claimed.push(row_to_delivery(row)?);
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
            .map_err(unavailable)?;
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
        .map_err(unavailable)?;
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
        .map_err(unavailable)?;
        Ok(())
    }

    async fn defer(
        &self,
        id: &str,
        at: DateTime<Utc>,
        error: &LastError,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'queued', attempts = MAX(attempts - 1, 0), \
             next_attempt_at = ?, last_errcode = ?, last_errmsg = ?, sending_since = NULL, \
             lease_until = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(ms(at))
        .bind(error.errcode)
        .bind(&error.errmsg)
        .bind(ms(now))
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        Ok(())
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
        .map_err(unavailable)?;
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
        .map_err(unavailable)?;
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
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM deliveries WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
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
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
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
        .map_err(unavailable)?;
        let dedup = sqlx::query("DELETE FROM dedup WHERE created_at < ?")
            .bind(before)
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(deliveries.rows_affected() + dedup.rows_affected())
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
    ) -> Result<Enqueued> {
        super::digest_sql::sqlite::add_event(&self.writer, &new, dedup_window).await
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
        super::digest_sql::sqlite::close(&self.writer, route, period_end, now, build).await
    }

    async fn hold(
        &self,
        id: &str,
        at: DateTime<Utc>,
        reason: &LastError,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'queued', attempts = MAX(attempts - 1, 0), \
             next_attempt_at = ?, last_errcode = ?, last_errmsg = ?, \
             lease_until = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(ms(at))
        .bind(reason.errcode)
        .bind(&reason.errmsg)
        .bind(ms(now))
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    fn quota(&self) -> std::sync::Arc<dyn super::QuotaStore> {
        std::sync::Arc::new(super::quota::SqliteQuota {
            writer: self.writer.clone(),
            reader: self.reader.clone(),
        })
    }
}
