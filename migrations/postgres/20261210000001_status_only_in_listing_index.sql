-- The lease and the refresh's store find a connection by (tenant_id, provider) and also test
-- status = 'active'. Beside the unique index, a single-column index on status was a lure: a
-- generic plan built on statistics older than the table (a fleet imported or grown since the
-- last ANALYZE) estimated a dozen rows for the unique key and ANDed both indexes in a bitmap,
-- reading every active connection's entry in the status index on every lease. The benchmark's
-- refresh throughput scenario caught it: 172,578 entries read per lease at ~170,000
-- connections, the lease taking 60-100 ms instead of ~1 ms, and growing with the fleet.
--
-- Status is now only an INCLUDE column of the listing index, where no WHERE clause can search
-- it: the connection-count gauge (GROUP BY status) still reads it with an index-only scan, and
-- every update that moves a row writes one index entry fewer. The index is built inside the
-- migration's transaction, so writes to connections wait while it builds (seconds at a
-- million connections; reads go on).
CREATE INDEX connections_provider_tenant_status ON connections (provider, tenant_id) INCLUDE (status);
DROP INDEX connections_provider_tenant;
ALTER INDEX connections_provider_tenant_status RENAME TO connections_provider_tenant;
DROP INDEX connections_status;
