//! `postgres://…` (or `postgresql://…`) — a store shared by several replicas (e.g. behind one
//! Kubernetes Service). The schema is migrated at startup (migrations are compiled into the
//! binary; the migrator holds a PostgreSQL advisory lock, so replicas starting together are
//! safe). Every replica enqueues into and claims from the same tables:
//!
//! - `claim` locks the due rows with `FOR UPDATE SKIP LOCKED`, so each due delivery goes to
//!   exactly one caller; a lease held by a dead replica is taken over once it expires (leases
//!   are never reset at startup: the other replicas are alive).
//! - Webhooks are committed in groups (as in the SQLite store): each replica's writers take
//!   every webhook waiting and store them in one transaction of a few statements, whatever the
//!   group's size, so intake is not one transaction and one WAL flush per webhook. Each
//!   webhook is answered only after its group committed.
//! - `enqueue` claims the dedup keys with one `INSERT … ON CONFLICT` in the same transaction as
//!   the deliveries, so concurrent enqueues of one key yield one delivery and duplicates.
//! - The `max_queued` check counts committed deliveries at most once a second (and again
//!   before refusing), adding what this replica queued since: replicas enqueueing at the same
//!   moment may each see room, so the queue can exceed the limit by about one second of
//!   intake.
//! - DingTalk's rate limit is shared by the replicas through the `rate_slots` table
//!   ([`Store::shared_limit`]).
//!
//! Connection errors never repeat the URL's password.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::{mpsc, oneshot};

use super::sql::{COLUMNS, claim_statements, from_ms, millis, ms, row_to_delivery, unavailable};
use crate::dingtalk::SharedLimit;

use super::{
    ClosedDigest, Delivery, DigestBuilder, DigestEvent, Enqueued, Error, LastError, NewDelivery,
    NewDigestEvent, QueueStats, Result, State, Store,
};

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: PgPool,
    intake: mpsc::Sender<EnqueueRequest>,
    claim: [String; 2],
}

/// The parts of a connection URL: everything but the password and the query (which may hold
/// a `password=` too), and the password itself.
fn split_url(url: &str) -> (String, Option<&str>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return ("<invalid url>".to_owned(), None);
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (userinfo, host) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        Some((user, password)) => (
            format!("{scheme}://{user}@{host}{path}"),
            Some(password).filter(|p| !p.is_empty()),
        ),
        None => (format!("{scheme}://{host}{path}"), None),
    }
}

