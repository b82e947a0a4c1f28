-- Claiming expired leases walks this index instead of scanning the queue.
CREATE INDEX deliveries_lease ON deliveries (state, lease_until);
