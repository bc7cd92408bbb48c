//! Several client secrets per provider, for rotating the secret without downtime: requests use
//! the secret that worked last; when the provider answers `invalid_client`, the same request is
//! sent again with the next configured secret, and a secret that works becomes the one in use,
//! logged once and counted (`tokenvault.provider.client_secret_switches`). The set itself is
//! re-read from its files by `reload_client_secrets` (`startup` runs it in `crate::reload`'s
//! loop, with the keyring's interval).
//!
//! Why re-sending the same grant is safe here, and only after `invalid_client`: RFC 6749 §5.2
//! defines `invalid_client` as "client authentication failed", and the server authenticates the
//! client before it looks at the grant. Hydra's fosite does so in `NewAccessRequest`
//! (`access_request_handler.go`): `AuthenticateClient` runs, and its error is returned, before
//! any token-endpoint handler's `HandleTokenEndpointRequest`, which is where a refresh token is
//! looked up, its reuse detected and, later, rotated (PROVIDER_FACTS.md 2, 5: a wrong client
//! authentication gets `401 invalid_client`). So a refresh token or code sent with a rejected
//! secret was never consumed, and presenting it with another secret is no reuse. No other answer
//! is retried: `unauthorized_client` comes after a successful authentication (the client may not
//! use the grant type), and a 401 without `invalid_client` says too little to know the grant
//! was not looked at.

use std::future::Future;

use secrecy::SecretString;

use super::ProviderClient;
use crate::{
    config::{ClientSecrets, SecretsReload},
    metrics::{self, kv},
};

impl ProviderClient {
    /// This provider's client secrets (shared with every clone of the client).
    pub fn client_secrets(&self) -> &ClientSecrets {
        &self.config().client_secrets
    }

    /// Runs `attempt` with the secret in use; while `rejected` says the provider answered
    /// `invalid_client` (and only then, see the module), again with the next secret, each
    /// secret at most once. Returns the first answer that is not a rejection, or the last
    /// rejection when every secret was refused.
    pub(super) async fn with_client_secrets<T, Fut>(
        &self,
        attempt: impl Fn(SecretString) -> Fut,
        rejected: impl Fn(&T) -> bool,
    ) -> T
    where
        Fut: Future<Output = T>,
    {
        let secrets = self.client_secrets();
        let (set, first) = secrets.current();
        let mut index = first;
        loop {
            let result = attempt(set[index].clone()).await;
            if !rejected(&result) {
                if index != first && secrets.switch(&set, first, index) {
                    tracing::warn!(
                        provider = %self.config().name,
                        rejected = first + 1,
                        in_use = index + 1,
                        "provider {}: client secret #{} works now (#{} was rejected with invalid_client)",
                        self.config().name,
                        index + 1,
                        first + 1,
                    );
                    let provider = kv("provider", self.config().name.clone());
                    metrics::get()
                        .client_secret_switches
                        .add(1, std::slice::from_ref(&provider));
                    metrics::get()
                        .client_secret_in_use
                        .record(index as u64 + 1, &[provider]);
                }
                return result;
            }
            index = (index + 1) % set.len();
            if index == first {
                return result;
            }
            tracing::info!(
                provider = %self.config().name,
                "provider {}: client secret #{} rejected (invalid_client); trying #{}",
                self.config().name,
                (index + set.len() - 1) % set.len() + 1,
                index + 1,
            );
        }
    }

    /// Records which secret is in use, for the gauge (called once at start).
    pub fn announce_client_secret(&self) {
        metrics::get().client_secret_in_use.record(
            self.client_secrets().in_use() as u64 + 1,
            &[kv("provider", self.config().name.clone())],
        );
    }

    /// Re-reads this provider's client-secret files (nothing for an inline secret), logging and
    /// counting what changed or why the new files were refused.
    pub fn reload_client_secrets(&self) {
        let name = &self.config().name;
        let outcome = match self.client_secrets().reload() {
            Ok(SecretsReload::Unchanged) => return,
            Ok(SecretsReload::Replaced { count, in_use }) => {
                tracing::info!(provider = %name, count, in_use = in_use + 1, "provider {name}: client secrets reloaded; #{} is tried first", in_use + 1);
                metrics::get()
                    .client_secret_in_use
                    .record(in_use as u64 + 1, &[kv("provider", name.clone())]);
                "reloaded"
            }
            Err(e) => {
                tracing::error!(provider = %name, error = %e, "CLIENT SECRET RELOAD REFUSED for provider {name}: the vault keeps its current client secrets");
                "refused"
            }
        };
        metrics::get()
            .client_secret_reloads
            .add(1, &[kv("provider", name.clone()), kv("outcome", outcome)]);
    }
}