/// Decodes `%XX` escapes (the form sqlx hands the server).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error while opening `url`, with the URL shown without its password and every trace of
/// the password removed from the cause.
fn open_error(url: &str, what: &str, cause: impl std::fmt::Display) -> Error {
    let (shown, password) = split_url(url);
    let mut message = cause.to_string().replace(url, &shown);
    if let Some(password) = password {
        message = message.replace(password, "***");
        let decoded = percent_decode(password);
        if !decoded.is_empty() {
            message = message.replace(&decoded, "***");
        }
    }
    Error::Unavailable(format!("{what} {shown}: {message}"))
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
/// Transactions writing groups at the same time (each holds a pooled connection while its
/// group commits; two overlap one group's commit with the next group's statements).
const GROUP_WRITERS: usize = 2;
/// How long a queue depth count is trusted: other replicas enqueue too, so the count is
/// renewed regularly (module docs: the limit is approximate).
const DEPTH_COUNT_EVERY: Duration = Duration::from_secs(1);

/// Commits waiting webhooks in groups: one transaction (one WAL flush) for every webhook that
/// arrived while the previous group was being written. Each webhook is answered only after its
/// group is committed.
async fn group_commit(
    pool: PgPool,
    intake: Arc<tokio::sync::Mutex<mpsc::Receiver<EnqueueRequest>>>,
    depth: Arc<std::sync::Mutex<Option<(tokio::time::Instant, u64)>>>,
) {
    let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
    loop {
        if intake
            .lock()
            .await
            .recv_many(&mut batch, GROUP_COMMIT_MAX)
            .await
            == 0
        {
            return;
        }
        let mut requests = std::mem::take(&mut batch);
        // One transaction per dedup window (they differ only around a reload), so a
        // group's dedup claim is a single statement.
        while !requests.is_empty() {
            let window = requests[0].dedup_window;
            let (run, rest): (Vec<_>, Vec<_>) =
                requests.into_iter().partition(|r| r.dedup_window == window);
            requests = rest;
            match commit_group(&pool, &run, window, &depth).await {
                Ok(results) => {
                    for (request, result) in run.into_iter().zip(results) {
                        let _ = request.reply.send(result);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, webhooks = run.len(), "committing webhooks failed");
                    let message = match e {
                        Error::Unavailable(message) => message,
                        other => other.to_string(),
                    };
                    for request in run {
                        let _ = request.reply.send(Err(Error::Unavailable(message.clone())));
                    }
                }
            }
        }
    }
}

/// Claims the dedup keys of a group (sorted, so concurrent groups lock them in one order and
/// cannot deadlock), or takes over keys older than the window. Returns the keys claimed. A
/// concurrent claim of the same key waits for the other transaction and then sees the key
/// taken; a conflicting row is locked even when not updated, so it cannot vanish before the
/// lookup of the duplicates.
const GROUP_DEDUP_CLAIM: &str = "INSERT INTO dedup (key, delivery_id, created_at) \
     SELECT key, id, at FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(key, id, at) \
     ORDER BY key \
     ON CONFLICT (key) DO UPDATE \
       SET delivery_id = EXCLUDED.delivery_id, created_at = EXCLUDED.created_at \
       WHERE dedup.created_at <= EXCLUDED.created_at - $4 \
     RETURNING key";
/// Inserts the group's new deliveries.
const GROUP_DELIVERIES_INSERT: &str = "INSERT INTO deliveries \
     (id, route, dedup_key, state, attempts, next_attempt_at, draft, created_at, updated_at) \
     SELECT id, route, key, 'queued', 0, at, draft, at, at \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[]) \
       AS u(id, route, key, at, draft)";

/// Moves claimed dedup keys to the delivery that queued under them (a later webhook of the
/// group, when the key's first claimant was a duplicate by its other key or refused).
const GROUP_DEDUP_REASSIGN: &str = "UPDATE dedup SET delivery_id = u.id, created_at = u.at \
     FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(key, id, at) WHERE dedup.key = u.key";

/// Writes a group (all with the same dedup window) in one transaction; the outer error fails
/// the whole group, the inner results are each webhook's answer, as if the webhooks had been
/// stored one after the other in arrival order.
///
/// Every dedup key of the group (a webhook may have two: its delivery id and its body hash)
/// is claimed first, which locks the keys taken by others; then the group is decided in
/// arrival order (a webhook is a duplicate when any of its keys was taken before the group or
/// by an earlier queued webhook of the group); last, the claimed keys are given to the
/// webhooks that queued under them and the rest are given back.
async fn commit_group(
    pool: &PgPool,
    requests: &[EnqueueRequest],
    window: Duration,
    depth_cache: &std::sync::Mutex<Option<(tokio::time::Instant, u64)>>,
) -> Result<Vec<Result<Enqueued>>> {
    // Each key is claimed once, for the first webhook of the group that has it.
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(requests.len() * 2);
    for (i, request) in requests.iter().enumerate() {
        for key in request.new.dedup_keys() {
            first.entry(key).or_insert(i);
        }
    }
    let mut claims: Vec<(&str, usize)> = first.into_iter().collect();
    claims.sort_unstable();
    let keys: Vec<&str> = claims.iter().map(|(key, _)| *key).collect();
    let ids: Vec<&str> = claims
        .iter()
        .map(|&(_, i)| requests[i].new.id.as_str())
        .collect();
    let ats: Vec<i64> = claims
        .iter()
        .map(|&(_, i)| ms(requests[i].new.received_at))
        .collect();

    let mut tx = pool.begin().await.map_err(unavailable)?;
    let claimed: Vec<String> = sqlx::query_scalar(GROUP_DEDUP_CLAIM)
        .bind(&keys)
        .bind(&ids)
        .bind(&ats)
        .bind(millis(window))
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
    let claimed: HashSet<String> = claimed.into_iter().collect();
    let taken: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !claimed.contains(*k))
        .collect();
    // Key → the delivery it points to: those taken before the group, then (as the group is
    // decided) those of its queued webhooks.
    let mut seen: HashMap<String, String> = if taken.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as("SELECT key, delivery_id FROM dedup WHERE key = ANY($1)")
            .bind(&taken)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?
            .into_iter()
            .collect()
    };
    if let Some(vanished) = taken.iter().find(|k| !seen.contains_key(**k)) {
        return Err(unavailable(format!(
            "the dedup key {vanished} vanished while locked"
        )));
    }

    // Committed deliveries only: approximate while other replicas enqueue (module docs).
    let cached = *depth_cache.lock().unwrap_or_else(|p| p.into_inner());
    let mut depth = match cached {
        Some((at, depth)) if at.elapsed() < DEPTH_COUNT_EVERY => depth,
        _ => count_depth(&mut tx, depth_cache).await?,
    };
    let mut recounted = false;
    let mut results = Vec::with_capacity(requests.len());
    let mut new_rows: Vec<&NewDelivery> = Vec::with_capacity(requests.len());
    for request in requests {
        let new = &request.new;
        if let Some(id) = new.dedup_keys().find_map(|key| seen.get(key)) {
            results.push(Ok(Enqueued::Duplicate(id.clone())));
            continue;
        }
        if depth >= request.max_queued && !recounted {
            depth = count_depth(&mut tx, depth_cache).await? + new_rows.len() as u64;
            recounted = true;
        }
        if depth >= request.max_queued {
            results.push(Err(Error::Full(depth)));
            continue;
        }
        for key in new.dedup_keys() {
            seen.insert(key.to_owned(), new.id.clone());
        }
        new_rows.push(new);
        depth += 1;
        results.push(Ok(Enqueued::Queued(new.id.clone())));
    }
    // The claimed keys whose claimant did not queue: given back (a key taken over from an
    // expired delivery is simply gone, as the prune would have removed it), or moved to the
    // later webhook of the group that queued under it.
    let queued_at: HashMap<&str, i64> = new_rows
        .iter()
        .map(|n| (n.id.as_str(), ms(n.received_at)))
        .collect();
    let mut given_back: Vec<&str> = Vec::new();
    let mut moved: (Vec<&str>, Vec<&str>, Vec<i64>) = Default::default();
    for &(key, claimant) in &claims {
        if !claimed.contains(key) {
            continue;
        }
        // A claimed key is in `seen` only when a webhook of the group queued under it.
        match seen.get(key) {
            None => given_back.push(key),
            Some(owner) if *owner != requests[claimant].new.id => {
                moved.0.push(key);
                moved.1.push(owner.as_str());
                let at = queued_at.get(owner.as_str()).copied();
                moved
                    .2
                    .push(at.ok_or_else(|| unavailable("a queued webhook went missing"))?);
            }
            Some(_) => {}
        }
    }
    if !given_back.is_empty() {
        sqlx::query("DELETE FROM dedup WHERE key = ANY($1)")
            .bind(&given_back)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
    }
    if !moved.0.is_empty() {
        sqlx::query(GROUP_DEDUP_REASSIGN)
            .bind(&moved.0)
            .bind(&moved.1)
            .bind(&moved.2)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
    }
    if !new_rows.is_empty() {
        let mut drafts = Vec::with_capacity(new_rows.len());
        for new in &new_rows {
            drafts.push(super::stored::encode_draft(&new.draft).map_err(unavailable)?);
        }
        let ids: Vec<&str> = new_rows.iter().map(|n| n.id.as_str()).collect();
        let routes: Vec<&str> = new_rows.iter().map(|n| n.route.as_str()).collect();
        let keys: Vec<&str> = new_rows.iter().map(|n| n.dedup_key.as_str()).collect();
        let ats: Vec<i64> = new_rows.iter().map(|n| ms(n.received_at)).collect();
        sqlx::query(GROUP_DELIVERIES_INSERT)
            .bind(&ids)
            .bind(&routes)
            .bind(&keys)
            .bind(&ats)
            .bind(&drafts)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    let mut cached = depth_cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, d)) = cached.as_mut() {
        *d += new_rows.len() as u64;
    }
    Ok(results)
}

