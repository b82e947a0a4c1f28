-- Digest mode: events kept until their route's next digest, and the digests already made.
-- Times are Unix milliseconds (UTC).
CREATE TABLE digest_events (
    id          TEXT PRIMARY KEY,
    route       TEXT NOT NULL,
    group_key   TEXT NOT NULL,
    event       TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX digest_events_route ON digest_events (route, received_at);

-- One row per digest made (route, scheduled time): the claim that makes each digest happen
-- once, whichever replica gets there first.
CREATE TABLE digest_runs (
    route      TEXT NOT NULL,
    period_end BIGINT NOT NULL,
    events     BIGINT NOT NULL,
    reports    BIGINT NOT NULL,
    closed_at  BIGINT NOT NULL,
    PRIMARY KEY (route, period_end)
);
