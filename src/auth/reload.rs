//! Re-reading the listener's security files while the vault runs: the server certificate and
//! key, the client CA bundle (`tls.*`, see [`super::tls::TlsReloader`]) and the caller policy
//! (`auth.policy_file`). Checked every `keys.reload_interval` and on SIGHUP by
//! `crate::reload`'s loop, compared by content.
//!
//! Every swap is whole and atomic (a connection handshakes with the old TLS configuration or
//! the new one; a call is checked against the old caller set or the new one), and a new file
//! that does not parse or validate is refused: the old one stays in place, the refusal is
//! logged at error level with the reason and counted (`tokenvault.reloads{what, outcome}`). A
//! refused file is not re-parsed until its content changes. Callers configured inline
//! (`auth.callers`) change only with a restart.
//!
//! One check takes the policy first: a new policy that adds the first bearer-token caller (or
//! removes the last one) also changes whether the listener asks for client certificates or
//! requires them.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{
    tls::{TlsPart, TlsReloader},
    Authenticator, SharedAuthenticator,
};
use crate::{
    config::{ConfigError, Settings},
    metrics::{self, kv},
};

/// What a reload concerns: the `what` of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    ServerCertificate,
    ClientCa,
    Policy,
}

impl Reloaded {
    pub fn label(self) -> &'static str {
        match self {
            Reloaded::ServerCertificate => "server_certificate",
            Reloaded::ClientCa => "client_ca",
            Reloaded::Policy => "policy",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<TlsPart> for Reloaded {
    fn from(part: TlsPart) -> Self {
        match part {
            TlsPart::ServerCertificate => Reloaded::ServerCertificate,
            TlsPart::ClientCa => Reloaded::ClientCa,
        }
    }
}

/// Reloads taken and refused so far, by what they concerned; the same counts as the metric,
/// kept for tests and for `Application` to show. Cheap to clone (clones share the counts).
#[derive(Debug, Clone, Default)]
pub struct ReloadCounts(Arc<[[AtomicU64; 2]; 3]>);

impl ReloadCounts {
    pub fn reloaded(&self, what: Reloaded) -> u64 {
        self.0[what.index()][0].load(Ordering::Relaxed)
    }

    pub fn refused(&self, what: Reloaded) -> u64 {
        self.0[what.index()][1].load(Ordering::Relaxed)
    }

    fn count(&self, what: Reloaded, taken: bool) {
        self.0[what.index()][usize::from(!taken)].fetch_add(1, Ordering::Relaxed);
        let outcome = if taken { "reloaded" } else { "refused" };
        metrics::get()
            .reloads
            .add(1, &[kv("what", what.label()), kv("outcome", outcome)]);
    }
}

/// The digest of the policy file's bytes a caller set was parsed from.
#[derive(Debug, Clone, Copy)]
pub struct PolicyDigest([u8; 32]);

/// The authenticator of `settings` at start-up, and with `auth.policy_file` the digest of the
/// bytes it was parsed from: the first check compares against them, so that a change made
/// between start-up and the first check is taken, and no change is not counted as a reload.
pub fn load_authenticator(settings: &Settings) -> Result<(Authenticator, Option<PolicyDigest>), ConfigError> {
    let Some(path) = &settings.auth.policy_file else {
        return Ok((Authenticator::from_settings(settings)?, None));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::config::invalid("auth.policy_file", format!("cannot read {}: {e}", path.display())))?;
    let callers = settings.policy_file_callers(&text)?;
    let auth = Authenticator::from_callers(settings, &callers, None)?;
    Ok((auth, Some(PolicyDigest(Sha256::digest(text.as_bytes()).into()))))
}

/// Re-reads `auth.policy_file` and swaps a changed, valid caller set in.
struct PolicyReloader {
    settings: Settings,
    path: PathBuf,
    auth: SharedAuthenticator,
    /// The content last loaded or refused.
    last_digest: Option<[u8; 32]>,
}

impl PolicyReloader {
    /// Ok(None) when the file's content is what was loaded (or refused) last.
    fn check(&mut self) -> Result<Option<String>, ConfigError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| {
            crate::config::invalid("auth.policy_file", format!("cannot read {}: {e}", self.path.display()))
        })?;
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if self.last_digest == Some(digest) {
            return Ok(None);
        }
        // Not retried until the file changes again: the same bytes fail the same way.
        self.last_digest = Some(digest);
        let callers = self.settings.policy_file_callers(&text)?;
        let current = self.auth.current();
        let new = Authenticator::from_callers(&self.settings, &callers, Some(&current))?;
        let names = |a: &Authenticator| a.caller_names().map(str::to_owned).collect::<Vec<_>>();
        let (before, after) = (names(&current), names(&new));
        let added: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
        let removed: Vec<&String> = before.iter().filter(|n| !after.contains(n)).collect();
        self.auth.replace(new);
        Ok(Some(format!(
            "{} callers; added {added:?}, removed {removed:?}",
            after.len()
        )))
    }
}