/// Counts the queue (committed deliveries) and remembers the count.
async fn count_depth(
    tx: &mut sqlx::PgConnection,
    cache: &std::sync::Mutex<Option<(tokio::time::Instant, u64)>>,
) -> Result<u64> {
    let depth: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM deliveries WHERE state IN ('queued', 'delivering')",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(unavailable)?;
    let depth = u64::try_from(depth).unwrap_or_default();
    *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((tokio::time::Instant::now(), depth));
    Ok(depth)
}

impl PostgresStore {
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
            "UPDATE deliveries SET state = 'queued', attempts = GREATEST(attempts - 1, 0), \
             next_attempt_at = $1, last_errcode = $2, last_errmsg = $3, \
             sending_since = CASE WHEN $4 THEN sending_since ELSE NULL END, \
             lease_until = NULL, updated_at = $5 WHERE id = $6",
        )
        .bind(ms(at))
        .bind(error.errcode)
        .bind(&error.errmsg)
        .bind(keep_sending_since)
        .bind(ms(now))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

impl PostgresStore {
    /// Connects to the database at `url` and applies the migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(|e| open_error(url, "parsing", e))?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .after_release(|conn, _| Box::pin(super::sql::state_known(conn)))
            .connect_with(options)
            .await
            .map_err(|e| open_error(url, "connecting to", e))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| open_error(url, "migrating", e))?;
        let (intake, queue) = mpsc::channel(4 * GROUP_COMMIT_MAX);
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let depth = Arc::new(std::sync::Mutex::new(None));
        for _ in 0..GROUP_WRITERS {
            tokio::spawn(group_commit(pool.clone(), queue.clone(), depth.clone()));
        }
        Ok(Self {
            pool,
            intake,
            claim: claim_statements(|n| format!("${n}"), " FOR UPDATE SKIP LOCKED"),
        })
    }
}

