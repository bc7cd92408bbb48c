//! Asks the vault for a tenant's access token and says what it is good for (never printing
//! the token itself), or why there is none.
//!
//! ```sh
//! TOKEN_VAULT_ENDPOINT=http://127.0.0.1:50051 TOKEN_VAULT_TOKEN=… \
//!     cargo run -p token-vault-client --example get_access_token -- acme
//! ```

use std::time::{Duration, SystemTime};

use token_vault_client::{proto::ErrorReason, Client, Error};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("TOKEN_VAULT_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let bearer = std::env::var("TOKEN_VAULT_TOKEN").ok();
    let tenant = std::env::args().nth(1).ok_or("usage: get_access_token <tenant>")?;
    println!("{}", run(&endpoint, bearer.as_deref(), &tenant).await?);
    Ok(())
}

/// Connects to the vault at `endpoint` (with a bearer token if given) and describes
/// `tenant`'s access token in one line.
pub async fn run(endpoint: &str, bearer: Option<&str>, tenant: &str) -> Result<String, Error> {
    let mut builder = Client::builder(endpoint).timeout(Duration::from_secs(5));
    if let Some(token) = bearer {
        builder = builder.bearer_token(token);
    }
    let vault = builder.connect().await?;
    match vault.access_token(tenant).await {
        Ok(token) => {
            let valid_for = token
                .expires_at()
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .map_or("an unknown time".to_owned(), |d| format!("{}s", d.as_secs()));
            Ok(format!(
                "{tenant}: a {} token for [{}], valid for {valid_for}",
                token.token_type(),
                token.scopes().join(" ")
            ))
        }
        // The reasons a caller acts on: send the user through BeginAuthorization.
        Err(e) if e.reason() == Some(ErrorReason::ConnectionNotFound) => {
            Ok(format!("{tenant}: not connected; start BeginAuthorization"))
        }
        Err(e) if e.reason() == Some(ErrorReason::ReauthorizationRequired) => {
            Ok(format!("{tenant}: the provider revoked the grant; connect again"))
        }
        Err(e) => Err(e),
    }
}
