//! The floors every vault figure is divided by, served from the same proto with the same tonic
//! server settings: a server that answers GetAccessToken with a constant; one that answers it
//! with one indexed SELECT of a stored (sealed) token row through sqlx; and, for the refresh
//! scenario, one that answers it with the access token of one refresh-token request to the
//! scripted provider (what any server must do for an expired token, and nothing else).

use base64::{engine::general_purpose::STANDARD, Engine};
use sqlx::PgPool;
use token_vault::proto::{self, token_vault_server::TokenVault, token_vault_server::TokenVaultServer};
use tonic::{Request, Response, Status};

enum Floor {
    Constant(proto::GetAccessTokenResponse),
    Database(PgPool),
    Provider { http: reqwest::Client, token_url: String },
}

/// Which floor a process serves.
pub enum Kind {
    Constant,
    Database(String),
    /// The provider's base URL.
    Provider(String),
}

#[tonic::async_trait]
impl TokenVault for Floor {
    async fn begin_authorization(
        &self,
        _: Request<proto::BeginAuthorizationRequest>,
    ) -> Result<Response<proto::BeginAuthorizationResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn complete_authorization(
        &self,
        _: Request<proto::CompleteAuthorizationRequest>,
    ) -> Result<Response<proto::CompleteAuthorizationResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn get_connection(
        &self,
        _: Request<proto::GetConnectionRequest>,
    ) -> Result<Response<proto::GetConnectionResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn list_connections(
        &self,
        _: Request<proto::ListConnectionsRequest>,
    ) -> Result<Response<proto::ListConnectionsResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn delete_connection(
        &self,
        _: Request<proto::DeleteConnectionRequest>,
    ) -> Result<Response<proto::DeleteConnectionResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn import_connection(
        &self,
        _: Request<proto::ImportConnectionRequest>,
    ) -> Result<Response<proto::ImportConnectionResponse>, Status> {
        Err(Status::unimplemented("floor"))
    }

    type WatchConnectionEventsStream = futures::stream::Empty<Result<proto::WatchConnectionEventsResponse, Status>>;

    async fn watch_connection_events(
        &self,
        _: Request<proto::WatchConnectionEventsRequest>,
    ) -> Result<Response<Self::WatchConnectionEventsStream>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn get_access_token(
        &self,
        request: Request<proto::GetAccessTokenRequest>,
    ) -> Result<Response<proto::GetAccessTokenResponse>, Status> {
        match self {
            Floor::Constant(answer) => Ok(Response::new(answer.clone())),
            Floor::Database(pool) => {
                let tenant = request.into_inner().tenant_id;
                let row: Option<(Vec<u8>, time::OffsetDateTime)> = sqlx::query_as(
                    "SELECT access_token, access_token_expires_at FROM connections WHERE tenant_id = $1 AND provider = $2",
                )
                .bind(&tenant)
                .bind("understory")
                .fetch_optional(pool)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
                let (sealed, expires) = row.ok_or_else(|| Status::not_found("no row"))?;
                Ok(Response::new(proto::GetAccessTokenResponse {
                    access_token: STANDARD.encode(sealed),
                    token_type: "bearer".into(),
                    expires_at: Some(prost_types::Timestamp {
                        seconds: expires.unix_timestamp(),
                        nanos: 0,
                    }),
                    scopes: vec!["offline".into(), "booking.read".into()],
                }))
            }
            Floor::Provider { http, token_url } => {
                // The same form the vault sends for a refresh (client_secret_post).
                let answer = http
                    .post(token_url)
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", "floor-refresh-token"),
                        ("client_id", "bench"),
                        ("client_secret", "bench-secret"),
                    ])
                    .send()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let body: serde_json::Value = answer.json().await.map_err(|e| Status::internal(e.to_string()))?;
                let expires_in = body["expires_in"].as_i64().unwrap_or(0);
                Ok(Response::new(proto::GetAccessTokenResponse {
                    access_token: body["access_token"].as_str().unwrap_or_default().to_owned(),
                    token_type: "bearer".into(),
                    expires_at: Some(prost_types::Timestamp {
                        seconds: time::OffsetDateTime::now_utc().unix_timestamp() + expires_in,
                        nanos: 0,
                    }),
                    scopes: vec!["offline".into(), "booking.read".into()],
                }))
            }
        }
    }
}

/// Serves a floor on `listen` until the process is killed.
pub async fn serve(listen: std::net::SocketAddr, kind: Kind, max_connections: u32) {
    let floor = match kind {
        Kind::Provider(base) => Floor::Provider {
            // Built as the vault builds its provider client.
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
            token_url: format!("{base}/oauth2/token"),
        },
        Kind::Database(url) => Floor::Database(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(max_connections)
                .connect(&url)
                .await
                .expect("the floor's database answers"),
        ),
        Kind::Constant => Floor::Constant(proto::GetAccessTokenResponse {
            // The size of a real Hydra access token (a JWT of ~900 bytes).
            access_token: "x".repeat(900),
            token_type: "bearer".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 4_102_444_800,
                nanos: 0,
            }),
            scopes: vec!["offline".into(), "booking.read".into()],
        }),
    };
    tonic::transport::Server::builder()
        .add_service(TokenVaultServer::new(floor))
        .serve(listen)
        .await
        .expect("the floor serves");
}
