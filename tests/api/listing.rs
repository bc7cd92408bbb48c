//! ListConnections: pages in (provider, tenant) order that walk every connection exactly once,
//! the provider, status and tenant-prefix filters, the caller's policy as a filter (with the
//! work per call bounded), and malformed input refused naming the field.

use token_vault::{
    auth::hash_token,
    proto::{self, token_vault_client::TokenVaultClient, ConnectionStatus, Revocation},
};
use tonic::{transport::Channel, Code};

use crate::{
    callers::{bearer_client, BearerClient},
    helpers::on_rows,
    helpers::{assert_bad_field, assert_reason, spawn_app_with, TestApp, TestOptions},
};

/// A second provider without a revocation endpoint (no preset).
const OTHER_PROVIDER: &str = r#"
[providers.other]
authorization_endpoint = "https://other.example/authorize"
token_endpoint = "https://other.example/token"
client_id = "c"
client_secret = "s"
redirect_uris = ["https://app.example/oauth/callback"]
request_timeout = "1s"
"#;

/// A connection written straight into the table (listing reads metadata only), with a refresh
/// token row whose ciphertext is made up.
pub async fn insert_connection(app: &TestApp, provider: &str, tenant: &str, status: &str) {
    let insert = app.rows.sql(
        "INSERT INTO connections (tenant_id, provider, status, scopes, generation, token_type, access_token,
                                  access_token_issued_at, access_token_expires_at, authorized_at, disconnected_at)
         VALUES ($1, $2, $3, '{booking.read}', 1, 'bearer', '\\x00'::bytea, now(), now() + interval '1 hour', now(),
                 CASE WHEN $3 = 'disconnected' THEN now() END)
         RETURNING id",
        "INSERT INTO connections (tenant_id, provider, status, scopes, generation, token_type, access_token,
                                  access_token_issued_at, access_token_expires_at, authorized_at, disconnected_at)
         VALUES ($1, $2, $3, '[\"booking.read\"]', 1, 'bearer', X'00', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                 strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+3600 seconds'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                 CASE WHEN $3 = 'disconnected' THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END)
         RETURNING id",
    );
    let id: i64 = on_rows!(app.rows, |pool| sqlx::query_scalar(insert)
        .bind(tenant)
        .bind(provider)
        .bind(status)
        .fetch_one(pool)
        .await
        .unwrap());
    let token = app.rows.sql(
        "INSERT INTO refresh_tokens (connection_id, generation, token, source) VALUES ($1, 1, '\\x00'::bytea, 'authorization_code')",
        "INSERT INTO refresh_tokens (connection_id, generation, token, source) VALUES ($1, 1, X'00', 'authorization_code')",
    );
    on_rows!(app.rows, |pool| sqlx::query(token)
        .bind(id)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
}

fn request(page_size: u32, page_token: String) -> proto::ListConnectionsRequest {
    proto::ListConnectionsRequest {
        page_size,
        page_token,
        ..Default::default()
    }
}

/// Every page of `first` (its page token replaced as the walk goes on), as (provider, tenant),
/// and how many pages there were.
async fn walk(
    mut list: impl FnMut(
        proto::ListConnectionsRequest,
    ) -> futures::future::BoxFuture<'static, Result<proto::ListConnectionsResponse, tonic::Status>>,
    first: proto::ListConnectionsRequest,
) -> (Vec<(String, String)>, Vec<usize>) {
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut next = first;
    for _ in 0..100 {
        let page = list(next.clone()).await.unwrap();
        assert!(page.connections.len() <= next.page_size as usize);
        pages.push(page.connections.len());
        seen.extend(page.connections.into_iter().map(|c| (c.provider, c.tenant_id)));
        if page.next_page_token.is_empty() {
            return (seen, pages);
        }
        next.page_token = page.next_page_token;
    }
    panic!("the pages never ended");
}

fn lister(
    client: TokenVaultClient<Channel>,
) -> impl FnMut(
    proto::ListConnectionsRequest,
) -> futures::future::BoxFuture<'static, Result<proto::ListConnectionsResponse, tonic::Status>> {
    move |req| {
        let mut client = client.clone();
        Box::pin(async move { client.list_connections(req).await.map(|r| r.into_inner()) })
    }
}

fn bearer_lister(
    client: BearerClient,
) -> impl FnMut(
    proto::ListConnectionsRequest,
) -> futures::future::BoxFuture<'static, Result<proto::ListConnectionsResponse, tonic::Status>> {
    move |req| {
        let mut client = client.clone();
        Box::pin(async move { client.list_connections(req).await.map(|r| r.into_inner()) })
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(p, t)| ((*p).to_owned(), (*t).to_owned())).collect()
}

