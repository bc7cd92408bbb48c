//! The gRPC adapter: converts requests into the vault's types, checks the caller's policy for
//! the tenant and provider, calls the flow, records the call in the audit trail, converts the
//! answer back. Decides nothing; every error becomes a status in `status.rs`, and every call's
//! status code is recorded on its RPC span.

mod convert;
mod cut_off;
mod layer;
mod status;

use std::{future::Future, sync::Arc, time::Instant};

use futures::StreamExt;

use tonic::{Request, Response, Status};

use crate::{
    audit::{Audit, AuditEvent, EventKind},
    auth::{Caller, Denied, Rpc},
    metrics::{self, kv},
    proto::{self, token_vault_server::TokenVault},
    telemetry::record_status,
    vault::{
        AccessTokenRequest, BeginAuthorization, ConnectionKey, ConnectionRequest, EventVisibility, ImportConnection,
        Revocation, TokenSource, Vault, VaultError, WatchEvents,
    },
};

pub use cut_off::CutOffLayer;
pub use layer::AuthLayer;
pub use status::{code as status_code, shutting_down, to_status, CallError, ERROR_DOMAIN};

pub struct TokenVaultService {
    vault: Vault,
    audit: Audit,
}

impl TokenVaultService {
    pub fn new(vault: Vault, audit: Audit) -> Self {
        Self { vault, audit }
    }
}

/// Turns a call's result into the RPC's, recording the status code on the RPC span.
fn respond<T, U: From<T>>(result: Result<T, CallError>) -> Result<Response<U>, Status> {
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
        to_status(Denied::Unknown.into())
    })
}

fn outcome<T>(result: &Result<T, CallError>) -> &'static str {
    result.as_ref().map_or_else(CallError::reason, |_| "ok")
}

impl TokenVaultService {
    /// The ladder every call on one connection climbs: the request parsed (INVALID_ARGUMENT
    /// naming the field), its connection resolved (the default provider for an empty name),
    /// the caller's policy checked for that connection, then the flow. `event` learns the
    /// tenant and provider as soon as they are known, for the audit trail.
    async fn on_connection<O, T, F, Fut>(
        &self,
        caller: &Caller,
        parsed: Result<(ConnectionRequest, O), VaultError>,
        event: &mut AuditEvent,
        flow: F,
    ) -> Result<T, CallError>
    where
        F: FnOnce(ConnectionKey, O) -> Fut,
        Fut: Future<Output = Result<T, VaultError>>,
    {
        let (asked, options) = parsed?;
        event.tenant_id = Some(asked.tenant_id.shared());
        let key = self.vault.connection_key(asked)?;
        event.provider = Some(key.provider().shared());
        caller.may_use(&key)?;
        Ok(flow(key, options).await?)
    }
}

#[tonic::async_trait]
impl TokenVault for TokenVaultService {
    async fn begin_authorization(
        &self,
        request: Request<proto::BeginAuthorizationRequest>,
    ) -> Result<Response<proto::BeginAuthorizationResponse>, Status> {
        let caller = caller(&request)?;
        let mut event = AuditEvent::new(EventKind::BeginAuthorization, caller.name(), "ok");
        let parsed = <(ConnectionRequest, BeginAuthorization)>::try_from(request.into_inner());
        let result = self
            .on_connection(&caller, parsed, &mut event, |key, options| async move {
                self.vault.begin_authorization(&key, options).await
            })
            .await;
        self.record(event, &result, Rpc::BeginAuthorization);
        respond(result)
    }

