//! The digest statements both SQL backends run, written once: keeping a digest event (with
//! its dedup key) and closing a digest. The same SQL works on SQLite and PostgreSQL but for
//! the parameter syntax (`?1` / `$1`) and row locking (PostgreSQL locks the period's events),
//! so one macro writes the functions for each backend. Each takes the backend's pool and owns
//! its transaction, so the stores' trait methods only pick the pool.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::sql::{
    DIGEST_COLUMNS, UndecodableEvent, decode_digest_rows, from_ms, millis, ms, unavailable,
};
use super::{ClosedDigest, DigestBuilder, Enqueued, Error, NewDigestEvent, Result};

/// Writes the functions for one backend: `$pool` its pool type, `$conn` its connection type,
/// `$p` its n-th parameter, `$lock` what locks selected rows.
macro_rules! digest_statements {
    ($pool:ty, $conn:ty, $p:expr, $lock:literal) => {
        /// Claims the event's dedup keys (or takes over ones older than `window`) and stores the
        /// event, in one transaction. `Duplicate` carries the first id of the first key taken
        /// (its delivery id's, then its body hash's); nothing is then claimed.
        pub(crate) async fn add_event(
            pool: &$pool,
            new: &NewDigestEvent,
            window: Duration,
            max_queued: u64,
        ) -> Result<Enqueued> {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let kept = keep_event(&mut tx, new, window).await?;
            if let Enqueued::Queued(_) = kept {
                // Counted after the claim, so the count includes this event: one more than
                // the waiting ones. Refused, the transaction (and the key's claim) is undone.
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT (SELECT COUNT(*) FROM deliveries \
                       WHERE state IN ('queued', 'delivering')) \
                     + (SELECT COUNT(*) FROM digest_events)",
                )
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
                let before = u64::try_from(waiting).unwrap_or_default().saturating_sub(1);
                if before >= max_queued {
                    return Err(Error::Full(before));
                }
            }
            match kept {
                Enqueued::Queued(_) => tx.commit().await.map_err(unavailable)?,
                // A duplicate by its second key may have claimed the first: undone.
                Enqueued::Duplicate(_) => tx.rollback().await.map_err(unavailable)?,
            }
            Ok(kept)
        }

        async fn keep_event(
            tx: &mut $conn,
            new: &NewDigestEvent,
            window: Duration,
        ) -> Result<Enqueued> {
            let p: fn(u8) -> String = $p;
            let event = crate::store::stored::encode_event(&new.event).map_err(unavailable)?;
            let now = ms(new.received_at);
            // Sorted, so concurrent claims lock the keys in one order and cannot deadlock.
            let mut keys: Vec<&str> = new.dedup_keys().collect();
            keys.sort_unstable();
            for key in keys {
                // A concurrent claim of the same key waits for this transaction, then sees
                // it taken.
                let claimed: Option<String> = sqlx::query_scalar(&format!(
                    "INSERT INTO dedup (key, delivery_id, created_at) VALUES ({}, {}, {}) \
                     ON CONFLICT (key) DO UPDATE \
                       SET delivery_id = excluded.delivery_id, created_at = excluded.created_at \
                       WHERE dedup.created_at <= {} \
                     RETURNING delivery_id",
                    p(1),
                    p(2),
                    p(3),
                    p(4)
                ))
                .bind(key)
                .bind(&new.id)
                .bind(now)
                .bind(now.saturating_sub(millis(window)))
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
                if claimed.is_none() {
                    // The caller rolls back, giving back a key claimed before this one.
                    let first: String = sqlx::query_scalar(&format!(
                        "SELECT delivery_id FROM dedup WHERE key = {}",
                        p(1)
                    ))
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                    return Ok(Enqueued::Duplicate(first));
                }
            }
            sqlx::query(&format!(
                "INSERT INTO digest_events (id, route, group_key, event, received_at) \
                 VALUES ({}, {}, {}, {}, {})",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5)
            ))
            .bind(&new.id)
            .bind(&new.route)
            .bind(&new.group)
            .bind(event)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            Ok(Enqueued::Queued(new.id.clone()))
        }

        /// The scheduled time of `route`'s latest digest.
        pub(crate) async fn last(pool: &$pool, route: &str) -> Result<Option<DateTime<Utc>>> {
            let mut conn = pool.acquire().await.map_err(unavailable)?;
            last_in(&mut conn, route).await
        }

        async fn last_in(tx: &mut $conn, route: &str) -> Result<Option<DateTime<Utc>>> {
            let p: fn(u8) -> String = $p;
            let last: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT MAX(period_end) FROM digest_runs WHERE route = {}",
                p(1)
            ))
            .bind(route)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            Ok(last.map(from_ms))
        }

        /// The events `route` keeps, oldest first.
        pub(crate) async fn events(pool: &$pool, route: &str) -> Result<Vec<crate::store::DigestEvent>> {
            // The unreadable ones become failed deliveries when the digest is made.
            Ok(kept(pool, route).await?.0)
        }

        /// The events `route` keeps that cannot be read, oldest first.
        pub(crate) async fn undecodable(
            pool: &$pool,
            route: &str,
        ) -> Result<Vec<crate::store::UndecodableDigestEvent>> {
            Ok(kept(pool, route)
                .await?
                .1
                .into_iter()
                .map(|bad| crate::store::UndecodableDigestEvent {
                    id: bad.id,
                    reason: bad.reason,
                })
                .collect())
        }

        /// Every event `route` keeps, oldest first: the readable ones and the others apart.
        async fn kept(
            pool: &$pool,
            route: &str,
        ) -> Result<(Vec<crate::store::DigestEvent>, Vec<UndecodableEvent>)> {
            let p: fn(u8) -> String = $p;
            let rows = sqlx::query(&format!(
                "SELECT {DIGEST_COLUMNS} FROM digest_events WHERE route = {} ORDER BY received_at, id",
                p(1)
            ))
            .bind(route)
            .fetch_all(pool)
            .await
            .map_err(unavailable)?;
            Ok(decode_digest_rows(&rows))
        }

        /// Makes the digest (see `Store::close_digest`) in one transaction, committed only
        /// when it was made.
        pub(crate) async fn close(
            pool: &$pool,
            route: &str,
            period_end: DateTime<Utc>,
            now: DateTime<Utc>,
            build: DigestBuilder<'_>,
        ) -> Result<Option<ClosedDigest>> {
            // Dropping `tx` without commit (already made, or an error) rolls everything back.
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let closed = close_in(&mut tx, route, period_end, now, build).await?;
            if closed.is_some() {
                tx.commit().await.map_err(unavailable)?;
            }
            Ok(closed)
        }

        /// [`close`] inside `tx`. `None`: already made, roll back; `Some`: commit.
        async fn close_in(
            tx: &mut $conn,
            route: &str,
            period_end: DateTime<Utc>,
            now: DateTime<Utc>,
            build: DigestBuilder<'_>,
        ) -> Result<Option<ClosedDigest>> {
            let p: fn(u8) -> String = $p;
            let end = ms(period_end);
            let last = last_in(&mut *tx, route).await?;
            if last.is_some_and(|last| last >= period_end) {
                return Ok(None);
            }
            // The claim: another replica closing the same digest at the same moment waits here
            // for this transaction, then inserts nothing and gives up.
            let claimed = sqlx::query(&format!(
                "INSERT INTO digest_runs (route, period_end, events, reports, closed_at) \
                 VALUES ({}, {}, 0, 0, {}) ON CONFLICT DO NOTHING",
                p(1),
                p(2),
                p(3)
            ))
            .bind(route)
            .bind(end)
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            if claimed.rows_affected() == 0 {
                return Ok(None);
            }
            // Locked (PostgreSQL), so a replica closing another period of this route cannot
            // fold them too.
            let rows = sqlx::query(&format!(
                "SELECT {DIGEST_COLUMNS} FROM digest_events WHERE route = {} AND received_at <= {} \
                 ORDER BY received_at, id{}",
                p(1),
                p(2),
                $lock
            ))
            .bind(route)
            .bind(end)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
            let (events, undecodable) = decode_digest_rows(&rows);
            for bad in &undecodable {
                sqlx::query(&format!(
                    "INSERT INTO deliveries (id, route, dedup_key, state, attempts, last_errmsg, \
                     draft, created_at, updated_at) \
                     VALUES ({}, {}, {}, 'failed', 0, {}, {}, {}, {})",
                    p(1),
                    p(2),
                    p(3),
                    p(4),
                    p(5),
                    p(6),
                    p(7)
                ))
                .bind(&bad.id)
                .bind(&bad.route)
                .bind(format!("undecodable:{}", bad.id))
                .bind(&bad.reason)
                .bind(&bad.stored)
                .bind(bad.received_at)
                .bind(ms(now))
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                sqlx::query(&format!("DELETE FROM digest_events WHERE id = {}", p(1)))
                    .bind(&bad.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            let deliveries = build(&events, last).map_err(Error::Digest)?;
            let mut ids = Vec::with_capacity(deliveries.len());
            for new in deliveries {
                let draft = crate::store::stored::encode_draft(&new.draft).map_err(unavailable)?;
                let at = ms(new.received_at);
                sqlx::query(&format!(
                    "INSERT INTO dedup (key, delivery_id, created_at) VALUES ({}, {}, {}) \
                     ON CONFLICT (key) DO UPDATE SET delivery_id = excluded.delivery_id, \
                     created_at = excluded.created_at",
                    p(1),
                    p(2),
                    p(3)
                ))
                .bind(&new.dedup_key)
                .bind(&new.id)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                sqlx::query(&format!(
                    "INSERT INTO deliveries (id, route, dedup_key, state, attempts, \
                     next_attempt_at, draft, created_at, updated_at) \
                     VALUES ({}, {}, {}, 'queued', 0, {}, {}, {}, {})",
                    p(1),
                    p(2),
                    p(3),
                    p(4),
                    p(5),
                    p(4),
                    p(4)
                ))
                .bind(&new.id)
                .bind(&new.route)
                .bind(&new.dedup_key)
                .bind(at)
                .bind(draft)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                ids.push(new.id);
            }
            // By id, never by time range: an event committed meanwhile is not in `events`.
            for event in &events {
                sqlx::query(&format!("DELETE FROM digest_events WHERE id = {}", p(1)))
                    .bind(&event.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            sqlx::query(&format!(
                "UPDATE digest_runs SET events = {}, reports = {} WHERE route = {} AND period_end = {}",
                p(1),
                p(2),
                p(3),
                p(4)
            ))
            .bind(i64::try_from(events.len()).unwrap_or(i64::MAX))
            .bind(i64::try_from(ids.len()).unwrap_or(i64::MAX))
            .bind(route)
            .bind(end)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            Ok(Some(ClosedDigest {
                events: events.len() as u64,
                deliveries: ids,
            }))
        }
    };
}

/// SQLite (`?1`; one writer, so nothing to lock).
pub(super) mod sqlite {
    use super::*;
    digest_statements!(
        sqlx::SqlitePool,
        sqlx::SqliteConnection,
        |n| format!("?{n}"),
        ""
    );
}

/// PostgreSQL (`$1`; the period's events are locked).
pub(super) mod postgres {
    use super::*;
    digest_statements!(
        sqlx::PgPool,
        sqlx::PgConnection,
        |n| format!("${n}"),
        " FOR UPDATE"
    );
}
