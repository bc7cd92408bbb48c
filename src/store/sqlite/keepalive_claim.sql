-- The keeper's claim (store::sqlite::keepalive::claim): due active connections in due order,
-- claimed in the same statement. INDEXED BY: without planner statistics (nothing runs ANALYZE
-- on the vault's files) SQLite took an equality over the partial index's range: on status
-- while an index on it existed (every active connection), else on provider
-- (connections_provider_tenant: every connection of the provider), then sorted them all, while
-- the claim held the write lock. The lookup alone, 200 among 1,000,000 connections: 0.76 to
-- 0.91 s that way, 0.2 to 0.8 ms through the partial index (docs/performance.md). If that
-- index can no longer serve the statement, SQLite refuses to prepare it rather than scan.
-- tests/api/sqlite_store.rs checks this file's plan.
UPDATE connections
      SET keepalive_claimed_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2)
    WHERE id IN (
          SELECT id FROM connections INDEXED BY connections_keepalive_due
           WHERE status = 'active' AND keepalive_due_at IS NOT NULL
             AND keepalive_due_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             AND (keepalive_claimed_until IS NULL
                  OR keepalive_claimed_until <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             AND (refresh_lease_until IS NULL
                  OR refresh_lease_until <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             AND provider IN (SELECT value FROM json_each(?3))
           ORDER BY keepalive_due_at
           LIMIT ?1)
RETURNING id AS "id!", tenant_id AS "tenant_id!", provider AS "provider!", generation AS "generation!",
          keepalive_claimed_until AS "claimed_until!: OffsetDateTime"
