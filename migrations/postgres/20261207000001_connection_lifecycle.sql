-- A connection's whole life: keep-alive, events, disconnect, import, retention of rotated
-- refresh tokens (docs/lifecycle.md).

-- Disconnected: revoked at the provider (or tried to be) and our ciphertexts wiped; the row,
-- its events and audit trail are kept.
ALTER TABLE connections DROP CONSTRAINT connections_status_check;
ALTER TABLE connections ADD CONSTRAINT connections_status_check
    CHECK (status IN ('active', 'reauthorization_required', 'disconnected'));

-- Wiped on disconnect: NULL is "no ciphertext", not an empty one.
ALTER TABLE connections ALTER COLUMN access_token DROP NOT NULL;
ALTER TABLE refresh_tokens ALTER COLUMN token DROP NOT NULL;

ALTER TABLE connections
    ADD COLUMN refresh_token_expires_at TIMESTAMPTZ,
    ADD COLUMN keepalive_due_at         TIMESTAMPTZ,
    ADD COLUMN keepalive_claimed_until  TIMESTAMPTZ,
    ADD COLUMN last_error               TEXT,
    ADD COLUMN last_error_at            TIMESTAMPTZ,
    ADD COLUMN disconnected_at          TIMESTAMPTZ;

COMMENT ON COLUMN connections.access_token IS
    'The current access token, sealed with associated data bound to tenant, provider and generation; NULL once disconnected.';
COMMENT ON COLUMN connections.refresh_token_expires_at IS
    'When the current refresh token is expected to expire: from the provider''s refresh_token_expires_in, else the provider''s configured refresh_token_lifetime; NULL when unknown (no keep-alive).';
COMMENT ON COLUMN connections.keepalive_due_at IS
    'When the keeper refreshes this connection so that its refresh token does not expire unused; NULL when not needed.';
COMMENT ON COLUMN connections.keepalive_claimed_until IS
    'A keeper replica claimed this connection until then (FOR UPDATE SKIP LOCKED); others skip it meanwhile. The refresh itself still takes the refresh lease.';
COMMENT ON COLUMN connections.last_error IS
    'The stable reason of the last failed refresh or revocation (no secret); cleared by a successful refresh.';

-- The keeper's only query: due active connections in due order, an index range scan however
-- many connections there are.
CREATE INDEX connections_keepalive_due ON connections (keepalive_due_at)
    WHERE status = 'active' AND keepalive_due_at IS NOT NULL;
-- ListConnections pages by (provider, tenant_id).
CREATE INDEX connections_provider_tenant ON connections (provider, tenant_id);

ALTER TABLE refresh_tokens ADD COLUMN purged_at TIMESTAMPTZ;
ALTER TABLE refresh_tokens DROP CONSTRAINT refresh_tokens_source_check;
ALTER TABLE refresh_tokens ADD CONSTRAINT refresh_tokens_source_check
    CHECK (source IN ('authorization_code', 'refresh', 'write_back', 'import'));
COMMENT ON COLUMN refresh_tokens.token IS
    'The refresh token, sealed with associated data bound to tenant, provider and generation; NULL once purged by retention or wiped by a disconnect (purged_at says when).';
COMMENT ON COLUMN refresh_tokens.purged_at IS
    'When the ciphertext was removed (retention of superseded tokens, or a disconnect); the row stays as history.';
CREATE INDEX refresh_tokens_superseded ON refresh_tokens (superseded_at)
    WHERE superseded_at IS NOT NULL AND token IS NOT NULL;

CREATE TABLE connection_events (
    id            BIGSERIAL PRIMARY KEY,
    -- The writing transaction's id: a reader delivers only events of transactions older than
    -- every transaction still running, so a late commit with a smaller id is never skipped.
    txid          XID8 NOT NULL DEFAULT pg_current_xact_id(),
    occurred_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    connection_id BIGINT NOT NULL,
    tenant_id     TEXT NOT NULL,
    provider      TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN (
                      'authorized', 'refreshed_by_keepalive', 'reauthorization_required',
                      'recovered', 'disconnected', 'imported')),
    status        TEXT NOT NULL,
    reason        TEXT,
    generation    BIGINT NOT NULL
);
COMMENT ON TABLE connection_events IS
    'Every change of a connection''s status, written in the transaction that made it; WatchConnectionEvents streams it. Pruned after events.retention.';
COMMENT ON COLUMN connection_events.status IS
    'The connection''s status after the change.';
CREATE INDEX connection_events_order ON connection_events (txid, id);
CREATE INDEX connection_events_occurred_at ON connection_events (occurred_at);

-- Wakes watchers on every replica; the table stays the truth (a missed notification is caught
-- by the next poll). Per row, not per statement: a statement trigger fires for an INSERT of no
-- rows too, and the refresh path's statement carries such an INSERT (its event, written only
-- for a keep-alive or a recovery) on every refresh. Identical notifications of one transaction
-- are delivered once, so a transaction writing many events still wakes watchers once.
CREATE FUNCTION connection_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('token_vault_connection_events', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER connection_events_notify
    AFTER INSERT ON connection_events
    FOR EACH ROW EXECUTE FUNCTION connection_events_notify();

ALTER TABLE audit_events DROP CONSTRAINT audit_events_event_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_event_check CHECK (event IN (
    'begin_authorization', 'complete_authorization', 'get_access_token', 'get_connection',
    'refresh', 'reauthorization_required', 'denied', 'list_connections',
    'watch_connection_events', 'delete_connection', 'import_connection'));
