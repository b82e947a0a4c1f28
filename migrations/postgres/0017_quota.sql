-- Quota budget: metered DingTalk calls counted per calendar month (in the configured zone,
-- written `YYYY-MM`), API and route; the months DingTalk declared exhausted (90020); and the
-- resolved templates, so restarts do not spend a getbyname each. Times are Unix milliseconds.
CREATE TABLE quota_calls (
    month TEXT NOT NULL,
    api   TEXT NOT NULL,
    route TEXT NOT NULL,
    calls BIGINT NOT NULL,
    PRIMARY KEY (month, api, route)
);

-- One row per month DingTalk answered 90020 in: every replica holds deliveries until it turns.
CREATE TABLE quota_exhausted (
    month        TEXT PRIMARY KEY,
    exhausted_at BIGINT NOT NULL,
    detail       TEXT NOT NULL
);

-- Templates resolved with getbyname, kept until `expires_at` (dingtalk.template_cache_ttl).
CREATE TABLE template_cache (
    app_key    TEXT NOT NULL,
    name       TEXT NOT NULL,
    owner      TEXT NOT NULL,
    template   TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (app_key, name, owner)
);
