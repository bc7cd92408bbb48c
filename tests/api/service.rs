//! What operators and tools see: health, reflection, GetConnection.

use token_vault::proto;
use tonic::Code;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

use crate::helpers::{assert_reason, spawn_app};

#[tokio::test]
async fn health_reports_serving_once_the_database_answers() {
    let app = spawn_app().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut status = ServingStatus::Unknown;
    for _ in 0..50 {
        for service in ["", "tokenvault.v1.TokenVault"] {
            if let Ok(r) = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
            {
                status = r.into_inner().status();
            }
        }
        if status == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, ServingStatus::Serving);
    assert!(token_vault::startup::probe_health(&format!("http://{}", app.addr))
        .await
        .unwrap());
}

#[tokio::test]
async fn reflection_lists_the_service_in_v1_and_v1alpha() {
    use tokio_stream::StreamExt;
    let app = spawn_app().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    {
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let mut client = ServerReflectionClient::new(channel.clone());
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("unexpected answer {answer:?}");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"tokenvault.v1.TokenVault".to_string()), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    }
    {
        use tonic_reflection::pb::v1alpha::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("tokenvault.v1.TokenVault".into())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = stream.next().await.unwrap().unwrap();
        assert!(
            matches!(answer.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn get_connection_describes_without_tokens() {
    let app = spawn_app().await;
    let missing = app
        .client
        .clone()
        .get_connection(proto::GetConnectionRequest {
            tenant_id: "acme".into(),
            provider: String::new(),
        })
        .await
        .unwrap_err();
    assert_reason(&missing, Code::NotFound, "CONNECTION_NOT_FOUND");

    app.connect_tenant("acme").await;
    let info = app
        .client
        .clone()
        .get_connection(proto::GetConnectionRequest {
            tenant_id: "acme".into(),
            provider: "understory".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.status(), proto::ConnectionStatus::Active);
    assert!(info.has_refresh_token);
    assert_eq!(info.scopes, ["offline", "booking.read"]);
    assert!(info.refreshed_at.is_none());
    let text = format!("{info:?}");
    for secret in app.provider.issued_secrets() {
        assert!(!text.contains(&secret));
    }
}

#[tokio::test]
async fn the_database_connection_can_be_encrypted() {
    let app = crate::helpers::spawn_app_with(crate::helpers::TestOptions {
        database_tls: true,
        ..Default::default()
    })
    .await;
    app.connect_tenant("acme").await;
    assert!(app.get_token("acme").await.is_ok());
    // The vault's own sessions on this database, told apart by their application_name.
    let (sessions, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = current_database() AND a.application_name = 'token-vault-under-test'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(sessions >= 1, "the vault's sessions are visible");
    assert_eq!(encrypted, sessions, "every session of the vault is encrypted");
}
