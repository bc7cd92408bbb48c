//! The gRPC adapter: converts requests into the vault's types, checks the caller's policy for
//! the tenant and provider, calls the flow, records the call in the audit trail, converts the
//! answer back. Decides nothing; every error becomes a status in `status.rs`, and every call's
//! status code is recorded on its RPC span.

mod convert;
mod status;

use std::{sync::OnceLock, time::Instant};

use tonic::{Request, Response, Status};

use crate::{
    audit::{Audit, AuditEvent, EventKind},
    auth::{Caller, Rpc},
    metrics::{self, kv},
    proto::{self, token_vault_server::TokenVault},
    telemetry::record_status,
    vault::{AccessTokenRequest, BeginAuthorization, TokenSource, Vault, VaultError},
};

pub use status::{code as status_code, to_status, ERROR_DOMAIN};

pub struct TokenVaultService {
    vault: Vault,
    audit: Audit,
}

impl TokenVaultService {
    pub fn new(vault: Vault, audit: Audit) -> Self {
        Self { vault, audit }
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

/// The caller the authentication layer attached. Without one (the service mounted without the
/// layer) nothing is served.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request.extensions().get::<Caller>().cloned().ok_or_else(|| {
        record_status(tonic::Code::Unauthenticated);
        to_status(VaultError::CallerUnknown)
    })
}

fn outcome<T>(result: &Result<T, VaultError>) -> &'static str {
    result.as_ref().map_or_else(VaultError::reason, |_| "ok")
}

#[tonic::async_trait]
impl TokenVault for TokenVaultService {
    async fn begin_authorization(
        &self,
        request: Request<proto::BeginAuthorizationRequest>,
    ) -> Result<Response<proto::BeginAuthorizationResponse>, Status> {
        let caller = caller(&request)?;
        let mut event = AuditEvent::new(EventKind::BeginAuthorization, caller.name(), "ok");
        let result = match BeginAuthorization::try_from(request.into_inner()) {
            Ok(req) => {
                let (tenant, provider) = (req.tenant_id.as_str(), caller.provider(&req.provider));
                event = event.tenant(tenant).provider(provider);
                match caller.authorize(provider, tenant) {
                    Ok(()) => self.vault.begin_authorization(req).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        self.record(event, &result, Rpc::BeginAuthorization);
        respond(result)
    }

    async fn complete_authorization(
        &self,
        request: Request<proto::CompleteAuthorizationRequest>,
    ) -> Result<Response<proto::CompleteAuthorizationResponse>, Status> {
        let caller = caller(&request)?;
        // The tenant and provider are the state's; the vault shows them to the policy check.
        let issued_for = OnceLock::new();
        let result = match convert::callback(request.into_inner()) {
            Ok(callback) => {
                let check = |tenant: &str, provider: &str| {
                    let _ = issued_for.set((tenant.to_owned(), provider.to_owned()));
                    caller.authorize(provider, tenant)
                };
                self.vault.complete_authorization_for(callback, check).await
            }
            Err(e) => Err(e),
        };
        let mut event = AuditEvent::new(EventKind::CompleteAuthorization, caller.name(), "ok");
        if let Some((tenant, provider)) = issued_for.into_inner() {
            event = event.tenant(tenant).provider(provider);
        }
        self.record(event, &result, Rpc::CompleteAuthorization);
        respond(result)
    }

    async fn get_access_token(
        &self,
        request: Request<proto::GetAccessTokenRequest>,
    ) -> Result<Response<proto::GetAccessTokenResponse>, Status> {
        let caller = caller(&request)?;
        let deadline = convert::deadline(request.metadata(), Instant::now());
        let mut event = AuditEvent::new(EventKind::GetAccessToken, caller.name(), "ok");
        let result = match AccessTokenRequest::try_from(request.into_inner()) {
            Ok(req) => {
                let (tenant, provider) = (req.tenant_id.as_str(), caller.provider(&req.provider));
                event = event.tenant(tenant).provider(provider);
                match caller.authorize(provider, tenant) {
                    Ok(()) => self.vault.get_access_token(req, deadline).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let (outcome, source) = match &result {
            Ok((_, source)) => ("ok", source.as_str()),
            Err(e) => (e.reason(), ""),
        };
        metrics::get()
            .access_token_requests
            .add(1, &[kv("outcome", outcome), kv("source", source)]);
        self.audit_access(event, &result);
        respond(result.map(|(token, _)| token))
    }

    async fn get_connection(
        &self,
        request: Request<proto::GetConnectionRequest>,
    ) -> Result<Response<proto::GetConnectionResponse>, Status> {
        let caller = caller(&request)?;
        let mut event = AuditEvent::new(EventKind::GetConnection, caller.name(), "ok");
        let result = match convert::connection_request(request.into_inner()) {
            Ok((tenant_id, provider)) => {
                let provider = caller.provider(&provider);
                event = event.tenant(tenant_id.as_str()).provider(provider);
                match caller.authorize(provider, tenant_id.as_str()) {
                    Ok(()) => self.vault.get_connection(&tenant_id, provider).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match &result {
            Err(VaultError::CallerNotAllowed { .. }) => self.count_denied_event(event, Rpc::GetConnection),
            _ => self.audit.count(AuditEvent {
                outcome: outcome(&result),
                ..event
            }),
        }
        respond(result)
    }
}

impl TokenVaultService {
    /// BeginAuthorization and CompleteAuthorization: one row each; a policy refusal is counted
    /// with the other refusals.
    fn record<T>(&self, event: AuditEvent, result: &Result<T, VaultError>, rpc: Rpc) {
        match result {
            Err(VaultError::CallerNotAllowed { .. }) => self.count_denied_event(event, rpc),
            _ => self.audit.record(AuditEvent {
                outcome: outcome(result),
                ..event
            }),
        }
    }

    fn count_denied_event(&self, event: AuditEvent, rpc: Rpc) {
        self.audit.count(AuditEvent {
            kind: EventKind::Denied,
            outcome: "CALLER_NOT_ALLOWED",
            detail: Some(rpc.name().into()),
            ..event
        });
    }

    /// GetAccessToken is the hot path: counted, never written per call. What a caller saw of
    /// a refresh or of a dead connection is also recorded once as its own event.
    fn audit_access(&self, event: AuditEvent, result: &Result<(crate::vault::AccessToken, TokenSource), VaultError>) {
        match result {
            Ok((token, source)) => {
                if *source == TokenSource::Refresh {
                    self.audit.record_once(AuditEvent {
                        kind: EventKind::Refresh,
                        detail: Some(format!("generation {}", token.generation).into()),
                        ..event.clone()
                    });
                }
                self.audit.count(event.detail(source.as_str()));
            }
            Err(VaultError::CallerNotAllowed { .. }) => self.count_denied_event(event, Rpc::GetAccessToken),
            Err(e) => {
                if let VaultError::ReauthorizationRequired { reason } = e {
                    self.audit.record_once(AuditEvent {
                        kind: EventKind::ReauthorizationRequired,
                        outcome: e.reason(),
                        detail: Some(reason.clone().into()),
                        ..event.clone()
                    });
                }
                self.audit.count(AuditEvent {
                    outcome: e.reason(),
                    ..event
                });
            }
        }
    }
}
