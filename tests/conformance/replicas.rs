//! Many callers on several vault processes asking for one expiring, then expired, tenant at
//! once: the server's own event log shows one refresh per expiry and never a reused refresh
//! token, which at Hydra would have revoked the customer's grant.

use std::{collections::HashSet, time::Duration};

use token_vault::proto;

use crate::{
    authserver::{AuthServer, ServerOptions, POST_CLIENT},
    harness::{until_expired, until_refresh_due, Api, VaultOptions, VaultProcesses},
};

const PROCESSES: usize = 3;
const CALLS_PER_PROCESS: usize = 40;
/// Longer than elsewhere: a stampede and its checks must end before the refreshed token is due
/// itself, at half of it, even on a busy machine.
const TTL: u64 = 6;

/// `CALLS_PER_PROCESS` concurrent GetAccessToken calls on every process; the distinct tokens.
async fn stampede(vaults: &VaultProcesses, tenant: &str) -> HashSet<String> {
    let calls = vaults.clients.iter().flat_map(|client| {
        (0..CALLS_PER_PROCESS).map(move |_| {
            let mut client = client.clone();
            async move {
                client
                    .get_access_token(proto::GetAccessTokenRequest {
                        tenant_id: tenant.into(),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner())
            }
        })
    });
    let answers = futures::future::join_all(calls).await;
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|s| panic!("a caller failed: {s:?}")).access_token)
        .collect()
}

#[tokio::test]
async fn concurrent_callers_on_several_processes_cause_one_refresh_per_expiry() {
    let server = AuthServer::start(ServerOptions {
        access_ttl: TTL,
        ..Default::default()
    })
    .await;
    let vaults = VaultProcesses::start(PROCESSES, &server, &VaultOptions::default()).await;
    let api = Api(vaults.clients[0].clone());
    api.connect_tenant("acme").await;
    let mut token = api.token("acme").await.unwrap();

    for expiry in 1..=2 {
        // First when the token is due for a refresh, then when it has run out altogether.
        if expiry == 1 {
            until_refresh_due(&token, Duration::from_secs(TTL)).await;
        } else {
            until_expired(&token).await;
        }
        let tokens = stampede(&vaults, "acme").await;
        assert_eq!(
            tokens.len(),
            1,
            "expiry {expiry}: every caller got the one refreshed token"
        );
        assert!(
            !tokens.contains(&token.access_token),
            "expiry {expiry}: the token was refreshed"
        );
        let refreshed = tokens.into_iter().next().unwrap();
        assert!(server.is_active(&POST_CLIENT, &refreshed).await);

        let events = server.events();
        assert_eq!(
            events.refreshes().len(),
            expiry,
            "one refresh per expiry, by the server's count: {events:#?}"
        );
        assert!(events.grant_errors().is_empty(), "{events:#?}");
        events.assert_one_rotation_chain();
        token = api.token("acme").await.unwrap();
        assert_eq!(token.access_token, refreshed);
    }
}
