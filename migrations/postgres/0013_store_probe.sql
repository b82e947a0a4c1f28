-- One row rewritten by the readiness probe while store writes fail (issue 13): a committed
-- write that tells when writes work again.
CREATE TABLE store_probe (
    id INTEGER PRIMARY KEY,
    checked_at BIGINT NOT NULL
);
