//! DeleteConnection: the refresh token revoked at the provider (the whole grant, as Hydra does),
//! every ciphertext of the connection wiped, the connection disconnected and answered as such,
//! idempotent, a provider that cannot be reached still wiped locally, never beside a refresh in
//! flight, and a new authorization connecting the tenant again.

use std::time::Duration;

use token_vault::{
    crypto::{Aad, Keyring, Purpose},
    keys::{key_usage, rewrap, RewrapOptions},
    proto::{self, ConnectionStatus, Revocation},
    store::NewTokens,
};
use tonic::Code;

use crate::{
    helpers::on_rows,
    helpers::{assert_reason, dump_all_tables, spawn_app, spawn_app_with, TestApp, TestOptions},
    provider::{ClientAuth, Fault},
};

/// Sealed values the connection of `tenant` still holds: its access token and every refresh
/// token's ciphertext.
async fn ciphertexts_left(app: &TestApp, tenant: &str) -> i64 {
    on_rows!(app.rows, |pool| sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM connections WHERE tenant_id = $1 AND access_token IS NOT NULL)
              + (SELECT count(*) FROM refresh_tokens r JOIN connections c ON c.id = r.connection_id
                  WHERE c.tenant_id = $1 AND r.token IS NOT NULL)",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap())
}

