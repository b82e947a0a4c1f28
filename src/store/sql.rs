//! What the SQL backends share: the column list, time and duration conversions, error mapping
//! and turning a row into a [`Delivery`]. Both schemas store times as Unix milliseconds.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{Delivery, DigestEvent, Error, LastError, Result, State};

/// The columns [`row_to_delivery`] reads, in order.
pub(super) const COLUMNS: &str = "id, route, dedup_key, state, attempts, next_attempt_at, \
     sending_since, last_errcode, last_errmsg, report_id, draft, created_at, updated_at";

/// The two claim statements, in the order they run: deliveries whose lease expired (their
/// worker died), then queued deliveries that are due, earliest first. Each walks an index and
/// stops at the limit; one `… OR …` query would sort every due row first, which is slow when
/// the queue is deep. Parameters: 1 the new lease end, 2 now, 3 the limit. `placeholder(n)`
/// writes the dialect's n-th parameter; `lock` is appended to each inner select (PostgreSQL:
/// ` FOR UPDATE SKIP LOCKED`).
pub(super) fn claim_statements(placeholder: fn(u8) -> String, lock: &str) -> [String; 2] {
    let (until, now, limit) = (placeholder(1), placeholder(2), placeholder(3));
    [
        format!(
            "UPDATE deliveries SET attempts = attempts + 1, lease_until = {until}, \
               updated_at = {now} \
             WHERE id IN (SELECT id FROM deliveries WHERE state = 'delivering' \
               AND lease_until <= {now} ORDER BY lease_until LIMIT {limit}{lock}) \
             RETURNING {COLUMNS}"
        ),
        format!(
            "UPDATE deliveries SET state = 'delivering', attempts = attempts + 1, \
               next_attempt_at = NULL, lease_until = {until}, updated_at = {now} \
             WHERE id IN (SELECT id FROM deliveries WHERE state = 'queued' \
               AND next_attempt_at <= {now} ORDER BY next_attempt_at LIMIT {limit}{lock}) \
             RETURNING {COLUMNS}"
        ),
    ]
}

/// Whether a writer connection handed back to its pool may be used again: only when sqlx's
/// bookkeeping says no transaction is open. A database can end a transaction by itself
/// (SQLite rolls back on SQLITE_FULL or SQLITE_IOERR during COMMIT; a PostgreSQL backend
/// goes away); sqlx's `ROLLBACK` on drop then fails and its transaction depth stays at 1,
/// so the next `begin()` would open a savepoint instead of a transaction and its "commit"
/// would release that savepoint inside a transaction that is never committed — webhooks
/// answered as stored while nothing was. A connection whose state is not known is closed
/// (any transaction it holds is rolled back) and the pool opens a fresh one.
pub(super) async fn state_known<C: sqlx::Connection>(conn: &mut C) -> sqlx::Result<bool> {
    // The rollback of a dropped transaction is queued on the connection: wait for it.
    conn.ping().await?;
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::warn!("closing a store connection whose transaction state is unknown");
    }
    Ok(clean)
}

/// The readiness probe, the same on both backends: in one committed transaction, a delivery
/// row as large as a webhook's (so it needs new pages, fires any trigger, writes the log at
/// commit like intake does) is inserted and deleted again, leaving nothing behind.
/// Parameters: 1 a fresh id, 2 a padding draft, 3 now in ms.
pub(super) const PROBE_INSERT: &str = "INSERT INTO deliveries \
     (id, route, dedup_key, state, attempts, draft, created_at, updated_at) \
     VALUES ($1, '', $1, 'ignored', 0, $2, $3, $3)";
/// Removes the probe's row (parameter: its id).
pub(super) const PROBE_DELETE: &str = "DELETE FROM deliveries WHERE id = $1";

/// The probe's id and padding.
pub(super) fn probe_row() -> (String, String) {
    (
        format!("probe-{}", uuid::Uuid::now_v7()),
        "0".repeat(8 * 1024),
    )
}

/// A database failure, as the store reports it.
pub(super) fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(e.to_string())
}

/// A time as stored.
pub(super) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A stored time.
pub(super) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