    async fn complete_authorization(
        &self,
        request: Request<proto::CompleteAuthorizationRequest>,
    ) -> Result<Response<proto::CompleteAuthorizationResponse>, Status> {
        let caller = caller(&request)?;
        let mut event = AuditEvent::new(EventKind::CompleteAuthorization, caller.name(), "ok");
        // The connection is the state's: the state is spent first, then the caller's policy is
        // checked against the connection it was issued for, then the code is exchanged.
        let result = async {
            let callback = convert::callback(request.into_inner())?;
            let consumed = self.vault.consume_state(callback).await?;
            let key = consumed.key();
            event.tenant_id = Some(key.tenant().shared());
            event.provider = Some(key.provider().shared());
            caller.may_use(key)?;
            Ok::<_, CallError>(self.vault.exchange_code(consumed).await?)
        }
        .await;
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
        let parsed = <(ConnectionRequest, AccessTokenRequest)>::try_from(request.into_inner());
        let rejected = matches!(&parsed, Ok((_, options)) if options.rejected.is_some());
        let result = self
            .on_connection(&caller, parsed, &mut event, |key, options| {
                self.vault.get_access_token(key, options, deadline)
            })
            .await;
        let (outcome, source) = match &result {
            Ok((_, source)) => ("ok", source.as_str()),
            Err(e) => (e.reason(), ""),
        };
        metrics::get().access_token_requests.add(
            1,
            &[
                kv("outcome", outcome),
                kv("source", source),
                kv("rejected_token", rejected),
            ],
        );
        self.audit_access(event, &result, rejected);
        respond(result.map(|(token, _)| token))
    }

    async fn get_connection(
        &self,
        request: Request<proto::GetConnectionRequest>,
    ) -> Result<Response<proto::GetConnectionResponse>, Status> {
        let caller = caller(&request)?;
        let mut event = AuditEvent::new(EventKind::GetConnection, caller.name(), "ok");
        let parsed = convert::connection_request(request.into_inner()).map(|asked| (asked, ()));
        let result = self
            .on_connection(&caller, parsed, &mut event, |key, ()| async move {
                self.vault.get_connection(&key).await
            })
            .await;
        match &result {
            Err(CallError::Denied(Denied::NotAllowed { .. })) => self.count_denied_event(event, Rpc::GetConnection),
            _ => self.audit.count(AuditEvent {
                outcome: outcome(&result),
                ..event
            }),
        }
        respond(result)
    }

    async fn list_connections(
        &self,
        request: Request<proto::ListConnectionsRequest>,
    ) -> Result<Response<proto::ListConnectionsResponse>, Status> {
        let caller = caller(&request)?;
        let mut event = AuditEvent::new(EventKind::ListConnections, caller.name(), "ok");
        let result = async {
            let asked = crate::vault::ListConnections::try_from(request.into_inner())?;
            event.provider = asked.provider.as_deref().map(Arc::from);
            // Filtered, not refused: a caller sees the connections its policy covers.
            let page = self
                .vault
                .list_connections(asked, |key| caller.may_use(key).is_ok())
                .await?;
            Ok::<_, CallError>(page)
        }
        .await;
        self.audit.count(AuditEvent {
            outcome: outcome(&result),
            ..event
        });
        respond(result)
    }

    async fn delete_connection(
        &self,
        request: Request<proto::DeleteConnectionRequest>,
    ) -> Result<Response<proto::DeleteConnectionResponse>, Status> {
        let caller = caller(&request)?;
        let mut event = AuditEvent::new(EventKind::DeleteConnection, caller.name(), "ok");
        let parsed = convert::delete_request(request.into_inner()).map(|asked| (asked, ()));
        let result = self
            .on_connection(&caller, parsed, &mut event, |key, ()| self.vault.delete_connection(key))
            .await;
        if let Ok(done) = &result {
            event.detail = Some(match done.revocation {
                Revocation::Failed(reason) => format!("revocation failed: {reason}").into(),
                ref other => format!("revocation {}", other.as_str()).into(),
            });
        }
        self.record(event, &result, Rpc::DeleteConnection);
        respond(result)
    }

    async fn import_connection(
        &self,
        request: Request<proto::ImportConnectionRequest>,
    ) -> Result<Response<proto::ImportConnectionResponse>, Status> {
        let caller = caller(&request)?;
        let deadline = convert::deadline(request.metadata(), Instant::now());
        let mut event = AuditEvent::new(EventKind::ImportConnection, caller.name(), "ok");
        let parsed = <(ConnectionRequest, ImportConnection)>::try_from(request.into_inner());
        let result = self
            .on_connection(&caller, parsed, &mut event, |key, options| {
                self.vault.import_connection(key, options, deadline)
            })
            .await;
        if let Ok(imported) = &result {
            let replaced = imported
                .replaced
                .map(|g| format!(", replacing generation {g}"))
                .unwrap_or_default();
            let validated = if imported.validated {
                "validated"
            } else {
                "not validated"
            };
            event.detail = Some(format!("generation {}{replaced}, {validated}", imported.generation).into());
        }
        self.record(event, &result, Rpc::ImportConnection);
        respond(result)
    }

