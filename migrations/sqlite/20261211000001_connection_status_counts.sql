-- The connection-count gauge (tokenvault_connections{status}) counted every connection in the
-- file every telemetry.connection_count_interval, in the vault's own process: a walk of the
-- status index's million entries every 30 s at the benchmark's scale. As on Postgres (migrations/postgres,
-- 20261211000001), triggers now append +1 or -1 per connection that appears, disappears or
-- changes status, and the gauge sums these few rows (store::sqlite::connections::count_by_status
-- folds them back to one per status). The migration's transaction holds the write lock, so no
-- change falls between the first count and the triggers.
CREATE TABLE connection_status_changes (
    id     INTEGER PRIMARY KEY,
    status TEXT    NOT NULL,
    change INTEGER NOT NULL
);

CREATE TRIGGER connections_counted_insert AFTER INSERT ON connections
BEGIN
    INSERT INTO connection_status_changes (status, change) VALUES (NEW.status, 1);
END;

CREATE TRIGGER connections_counted_delete AFTER DELETE ON connections
BEGIN
    INSERT INTO connection_status_changes (status, change) VALUES (OLD.status, -1);
END;

CREATE TRIGGER connections_status_counted AFTER UPDATE OF status ON connections
    WHEN OLD.status IS NOT NEW.status
BEGIN
    INSERT INTO connection_status_changes (status, change) VALUES (OLD.status, -1), (NEW.status, 1);
END;

INSERT INTO connection_status_changes (status, change)
    SELECT status, count(*) FROM connections GROUP BY status;
