-- The vault's schema: pending authorizations, connections and the history of refresh tokens.
-- Every token, code verifier and refresh token is stored sealed (AES-256-GCM, see src/crypto);
-- the columns holding them are BYTEA and never contain plaintext.

CREATE TABLE pending_authorizations (
    state_hash      BYTEA PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    provider        TEXT NOT NULL,
    redirect_uri    TEXT NOT NULL,
    scopes          TEXT[] NOT NULL,
    pkce_verifier   BYTEA,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL,
    consumed_at     TIMESTAMPTZ
);
COMMENT ON TABLE pending_authorizations IS
    'Authorization flows begun and not yet completed. Single use: consumed_at is set atomically by the first CompleteAuthorization.';
COMMENT ON COLUMN pending_authorizations.state_hash IS
    'SHA-256 of the state parameter; the state itself is never stored.';
COMMENT ON COLUMN pending_authorizations.pkce_verifier IS
    'The PKCE code verifier, sealed with associated data bound to the state hash; NULL when PKCE is off for the provider.';
CREATE INDEX pending_authorizations_expires_at ON pending_authorizations (expires_at);

CREATE TABLE connections (
    id                      BIGSERIAL PRIMARY KEY,
    tenant_id               TEXT NOT NULL,
    provider                TEXT NOT NULL,
    status                  TEXT NOT NULL CHECK (status IN ('active', 'reauthorization_required')),
    status_reason           TEXT,
    status_changed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    scopes                  TEXT[] NOT NULL,
    generation              BIGINT NOT NULL,
    token_type              TEXT NOT NULL,
    access_token            BYTEA NOT NULL,
    access_token_issued_at  TIMESTAMPTZ NOT NULL,
    access_token_expires_at TIMESTAMPTZ NOT NULL,
    authorized_at           TIMESTAMPTZ NOT NULL,
    refreshed_at            TIMESTAMPTZ,
    refresh_lease_holder    UUID,
    refresh_lease_until     TIMESTAMPTZ,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, provider)
);
COMMENT ON TABLE connections IS
    'One row per tenant and provider: the current access token and the refresh exclusion.';
COMMENT ON COLUMN connections.generation IS
    'Fencing counter: bumped by every change of tokens (authorization or refresh). Writes are guarded with WHERE generation = <read value>.';
COMMENT ON COLUMN connections.access_token IS
    'The current access token, sealed with associated data bound to tenant, provider and generation.';
COMMENT ON COLUMN connections.refresh_lease_until IS
    'The refresh exclusion: while in the future, only refresh_lease_holder may call the token endpoint for this connection. Compared with the database clock only.';

CREATE TABLE refresh_tokens (
    connection_id   BIGINT NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    generation      BIGINT NOT NULL,
    token           BYTEA NOT NULL,
    source          TEXT NOT NULL CHECK (source IN ('authorization_code', 'refresh')),
    issued_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    superseded_at   TIMESTAMPTZ,
    PRIMARY KEY (connection_id, generation)
);
COMMENT ON TABLE refresh_tokens IS
    'Every refresh token ever received, one row per connection generation that brought one. The current one is the newest row with superseded_at NULL; older rows are kept as history and never sent again.';
COMMENT ON COLUMN refresh_tokens.token IS
    'The refresh token, sealed with associated data bound to tenant, provider and generation.';
CREATE UNIQUE INDEX refresh_tokens_one_current ON refresh_tokens (connection_id) WHERE superseded_at IS NULL;