#[tokio::test]
async fn pages_walk_every_connection_once_in_order_and_filters_narrow_them() {
    let app = spawn_app_with(TestOptions {
        extra_toml: format!("[vault]\ndefault_provider = \"understory\"\n{OTHER_PROVIDER}"),
        ..Default::default()
    })
    .await;
    app.connect_tenant("b1").await;
    insert_connection(&app, "understory", "a2", "reauthorization_required").await;
    insert_connection(&app, "understory", "a1", "active").await;
    insert_connection(&app, "other", "c1", "active").await;
    insert_connection(&app, "other", "a1", "disconnected").await;

    let (seen, pages) = walk(lister(app.client.clone()), request(2, String::new())).await;
    assert_eq!(
        seen,
        pairs(&[
            ("other", "a1"),
            ("other", "c1"),
            ("understory", "a1"),
            ("understory", "a2"),
            ("understory", "b1")
        ])
    );
    assert_eq!(pages, [2, 2, 1]);
    // A page size that fits everything: one page, no token. Zero is the default (100).
    for size in [5, 0, 50_000] {
        let page = app
            .client
            .clone()
            .list_connections(request(size, String::new()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((page.connections.len(), page.next_page_token.as_str()), (5, ""));
    }

    let list = |req: proto::ListConnectionsRequest| {
        let mut client = app.client.clone();
        async move {
            let page = client.list_connections(req).await.unwrap().into_inner();
            page.connections
                .into_iter()
                .map(|c| (c.provider, c.tenant_id))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(proto::ListConnectionsRequest {
            provider: "other".into(),
            ..Default::default()
        })
        .await,
        pairs(&[("other", "a1"), ("other", "c1")])
    );
    assert_eq!(
        list(proto::ListConnectionsRequest {
            status: ConnectionStatus::Disconnected.into(),
            ..Default::default()
        })
        .await,
        pairs(&[("other", "a1")])
    );
    assert_eq!(
        list(proto::ListConnectionsRequest {
            status: ConnectionStatus::ReauthorizationRequired.into(),
            ..Default::default()
        })
        .await,
        pairs(&[("understory", "a2")])
    );
    assert_eq!(
        list(proto::ListConnectionsRequest {
            provider: "understory".into(),
            tenant_prefix: "a".into(),
            ..Default::default()
        })
        .await,
        pairs(&[("understory", "a1"), ("understory", "a2")])
    );
    // The prefix is text, not a pattern.
    assert!(list(proto::ListConnectionsRequest {
        tenant_prefix: "%".into(),
        ..Default::default()
    })
    .await
    .is_empty());

    // What a listed connection says is what GetConnection says; never a token.
    let listed = app
        .client
        .clone()
        .list_connections(proto::ListConnectionsRequest {
            tenant_prefix: "b1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .connections;
    assert_eq!(listed, [app.connection("b1").await.unwrap()]);

    // Bad input names its field.
    let bad = |req: proto::ListConnectionsRequest| {
        let mut client = app.client.clone();
        async move { client.list_connections(req).await.unwrap_err() }
    };
    for token in ["garbage!", "bm90IGEgdG9rZW4", "AAAA"] {
        assert_bad_field(&bad(request(2, token.into())).await, "page_token");
    }
    assert_bad_field(
        &bad(proto::ListConnectionsRequest {
            provider: "nope".into(),
            ..Default::default()
        })
        .await,
        "provider",
    );
    assert_bad_field(
        &bad(proto::ListConnectionsRequest {
            tenant_prefix: "x".repeat(256),
            ..Default::default()
        })
        .await,
        "tenant_prefix",
    );
    assert_bad_field(
        &bad(proto::ListConnectionsRequest {
            status: 42,
            ..Default::default()
        })
        .await,
        "status",
    );

    // A provider without a revocation endpoint: the delete wipes locally and says so.
    let deleted = app
        .client
        .clone()
        .delete_connection(proto::DeleteConnectionRequest {
            tenant_id: "c1".into(),
            provider: "other".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.revocation(), Revocation::NotConfigured);
    let left: i64 = on_rows!(app.rows, |pool| sqlx::query_scalar(
        "SELECT count(*) FROM refresh_tokens r JOIN connections c ON c.id = r.connection_id
          WHERE c.provider = 'other' AND c.tenant_id = 'c1' AND r.token IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap());
    assert_eq!(left, 0);
}

/// A caller sees only the connections its policy covers, on every page; many connections it
/// may not see before its own cost a few short pages (each call's work is bounded), never a
/// connection skipped or shown twice.
#[tokio::test]
async fn a_caller_lists_only_the_tenants_its_policy_covers() {
    let hex = |t: &str| hash_token(t).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let app = spawn_app_with(TestOptions {
        extra_toml: format!(
            r#"
[auth]
mode = "enforce"
allow_bearer_without_tls = true
[[auth.callers]]
name = "team-a"
bearer_token_sha256 = ["{a}"]
rpcs = ["ListConnections", "GetConnection"]
providers = ["understory"]
tenants = ["team-a-*"]
[[auth.callers]]
name = "no-list"
bearer_token_sha256 = ["{n}"]
rpcs = ["GetConnection"]
providers = ["*"]
tenants = ["*"]
"#,
            a = hex("token-team-a"),
            n = hex("token-no-list"),
        ),
        ..Default::default()
    })
    .await;
    // 30 tenants team-a may not see sort before its own three.
    for i in 0..30 {
        insert_connection(&app, "understory", &format!("aaa-{i:02}"), "active").await;
    }
    for tenant in ["team-a-1", "team-a-2", "team-a-3"] {
        insert_connection(&app, "understory", tenant, "active").await;
    }
    insert_connection(&app, "understory", "team-b-1", "active").await;

    let team_a = bearer_client(app.addr, Some("token-team-a")).await;
    let expected = pairs(&[
        ("understory", "team-a-1"),
        ("understory", "team-a-2"),
        ("understory", "team-a-3"),
    ]);
    for size in [1, 2, 100] {
        let (seen, pages) = walk(bearer_lister(team_a.clone()), request(size, String::new())).await;
        assert_eq!(seen, expected, "page size {size}: {pages:?}");
        if size == 1 {
            // Ten batches of two rows cover 20 of the 30 hidden rows: the first page is empty,
            // with a token to go on from.
            assert_eq!(pages[0], 0, "{pages:?}");
        }
    }

    let mut no_list = bearer_client(app.addr, Some("token-no-list")).await;
    let err = no_list.list_connections(request(10, String::new())).await.unwrap_err();
    assert_reason(&err, Code::PermissionDenied, "CALLER_NOT_ALLOWED");
}
