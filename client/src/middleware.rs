//! [`AccessTokenMiddleware`]: the vault's access token on the caller's own requests to the
//! provider's API (reqwest with reqwest-middleware), and the one retry after a 401.

use http::{header::AUTHORIZATION, HeaderValue, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::{AccessToken, Client};

/// Which tenant's token (and which provider's) a request carries: an extension on the request
/// (`RequestBuilder::with_extension`), or the middleware's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    tenant: String,
    provider: Option<String>,
}

impl Connection {
    /// The connection of `tenant`, at the vault client's provider.
    pub fn new(tenant: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            provider: None,
        }
    }

    /// The connection of this tenant at `provider` instead.
    pub fn provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = Some(provider.into());
        self
    }
}

/// A reqwest-middleware [`Middleware`] that sends `Authorization: Bearer <access token>` for
/// a tenant, with the token from the vault.
///
/// When the provider answers 401 (it revoked the token, or another client of the same grant
/// rotated it), the middleware reports the rejected token to the vault
/// ([`Client::report_rejected`]), which refreshes the connection once however many callers
/// report it, and sends the request again, once, with the new token. The second answer is
/// returned whatever it is. A request whose body cannot be cloned (a stream) is not resent:
/// its 401 is returned.
///
/// The token is asked for on every request: the vault answers from its cache and refreshes
/// ahead of expiry, so the middleware keeps no copy that could go stale.
///
/// ```no_run
/// # async fn run(vault: token_vault_client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use token_vault_client::{AccessTokenMiddleware, Connection};
///
/// let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(AccessTokenMiddleware::new(vault))
///     .build();
/// let bookings = http
///     .get("https://api.understory.example/v1/bookings")
///     .with_extension(Connection::new("acme"))
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AccessTokenMiddleware {
    vault: Client,
    default: Option<Connection>,
}

impl AccessTokenMiddleware {
    /// A middleware that takes tokens from `vault` for the [`Connection`] each request names
    /// in its extensions; a request that names none fails.
    pub fn new(vault: Client) -> Self {
        Self { vault, default: None }
    }

    /// A middleware for one connection: requests that name no [`Connection`] use `connection`.
    pub fn for_connection(vault: Client, connection: Connection) -> Self {
        Self {
            vault,
            default: Some(connection),
        }
    }
}

#[async_trait::async_trait]
impl Middleware for AccessTokenMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let connection = extensions
            .get::<Connection>()
            .or(self.default.as_ref())
            .cloned()
            .ok_or_else(|| {
                reqwest_middleware::Error::Middleware(anyhow::anyhow!(
                    "the request names no tenant: add a token_vault_client::Connection extension"
                ))
            })?;
        let vault = match &connection.provider {
            Some(provider) => self.vault.with_provider(provider.clone()),
            None => self.vault.clone(),
        };
        let token = vault
            .access_token(&connection.tenant)
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        // Taken before the first attempt consumes the body.
        let resend = request.try_clone();
        authorize(&mut request, &token)?;
        let response = next.clone().run(request, extensions).await?;
        let (StatusCode::UNAUTHORIZED, Some(mut resend)) = (response.status(), resend) else {
            return Ok(response);
        };
        let fresh = vault
            .report_rejected(&connection.tenant, &token)
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        authorize(&mut resend, &fresh)?;
        next.run(resend, extensions).await
    }
}

fn authorize(request: &mut Request, token: &AccessToken) -> reqwest_middleware::Result<()> {
    let mut value = HeaderValue::from_str(&token.authorization()).map_err(|_| {
        reqwest_middleware::Error::Middleware(anyhow::anyhow!("the access token is not a valid header value"))
    })?;
    value.set_sensitive(true);
    request.headers_mut().insert(AUTHORIZATION, value);
    Ok(())
}
