//! Reaching a running vault as an operator: its address, TLS with the deployment's CA, a client
//! certificate for mutual TLS, or a bearer token. The token is read from a file
//! (`--token-file`) or the `TOKEN_VAULT_BEARER_TOKEN` environment variable, never from a flag
//! value, which would land in shell history and in every process listing.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Request, Status,
};

use crate::proto::token_vault_client::TokenVaultClient;

/// The environment variable a bearer token may come from (when `--token-file` is not given).
pub const TOKEN_ENV: &str = "TOKEN_VAULT_BEARER_TOKEN";

/// Where the vault is and how to prove who is calling.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The vault's gRPC address; `https://…` when it serves TLS.
    #[arg(
        long,
        default_value = "http://127.0.0.1:50051",
        env = "TOKEN_VAULT_ADDR",
        global = true
    )]
    pub addr: String,
    /// The CA that signed the vault's certificate (PEM); needed for an `https://` address.
    #[arg(long, value_name = "PEM", global = true)]
    pub ca: Option<PathBuf>,
    /// A client certificate for mutual TLS (PEM), with `--key`.
    #[arg(long, value_name = "PEM", requires = "key", global = true)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "cert", global = true)]
    pub key: Option<PathBuf>,
    /// The name to expect in the vault's certificate, when it differs from the address's host.
    #[arg(long, global = true)]
    pub tls_domain: Option<String>,
    /// A file holding the bearer token (its first line). Without it, the token is read from
    /// the TOKEN_VAULT_BEARER_TOKEN environment variable, if set.
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

/// Adds `authorization: Bearer …` to every call when a token was given.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Client = TokenVaultClient<InterceptedService<Channel, Bearer>>;

impl Target {
    /// A client of the vault at `addr`; connects on first use.
    pub fn client(&self) -> anyhow::Result<Client> {
        let mut endpoint = Endpoint::from_shared(self.addr.clone())
            .with_context(|| format!("--addr {:?} is not a valid URI", self.addr))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        let https = self.addr.starts_with("https://");
        if https {
            let ca = self
                .ca
                .as_ref()
                .context("an https:// address needs --ca, the CA that signed the vault's certificate")?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "--ca")?));
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                tls = tls.identity(Identity::from_pem(read(cert, "--cert")?, read(key, "--key")?));
            }
            if let Some(domain) = &self.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls).context("the TLS settings")?;
        } else if self.ca.is_some() || self.cert.is_some() {
            anyhow::bail!("--ca and --cert apply to an https:// address; --addr is {}", self.addr);
        }
        Ok(TokenVaultClient::with_interceptor(
            endpoint.connect_lazy(),
            Bearer(self.bearer()?),
        ))
    }

    fn bearer(&self) -> anyhow::Result<Option<MetadataValue<Ascii>>> {
        let (token, source) = match &self.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --token-file {}", path.display()))?;
                (text, format!("--token-file {}", path.display()))
            }
            None => match std::env::var(TOKEN_ENV) {
                Ok(text) => (text, TOKEN_ENV.to_owned()),
                Err(_) => return Ok(None),
            },
        };
        let token = token.lines().next().unwrap_or_default().trim();
        if token.is_empty() {
            anyhow::bail!("{source} holds no token");
        }
        // The message names where the token came from, never the token.
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("the token in {source} is not a valid header value"))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

fn read(path: &PathBuf, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}
