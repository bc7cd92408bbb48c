-- The audit trail: who (caller) did what (event) to which tenant's connection, and how it ended.
-- Never a token, code, verifier or secret: only names, ids, stable reasons and counts.
-- Append-only: a trigger refuses UPDATE and TRUNCATE, and DELETE except the retention sweep.

CREATE TABLE audit_events (
    id          BIGSERIAL PRIMARY KEY,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    occurred_at TIMESTAMPTZ NOT NULL,
    window_end  TIMESTAMPTZ,
    event       TEXT NOT NULL CHECK (event IN (
                    'begin_authorization', 'complete_authorization', 'get_access_token',
                    'get_connection', 'refresh', 'reauthorization_required', 'denied')),
    caller      TEXT NOT NULL,
    tenant_id   TEXT,
    provider    TEXT,
    outcome     TEXT NOT NULL,
    detail      TEXT,
    count       BIGINT NOT NULL DEFAULT 1 CHECK (count >= 1),
    replica     UUID NOT NULL
);
COMMENT ON TABLE audit_events IS
    'Append-only audit trail. Discrete events (authorizations, refreshes, re-authorization) are one row each; GetAccessToken, GetConnection and denials are counted per caller, tenant, provider and outcome over a window (occurred_at .. window_end) and written as one row with count.';
COMMENT ON COLUMN audit_events.occurred_at IS
    'When the event happened; for an aggregated row, the start of its window.';
COMMENT ON COLUMN audit_events.window_end IS
    'NULL for a discrete event; for an aggregated row, the end of its window.';
COMMENT ON COLUMN audit_events.caller IS
    'The configured caller name, insecure-dev, or - for a caller that was not recognised.';
COMMENT ON COLUMN audit_events.outcome IS
    'ok, or the stable error reason the caller got (google.rpc.ErrorInfo.reason).';
COMMENT ON COLUMN audit_events.detail IS
    'Context without secrets: the token source, the refreshed generation, the re-authorization reason, or why a caller was refused.';
COMMENT ON COLUMN audit_events.replica IS
    'The vault process that wrote the row.';

CREATE INDEX audit_events_recorded_at ON audit_events (recorded_at);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, occurred_at) WHERE tenant_id IS NOT NULL;
CREATE INDEX audit_events_caller ON audit_events (caller, occurred_at);

-- The vault's role owns this table, so REVOKE cannot stop it; the trigger does. Only the
-- retention sweep, which says so with a transaction-local setting, may delete, and only rows
-- older than a day (the shortest retention configuration accepts). An owner can still drop the
-- trigger: against that, ship the token_vault::audit log events to an append-only store.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF current_setting('token_vault.audit_sweep', true) = 'on'
           AND OLD.recorded_at < now() - interval '1 day' THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
