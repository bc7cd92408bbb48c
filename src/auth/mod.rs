//! Who is calling, and what it may do. A caller is recognised by its client certificate
//! (mutual TLS: a URI SAN such as a SPIFFE ID, or a DNS SAN) or by a bearer token (configured
//! as a SHA-256, compared in constant time); its policy lists the RPCs, providers and tenants
//! it may use, and its limits cap its calls in flight and its rate. Default deny: an unknown
//! caller gets UNAUTHENTICATED, a known one outside its policy PERMISSION_DENIED.
//!
//! The API's tower layer (`api::layer`) applies this in front of every service but health
//! (reflection needs a caller too, without an RPC check); the connection check
//! ([`Caller::may_use`]) happens in the handlers, once the request is parsed. Refusals are
//! [`Denied`], auth's own error.

mod denied;
mod identity;
mod limit;
mod peer;
mod policy;
pub mod reload;
pub mod tls;
mod validity;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, PoisonError, RwLock},
};

use http::HeaderMap;

pub use denied::Denied;
pub use identity::{hash_token, parse_token_hash, CertificateNames};
pub use limit::{Permit, Rate, Refused};
pub use peer::PeerConnection;
pub use policy::{Policy, Rpc};
pub use reload::{load_authenticator, watch_security, PolicyDigest, ReloadCounts, Reloaded, SecurityReloader};
pub use validity::{validity, Validity};

use crate::{
    config::{invalid, AuthMode, CallerSettings, ConfigError, Settings},
    connection_key::ConnectionKey,
};
use identity::{SanKind, TokenHash};
use limit::Limits;

/// The caller name every call gets with `auth.mode = "insecure-dev"`.
pub const INSECURE_DEV_CALLER: &str = "insecure-dev";

/// An identified caller, attached to each request; cheap to clone.
#[derive(Clone)]
pub struct Caller(Arc<CallerInner>);

struct CallerInner {
    name: Arc<str>,
    policy: Policy,
    limits: Limits,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Caller").field(&self.0.name).finish()
    }
}

impl Caller {
    fn new(name: &str, policy: Policy, limits: Limits) -> Self {
        Self(Arc::new(CallerInner {
            name: name.into(),
            policy,
            limits,
        }))
    }

    pub fn name(&self) -> &Arc<str> {
        &self.0.name
    }

    /// Admits a call to `rpc` (None: a call outside the vault's RPCs, such as reflection) under
    /// the caller's limits.
    pub fn admit(&self, rpc: Option<Rpc>) -> Result<Permit, Refused> {
        self.0.limits.admit(rpc)
    }

    pub fn allows_rpc(&self, rpc: Rpc) -> bool {
        self.0.policy.allows_rpc(rpc)
    }

    /// A watch limited to one provider: refused when the caller may use none of its
    /// connections.
    pub fn may_use_provider(&self, provider: &str) -> Result<(), Denied> {
        if self.0.policy.allows_provider(provider) {
            Ok(())
        } else {
            Err(Denied::NotAllowed {
                caller: self.0.name.to_string(),
            })
        }
    }

    /// The handlers' check, once the connection a call touches is known.
    pub fn may_use(&self, key: &ConnectionKey) -> Result<(), Denied> {
        if self.0.policy.allows(key) {
            Ok(())
        } else {
            Err(Denied::NotAllowed {
                caller: self.0.name.to_string(),
            })
        }
    }
}

/// Why no caller was recognised; `detail` goes to the audit trail (never a token).
#[derive(Debug)]
pub struct Unidentified {
    pub detail: String,
}

/// Every configured caller and how to recognise it. Built at start, and again when a reload of
/// `auth.policy_file` changes it (see [`SharedAuthenticator`]).
pub struct Authenticator {
    callers: Vec<Caller>,
    /// Each caller's entry, in `callers`' order: a reload keeps the callers whose entry is the same.
    entries: Vec<CallerSettings>,
    by_uri: HashMap<String, usize>,
    by_dns: HashMap<String, usize>,
    tokens: Vec<(TokenHash, usize)>,
    insecure: Option<Caller>,
}