#[async_trait]
impl Store for PostgresStore {
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
        let until = now.saturating_add(millis(lease));
        let mut claimed = Vec::new();
        // Two index walks that stop at the limit (a single `… OR …` query sorts every due
        // row first, which is slow when the queue is deep): leases that expired, then queued
        // deliveries in due order. SKIP LOCKED: rows another replica is claiming right now are
        // left to it; a row it claimed after this statement's snapshot is re-checked against
        // the new version (no longer due) and skipped too.
        for due in &self.claim {
            let room = limit.saturating_sub(claimed.len());
            if room == 0 {
                break;
            }
            let rows = sqlx::query(due.as_str())
                .bind(until)
                .bind(now)
                .bind(i64::try_from(room).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
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
        sqlx::query("UPDATE deliveries SET sending_since = $1, updated_at = $1 WHERE id = $2")
            .bind(ms(now))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn mark_delivered(&self, id: &str, report_id: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'delivered', report_id = $1, sending_since = NULL, \
             lease_until = NULL, next_attempt_at = NULL, updated_at = $2 WHERE id = $3",
        )
        .bind(report_id)
        .bind(ms(now))
        .bind(id)
        .execute(&self.pool)
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
            "UPDATE deliveries SET state = 'queued', next_attempt_at = $1, last_errcode = $2, \
             last_errmsg = $3, sending_since = $4, lease_until = NULL, updated_at = $5 WHERE id = $6",
        )
        .bind(ms(at))
        .bind(error.errcode)
        .bind(&error.errmsg)
        .bind(sending_since.map(ms))
        .bind(ms(now))
        .bind(id)
        .execute(&self.pool)
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
        self.requeue(id, at, error, now, false).await
    }