/// Checks the TLS files and the policy file; built by `startup` when any of them is configured.
pub struct SecurityReloader {
    tls: Option<TlsReloader>,
    policy: Option<PolicyReloader>,
    auth: SharedAuthenticator,
    counts: ReloadCounts,
}

impl SecurityReloader {
    /// None when nothing is read from a file that could change (plaintext and inline callers).
    /// `policy_digest` must be the digest of the policy file's bytes the start-up caller set
    /// was parsed from, or None to parse it at the first check.
    pub fn new(
        settings: &Settings,
        tls: Option<TlsReloader>,
        auth: SharedAuthenticator,
        policy_digest: Option<PolicyDigest>,
    ) -> Option<Self> {
        let policy = settings.auth.policy_file.clone().map(|path| PolicyReloader {
            settings: settings.clone(),
            path,
            auth: auth.clone(),
            last_digest: policy_digest.map(|d| d.0),
        });
        if tls.is_none() && policy.is_none() {
            return None;
        }
        Some(Self {
            tls,
            policy,
            auth,
            counts: ReloadCounts::default(),
        })
    }

    pub fn counts(&self) -> ReloadCounts {
        self.counts.clone()
    }

    /// Takes what changed and is usable, refuses the rest; logs and counts each.
    pub fn check(&mut self) {
        if let Some(policy) = &mut self.policy {
            match policy.check() {
                Ok(None) => {}
                Ok(Some(line)) => {
                    tracing::info!(path = %policy.path.display(), "caller policy reloaded: {line}");
                    self.counts.count(Reloaded::Policy, true);
                }
                Err(e) => {
                    tracing::error!(error = %e, path = %policy.path.display(), "CALLER POLICY RELOAD REFUSED: the vault keeps its current callers");
                    self.counts.count(Reloaded::Policy, false);
                }
            }
        }
        let Some(tls) = &mut self.tls else {
            return;
        };
        if let Err(e) = tls.set_client_cert_optional(self.auth.current().uses_bearer_tokens()) {
            tracing::error!(error = %e, "cannot follow the caller policy's client-certificate needs: the listener keeps its TLS configuration");
        }
        for (part, outcome) in tls.check() {
            let what = Reloaded::from(part);
            match outcome {
                Ok(line) => {
                    tracing::info!(what = what.label(), "TLS reloaded: {line}");
                    self.counts.count(what, true);
                }
                Err(e) => {
                    tracing::error!(what = what.label(), error = %e, "TLS RELOAD REFUSED: new connections keep getting the current {}", match what {
                        Reloaded::ClientCa => "client CA bundle",
                        _ => "certificate",
                    });
                    self.counts.count(what, false);
                }
            }
        }
    }
}

/// Checks the listener's security files every `every` (never, if zero) and on SIGHUP, until
/// `stop`.
pub async fn watch_security(reloader: SecurityReloader, every: Duration, stop: CancellationToken) {
    crate::reload::watch("the TLS and caller-policy files", every, stop, reloader, check_security).await;
}

fn check_security(reloader: &mut SecurityReloader) -> BoxFuture<'_, ()> {
    Box::pin(async move { reloader.check() })
}
