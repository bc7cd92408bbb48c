//! Hostile input end to end: stored values moved or damaged in the database, unusable provider
//! answers, and oversized request fields. Each is a clean error; none is a panic, and the
//! server goes on serving.

use token_vault::{oauth::MAX_RESPONSE_BYTES, proto};
use tonic::Code;

use crate::{
    helpers::on_rows,
    helpers::{assert_bad_field, assert_reason, spawn_app, TestApp, REDIRECT_URI},
    provider::Fault,
};

async fn sealed_access_token(app: &TestApp, tenant: &str) -> Vec<u8> {
    on_rows!(app.rows, |pool| sqlx::query_scalar(
        "SELECT access_token FROM connections WHERE tenant_id = $1"
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap())
}

async fn set_access_token(app: &TestApp, tenant: &str, value: &[u8]) {
    on_rows!(app.rows, |pool| sqlx::query(
        "UPDATE connections SET access_token = $1 WHERE tenant_id = $2"
    )
    .bind(value)
    .bind(tenant)
    .execute(pool)
    .await
    .unwrap()
    .rows_affected());
}

#[tokio::test]
async fn a_ciphertext_copied_to_another_tenants_row_does_not_open() {
    let app = spawn_app().await;
    app.connect_tenant("acme").await;
    app.connect_tenant("globex").await;
    // Both rows are at generation 1: only the tenant in the associated data differs.
    let acme_token = app.get_token("acme").await.unwrap().access_token;
    set_access_token(&app, "globex", &sealed_access_token(&app, "acme").await).await;

    let err = app.get_token("globex").await.unwrap_err();
    assert_reason(&err, Code::Internal, "INTERNAL_ERROR");
    assert!(!err.message().contains(&acme_token));
    assert!(
        !format!("{err:?}").contains(&acme_token),
        "acme's token never reaches globex's caller"
    );
    // The row it was copied from is untouched.
    assert_eq!(app.get_token("acme").await.unwrap().access_token, acme_token);
}

#[tokio::test]
async fn a_truncated_or_damaged_ciphertext_is_internal_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    app.connect_tenant("acme").await;
    app.connect_tenant("globex").await;
    let sealed = sealed_access_token(&app, "globex").await;
    let mut flipped = sealed.clone();
    *flipped.last_mut().unwrap() ^= 0x80;
    let mut other_version = sealed.clone();
    other_version[0] = 2;
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        sealed[..1].to_vec(),
        sealed[..2].to_vec(),
        sealed[..12].to_vec(),
        sealed[..sealed.len() - 1].to_vec(),
        flipped,
        other_version,
        vec![1, 255],
    ];
    for (i, damaged) in cases.iter().enumerate() {
        set_access_token(&app, "globex", damaged).await;
        let err = app.get_token("globex").await.unwrap_err();
        assert_reason(&err, Code::Internal, "INTERNAL_ERROR");
        // The server is still there, and still reads and decrypts other rows.
        assert!(app.get_token("acme").await.is_ok(), "case {i}");
    }
    set_access_token(&app, "globex", &sealed).await;
    assert!(app.get_token("globex").await.is_ok(), "the original value still opens");
}

/// Starts an authorization and completes it while the provider answers `fault`.
async fn exchange_with(app: &TestApp, tenant: &str, fault: Fault) -> Result<(), tonic::Status> {
    let begun = app.begin(tenant).await;
    let code = app.provider.consent(&begun.authorization_url);
    app.provider.push_fault(fault);
    app.client
        .clone()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            state: begun.state,
            code,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::test]