    async fn mark_failed(&self, id: &str, error: &LastError, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'failed', next_attempt_at = NULL, last_errcode = $1, \
             last_errmsg = $2, sending_since = NULL, lease_until = NULL, updated_at = $3 WHERE id = $4",
        )
        .bind(error.errcode)
        .bind(&error.errmsg)
        .bind(ms(now))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn release(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'queued', attempts = GREATEST(attempts - 1, 0), \
             next_attempt_at = $1, lease_until = NULL, updated_at = $1 \
             WHERE id = $2 AND state = 'delivering'",
        )
        .bind(ms(now))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Delivery>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM deliveries WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(row_to_delivery).transpose()
    }

    async fn list(&self, state: Option<State>, limit: usize) -> Result<Vec<Delivery>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let filtered = format!(
            "SELECT {COLUMNS} FROM deliveries WHERE state = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        let all =
            format!("SELECT {COLUMNS} FROM deliveries ORDER BY created_at DESC, id DESC LIMIT $1");
        let rows = match state {
            Some(state) => sqlx::query(&filtered).bind(state.as_str()).bind(limit),
            None => sqlx::query(&all).bind(limit),
        }
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(row_to_delivery).collect()
    }

    async fn retry(&self, id: &str, now: DateTime<Utc>) -> Result<Option<State>> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // Locked, so a replica's claim or retry in between cannot be overwritten.
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM deliveries WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        let Some(state) = state.as_deref().and_then(State::parse) else {
            return Ok(None);
        };
        if state == State::Failed {
            sqlx::query(
                "UPDATE deliveries SET state = 'queued', attempts = 0, next_attempt_at = $1, \
                 sending_since = NULL, updated_at = $1 WHERE id = $2",
            )
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
        .fetch_one(&self.pool)
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
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(next.map(from_ms))
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        let before = ms(before);
        let deliveries = sqlx::query(
            "DELETE FROM deliveries WHERE state IN ('delivered', 'ignored') AND updated_at < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        let dedup = sqlx::query("DELETE FROM dedup WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(deliveries.rows_affected() + dedup.rows_affected())
    }

    async fn probe_write(&self) -> Result<()> {
        let (id, padding) = super::sql::probe_row();
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        sqlx::query(super::sql::PROBE_INSERT)
            .bind(&id)
            .bind(&padding)
            .bind(ms(Utc::now()))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(super::sql::PROBE_DELETE)
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
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
        super::digest_sql::postgres::add_event(&self.pool, &new, dedup_window, max_queued).await
    }

    async fn undecodable_digest_events(
        &self,
        route: &str,
    ) -> Result<Vec<super::UndecodableDigestEvent>> {
        super::digest_sql::postgres::undecodable(&self.pool, route).await
    }

    async fn digest_events(&self, route: &str) -> Result<Vec<DigestEvent>> {
        super::digest_sql::postgres::events(&self.pool, route).await
    }

    async fn last_digest(&self, route: &str) -> Result<Option<DateTime<Utc>>> {
        super::digest_sql::postgres::last(&self.pool, route).await
    }

    async fn close_digest(
        &self,
        route: &str,
        period_end: DateTime<Utc>,
        now: DateTime<Utc>,
        build: DigestBuilder<'_>,
    ) -> Result<Option<ClosedDigest>> {
        super::digest_sql::postgres::close(&self.pool, route, period_end, now, build).await
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

    fn quota(&self) -> Arc<dyn super::QuotaStore> {
        Arc::new(super::quota::PostgresQuota {
            writer: self.pool.clone(),
            reader: self.pool.clone(),
        })
    }

    fn shared_limit(&self) -> Option<Arc<dyn SharedLimit>> {
        Some(Arc::new(SendSlots {
            pool: self.pool.clone(),
        }))
    }
}

/// DingTalk's rate limit kept in the `rate_slots` table, shared by every replica.
struct SendSlots {
    pool: PgPool,
}

/// Takes an app's next send slot: the later of its recorded next slot and now, and moves the
/// record on by the interval (`$2`, microseconds), in one atomic statement (the row lock
/// orders concurrent callers). Returns the wait in microseconds, computed on the database's
/// clock so that the replicas' clocks do not matter.
const RESERVE_SLOT: &str = "INSERT INTO rate_slots AS s (app_key, next_at) \
     VALUES ($1, clock_timestamp() + $2::float8 * interval '1 microsecond') \
     ON CONFLICT (app_key) DO UPDATE \
       SET next_at = GREATEST(s.next_at, clock_timestamp()) + $2::float8 * interval '1 microsecond' \
     RETURNING GREATEST(0, (EXTRACT(EPOCH FROM (s.next_at - clock_timestamp())) * 1000000)::bigint - $2)";

#[async_trait]
impl SharedLimit for SendSlots {
    async fn reserve(&self, app_key: &str, interval: Duration) -> Result<Duration, String> {
        let micros = i64::try_from(interval.as_micros()).unwrap_or(i64::MAX);
        let wait: i64 = sqlx::query_scalar(RESERVE_SLOT)
            .bind(app_key)
            .bind(micros)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| format!("taking a send slot: {e}"))?;
        Ok(Duration::from_micros(
            u64::try_from(wait).unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_password_or_query() {
        assert_eq!(
            split_url("postgres://relay:s%40cret@db:5432/relay?sslmode=require&password=x"),
            (
                "postgres://relay@db:5432/relay".to_owned(),
                Some("s%40cret")
            )
        );
        assert_eq!(
            split_url("postgresql://db/relay"),
            ("postgresql://db/relay".to_owned(), None)
        );
        assert_eq!(
            split_url("postgres://relay@db"),
            ("postgres://relay@db".to_owned(), None)
        );
        assert_eq!(percent_decode("s%40cret%zz"), "s@cret%zz");
    }

    #[test]
    fn open_errors_hide_the_password() {
        let url = "postgres://relay:hunter22@db/relay";
        let message = open_error(url, "connecting to", format!("bad {url} (hunter22)")).to_string();
        assert!(!message.contains("hunter22"), "{message}");
        assert!(message.contains("postgres://relay@db/relay"), "{message}");
    }
}
