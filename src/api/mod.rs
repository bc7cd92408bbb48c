//! The gRPC adapter: converts requests into the vault's types, calls the flow, converts the
//! answer back. Decides nothing; every error becomes a status in `status.rs`, and every call's
//! status code is recorded on its RPC span.

mod convert;
mod status;

use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::{
    metrics::{self, kv},
    proto::{self, token_vault_server::TokenVault},
    telemetry::record_status,
    vault::{Vault, VaultError},
};

pub use status::{to_status, ERROR_DOMAIN};

pub struct TokenVaultService {
    vault: Vault,
}

impl TokenVaultService {
    pub fn new(vault: Vault) -> Self {
        Self { vault }
    }
}

/// Turns a flow's result into the RPC's, recording the status code on the RPC span.
fn respond<T, U: From<T>>(result: Result<T, VaultError>) -> Result<Response<U>, Status> {
    match result {
        Ok(value) => {
            record_status(tonic::Code::Ok);
            Ok(Response::new(value.into()))
        }
        Err(e) => {
            record_status(status::code(&e));
            Err(to_status(e))
        }
    }
}

#[tonic::async_trait]
impl TokenVault for TokenVaultService {
    async fn begin_authorization(
        &self,
        request: Request<proto::BeginAuthorizationRequest>,
    ) -> Result<Response<proto::BeginAuthorizationResponse>, Status> {
        let result = match request.into_inner().try_into() {
            Ok(req) => self.vault.begin_authorization(req).await,
            Err(e) => Err(e),
        };
        respond(result)
    }

    async fn complete_authorization(
        &self,
        request: Request<proto::CompleteAuthorizationRequest>,
    ) -> Result<Response<proto::CompleteAuthorizationResponse>, Status> {
        let result = match convert::callback(request.into_inner()) {
            Ok(callback) => self.vault.complete_authorization(callback).await,
            Err(e) => Err(e),
        };
        respond(result)
    }

    async fn get_access_token(
        &self,
        request: Request<proto::GetAccessTokenRequest>,
    ) -> Result<Response<proto::GetAccessTokenResponse>, Status> {
        let deadline = convert::deadline(request.metadata(), Instant::now());
        let result = match request.into_inner().try_into() {
            Ok(req) => self.vault.get_access_token(req, deadline).await,
            Err(e) => Err(e),
        };
        let (outcome, source) = match &result {
            Ok((_, source)) => ("ok", source.as_str()),
            Err(e) => (e.reason(), ""),
        };
        metrics::get()
            .access_token_requests
            .add(1, &[kv("outcome", outcome), kv("source", source)]);
        respond(result.map(|(token, _)| token))
    }

    async fn get_connection(
        &self,
        request: Request<proto::GetConnectionRequest>,
    ) -> Result<Response<proto::GetConnectionResponse>, Status> {
        let result = match convert::connection_request(request.into_inner()) {
            Ok((tenant_id, provider)) => self.vault.get_connection(&tenant_id, &provider).await,
            Err(e) => Err(e),
        };
        respond(result)
    }
}
