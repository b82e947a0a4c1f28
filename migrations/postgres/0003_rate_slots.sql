-- Send slots of DingTalk's per-app rate limit, shared by every replica: each report/create
-- takes the app's next slot (`next_at`, moved on by 1/max_qps) in one atomic upsert and waits
-- for it, so all replicas together stay within max_qps.
CREATE TABLE rate_slots (
    app_key TEXT PRIMARY KEY,
    next_at TIMESTAMPTZ NOT NULL
);
