//! The one place where errors become gRPC statuses: the vault's ([`VaultError`]) and auth's
//! ([`Denied`]), each with a code, a stable reason in a `google.rpc.ErrorInfo` (domain
//! `tokenvault`), and for bad input a `google.rpc.BadRequest` naming the field. Internal
//! failures are logged with an id that the caller also sees.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{auth::Denied, vault::VaultError};

pub const ERROR_DOMAIN: &str = "tokenvault";

/// How a call can fail: refused by auth before or after its request was read, or ended by a
/// flow.
#[derive(Debug, Clone)]
pub enum CallError {
    Denied(Denied),
    Vault(VaultError),
}

impl From<Denied> for CallError {
    fn from(e: Denied) -> Self {
        CallError::Denied(e)
    }
}

impl From<VaultError> for CallError {
    fn from(e: VaultError) -> Self {
        CallError::Vault(e)
    }
}

impl CallError {
    /// The stable reason code, as documented in the proto.
    pub fn reason(&self) -> &'static str {
        match self {
            CallError::Denied(e) => e.reason(),
            CallError::Vault(e) => e.reason(),
        }
    }
}

pub fn code(e: &CallError) -> Code {
    match e {
        CallError::Denied(Denied::Unknown) => Code::Unauthenticated,
        CallError::Denied(Denied::NotAllowed { .. }) => Code::PermissionDenied,
        CallError::Denied(Denied::RateLimited { .. }) => Code::ResourceExhausted,
        CallError::Vault(e) => vault_code(e),
    }
}

fn vault_code(e: &VaultError) -> Code {
    match e {
        VaultError::InvalidArgument { .. } => Code::InvalidArgument,
        VaultError::InvalidState
        | VaultError::AuthorizationDenied { .. }
        | VaultError::InvalidGrant
        | VaultError::ReauthorizationRequired { .. }
        | VaultError::ConnectionDisconnected => Code::FailedPrecondition,
        VaultError::ConnectionExists => Code::AlreadyExists,
        VaultError::WatchTooSlow | VaultError::WatchersLimited => Code::ResourceExhausted,
        VaultError::EventCursorExpired => Code::OutOfRange,
        VaultError::ConnectionNotFound => Code::NotFound,
        VaultError::ProviderUnavailable { .. }
        | VaultError::RefreshOutcomeUnknown { .. }
        | VaultError::DatabaseFailover { .. }
        | VaultError::ConnectionBusy { .. }
        | VaultError::StoreUnavailable
        | VaultError::ShuttingDown => Code::Unavailable,
        VaultError::ProviderRejectedClient { .. } | VaultError::ProviderProtocol | VaultError::Internal(_) => {
            Code::Internal
        }
        VaultError::DeadlineExceeded => Code::DeadlineExceeded,
    }
}

/// UNAVAILABLE `SHUTTING_DOWN`: what a call or stream still open when this replica stops is
/// answered, so that its client goes to another replica.
pub fn shutting_down() -> Status {
    to_status(CallError::Vault(VaultError::ShuttingDown))
}

pub fn to_status(e: CallError) -> Status {
    let mut metadata = HashMap::new();
    let mut details = ErrorDetails::new();
    let (code, reason) = (code(&e), e.reason());
    let e = match e {
        CallError::Denied(denied) => {
            let message = denied.to_string();
            match denied {
                Denied::Unknown => {}
                Denied::NotAllowed { caller } => {
                    metadata.insert("caller".to_owned(), caller);
                }
                Denied::RateLimited { caller, retry_after } => {
                    metadata.insert("caller".to_owned(), caller);
                    if let Some(after) = retry_after {
                        metadata.insert("retry_after_ms".to_owned(), after.as_millis().to_string());
                        details.set_retry_info(Some(after));
                    }
                }
            }
            details.set_error_info(reason, ERROR_DOMAIN, metadata);
            return Status::with_error_details(code, message, details);
        }
        CallError::Vault(e) => e,
    };
    let mut message = e.to_string();
    match &e {
        VaultError::InvalidArgument { field, description } => {
            details.add_bad_request_violation(*field, description.clone());
            metadata.insert("field".to_owned(), (*field).to_owned());
        }
        VaultError::AuthorizationDenied { error, description } => {
            metadata.insert("error".to_owned(), error.clone());
            if let Some(d) = description {
                metadata.insert("error_description".to_owned(), d.clone());
            }
        }
        VaultError::ReauthorizationRequired { reason } => {
            metadata.insert("status_reason".to_owned(), reason.clone());
        }
        VaultError::ProviderUnavailable {
            retry_after: Some(after),
        }
        | VaultError::RefreshOutcomeUnknown { retry_after: after }
        | VaultError::DatabaseFailover { retry_after: after }
        | VaultError::ConnectionBusy { retry_after: after } => {
            metadata.insert("retry_after_ms".to_owned(), after.as_millis().to_string());
            details.set_retry_info(Some(*after));
        }
        VaultError::ProviderRejectedClient { .. } => {
            message = "the provider rejected the vault's client credentials; an operator must check the provider \
                       configuration"
                .into();
        }
        VaultError::Internal(internal) => {
            let error_id = uuid::Uuid::new_v4().to_string();
            tracing::error!(%error_id, error = %internal, "internal error");
            message = format!("internal error (error_id {error_id})");
            metadata.insert("error_id".to_owned(), error_id);
        }
        _ => {}
    }
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}
