//! The gRPC adapter: converts requests into the vault's types, calls the flow, converts the
//! answer back. Decides nothing; every error becomes a status in `status.rs`.

mod convert;
mod status;

use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::{
    proto::{self, token_vault_server::TokenVault},
    vault::Vault,
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

#[tonic::async_trait]
impl TokenVault for TokenVaultService {
    async fn begin_authorization(
        &self,
        request: Request<proto::BeginAuthorizationRequest>,
    ) -> Result<Response<proto::BeginAuthorizationResponse>, Status> {
        let req = request.into_inner().try_into().map_err(to_status)?;
        let started = self.vault.begin_authorization(req).await.map_err(to_status)?;
        Ok(Response::new(started.into()))
    }

    async fn complete_authorization(
        &self,
        request: Request<proto::CompleteAuthorizationRequest>,
    ) -> Result<Response<proto::CompleteAuthorizationResponse>, Status> {
        let callback = convert::callback(request.into_inner()).map_err(to_status)?;
        let done = self.vault.complete_authorization(callback).await.map_err(to_status)?;
        Ok(Response::new(done.into()))
    }

    async fn get_access_token(
        &self,
        request: Request<proto::GetAccessTokenRequest>,
    ) -> Result<Response<proto::GetAccessTokenResponse>, Status> {
        let deadline = convert::deadline(request.metadata(), Instant::now());
        let req = request.into_inner().try_into().map_err(to_status)?;
        let token = self.vault.get_access_token(req, deadline).await.map_err(to_status)?;
        Ok(Response::new(token.into()))
    }

    async fn get_connection(
        &self,
        request: Request<proto::GetConnectionRequest>,
    ) -> Result<Response<proto::GetConnectionResponse>, Status> {
        let (tenant_id, provider) = convert::connection_request(request.into_inner()).map_err(to_status)?;
        let info = self
            .vault
            .get_connection(&tenant_id, &provider)
            .await
            .map_err(to_status)?;
        Ok(Response::new(info.into()))
    }
}
