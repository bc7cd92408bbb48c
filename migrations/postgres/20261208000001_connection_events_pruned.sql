-- How far the retention sweep of connection_events has deleted (docs/lifecycle-events.md): the
-- greatest (txid, id) it ever deleted. A watcher's cursor below it may have missed deleted
-- events and answers EVENT_CURSOR_EXPIRED; at or above it nothing after the cursor was deleted.
-- Updated in the statement that deletes, so a reader sees both or neither.
CREATE TABLE connection_events_pruned (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    txid      XID8 NOT NULL,
    id        BIGINT NOT NULL
);
INSERT INTO connection_events_pruned (txid, id) VALUES ('0', 0);
COMMENT ON TABLE connection_events_pruned IS
    'One row: the greatest (txid, id) the retention sweep deleted from connection_events; cursors below it are expired.';
