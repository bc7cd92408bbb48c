-- The connection-count gauge (tokenvault_connections{status}) ran `SELECT status, count(*) FROM
-- connections GROUP BY status` on every replica every telemetry.connection_count_interval. At a
-- million connections that is a parallel scan of the whole heap (~1.1 GB): the index-only scan
-- that 20261210000001 meant the gauge to have needs an all-visible heap, and refreshes, which
-- rewrite an hour's share of the rows, keep clearing the visibility map. The benchmark's cold
-- cache on Postgres caught it, and a scratch database measured it: 0.3 to 0.5 s of three
-- backends per count on a freshly loaded table, 0.65 to 0.73 s with a heap fetch per row once a
-- fifth of the rows had been updated (docs/performance.md, "The connection gauge's count").
--
-- Now the count follows the changes. Triggers append a row of +1 or -1 per connection that
-- appears, disappears or changes status, and the gauge sums this table, which holds a few rows
-- (store::postgres::connections::count_by_status folds it back to one row per status). Rows are
-- appended, never updated: two connections' transactions share no counter row, so they never
-- wait for each other here and can't deadlock on it. Writes that leave status alone (every
-- refresh) don't fire the triggers at all.
--
-- The first statement locks writes to connections out until this migration commits, and the
-- triggers are created before the first count: no change can fall between the count and the
-- triggers, whatever the database's default isolation (under REPEATABLE READ the count's snapshot
-- would be the transaction's first statement's, so the lock must come before anything else).
-- Writes wait while the migration counts (0.5 s at a million connections on a vacuumed table,
-- up to a few seconds on one that is not); reads go on.
--
-- A release from before this migration (after a rollback) counts the table itself and never
-- folds: the triggers then add a row per change of status, rare, until a newer release folds them.
-- A data-only restore into a migrated schema must run with the triggers disabled
-- (pg_restore --disable-triggers): the dump holds this table's rows too.
LOCK TABLE connections IN SHARE ROW EXCLUSIVE MODE;

-- The key gives logical replication (a FOR ALL TABLES publication) a replica identity, without
-- which it refuses the fold's DELETE.
CREATE TABLE connection_status_changes (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status TEXT   NOT NULL,
    change BIGINT NOT NULL
);

CREATE FUNCTION connection_status_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO connection_status_changes (status, change) VALUES (OLD.status, -1);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO connection_status_changes (status, change) VALUES (NEW.status, 1);
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE fires no row triggers; emptied connections count nothing. TRUNCATE here too, not
-- DELETE: it waits for a fold under way and then removes the fold's sums as well.
CREATE FUNCTION connection_status_counts_cleared() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE connection_status_changes;
    RETURN NULL;
END
$$;

CREATE TRIGGER connections_counted AFTER INSERT OR DELETE ON connections
    FOR EACH ROW EXECUTE FUNCTION connection_status_counted();
CREATE TRIGGER connections_status_counted AFTER UPDATE OF status ON connections
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION connection_status_counted();
CREATE TRIGGER connections_truncated AFTER TRUNCATE ON connections
    FOR EACH STATEMENT EXECUTE FUNCTION connection_status_counts_cleared();

INSERT INTO connection_status_changes (status, change)
    SELECT status, count(*) FROM connections GROUP BY status;
