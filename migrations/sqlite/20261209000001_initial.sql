-- The embedded store's schema: the same tables, columns and rules as the Postgres schema
-- (migrations/postgres), in SQLite's terms. One node only: see docs/deploy.md.
--
-- Times are TEXT in one fixed-width UTC form, 'YYYY-MM-DDTHH:MM:SS.SSSZ', written by the vault
-- and by strftime('%Y-%m-%dT%H:%M:%fZ', 'now') alike, so that comparing two times as text
-- compares them as times (and indexes on them work). Declared TIMESTAMP so that sqlx reads
-- them as times. Scopes are a JSON array of strings. UUIDs are 16-byte BLOBs. Every token,
-- code verifier and refresh token is stored sealed (AES-256-GCM, see src/crypto).

CREATE TABLE pending_authorizations (
    state_hash      BLOB PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    provider        TEXT NOT NULL,
    redirect_uri    TEXT NOT NULL,
    scopes          TEXT NOT NULL CHECK (json_valid(scopes)),
    pkce_verifier   BLOB,
    created_at      TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at      TIMESTAMP NOT NULL,
    consumed_at     TIMESTAMP
);
CREATE INDEX pending_authorizations_expires_at ON pending_authorizations (expires_at);
CREATE INDEX pending_authorizations_open ON pending_authorizations (tenant_id, provider, created_at)
    WHERE consumed_at IS NULL;

CREATE TABLE connections (
    id                       INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id                TEXT NOT NULL,
    provider                 TEXT NOT NULL,
    status                   TEXT NOT NULL CHECK (status IN ('active', 'reauthorization_required', 'disconnected')),
    status_reason            TEXT,
    status_changed_at        TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    scopes                   TEXT NOT NULL CHECK (json_valid(scopes)),
    -- Fencing counter: bumped by every change of tokens; writes are guarded on it.
    generation               INTEGER NOT NULL,
    token_type               TEXT NOT NULL,
    access_token             BLOB,
    access_token_issued_at   TIMESTAMP NOT NULL,
    access_token_expires_at  TIMESTAMP NOT NULL,
    authorized_at            TIMESTAMP NOT NULL,
    refreshed_at             TIMESTAMP,
    -- The refresh exclusion: while refresh_lease_until is in the future (the database's clock),
    -- only refresh_lease_holder may call the token endpoint for this connection.
    refresh_lease_holder     BLOB,
    refresh_lease_until      TIMESTAMP,
    created_at               TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at               TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    refresh_token_expires_at TIMESTAMP,
    keepalive_due_at         TIMESTAMP,
    keepalive_claimed_until  TIMESTAMP,
    last_error               TEXT,
    last_error_at            TIMESTAMP,
    disconnected_at          TIMESTAMP,
    UNIQUE (tenant_id, provider)
);
CREATE INDEX connections_status ON connections (status);
CREATE INDEX connections_keepalive_due ON connections (keepalive_due_at)
    WHERE status = 'active' AND keepalive_due_at IS NOT NULL;
CREATE INDEX connections_provider_tenant ON connections (provider, tenant_id);

-- Every refresh token ever received; the current one is the newest row with superseded_at NULL.
CREATE TABLE refresh_tokens (
    connection_id   INTEGER NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    generation      INTEGER NOT NULL,
    token           BLOB,
    source          TEXT NOT NULL CHECK (source IN ('authorization_code', 'refresh', 'write_back', 'import')),
    issued_at       TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    superseded_at   TIMESTAMP,
    purged_at       TIMESTAMP,
    PRIMARY KEY (connection_id, generation)
);
CREATE INDEX refresh_tokens_superseded ON refresh_tokens (superseded_at)
    WHERE superseded_at IS NOT NULL AND token IS NOT NULL;

-- Status changes. SQLite runs one writing transaction at a time, so an AUTOINCREMENT id is
-- handed out in commit order: a reader that has passed an id can never see a smaller one
-- appear later (Postgres needs the writing transaction's id for that; here the id is enough).
-- AUTOINCREMENT, not a plain rowid: an id is never reused after the sweep deletes the newest.
CREATE TABLE connection_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    occurred_at   TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    connection_id INTEGER NOT NULL,
    tenant_id     TEXT NOT NULL,
    provider      TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN (
                      'authorized', 'refreshed_by_keepalive', 'reauthorization_required',
                      'recovered', 'disconnected', 'imported')),
    status        TEXT NOT NULL,
    reason        TEXT,
    generation    INTEGER NOT NULL
);
CREATE INDEX connection_events_occurred_at ON connection_events (occurred_at);

-- The greatest id the retention sweep deleted: cursors below it are expired.
CREATE TABLE connection_events_pruned (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    id        INTEGER NOT NULL
);
INSERT INTO connection_events_pruned (singleton, id) VALUES (1, 0);

-- The audit trail, append-only: triggers refuse UPDATE, and DELETE except the retention sweep
-- (which sets audit_sweep.active inside its own transaction) of rows older than a day.
CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    occurred_at TIMESTAMP NOT NULL,
    window_end  TIMESTAMP,
    event       TEXT NOT NULL CHECK (event IN (
                    'begin_authorization', 'complete_authorization', 'get_access_token',
                    'get_connection', 'refresh', 'reauthorization_required', 'denied',
                    'list_connections', 'watch_connection_events', 'delete_connection',
                    'import_connection')),
    caller      TEXT NOT NULL,
    tenant_id   TEXT,
    provider    TEXT,
    outcome     TEXT NOT NULL,
    detail      TEXT,
    count       INTEGER NOT NULL DEFAULT 1 CHECK (count >= 1),
    replica     BLOB NOT NULL
);
CREATE INDEX audit_events_recorded_at ON audit_events (recorded_at);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, occurred_at) WHERE tenant_id IS NOT NULL;
CREATE INDEX audit_events_caller ON audit_events (caller, occurred_at);

CREATE TABLE audit_sweep (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    active    INTEGER NOT NULL
);
INSERT INTO audit_sweep (singleton, active) VALUES (1, 0);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    WHEN NOT ((SELECT active FROM audit_sweep) = 1
              AND OLD.recorded_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day'))
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused');
END;

-- Which database this is: a random id chosen when the file was created. A different file
-- (another database put in its place) has another id; a copy of the file keeps it.
CREATE TABLE store_identity (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    identity  TEXT NOT NULL
);
INSERT INTO store_identity (singleton, identity) VALUES (1, 'sqlite/' || lower(hex(randomblob(16))));

-- The identity last seen and when it changed, as on Postgres.
CREATE TABLE database_identity (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    identity   TEXT NOT NULL,
    changed_at TIMESTAMP NOT NULL
);
