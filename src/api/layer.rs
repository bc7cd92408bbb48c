//! The authentication layer in front of every gRPC service (tower, at the gRPC edge): lets health through, and for everything
//! else identifies the caller, checks that its policy names the RPC, admits the call under the
//! caller's limits and attaches the [`Caller`] for the handler. A refusal is answered here,
//! counted in the audit trail, and never reaches a handler.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::status::CallError;
use crate::{
    audit::{Audit, AuditEvent, EventKind},
    auth::{Caller, Denied, PeerConnection, Permit, Refused, Rpc, SharedAuthenticator},
};

/// The service anyone may call: Kubernetes probes carry no credentials.
const PUBLIC_PREFIX: &str = "/grpc.health.v1.Health/";

/// Reflection needs a configured caller (any one: it lists the API, which every caller knows),
/// or insecure-dev. Why not public: it is a bidirectional stream that lives as long as the
/// client keeps it open, it hands the whole API to whoever asks, and nothing in a cluster needs
/// it without credentials (probes use health; an operator's grpcurl can send a caller's token or
/// certificate). So unauthenticated peers get health only.
const REFLECTION_PREFIXES: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The caller name recorded for a call whose caller was not recognised.
const UNKNOWN_CALLER: &str = "-";

#[derive(Clone)]
pub struct AuthLayer {
    /// Read per call: a reloaded `auth.policy_file` applies to the next call.
    auth: SharedAuthenticator,
    audit: Audit,
    unknown: Arc<str>,
}

impl AuthLayer {
    pub fn new(auth: SharedAuthenticator, audit: Audit) -> Self {
        Self {
            auth,
            audit,
            unknown: UNKNOWN_CALLER.into(),
        }
    }

    /// The caller and its permit, or why the call is refused.
    fn admit<B>(&self, request: &http::Request<B>) -> Result<(Caller, Permit), Denied> {
        let path = request.uri().path();
        let rpc = Rpc::from_path(path);
        let reflection = REFLECTION_PREFIXES.iter().any(|p| path.starts_with(p));
        let rpc_name = match rpc {
            Some(rpc) => rpc.name(),
            None if reflection => "ServerReflection",
            None => "unknown RPC",
        };
        let certificate = request
            .extensions()
            .get::<PeerConnection>()
            .and_then(|peer| peer.certificate.as_deref());
        let caller = match self.auth.current().identify(request.headers(), certificate) {
            Ok(caller) => caller,
            Err(unidentified) => {
                self.audit.count(
                    AuditEvent::new(EventKind::Denied, &self.unknown, "CALLER_UNKNOWN")
                        .detail(format!("{rpc_name}: {}", unidentified.detail)),
                );
                return Err(Denied::Unknown);
            }
        };
        // An unknown method is refused like a forbidden one: its name is the caller's input.
        if !reflection && !rpc.is_some_and(|rpc| caller.allows_rpc(rpc)) {
            self.audit.count(
                AuditEvent::new(EventKind::Denied, caller.name(), "CALLER_NOT_ALLOWED")
                    .detail(format!("{rpc_name}: RPC not in policy")),
            );
            return Err(Denied::NotAllowed {
                caller: caller.name().to_string(),
            });
        }
        match caller.admit(rpc) {
            Ok(permit) => Ok((caller, permit)),
            Err(refused) => {
                let (why, retry_after) = match refused {
                    Refused::Concurrency => ("too many calls in flight", None),
                    Refused::Rate(after) => ("over its rate", Some(after)),
                };
                self.audit.count(
                    AuditEvent::new(EventKind::Denied, caller.name(), "CALLER_RATE_LIMITED")
                        .detail(format!("{rpc_name}: {why}")),
                );
                Err(Denied::RateLimited {
                    caller: caller.name().to_string(),
                    retry_after,
                })
            }
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The service that was polled ready handles this call; its clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if path.starts_with(PUBLIC_PREFIX) {
            return Box::pin(inner.call(request));
        }
        match self.layer.admit(&request) {
            Ok((caller, permit)) => {
                request.extensions_mut().insert(caller);
                let call = inner.call(request);
                Box::pin(async move {
                    let response = call.await;
                    // The permit counts the call in flight until its answer is ready.
                    drop(permit);
                    response
                })
            }
            Err(denied) => {
                let e = CallError::Denied(denied);
                let code = super::status::code(&e);
                let response = super::status::to_status(e).into_http();
                // Recorded in the future: tonic enters the call's span around each poll, not
                // around `call`, where the status would land on no span.
                Box::pin(async move {
                    crate::telemetry::record_status(code);
                    Ok(response)
                })
            }
        }
    }
}
