-- The connection-count gauge (tokenvault_connections{status}) ran `SELECT status, count(*) FROM
-- connections GROUP BY status` on every replica every telemetry.connection_count_interval. At a
-- million connections that is a parallel scan of the whole heap (~1.1 GB): the index-only scan
-- that 20261210000001 meant the gauge to have needs an all-visible heap, and refreshes, which
-- rewrite an hour's share of the rows, keep clearing the visibility map. The benchmark's cold
-- cache on Postgres caught it: a count every 30 s took ~0.3 s of three backends each time, from
-- the same cores as the calls (docs/performance.md).
--
-- Now the count follows the changes. Triggers append a row of +1 or -1 per connection that
-- appears, disappears or changes status, and the gauge sums this table, which holds a few rows
-- (store::postgres::connections::count_by_status folds it back to one row per status). Rows are
-- appended, never updated: two connections' transactions share no counter row, so they never
-- wait for each other here and can't deadlock on it. Writes that leave status alone (every
-- refresh) don't fire the triggers at all.
--
-- CREATE TRIGGER locks writes to connections out until this migration commits, and the triggers
-- are created before the first count: no change can fall between the count and the triggers.
-- Writes wait while the migration counts (about a second at a million connections); reads go on.
-- A release from before this migration (after a rollback) counts the table itself and never
-- folds: the triggers then add a row per change of status, rare, until a newer release folds them.
CREATE TABLE connection_status_changes (
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

-- TRUNCATE fires no row triggers; emptied connections count nothing.
CREATE FUNCTION connection_status_counts_cleared() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM connection_status_changes;
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
