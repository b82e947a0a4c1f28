-- Deliveries: the queue and each delivery's state, shared by every replica. Times are Unix
-- milliseconds (UTC), as in the SQLite schema; `draft` is the report draft as JSON text.
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    route           TEXT NOT NULL,
    dedup_key       TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    lease_until     BIGINT,
    sending_since   BIGINT,
    last_errcode    BIGINT,
    last_errmsg     TEXT,
    report_id       TEXT,
    draft           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_created ON deliveries (created_at);

-- Dedup keys seen within delivery.dedup_window.
CREATE TABLE dedup (
    key         TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX dedup_created ON dedup (created_at);
