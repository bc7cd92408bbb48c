//! The one place where vault errors become gRPC statuses: a code, a stable reason in a
//! `google.rpc.ErrorInfo` (domain `tokenvault`), and for bad input a `google.rpc.BadRequest`
//! naming the field. Internal failures are logged with an id that the caller also sees.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::vault::VaultError;

pub const ERROR_DOMAIN: &str = "tokenvault";

pub fn code(e: &VaultError) -> Code {
    match e {
        VaultError::InvalidArgument { .. } => Code::InvalidArgument,
        VaultError::InvalidState
        | VaultError::AuthorizationDenied { .. }
        | VaultError::InvalidGrant
        | VaultError::ReauthorizationRequired { .. } => Code::FailedPrecondition,
        VaultError::ConnectionNotFound => Code::NotFound,
        VaultError::ProviderUnavailable { .. }
        | VaultError::RefreshOutcomeUnknown { .. }
        | VaultError::StoreUnavailable
        | VaultError::ShuttingDown => Code::Unavailable,
        VaultError::ProviderRejectedClient { .. } | VaultError::ProviderProtocol | VaultError::Internal(_) => {
            Code::Internal
        }
        VaultError::DeadlineExceeded => Code::DeadlineExceeded,
        VaultError::CallerUnknown => Code::Unauthenticated,
        VaultError::CallerNotAllowed { .. } => Code::PermissionDenied,
        VaultError::CallerRateLimited { .. } => Code::ResourceExhausted,
    }
}

pub fn to_status(e: VaultError) -> Status {
    let mut metadata = HashMap::new();
    let mut details = ErrorDetails::new();
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
        | VaultError::RefreshOutcomeUnknown { retry_after: after } => {
            metadata.insert("retry_after_ms".to_owned(), after.as_millis().to_string());
            details.set_retry_info(Some(*after));
        }
        VaultError::ProviderRejectedClient { .. } => {
            message = "the provider rejected the vault's client credentials; an operator must check the provider \
                       configuration"
                .into();
        }
        VaultError::CallerNotAllowed { caller } => {
            metadata.insert("caller".to_owned(), caller.clone());
        }
        VaultError::CallerRateLimited { caller, retry_after } => {
            metadata.insert("caller".to_owned(), caller.clone());
            if let Some(after) = retry_after {
                metadata.insert("retry_after_ms".to_owned(), after.as_millis().to_string());
                details.set_retry_info(Some(*after));
            }
        }
        VaultError::Internal(internal) => {
            let error_id = uuid::Uuid::new_v4().to_string();
            tracing::error!(%error_id, error = %internal, "internal error");
            message = format!("internal error (error_id {error_id})");
            metadata.insert("error_id".to_owned(), error_id);
        }
        _ => {}
    }
    details.set_error_info(e.reason(), ERROR_DOMAIN, metadata);
    Status::with_error_details(code(&e), message, details)
}
