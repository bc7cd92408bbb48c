//! Calls a provider's API for a tenant with reqwest, the vault's access token put on the
//! request by `AccessTokenMiddleware` (and renewed once if the provider answers 401).
//!
//! ```sh
//! TOKEN_VAULT_ENDPOINT=http://127.0.0.1:50051 \
//!     cargo run -p token-vault-client --example provider_api -- acme http://api.example/v1/me
//! ```
//!
//! This crate builds reqwest without TLS; an application calling an `https://` API enables
//! one of reqwest's TLS features in its own `Cargo.toml`.

use token_vault_client::{AccessTokenMiddleware, Client, Connection};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let endpoint = std::env::var("TOKEN_VAULT_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let mut args = std::env::args().skip(1);
    let (Some(tenant), Some(url)) = (args.next(), args.next()) else {
        return Err("usage: provider_api <tenant> <url>".into());
    };
    println!("{}", run(&endpoint, &tenant, &url).await?);
    Ok(())
}

/// GETs `url` as `tenant`, with the access token from the vault at `endpoint`; returns the
/// status and the body.
pub async fn run(endpoint: &str, tenant: &str, url: &str) -> Result<String, BoxError> {
    let vault = Client::builder(endpoint).connect_lazy()?;
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AccessTokenMiddleware::for_connection(vault, Connection::new(tenant)))
        .build();
    let response = http.get(url).send().await?;
    let status = response.status();
    Ok(format!("{} {}", status.as_u16(), response.text().await?))
}