/// A duration in stored units.
pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Reads a [`Delivery`] from a row holding [`COLUMNS`]; an unreadable state or draft is
/// [`Error::Corrupt`] naming the delivery.
pub(super) fn row_to_delivery<R>(row: &R) -> Result<Delivery>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let text = |name: &str| -> Result<String> { row.try_get(name).map_err(unavailable) };
    let opt_text =
        |name: &str| -> Result<Option<String>> { row.try_get(name).map_err(unavailable) };
    let number = |name: &str| -> Result<i64> { row.try_get(name).map_err(unavailable) };
    let opt_number = |name: &str| -> Result<Option<i64>> { row.try_get(name).map_err(unavailable) };
    let id = text("id")?;
    let corrupt = |message: String| Error::Corrupt {
        id: id.clone(),
        message,
    };
    let state_name = text("state")?;
    let mut state =
        State::parse(&state_name).ok_or_else(|| corrupt(format!("state {state_name:?}")))?;
    let errcode = opt_number("last_errcode")?;
    let mut last_error = opt_text("last_errmsg")?.map(|errmsg| LastError { errcode, errmsg });
    let mut next_attempt_at = opt_number("next_attempt_at")?.map(from_ms);
    // A draft this relay cannot read is shown (and, when claimed, stored) as failed with the
    // reason; the row itself stays as it is for an operator.
    let draft = match super::stored::decode_draft(&text("draft")?) {
        Ok(draft) => draft,
        Err(e) => {
            // A row already failed keeps its own reason (an undecodable digest event's).
            if state != State::Failed || last_error.is_none() {
                state = State::Failed;
                next_attempt_at = None;
                last_error = Some(LastError {
                    errcode: None,
                    errmsg: format!("undecodable: draft: {e}"),
                });
            }
            super::stored::undecodable_draft()
        }
    };
    Ok(Delivery {
        route: text("route")?,
        dedup_key: text("dedup_key")?,
        state,
        attempts: u32::try_from(number("attempts")?).unwrap_or(u32::MAX),
        next_attempt_at,
        sending_since: opt_number("sending_since")?.map(from_ms),
        last_error,
        report_id: opt_text("report_id")?,
        draft,
        created_at: from_ms(number("created_at")?),
        updated_at: from_ms(number("updated_at")?),
        id,
    })
}

/// The columns [`row_to_digest_event`] reads, in order.
pub(super) const DIGEST_COLUMNS: &str = "id, route, group_key, event, received_at";

/// Turns a `digest_events` row into a [`DigestEvent`].
pub(super) fn row_to_digest_event<R: Row>(row: &R) -> Result<DigestEvent>
where
    usize: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get(0).map_err(unavailable)?;
    let event: String = row.try_get(3).map_err(unavailable)?;
    let event = super::stored::decode_event(&event).map_err(|e| Error::Corrupt {
        id: id.clone(),
        message: format!("undecodable: event: {e}"),
    })?;
    Ok(DigestEvent {
        route: row.try_get(1).map_err(unavailable)?,
        group: row.try_get(2).map_err(unavailable)?,
        event,
        received_at: from_ms(row.try_get(4).map_err(unavailable)?),
        id,
    })
}

/// A digest event row this relay cannot read: it becomes a `failed` delivery carrying the
/// reason and the stored text, so it is visible in `/v1/deliveries` and never blocks a digest.
pub(super) struct UndecodableEvent {
    /// The event's id (the failed delivery's id).
    pub(super) id: String,
    /// Its route.
    pub(super) route: String,
    /// The stored text, kept as the failed delivery's draft.
    pub(super) stored: String,
    /// When it was received.
    pub(super) received_at: i64,
    /// `undecodable: event: …`.
    pub(super) reason: String,
}

/// Decodes the rows of a digest's period; the rows that cannot be read are returned apart
/// (and logged): one corrupt row must not stop every later digest of its route.
pub(super) fn decode_digest_rows<R: Row>(rows: &[R]) -> (Vec<DigestEvent>, Vec<UndecodableEvent>)
where
    usize: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut events = Vec::with_capacity(rows.len());
    let mut undecodable = Vec::new();
    for row in rows {
        match row_to_digest_event(row) {
            Ok(event) => events.push(event),
            Err(e) => {
                tracing::error!(error = %e, "an unreadable digest event becomes a failed delivery");
                let text = |i: usize| row.try_get::<String, _>(i).unwrap_or_default();
                let reason = match e {
                    Error::Corrupt { message, .. } => message,
                    other => format!("undecodable: {other}"),
                };
                undecodable.push(UndecodableEvent {
                    id: text(0),
                    route: text(1),
                    stored: text(3),
                    received_at: row.try_get(4).unwrap_or_default(),
                    reason,
                });
            }
        }
    }
    (events, undecodable)
}