async fn malformed_provider_answers_are_protocol_errors() {
    let app = spawn_app().await;
    let deep = leak(format!("{}{}", "[".repeat(5000), "]".repeat(5000)));
    let oversized = leak(format!(
        r#"{{"access_token":"{}","token_type":"bearer"}}"#,
        "a".repeat(MAX_RESPONSE_BYTES)
    ));
    for body in [
        "not json",
        r#"{"access_token":"at""#,
        r#"{"access_token":5}"#,
        r#"{"access_token":{"nested":true}}"#,
        r#"{"access_token":""}"#,
        r#"["access_token"]"#,
        deep,
        oversized,
        r#"{"access_token":"at","token_type":"bearerbearerbearerbearerbearerbearerbearerbearerbearerbearerbearer"}"#,
    ] {
        let err = exchange_with(&app, "acme", Fault::Answer(200, body)).await.unwrap_err();
        assert_reason(&err, Code::Internal, "PROVIDER_PROTOCOL_ERROR");
    }
    // An error answer that is not RFC 6749 is a protocol error too.
    let err = exchange_with(&app, "acme", Fault::Answer(400, "<html>bad</html>"))
        .await
        .unwrap_err();
    assert_reason(&err, Code::Internal, "PROVIDER_PROTOCOL_ERROR");
    assert_reason(
        &app.get_token("acme").await.unwrap_err(),
        Code::NotFound,
        "CONNECTION_NOT_FOUND",
    );

    // On the refresh path a 2xx means the provider consumed the refresh token, so an unusable
    // body is not "try again": the token is held back and the outcome reported as unknown.
    app.provider.set_access_ttl(1);
    app.connect_tenant("globex").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.provider
        .push_fault(Fault::Answer(200, r#"{"token_type":"bearer"}"#));
    let err = app.get_token("globex").await.unwrap_err();
    assert_reason(&err, Code::Unavailable, "REFRESH_OUTCOME_UNKNOWN");
    let reason: Option<String> = on_rows!(app.rows, |pool| sqlx::query_scalar(
        "SELECT status_reason FROM connections WHERE tenant_id = 'globex'"
    )
    .fetch_one(pool)
    .await
    .unwrap());
    assert_eq!(reason.as_deref(), Some("refresh_outcome_unknown"));
    assert_eq!(app.provider.stats().refresh_requests, 1, "and not presented again");
}

#[tokio::test]
async fn an_absurd_token_lifetime_is_capped_not_a_panic() {
    let app = spawn_app().await;
    // 2^64 - 1 seconds: adding it to a timestamp used to overflow (a panic in the handler).
    let answer = r#"{"access_token":"ory_at_forever","token_type":"bearer","expires_in":18446744073709551615,"refresh_token":"ory_rt_x"}"#;
    exchange_with(&app, "acme", Fault::Answer(200, answer)).await.unwrap();
    let token = app.get_token("acme").await.unwrap();
    assert_eq!(token.access_token, "ory_at_forever");
    let lifetime = token.expires_at.unwrap().seconds - time::OffsetDateTime::now_utc().unix_timestamp();
    let year = 365 * 24 * 3600;
    assert!((year - 60..=year).contains(&lifetime), "capped at a year: {lifetime}s");
}

#[tokio::test]
async fn oversized_fields_are_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    let mut c = app.client.clone();
    let long = |n: usize| "x".repeat(n);

    let begin = |tenant_id: String, provider: String, scopes: Vec<String>, redirect_uri: String| {
        proto::BeginAuthorizationRequest {
            tenant_id,
            provider,
            scopes,
            redirect_uri,
        }
    };
    let cases = [
        (begin(long(256), String::new(), vec![], String::new()), "tenant_id"),
        (begin("acme".into(), long(65), vec![], String::new()), "provider"),
        (
            begin(
                "acme".into(),
                String::new(),
                vec![],
                format!("{REDIRECT_URI}?{}", long(2048)),
            ),
            "redirect_uri",
        ),
        (
            begin("acme".into(), String::new(), vec!["s".into(); 51], String::new()),
            "scopes",
        ),
        (
            begin("acme".into(), String::new(), vec![long(257)], String::new()),
            "scopes",
        ),
    ];
    for (request, field) in cases {
        let err = c.begin_authorization(request).await.unwrap_err();
        assert_bad_field(&err, field);
    }

    let complete =
        |state: String, code: String, error: String, error_description: String| proto::CompleteAuthorizationRequest {
            state,
            code,
            error,
            error_description,
            callback_url: String::new(),
        };
    let s = || "state".to_owned();
    let cases = [
        (complete(long(4097), "c".into(), "".into(), "".into()), "state"),
        (complete(s(), long(4097), "".into(), "".into()), "code"),
        (complete(s(), "".into(), long(129), "".into()), "error"),
        (
            complete(s(), "".into(), "access_denied".into(), long(1025)),
            "error_description",
        ),
    ];
    for (request, field) in cases {
        let err = c.complete_authorization(request).await.unwrap_err();
        assert_bad_field(&err, field);
    }
    let by_url = |url: String| proto::CompleteAuthorizationRequest {
        callback_url: url,
        ..Default::default()
    };
    let cases = [
        (
            by_url(format!("{REDIRECT_URI}?state=s&code={}", long(20_000))),
            "callback_url",
        ),
        (
            by_url(format!("{REDIRECT_URI}?state={}&code=c", long(4097))),
            "callback_url.state",
        ),
        (
            by_url(format!("{REDIRECT_URI}?state=s&error={}", long(129))),
            "callback_url.error",
        ),
        (
            by_url(format!(
                "{REDIRECT_URI}?state=s&error=e&error_description={}",
                long(1025)
            )),
            "callback_url.error_description",
        ),
    ];
    for (request, field) in cases {
        let err = c.complete_authorization(request).await.unwrap_err();
        assert_bad_field(&err, field);
    }

    let err = c
        .get_access_token(proto::GetAccessTokenRequest {
            tenant_id: "acme".into(),
            provider: long(65),
            min_valid_for: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_bad_field(&err, "provider");
    let err = c
        .get_connection(proto::GetConnectionRequest {
            tenant_id: long(256),
            provider: String::new(),
        })
        .await
        .unwrap_err();
    assert_bad_field(&err, "tenant_id");

    // A denial at the largest accepted sizes still comes back whole: error and description are
    // echoed in the status, and must fit the response headers.
    let begun = app.begin("acme").await;
    let err = c
        .complete_authorization(complete(begun.state, String::new(), "é".repeat(64), "ü".repeat(512)))
        .await
        .unwrap_err();
    let meta = assert_reason(&err, Code::FailedPrecondition, "AUTHORIZATION_DENIED");
    assert_eq!(meta["error_description"], "ü".repeat(512));
    assert_eq!(app.provider.stats().token_requests, 0);
}

/// Needs the server's decoding limit (`max_decoding_message_size(64 * 1024)` on the
/// `TokenVaultServer` in src/startup.rs); until then a 1 MiB request is read whole and refused
/// field by field.
#[tokio::test]
async fn a_request_larger_than_64_kib_is_refused_before_decoding() {
    let app = spawn_app().await;
    let err = app
        .client
        .clone()
        .get_access_token(proto::GetAccessTokenRequest {
            tenant_id: "x".repeat(1024 * 1024),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(app.get_token("nobody").await.is_err_and(|e| e.code() == Code::NotFound));
}
