-- Which database the vault last saw: its system identifier and timeline. A failover promotes a
-- standby onto a new timeline, a restore brings a new system identifier or timeline; either way
-- the database may have gone back in time, losing rotated refresh tokens that replicas still
-- hold in memory. Every replica compares the identity it reads with this row when it takes a
-- refresh lease; the first to see a change records it, and refreshes then wait
-- `failover.grace` from `changed_at` so that replicas holding lost rotations write them back
-- first. One row.
CREATE TABLE database_identity (
    id         SMALLINT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    identity   TEXT NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL
);

COMMENT ON TABLE database_identity IS
    'The database the vault last saw (system identifier/timeline) and when that changed; a change means a failover or restore, after which refreshes wait failover.grace.';

-- The database's identity, `<system identifier>/<timeline>`, or 'unknown' where the platform
-- does not offer `pg_control_system()` or `pg_current_wal_lsn()` (some managed services): the
-- refresh lease reads it on every lease, and a failing lease would stop every refresh, so the
-- function answers rather than fails. 'unknown' never changes, so such a database is never
-- seen to fail over; the vault says so at start.
CREATE FUNCTION token_vault_database_identity() RETURNS TEXT
    LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN (SELECT system_identifier FROM pg_control_system())::text || '/'
        || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8);
EXCEPTION WHEN OTHERS THEN
    RETURN 'unknown';
END
$$;

-- Rotations written back after a failover are told apart from refreshes and authorizations.
ALTER TABLE refresh_tokens DROP CONSTRAINT refresh_tokens_source_check;
ALTER TABLE refresh_tokens ADD CONSTRAINT refresh_tokens_source_check
    CHECK (source IN ('authorization_code', 'refresh', 'write_back'));
