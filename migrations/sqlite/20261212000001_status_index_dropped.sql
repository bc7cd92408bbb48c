-- The index on connections (status) alone: nothing reads through it any more (the connection
-- gauge sums connection_status_changes, migration 20261211000001; listing pages by
-- (provider, tenant_id); the keeper's claim names its partial index), and it lured the
-- planner: for the keeper's claim SQLite took `status = 'active'`, an equality on it, over the
-- partial index connections_keepalive_due, and so read every active connection and sorted them
-- on each claim, with the write lock held. The same lure as on Postgres (migrations/postgres,
-- 20261210000001). Every insert and status change also writes one index entry fewer.
DROP INDEX connections_status;