impl Authenticator {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        Self::from_callers(settings, &settings.auth_callers()?, None)
    }

    /// The authenticator of `callers` (inline or a policy file's), checked against `settings`.
    /// A caller whose entry is the same in `previous` is kept as it is, with its calls in
    /// flight and its rate budget; a changed entry starts afresh.
    pub fn from_callers(
        settings: &Settings,
        callers: &[CallerSettings],
        previous: Option<&Authenticator>,
    ) -> Result<Self, ConfigError> {
        if settings.auth.mode == AuthMode::InsecureDev {
            if !callers.is_empty() {
                return Err(invalid(
                    "auth.mode",
                    "is \"insecure-dev\" but callers are configured: remove one or the other",
                ));
            }
            return Ok(Self {
                callers: Vec::new(),
                entries: Vec::new(),
                by_uri: HashMap::new(),
                by_dns: HashMap::new(),
                tokens: Vec::new(),
                insecure: Some(Caller::new(
                    INSECURE_DEV_CALLER,
                    Policy::allow_all(),
                    Limits::unlimited(),
                )),
            });
        }
        if callers.is_empty() {
            return Err(invalid(
                "auth.callers",
                "is empty: list the services that may call the vault (auth.callers or auth.policy_file, \
                 see docs/security.md), or set auth.mode = \"insecure-dev\" to serve without authentication \
                 (local development only)",
            ));
        }
        let default_begin = Rate {
            per_second: settings.auth.default_begin_authorization_per_second,
            burst: settings.auth.default_begin_authorization_burst,
        };
        let known_providers: Vec<&str> = settings.providers.keys().map(String::as_str).collect();
        let mut auth = Self {
            callers: Vec::with_capacity(callers.len()),
            entries: callers.to_vec(),
            by_uri: HashMap::new(),
            by_dns: HashMap::new(),
            tokens: Vec::new(),
            insecure: None,
        };
        for (i, c) in callers.iter().enumerate() {
            let field = format!("auth.callers[{i}]");
            if c.name.is_empty()
                || c.name.len() > 64
                || !c.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(invalid(
                    format!("{field}.name"),
                    "use 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
                ));
            }
            if auth.callers.iter().any(|other| *other.name().as_ref() == *c.name) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("{:?} is listed twice", c.name),
                ));
            }
            if c.mtls_uris.is_empty() && c.mtls_dns_names.is_empty() && c.bearer_token_sha256.is_empty() {
                return Err(invalid(
                    field,
                    "has no identity: give mtls_uris, mtls_dns_names or bearer_token_sha256",
                ));
            }
            if (!c.mtls_uris.is_empty() || !c.mtls_dns_names.is_empty()) && settings.tls.client_ca_file.is_none() {
                return Err(invalid(
                    "tls.client_ca_file",
                    format!("must be set: caller {} is identified by client certificate", c.name),
                ));
            }
            if !c.bearer_token_sha256.is_empty()
                && settings.tls.cert_file.is_none()
                && !settings.auth.allow_bearer_without_tls
            {
                return Err(invalid(
                    "tls.cert_file",
                    format!(
                        "must be set: caller {} presents a bearer token, which would cross the network in clear \
                         (behind a TLS-terminating sidecar, set auth.allow_bearer_without_tls = true)",
                        c.name
                    ),
                ));
            }
            let index = auth.callers.len();
            for (kind, names) in [(SanKind::Uri, &c.mtls_uris), (SanKind::Dns, &c.mtls_dns_names)] {
                let map = match kind {
                    SanKind::Uri => &mut auth.by_uri,
                    SanKind::Dns => &mut auth.by_dns,
                };
                for name in names {
                    if map.insert(name.clone(), index).is_some() {
                        return Err(invalid(field.clone(), format!("identity {name:?} names two callers")));
                    }
                }
            }
            for (j, text) in c.bearer_token_sha256.iter().enumerate() {
                let hash = identity::parse_token_hash(text).ok_or_else(|| {
                    invalid(
                        format!("{field}.bearer_token_sha256[{j}]"),
                        "is not a SHA-256 in hex (64 digits): configure the hash of the token \
                         (printf %s \"$token\" | sha256sum), never the token itself",
                    )
                })?;
                if auth.tokens.iter().any(|(h, _)| *h == hash) {
                    return Err(invalid(
                        format!("{field}.bearer_token_sha256[{j}]"),
                        "names two callers",
                    ));
                }
                auth.tokens.push((hash, index));
            }
            if [
                c.max_concurrent_calls,
                c.requests_per_second,
                c.burst,
                c.begin_authorization_per_second,
                c.begin_authorization_burst,
            ]
            .contains(&Some(0))
            {
                return Err(invalid(
                    field,
                    "max_concurrent_calls, requests_per_second, burst, begin_authorization_per_second and \
                     begin_authorization_burst must be at least 1",
                ));
            }
            let policy = Policy::parse(&field, &c.rpcs, &c.providers, &c.tenants, &known_providers)?;
            let limits = Limits::new(
                c.max_concurrent_calls
                    .unwrap_or(settings.auth.default_max_concurrent_calls)
                    .max(1),
                c.requests_per_second,
                c.burst,
                Rate {
                    per_second: c.begin_authorization_per_second.unwrap_or(default_begin.per_second),
                    // A caller that sets only its rate gets a second's worth as its burst, as for
                    // requests_per_second.
                    burst: c
                        .begin_authorization_burst
                        .unwrap_or(match c.begin_authorization_per_second {
                            Some(rate) => rate,
                            None => default_begin.burst,
                        }),
                },
            );
            let kept = previous.and_then(|p| {
                let i = p.entries.iter().position(|e| e == c)?;
                p.callers.get(i).cloned()
            });
            auth.callers
                .push(kept.unwrap_or_else(|| Caller::new(&c.name, policy, limits)));
        }
        Ok(auth)
    }

    pub fn is_insecure(&self) -> bool {
        self.insecure.is_some()
    }

    /// Whether any caller is identified by certificate (mutual TLS is needed).
    pub fn uses_certificates(&self) -> bool {
        !self.by_uri.is_empty() || !self.by_dns.is_empty()
    }

    /// Whether any caller presents a bearer token (a client certificate is then optional).
    pub fn uses_bearer_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub fn caller_count(&self) -> usize {
        self.callers.len()
    }

    /// The callers' names, in the configured order.
    pub fn caller_names(&self) -> impl Iterator<Item = &str> {
        self.callers.iter().map(|c| c.name().as_ref())
    }

    /// The caller behind a request: its verified client certificate's names first, then its
    /// bearer token.
    pub fn identify(
        &self,
        headers: &HeaderMap,
        certificate: Option<&CertificateNames>,
    ) -> Result<Caller, Unidentified> {
        if let Some(caller) = &self.insecure {
            return Ok(caller.clone());
        }
        let mut detail = "no credentials".to_owned();
        if let Some(certificate) = certificate.filter(|_| self.uses_certificates()) {
            let lookup = |kind: SanKind, name: &str| match kind {
                SanKind::Uri => self.by_uri.get(name).copied(),
                SanKind::Dns => self.by_dns.get(name).copied(),
            };
            match certificate.find(lookup) {
                Ok(i) => return self.caller(i),
                Err(d) => detail = d,
            }
        }
        if let Some(token) = identity::bearer_token(headers) {
            let hash = identity::hash_token(token);
            if let Some(i) = identity::match_token(&self.tokens, &hash) {
                return self.caller(i);
            }
            detail = "unrecognised bearer token".into();
        }
        Err(Unidentified { detail })
    }

    fn caller(&self, index: usize) -> Result<Caller, Unidentified> {
        self.callers.get(index).cloned().ok_or_else(|| Unidentified {
            detail: "caller index out of range".into(),
        })
    }
}

/// The authenticator every call consults, swapped whole when `auth.policy_file` is reloaded: a
/// call is identified and checked against the old caller set or the new one, never a mixture.
/// Cheap to clone (clones share the slot). A `RwLock<Arc<_>>` as for `crypto::SharedKeyring`:
/// the lock is held only to clone the `Arc`.
#[derive(Clone)]
pub struct SharedAuthenticator {
    slot: Arc<RwLock<Arc<Authenticator>>>,
}

impl SharedAuthenticator {
    pub fn new(auth: Authenticator) -> Self {
        Self {
            slot: Arc::new(RwLock::new(Arc::new(auth))),
        }
    }

    pub fn current(&self) -> Arc<Authenticator> {
        // A poisoned lock only means a writer panicked around an `Arc` assignment.
        self.slot.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `auth` in place for every later call; returns the one it replaces.
    pub fn replace(&self, auth: Authenticator) -> Arc<Authenticator> {
        let mut slot = self.slot.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *slot, Arc::new(auth))
    }
}