    type WatchConnectionEventsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<proto::WatchConnectionEventsResponse, Status>> + Send + 'static>,
    >;

    /// The watch is audited once, when it starts. A provider the caller may use none of is
    /// refused (PERMISSION_DENIED); otherwise events of connections outside the caller's policy
    /// are skipped without a word, as if they were filtered out.
    async fn watch_connection_events(
        &self,
        request: Request<proto::WatchConnectionEventsRequest>,
    ) -> Result<Response<Self::WatchConnectionEventsStream>, Status> {
        let caller = caller(&request)?;
        let mut event = AuditEvent::new(EventKind::WatchConnectionEvents, caller.name(), "ok");
        let result = async {
            let asked = WatchEvents::try_from(request.into_inner())?;
            event.provider = asked.provider.as_deref().map(Arc::from);
            if let Some(prefix) = &asked.tenant_prefix {
                event.detail = Some(format!("tenant_prefix {prefix}").into());
            }
            if let Some(provider) = &asked.provider {
                caller.may_use_provider(provider)?;
            }
            let visible: EventVisibility = {
                let caller = caller.clone();
                Arc::new(move |key: &ConnectionKey| caller.may_use(key).is_ok())
            };
            Ok::<_, CallError>(self.vault.watch_events(asked, visible).await?)
        }
        .await;
        self.record(event, &result, Rpc::WatchConnectionEvents);
        respond(result.map(|events| {
            WatchStream(Box::pin(events.map(|item| {
                item.map(proto::WatchConnectionEventsResponse::from)
                    .map_err(|e| to_status(CallError::Vault(e)))
            })))
        }))
    }
}

/// The stream a watch answers with, as `respond` wants it (`From` itself).
struct WatchStream(<TokenVaultService as TokenVault>::WatchConnectionEventsStream);

impl From<WatchStream> for <TokenVaultService as TokenVault>::WatchConnectionEventsStream {
    fn from(s: WatchStream) -> Self {
        s.0
    }
}

impl TokenVaultService {
    /// BeginAuthorization, CompleteAuthorization and DeleteConnection: one row each; a policy
    /// refusal is counted with the other refusals.
    fn record<T>(&self, event: AuditEvent, result: &Result<T, CallError>, rpc: Rpc) {
        match result {
            Err(CallError::Denied(Denied::NotAllowed { .. })) => self.count_denied_event(event, rpc),
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
    /// A call that reported a rejected token is counted apart (`rejected_token:<source>`), and a
    /// refresh it saw says so.
    fn audit_access(
        &self,
        event: AuditEvent,
        result: &Result<(crate::vault::AccessToken, TokenSource), CallError>,
        rejected: bool,
    ) {
        match result {
            Ok((token, source)) => {
                if *source == TokenSource::Refresh {
                    let detail = if rejected {
                        format!(
                            "generation {}, after a token rejected by the provider",
                            token.generation
                        )
                    } else {
                        format!("generation {}", token.generation)
                    };
                    self.audit.record_once(AuditEvent {
                        kind: EventKind::Refresh,
                        detail: Some(detail.into()),
                        ..event.clone()
                    });
                }
                let detail = match (rejected, source) {
                    (false, _) => source.as_str(),
                    (true, TokenSource::Cache) => "rejected_token:cache",
                    (true, TokenSource::Database) => "rejected_token:database",
                    (true, TokenSource::Refresh) => "rejected_token:refresh",
                };
                self.audit.count(event.detail(detail));
            }
            Err(CallError::Denied(Denied::NotAllowed { .. })) => self.count_denied_event(event, Rpc::GetAccessToken),
            Err(e) => {
                if let CallError::Vault(VaultError::ReauthorizationRequired { reason }) = e {
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