async fn events(app: &TestApp, tenant: &str) -> Vec<(String, String, Option<String>)> {
    on_rows!(app.rows, |pool| sqlx::query_as(
        "SELECT kind, status, reason FROM connection_events WHERE tenant_id = $1 ORDER BY id"
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
    .unwrap())
}

/// What the provider's token endpoint says to `refresh_token` presented directly.
async fn present_at_provider(app: &TestApp, refresh_token: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/oauth2/token", app.provider.uri()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", "test-client"),
            ("client_secret", app.client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn key_line(id: &str) -> String {
    Keyring::generate(id).1.trim().to_owned()
}

#[tokio::test]
async fn delete_revokes_the_refresh_token_at_the_provider_and_leaves_no_ciphertext() {
    let a = key_line("key-a");
    let app = spawn_app_with(TestOptions {
        extra_toml: format!("[encryption]\nkeyring = \"{a}\"\n"),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    app.connect_tenant("globex").await;
    // Cached on this replica: the delete must reach past the cache too.
    app.get_token("acme").await.unwrap();
    let refresh_token = {
        let st = app.provider.state.lock().unwrap();
        st.issued_refresh_tokens[0].clone()
    };
    assert!(ciphertexts_left(&app, "acme").await >= 2);

    let deleted = app.delete("acme").await.unwrap();
    assert_eq!(deleted.revocation(), Revocation::Revoked);
    assert_eq!(deleted.revocation_error, "");
    assert_eq!(
        (deleted.tenant_id.as_str(), deleted.provider.as_str()),
        ("acme", "understory")
    );
    let disconnected_at = deleted.disconnected_at.expect("disconnected_at");

    // The provider was asked once, for the current refresh token, authenticated like the
    // token endpoint; it revoked the grant.
    let revocations = app.provider.revocations();
    assert_eq!(revocations.len(), 1, "{revocations:?}");
    assert_eq!(revocations[0].form["token"], refresh_token);
    assert_eq!(revocations[0].form["token_type_hint"], "refresh_token");
    assert_eq!(revocations[0].form["client_id"], "test-client");
    assert_eq!(revocations[0].form["client_secret"], app.client_secret);
    let (status, body) = present_at_provider(&app, &refresh_token).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));

    // Nothing sealed is left of acme; globex is untouched.
    assert_eq!(ciphertexts_left(&app, "acme").await, 0);
    assert!(ciphertexts_left(&app, "globex").await >= 2);
    let purged: Vec<(bool, bool)> = on_rows!(app.rows, |pool| sqlx::query_as(
        "SELECT r.purged_at IS NOT NULL, r.superseded_at IS NOT NULL FROM refresh_tokens r
           JOIN connections c ON c.id = r.connection_id WHERE c.tenant_id = 'acme'",
    )
    .fetch_all(pool)
    .await
    .unwrap());
    assert_eq!(purged, [(true, true)], "the history row stays, marked purged");
    let dump = dump_all_tables(&app.rows).await;
    for secret in app.provider.issued_secrets() {
        assert!(!dump.contains(&secret), "a token in plaintext in the database");
    }

    let connection = app.connection("acme").await.unwrap();
    assert_eq!(connection.status(), ConnectionStatus::Disconnected);
    assert_eq!(connection.status_reason, "deleted");
    assert_eq!(connection.disconnected_at, Some(disconnected_at));
    assert!(!connection.has_refresh_token);
    assert_eq!(connection.last_error, "");
    assert_eq!(connection.keepalive_due_at, None);
    let err = app.get_token("acme").await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "CONNECTION_DISCONNECTED");
    assert_eq!(
        events(&app, "acme").await.last().unwrap(),
        &("disconnected".into(), "disconnected".into(), Some("revoked".into()))
    );

    // Again: answered from the database, the provider not asked a second time.
    let again = app.delete("acme").await.unwrap();
    assert_eq!(again.revocation(), Revocation::AlreadyDisconnected);
    assert_eq!(again.disconnected_at, Some(disconnected_at));
    assert_eq!(app.provider.revocations().len(), 1);
    assert_eq!(events(&app, "acme").await.len(), 2, "authorized, disconnected");

    // `keys status` and `keys rewrap` step over the wiped values.
    let store = app.store();
    let usage = key_usage(&store).await.unwrap();
    assert_eq!(usage.values_not_under("key-a"), 0, "{usage:?}");
    let b = key_line("key-b");
    let report = rewrap(
        &store,
        &Keyring::parse(&format!("{a}\n{b}"), None).unwrap(),
        &RewrapOptions::default(),
    )
    .await
    .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(key_usage(&store).await.unwrap().values_under("key-a"), 0);

    // A new authorization connects the tenant again.
    app.connect_tenant("acme").await;
    let connection = app.connection("acme").await.unwrap();
    assert_eq!(connection.status(), ConnectionStatus::Active);
    assert!(connection.has_refresh_token);
    assert_eq!(connection.disconnected_at, None);
    let token = app.get_token("acme").await.unwrap();
    assert_eq!(token.access_token, app.provider.newest_access_token());
    assert_eq!(events(&app, "acme").await.last().unwrap().0, "authorized");
}

#[tokio::test]
async fn an_unknown_connection_is_not_found_and_nothing_is_sent() {
    let app = spawn_app().await;
    let err = app.delete("nobody").await.unwrap_err();
    assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
    assert_eq!(app.provider.stats().revocation_requests, 0);
}

#[tokio::test]
async fn when_the_provider_cannot_revoke_the_wipe_still_happens_and_the_answer_says_so() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = spawn_app_with(TestOptions {
        extra_toml: format!("[providers.understory]\nrevocation_endpoint = \"http://{closed}/oauth2/revoke\"\n"),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    let deleted = app.delete("acme").await.unwrap();
    assert_eq!(deleted.revocation(), Revocation::Failed);
    assert_eq!(deleted.revocation_error, "revocation_unreachable");
    assert_eq!(ciphertexts_left(&app, "acme").await, 0);
    let connection = app.connection("acme").await.unwrap();
    assert_eq!(connection.status(), ConnectionStatus::Disconnected);
    assert_eq!(connection.last_error, "revocation_unreachable");
    assert!(connection.last_error_at.is_some());
    assert_eq!(
        events(&app, "acme").await.last().unwrap().2.as_deref(),
        Some("revocation_unreachable")
    );
    // The grant lives on at the provider: nobody holds its token any more.
    assert_eq!(app.provider.stats().revocation_requests, 0);
}

#[tokio::test]
async fn a_provider_error_on_revocation_is_reported_and_the_connection_wiped() {
    let app = spawn_app().await;
    app.connect_tenant("acme").await;
    app.connect_tenant("globex").await;
    app.connect_tenant("initech").await;
    // An error answer of 1 MiB: read no further than the cap, so its error code goes unseen.
    let huge: &'static str = Box::leak(
        format!(
            r#"{{"error":"unsupported_token_type","error_description":"{}"}}"#,
            "x".repeat(1 << 20)
        )
        .into_boxed_str(),
    );
    app.provider.state.lock().unwrap().revocation_faults.extend([
        Fault::Answer(503, "{}"),
        Fault::Answer(400, r#"{"error":"unsupported_token_type"}"#),
        Fault::Answer(400, huge),
    ]);
    let acme = app.delete("acme").await.unwrap();
    assert_eq!(
        (acme.revocation(), acme.revocation_error.as_str()),
        (Revocation::Failed, "revocation_server_error")
    );
    let globex = app.delete("globex").await.unwrap();
    assert_eq!(
        (globex.revocation(), globex.revocation_error.as_str()),
        (Revocation::Failed, "unsupported_token_type")
    );
    let initech = app.delete("initech").await.unwrap();
    assert_eq!(
        (initech.revocation(), initech.revocation_error.as_str()),
        (Revocation::Failed, "revocation_rejected")
    );
    assert_eq!(
        ciphertexts_left(&app, "acme").await
            + ciphertexts_left(&app, "globex").await
            + ciphertexts_left(&app, "initech").await,
        0
    );
    assert_eq!(app.provider.stats().revocation_requests, 3);
}

/// client_secret_basic at the revocation endpoint too (the token endpoint's code, shared), and a
/// revocation endpoint that does not answer within `request_timeout` (1 s here) does not hold
/// the wipe back.
#[tokio::test]
async fn revocation_authenticates_like_the_token_endpoint_and_is_bounded_by_its_timeout() {
    let app = spawn_app_with(TestOptions {
        auth: ClientAuth::Basic,
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    app.connect_tenant("globex").await;
    let deleted = app.delete("acme").await.unwrap();
    assert_eq!(deleted.revocation(), Revocation::Revoked);
    let revocation = &app.provider.revocations()[0];
    assert!(revocation
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Basic ")));
    assert!(!revocation.form.contains_key("client_secret"));

    app.provider
        .state
        .lock()
        .unwrap()
        .revocation_faults
        .push_back(Fault::Hang(Duration::from_secs(5)));
    let deleted = app.delete("globex").await.unwrap();
    assert_eq!(
        (deleted.revocation(), deleted.revocation_error.as_str()),
        (Revocation::Failed, "revocation_timeout")
    );
    assert_eq!(ciphertexts_left(&app, "globex").await, 0);
}

#[tokio::test]
async fn a_connection_that_needs_reauthorization_is_disconnected_too() {
    let app = spawn_app_with(TestOptions {
        access_ttl: 2,
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    app.provider.revoke_all();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = app.get_token("acme").await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED");

    let deleted = app.delete("acme").await.unwrap();
    // The provider answers 200 for a token it already revoked (RFC 7009 §2.2).
    assert_eq!(deleted.revocation(), Revocation::Revoked);
    assert_eq!(ciphertexts_left(&app, "acme").await, 0);
    assert_eq!(
        app.connection("acme").await.unwrap().status(),
        ConnectionStatus::Disconnected
    );
}

/// A delete that arrives while a refresh is at the provider waits for it: the rotated refresh
/// token is stored first, and the newest one is what gets revoked. No refresh token is ever
/// presented twice.
#[tokio::test]
async fn a_delete_waits_for_a_refresh_in_flight_and_revokes_the_newest_token() {
    let app = spawn_app_with(TestOptions {
        access_ttl: 2,
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The provider rotates at once and answers half a second later (within request_timeout).
    app.provider.push_fault(Fault::Slow(Duration::from_millis(500)));
    let refreshing = {
        let client = app.client.clone();
        tokio::spawn(async move {
            client
                .clone()
                .get_access_token(proto::GetAccessTokenRequest {
                    tenant_id: "acme".into(),
                    ..Default::default()
                })
                .await
        })
    };
    while app.provider.stats().refresh_requests == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deleted = app.delete("acme").await.unwrap();
    assert_eq!(deleted.revocation(), Revocation::Revoked);

    // The refresh finished and handed out its token before the disconnect.
    let refreshed = refreshing.await.unwrap().unwrap().into_inner();
    assert_eq!(refreshed.access_token, app.provider.newest_access_token());
    let issued = app.provider.state.lock().unwrap().issued_refresh_tokens.clone();
    assert_eq!(issued.len(), 2, "the exchange's and the refresh's");
    let revocations = app.provider.revocations();
    assert_eq!(revocations.len(), 1);
    assert_eq!(issued[1], app.provider.newest_refresh_token());
    assert_eq!(
        revocations[0].form["token"], issued[1],
        "the newest refresh token is revoked"
    );
    let stats = app.provider.stats();
    assert_eq!((stats.refreshes_ok, stats.reuse_detected), (1, 0));

    // Stored, then wiped: two history rows, neither with a ciphertext.
    let generations: Vec<(i64, bool)> = on_rows!(app.rows, |pool| sqlx::query_as(
        "SELECT generation, token IS NULL FROM refresh_tokens ORDER BY generation"
    )
    .fetch_all(pool)
    .await
    .unwrap());
    assert_eq!(generations, [(1, true), (2, true)]);
    assert_eq!(ciphertexts_left(&app, "acme").await, 0);
    let err = app.get_token("acme").await.unwrap_err();
    assert_reason(&err, Code::FailedPrecondition, "CONNECTION_DISCONNECTED");
}

/// A lease held past `refresh.lease_ttl` (here: taken by hand and never given back) makes the
/// delete answer CONNECTION_BUSY after waiting, with nothing changed.
#[tokio::test]
async fn a_lease_that_is_never_released_makes_the_delete_answer_busy() {
    let app = spawn_app_with(TestOptions {
        extra_toml: "[refresh]\nlease_ttl = \"4s\"\nmax_attempts = 1\n".into(),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    let lease = app.rows.sql(
        "UPDATE connections SET refresh_lease_holder = gen_random_uuid(), refresh_lease_until = now() + interval '1 hour'",
        "UPDATE connections SET refresh_lease_holder = randomblob(16),
                refresh_lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+3600 seconds')",
    );
    on_rows!(app.rows, |pool| sqlx::query(lease)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected());
    let err = app.delete("acme").await.unwrap_err();
    let metadata = assert_reason(&err, Code::Unavailable, "CONNECTION_BUSY");
    assert!(metadata.contains_key("retry_after_ms"));
    assert_eq!(app.provider.stats().revocation_requests, 0);
    assert_eq!(app.connection("acme").await.unwrap().status(), ConnectionStatus::Active);
    assert!(ciphertexts_left(&app, "acme").await >= 2);
}

#[tokio::test]
async fn delete_is_recorded_in_the_audit_trail_with_the_revocation_outcome() {
    let app = spawn_app_with(TestOptions {
        extra_toml: "[audit]\nflush_interval = \"100ms\"\n".into(),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    app.delete("acme").await.unwrap();
    app.delete("acme").await.unwrap();
    /// event, tenant, provider, outcome, detail
    type AuditRow = (String, Option<String>, Option<String>, String, Option<String>);
    let mut rows: Vec<AuditRow> = Vec::new();
    for _ in 0..50 {
        rows = on_rows!(app.rows, |pool| sqlx::query_as(
            "SELECT event, tenant_id, provider, outcome, detail FROM audit_events
              WHERE event = 'delete_connection' ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap());
        if rows.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = |detail: &str| {
        (
            "delete_connection".to_owned(),
            Some("acme".to_owned()),
            Some("understory".to_owned()),
            "ok".to_owned(),
            Some(detail.to_owned()),
        )
    };
    assert_eq!(
        rows,
        [row("revocation revoked"), row("revocation already_disconnected")]
    );
}

/// A rotation a replica kept for write-back after a failover never lands on a connection
/// disconnected since, even one whose generation is behind it.
#[tokio::test]
async fn a_kept_rotation_is_never_written_back_into_a_disconnected_connection() {
    let app = spawn_app().await;
    app.connect_tenant("acme").await;
    app.delete("acme").await.unwrap();
    let (id, generation, authorized_at): (i64, i64, time::OffsetDateTime) = on_rows!(app.rows, |pool| sqlx::query_as(
        "SELECT id, generation, authorized_at FROM connections WHERE tenant_id = 'acme'"
    )
    .fetch_one(pool)
    .await
    .unwrap());
    let now = time::OffsetDateTime::now_utc();
    let rotation = NewTokens {
        generation: generation + 1,
        scopes: vec!["booking.read".into()],
        token_type: "bearer".into(),
        access_token: vec![1, 2, 3],
        access_token_issued_at: now,
        access_token_expires_at: now + time::Duration::hours(1),
        refresh_token: Some(vec![4, 5, 6]),
        refresh_token_expires_at: None,
        keepalive_due_at: None,
    };
    let store = app.store();
    let written = store
        .connections()
        .write_back(id, authorized_at, &rotation)
        .await
        .unwrap();
    assert!(!written);
    assert_eq!(ciphertexts_left(&app, "acme").await, 0);
}

/// A writer that commits while the delete's lease statement waits for the row (the whole file,
/// on SQLite) (here a new authorization's write, done by hand in a transaction held open) must
/// not leave the delete
/// revoking the refresh token that writer replaced while it wipes the new one unrevoked: the
/// delete goes round again and revokes the newest.
#[tokio::test]
async fn a_delete_that_waits_for_a_concurrent_writer_revokes_what_that_writer_stored() {
    let a = key_line("key-a");
    let app = spawn_app_with(TestOptions {
        extra_toml: format!("[encryption]\nkeyring = \"{a}\"\n"),
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    let keyring = Keyring::parse(&a, None).unwrap();
    let (id, generation): (i64, i64) = on_rows!(app.rows, |pool| sqlx::query_as(
        "SELECT id, generation FROM connections WHERE tenant_id = 'acme'"
    )
    .fetch_one(pool)
    .await
    .unwrap());
    let newer = generation + 1;
    let new_refresh_token = app.provider.mint_refresh_token();
    let seal = |purpose, plaintext: &[u8]| {
        keyring
            .seal(&Aad::for_generation(purpose, "acme", "understory", newer), plaintext)
            .unwrap()
    };
    // The writer: on Postgres a transaction holding the rows it updated; on SQLite a
    // `BEGIN IMMEDIATE` transaction, which holds the whole file's write lock from its start, so
    // the delete's lease transaction waits for it (up to the store's 10 s busy timeout).
    let begin = app.rows.sql("BEGIN", "BEGIN IMMEDIATE");
    let superseded = app.rows.sql(
        "UPDATE refresh_tokens SET superseded_at = now() WHERE connection_id = $1 AND superseded_at IS NULL",
        "UPDATE refresh_tokens SET superseded_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
          WHERE connection_id = $1 AND superseded_at IS NULL",
    );
    let answer = on_rows!(app.rows, |pool| {
        let mut writer = pool.begin_with(begin).await.unwrap();
        sqlx::query("UPDATE connections SET generation = $2, access_token = $3 WHERE id = $1")
            .bind(id)
            .bind(newer)
            .bind(seal(Purpose::AccessToken, b"at-newer"))
            .execute(&mut *writer)
            .await
            .unwrap();
        sqlx::query(superseded).bind(id).execute(&mut *writer).await.unwrap();
        sqlx::query(
            "INSERT INTO refresh_tokens (connection_id, generation, token, source) VALUES ($1, $2, $3, 'authorization_code')",
        )
        .bind(id)
        .bind(newer)
        .bind(seal(Purpose::RefreshToken, new_refresh_token.as_bytes()))
        .execute(&mut *writer)
        .await
        .unwrap();

        let mut client = app.client.clone();
        let delete = tokio::spawn(async move {
            client
                .delete_connection(proto::DeleteConnectionRequest {
                    tenant_id: "acme".into(),
                    ..Default::default()
                })
                .await
        });
        // The delete's lease statement reaches the row (the file, on SQLite) and waits for the
        // writer's lock.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!delete.is_finished(), "the delete waited for the writer");
        writer.commit().await.unwrap();
        delete.await.unwrap().unwrap().into_inner()
    });

    assert_eq!(answer.revocation(), Revocation::Revoked);
    let revoked: Vec<String> = app
        .provider
        .state
        .lock()
        .unwrap()
        .revocations
        .iter()
        .map(|r| r.form["token"].clone())
        .collect();
    assert_eq!(
        revoked,
        [new_refresh_token],
        "the newest refresh token is the one revoked"
    );
    assert_eq!(ciphertexts_left(&app, "acme").await, 0);
}
