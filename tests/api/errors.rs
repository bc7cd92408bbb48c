//! Malformed input: INVALID_ARGUMENT naming the field, never a panic, never a provider call.

use token_vault::proto;

use crate::helpers::{assert_bad_field, spawn_app, REDIRECT_URI};

#[tokio::test]
async fn malformed_requests_name_the_field() {
    let app = spawn_app().await;
    let mut c = app.client.clone();
    let begin =
        |tenant_id: &str, provider: &str, scopes: Vec<&str>, redirect_uri: &str| proto::BeginAuthorizationRequest {
            tenant_id: tenant_id.into(),
            provider: provider.into(),
            scopes: scopes.into_iter().map(String::from).collect(),
            redirect_uri: redirect_uri.into(),
        };

    let cases = [
        (begin("", "", vec![], ""), "tenant_id"),
        (begin(&"t".repeat(256), "", vec![], ""), "tenant_id"),
        (begin("a\nb", "", vec![], ""), "tenant_id"),
        (begin("acme", "nope", vec![], ""), "provider"),
        (begin("acme", &"p".repeat(65), vec![], ""), "provider"),
        (begin("acme", "", vec!["bad scope"], ""), "scopes"),
        (
            begin("acme", "", vec![], "https://evil.example/callback"),
            "redirect_uri",
        ),
        (
            begin("acme", "", vec![], &format!("{REDIRECT_URI}/../x")),
            "redirect_uri",
        ),
    ];
    for (request, field) in cases {
        let err = c.begin_authorization(request).await.unwrap_err();
        assert_bad_field(&err, field);
    }
    // The registered URI itself, and an explicit provider name, are accepted.
    c.begin_authorization(begin("acme", "understory", vec!["booking.read"], REDIRECT_URI))
        .await
        .unwrap();

    let complete = |state: &str, code: &str, callback_url: &str| proto::CompleteAuthorizationRequest {
        state: state.into(),
        code: code.into(),
        callback_url: callback_url.into(),
        ..Default::default()
    };
    let cases = [
        (complete("", "c", ""), "state"),
        (complete("s", "", ""), "code"),
        (complete("", "", ""), "state"),
        (complete("", "", "not a url"), "callback_url"),
        (complete("", "", "https://app.example/cb?code=c"), "callback_url.state"),
        (
            complete("", "", "https://app.example/cb?state=s&state=t&code=c"),
            "callback_url",
        ),
        (
            complete("s", "", "https://app.example/cb?state=s&code=c"),
            "callback_url",
        ),
        (complete(&"s".repeat(5000), "c", ""), "state"),
    ];
    for (request, field) in cases {
        let err = c.complete_authorization(request).await.unwrap_err();
        assert_bad_field(&err, field);
    }

    let get = |tenant_id: &str, provider: &str, min: Option<prost_types::Duration>| proto::GetAccessTokenRequest {
        tenant_id: tenant_id.into(),
        provider: provider.into(),
        min_valid_for: min,
        ..Default::default()
    };
    let negative = prost_types::Duration { seconds: -1, nanos: 0 };
    let too_long = prost_types::Duration {
        seconds: 90_000,
        nanos: 0,
    };
    let cases = [
        (get("", "", None), "tenant_id"),
        (get(&"t".repeat(300), "", None), "tenant_id"),
        (get("acme", "other", None), "provider"),
        (get("acme", "", Some(negative)), "min_valid_for"),
        (get("acme", "", Some(too_long)), "min_valid_for"),
    ];
    for (request, field) in cases {
        let err = c.get_access_token(request).await.unwrap_err();
        assert_bad_field(&err, field);
    }
    let err = c
        .get_connection(proto::GetConnectionRequest {
            tenant_id: String::new(),
            provider: String::new(),
        })
        .await
        .unwrap_err();
    assert_bad_field(&err, "tenant_id");

    assert_eq!(app.provider.stats().token_requests, 0);
}
