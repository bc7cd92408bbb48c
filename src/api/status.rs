//! The one place where vault errors become gRPC statuses: a code, a stable reason in a
//! `google.rpc.ErrorInfo` (domain `tokenvault`), and for bad input a `google.rpc.BadRequest`
//! naming the field. Internal failures are logged with an id that the caller also sees.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::vault::VaultError;

pub const ERROR_DOMAIN: &str = "tokenvault";

pub fn to_status(e: VaultError) -> Status {
    let mut metadata = HashMap::new();
    let mut details = ErrorDetails::new();
    let (code, reason, message): (Code, &str, String) = match &e {
        VaultError::InvalidArgument { field, description } => {
            details.add_bad_request_violation(*field, description.clone());
            metadata.insert("field".to_owned(), (*field).to_owned());
            (Code::InvalidArgument, "INVALID_REQUEST_FIELD", e.to_string())
        }
        VaultError::InvalidState => (Code::FailedPrecondition, "INVALID_STATE", e.to_string()),
        VaultError::AuthorizationDenied { error, description } => {
            metadata.insert("error".to_owned(), error.clone());
            if let Some(d) = description {
                metadata.insert("error_description".to_owned(), d.clone());
            }
            (Code::FailedPrecondition, "AUTHORIZATION_DENIED", e.to_string())
        }
        VaultError::InvalidGrant => (Code::FailedPrecondition, "INVALID_GRANT", e.to_string()),
        VaultError::ConnectionNotFound => (Code::NotFound, "CONNECTION_NOT_FOUND", e.to_string()),
        VaultError::ReauthorizationRequired { reason } => {
            metadata.insert("status_reason".to_owned(), reason.clone());
            (Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED", e.to_string())
        }
        VaultError::ProviderUnavailable { retry_after } => {
            if let Some(after) = retry_after {
                metadata.insert("retry_after_ms".to_owned(), after.as_millis().to_string());
                details.set_retry_info(Some(*after));
            }
            (Code::Unavailable, "PROVIDER_UNAVAILABLE", e.to_string())
        }
        VaultError::ProviderRejectedClient { .. } => (
            Code::Internal,
            "PROVIDER_REJECTED_CLIENT",
            "the provider rejected the vault's client credentials; an operator must check the provider configuration"
                .into(),
        ),
        VaultError::ProviderProtocol => (Code::Internal, "PROVIDER_PROTOCOL_ERROR", e.to_string()),
        VaultError::StoreUnavailable => (Code::Unavailable, "STORE_UNAVAILABLE", e.to_string()),
        VaultError::DeadlineExceeded => (Code::DeadlineExceeded, "DEADLINE_EXCEEDED", e.to_string()),
        VaultError::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN", e.to_string()),
        VaultError::Internal(internal) => {
            let error_id = uuid::Uuid::new_v4().to_string();
            tracing::error!(%error_id, error = %internal, "internal error");
            metadata.insert("error_id".to_owned(), error_id.clone());
            (
                Code::Internal,
                "INTERNAL_ERROR",
                format!("internal error (error_id {error_id})"),
            )
        }
    };
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}
