//! The vault's one error type: every way a flow can end other than success, in the caller's
//! terms. The API layer maps each variant to a gRPC status and a stable reason in one place.

use std::time::Duration;

/// Cloneable, because one refresh's outcome is handed to every caller waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VaultError {
    #[error("{field}: {description}")]
    InvalidArgument { field: &'static str, description: String },
    #[error("the state is unknown, expired or already used")]
    InvalidState,
    #[error("the authorization was denied: {error}")]
    AuthorizationDenied { error: String, description: Option<String> },
    #[error("the provider rejected the authorization code")]
    InvalidGrant,
    #[error("no connection for this tenant and provider")]
    ConnectionNotFound,
    #[error("the connection needs a new authorization ({reason})")]
    ReauthorizationRequired { reason: String },
    #[error("the connection was disconnected")]
    ConnectionDisconnected,
    /// DeleteConnection waited a lease's lifetime for a refresh of the connection to end, and
    /// it still held the exclusion; nothing was changed.
    #[error("a refresh of the connection is still in flight; nothing was changed")]
    ConnectionBusy { retry_after: Duration },
    #[error("the tenant already has an active connection with this provider")]
    ConnectionExists,
    #[error("the watcher fell too far behind")]
    WatchTooSlow,
    #[error("the event cursor is malformed or older than the retention")]
    EventCursorExpired,
    #[error("this replica has as many event watchers as it allows (events.max_watchers)")]
    WatchersLimited,
    #[error("the provider is unavailable")]
    ProviderUnavailable { retry_after: Option<Duration> },
    /// The provider's answer to a refresh may mean the refresh token was consumed; it is held
    /// back until the lease lapses (see `vault::refresh`).
    #[error("the outcome of the refresh is unknown; the refresh token is held back until the lease lapses")]
    RefreshOutcomeUnknown { retry_after: Duration },
    /// The database changed recently (a failover, a restore) and may have lost rotations that
    /// replicas are writing back; refreshes wait (see `vault::failover`).
    #[error(
        "the database changed recently (a failover or a restore); refreshes wait for lost rotations to be written back"
    )]
    DatabaseFailover { retry_after: Duration },
    #[error("the provider rejected the vault's client credentials for provider {provider}")]
    ProviderRejectedClient { provider: String },
    #[error("the provider answered something unusable")]
    ProviderProtocol,
    #[error("the vault's database is unavailable")]
    StoreUnavailable,
    #[error("the deadline passed while waiting for a refresh")]
    DeadlineExceeded,
    #[error("the vault is shutting down")]
    ShuttingDown,
    /// Unexpected. The message is for the log (it never holds a secret); callers see an id.
    #[error("internal error: {0}")]
    Internal(String),
}

impl VaultError {
    /// The stable reason code (`google.rpc.ErrorInfo.reason`), documented in the proto.
    pub fn reason(&self) -> &'static str {
        match self {
            VaultError::InvalidArgument { .. } => "INVALID_REQUEST_FIELD",
            VaultError::InvalidState => "INVALID_STATE",
            VaultError::AuthorizationDenied { .. } => "AUTHORIZATION_DENIED",
            VaultError::InvalidGrant => "INVALID_GRANT",
            VaultError::ConnectionNotFound => "CONNECTION_NOT_FOUND",
            VaultError::ReauthorizationRequired { .. } => "REAUTHORIZATION_REQUIRED",
            VaultError::ConnectionDisconnected => "CONNECTION_DISCONNECTED",
            VaultError::ConnectionBusy { .. } => "CONNECTION_BUSY",
            VaultError::ConnectionExists => "CONNECTION_EXISTS",
            VaultError::WatchTooSlow => "WATCH_TOO_SLOW",
            VaultError::EventCursorExpired => "EVENT_CURSOR_EXPIRED",
            VaultError::WatchersLimited => "EVENT_WATCHERS_LIMITED",
            VaultError::ProviderUnavailable { .. } => "PROVIDER_UNAVAILABLE",
            VaultError::RefreshOutcomeUnknown { .. } => "REFRESH_OUTCOME_UNKNOWN",
            VaultError::DatabaseFailover { .. } => "DATABASE_FAILOVER",
            VaultError::ProviderRejectedClient { .. } => "PROVIDER_REJECTED_CLIENT",
            VaultError::ProviderProtocol => "PROVIDER_PROTOCOL_ERROR",
            VaultError::StoreUnavailable => "STORE_UNAVAILABLE",
            VaultError::DeadlineExceeded => "DEADLINE_EXCEEDED",
            VaultError::ShuttingDown => "SHUTTING_DOWN",
            VaultError::Internal(_) => "INTERNAL_ERROR",
        }
    }

    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        VaultError::InvalidArgument {
            field,
            description: description.into(),
        }
    }
}

impl From<crate::store::StoreError> for VaultError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            VaultError::StoreUnavailable
        } else {
            VaultError::Internal(e.to_string())
        }
    }
}

impl From<crate::connection_key::InvalidField> for VaultError {
    fn from(e: crate::connection_key::InvalidField) -> Self {
        VaultError::InvalidArgument {
            field: e.field,
            description: e.description,
        }
    }
}

impl From<crate::crypto::SealError> for VaultError {
    fn from(e: crate::crypto::SealError) -> Self {
        VaultError::Internal(format!("stored value could not be opened: {e}"))
    }
}
