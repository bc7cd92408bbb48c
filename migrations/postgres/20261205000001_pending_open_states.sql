-- Pending authorizations are bounded: at most `vault.max_open_states` open per tenant and
-- provider (BeginAuthorization deletes the oldest beyond it in the same transaction), deleted
-- when consumed, and swept once expired. The index serves the per-tenant count on every
-- BeginAuthorization; consumed_at stays only for rows written by older versions, which the
-- sweep deletes.
CREATE INDEX pending_authorizations_open ON pending_authorizations (tenant_id, provider, created_at)
    WHERE consumed_at IS NULL;

COMMENT ON TABLE pending_authorizations IS
    'Authorization flows begun and not yet completed: at most vault.max_open_states unexpired per tenant and provider. Single use: the first CompleteAuthorization deletes the row; expired rows are swept.';
COMMENT ON COLUMN pending_authorizations.consumed_at IS
    'Set by versions that kept used states; rows with it set are never completed again and the sweep deletes them.';
