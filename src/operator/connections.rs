//! `token-vault connections list|show|delete`: what ListConnections, GetConnection and
//! DeleteConnection offer, over gRPC to a running vault. A failed call prints its status code
//! and the stable reason (`google.rpc.ErrorInfo.reason`) and exits non-zero.

use std::{fmt::Write as _, io::BufRead, process::ExitCode};

use serde::Serialize;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{grpc::Client, print_json, Output, Target};
use crate::proto::{self, ConnectionStatus, Revocation};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConnectionsCommand {
    /// List connections, following every page (or up to --limit).
    List {
        /// Only this provider's connections.
        #[arg(long)]
        provider: Option<String>,
        /// Only connections in this status.
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
        /// Only tenants whose id starts with this.
        #[arg(long)]
        tenant_prefix: Option<String>,
        /// At most this many connections.
        #[arg(long)]
        limit: Option<usize>,
        /// Connections per request (the API allows 1 to 1000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: u32,
    },
    /// Describe one connection.
    Show {
        /// The tenant.
        tenant: String,
        /// The provider; the vault's default provider when omitted.
        #[arg(long)]
        provider: Option<String>,
    },
    /// Disconnect a tenant: revoke its refresh token at the provider and wipe its tokens.
    Delete {
        /// The tenant.
        tenant: String,
        /// The provider; the vault's default provider when omitted.
        #[arg(long)]
        provider: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFilter {
    Active,
    ReauthorizationRequired,
    Disconnected,
}

impl From<StatusFilter> for ConnectionStatus {
    fn from(s: StatusFilter) -> Self {
        match s {
            StatusFilter::Active => ConnectionStatus::Active,
            StatusFilter::ReauthorizationRequired => ConnectionStatus::ReauthorizationRequired,
            StatusFilter::Disconnected => ConnectionStatus::Disconnected,
        }
    }
}

/// Runs one `connections` subcommand; `confirm` answers the deletion prompt (standard input).
pub async fn run(
    command: ConnectionsCommand,
    target: &Target,
    output: Output,
    confirm: impl BufRead,
) -> anyhow::Result<ExitCode> {
    let mut client = target.client()?;
    let outcome = match command {
        ConnectionsCommand::List {
            provider,
            status,
            tenant_prefix,
            limit,
            page_size,
        } => {
            let request = proto::ListConnectionsRequest {
                provider: provider.unwrap_or_default(),
                status: status.map(|s| ConnectionStatus::from(s) as i32).unwrap_or_default(),
                tenant_prefix: tenant_prefix.unwrap_or_default(),
                ..Default::default()
            };
            list(&mut client, request, page_size, limit).await.map(|connections| {
                let views: Vec<ConnectionView> = connections.iter().map(ConnectionView::from).collect();
                match output {
                    Output::Json => print_json(&serde_json::json!({ "connections": views })),
                    Output::Text => {
                        print!("{}", render_list(&views));
                        Ok(())
                    }
                }
            })
        }
        ConnectionsCommand::Show { tenant, provider } => client
            .get_connection(proto::GetConnectionRequest {
                tenant_id: tenant,
                provider: provider.unwrap_or_default(),
            })
            .await
            .map(|answer| {
                let view = ConnectionView::from(&answer.into_inner());
                match output {
                    Output::Json => print_json(&view),
                    Output::Text => {
                        print!("{}", render_one(&view));
                        Ok(())
                    }
                }
            }),
        ConnectionsCommand::Delete { tenant, provider, yes } => {
            let provider = provider.unwrap_or_default();
            if !yes && !confirmed(&tenant, &provider, confirm)? {
                eprintln!("token-vault: not deleted");
                return Ok(ExitCode::FAILURE);
            }
            client
                .delete_connection(proto::DeleteConnectionRequest {
                    tenant_id: tenant,
                    provider,
                })
                .await
                .map(|answer| {
                    let view = DeletionView::from(&answer.into_inner());
                    match output {
                        Output::Json => print_json(&view),
                        Output::Text => {
                            println!(
                                "disconnected tenant {} from {} at {}; revocation: {}{}",
                                view.tenant_id,
                                view.provider,
                                view.disconnected_at.as_deref().unwrap_or("-"),
                                view.revocation,
                                if view.revocation_error.is_empty() {
                                    String::new()
                                } else {
                                    format!(" ({})", view.revocation_error)
                                }
                            );
                            Ok(())
                        }
                    }
                })
        }
    };
    match outcome {
        Ok(printed) => printed.map(|()| ExitCode::SUCCESS),
        Err(status) => {
            let failure = CallFailure::from(&status);
            match output {
                Output::Json => print_json(&serde_json::json!({ "error": failure }))?,
                Output::Text => eprintln!(
                    "token-vault: {} ({}): {}",
                    failure.code,
                    failure.reason.as_deref().unwrap_or("no reason given"),
                    failure.message
                ),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Every page of `request`, or the first `limit` connections.
async fn list(
    client: &mut Client,
    mut request: proto::ListConnectionsRequest,
    page_size: u32,
    limit: Option<usize>,
) -> Result<Vec<proto::GetConnectionResponse>, Status> {
    let mut all = Vec::new();
    loop {
        let remaining = limit.map(|l| l.saturating_sub(all.len()));
        if remaining == Some(0) {
            break;
        }
        // A smaller page when fewer are wanted.
        request.page_size = remaining.map_or(page_size, |r| r.min(page_size as usize) as u32);
        let page = client.list_connections(request.clone()).await?.into_inner();
        all.extend(page.connections);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    if let Some(limit) = limit {
        all.truncate(limit);
    }
    Ok(all)
}

/// Asks on standard error; anything but `y`/`yes` (or end of input) declines.
fn confirmed(tenant: &str, provider: &str, mut input: impl BufRead) -> anyhow::Result<bool> {
    let provider = if provider.is_empty() {
        "the default provider"
    } else {
        provider
    };
    eprint!("Disconnect tenant {tenant:?} from {provider}, revoking its refresh token? [y/N] ");
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// A failed call as printed: the gRPC code, the stable reason and the server's message.
#[derive(Debug, Serialize)]
pub struct CallFailure {
    pub code: &'static str,
    pub reason: Option<String>,
    pub message: String,
}

impl From<&Status> for CallFailure {
    fn from(status: &Status) -> Self {
        Self {
            code: code_name(status.code()),
            reason: status.get_error_details().error_info().map(|i| i.reason.clone()),
            message: with_causes(status),
        }
    }
}

/// The server's message, or for a call that never reached it (a refused TLS handshake, no
/// route) the transport error's causes, which tonic keeps out of the message.
fn with_causes(status: &Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The canonical upper-case name, as in grpc's status codes documentation.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A connection as printed (GetConnection's fields; no token is among them).
#[derive(Debug, Serialize)]
pub struct ConnectionView {
    pub tenant_id: String,
    pub provider: String,
    /// `active`, `reauthorization_required`, `disconnected`.
    pub status: String,
    pub status_reason: String,
    pub status_changed_at: Option<String>,
    pub scopes: Vec<String>,
    pub access_token_expires_at: Option<String>,
    pub has_refresh_token: bool,
    pub authorized_at: Option<String>,
    pub refreshed_at: Option<String>,
    pub refresh_token_expires_at: Option<String>,
    pub keepalive_due_at: Option<String>,
    pub last_error: String,
    pub last_error_at: Option<String>,
    pub disconnected_at: Option<String>,
}

impl From<&proto::GetConnectionResponse> for ConnectionView {
    fn from(c: &proto::GetConnectionResponse) -> Self {
        let status = ConnectionStatus::try_from(c.status)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("CONNECTION_STATUS_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|_| format!("unknown ({})", c.status));
        Self {
            tenant_id: c.tenant_id.clone(),
            provider: c.provider.clone(),
            status,
            status_reason: c.status_reason.clone(),
            status_changed_at: timestamp(c.status_changed_at.as_ref()),
            scopes: c.scopes.clone(),
            access_token_expires_at: timestamp(c.access_token_expires_at.as_ref()),
            has_refresh_token: c.has_refresh_token,
            authorized_at: timestamp(c.authorized_at.as_ref()),
            refreshed_at: timestamp(c.refreshed_at.as_ref()),
            refresh_token_expires_at: timestamp(c.refresh_token_expires_at.as_ref()),
            keepalive_due_at: timestamp(c.keepalive_due_at.as_ref()),
            last_error: c.last_error.clone(),
            last_error_at: timestamp(c.last_error_at.as_ref()),
            disconnected_at: timestamp(c.disconnected_at.as_ref()),
        }
    }
}

/// What DeleteConnection answered.
#[derive(Debug, Serialize)]
pub struct DeletionView {
    pub tenant_id: String,
    pub provider: String,
    /// `revoked`, `not_configured`, `failed`, `no_token`, `already_disconnected`.
    pub revocation: String,
    pub revocation_error: String,
    pub disconnected_at: Option<String>,
}

impl From<&proto::DeleteConnectionResponse> for DeletionView {
    fn from(d: &proto::DeleteConnectionResponse) -> Self {
        Self {
            tenant_id: d.tenant_id.clone(),
            provider: d.provider.clone(),
            revocation: Revocation::try_from(d.revocation)
                .map(|r| r.as_str_name().trim_start_matches("REVOCATION_").to_ascii_lowercase())
                .unwrap_or_else(|_| format!("unknown ({})", d.revocation)),
            revocation_error: d.revocation_error.clone(),
            disconnected_at: timestamp(d.disconnected_at.as_ref()),
        }
    }
}

/// RFC 3339, UTC.
fn timestamp(t: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = t?;
    let at = OffsetDateTime::from_unix_timestamp(t.seconds).ok()?;
    at.replace_nanosecond(u32::try_from(t.nanos).unwrap_or(0))
        .unwrap_or(at)
        .format(&Rfc3339)
        .ok()
}

fn render_list(views: &[ConnectionView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<32} {:<26} {:<22} last error",
        "provider", "tenant", "status", "access token expires"
    );
    for v in views {
        let _ = writeln!(
            out,
            "{:<16} {:<32} {:<26} {:<22} {}",
            v.provider,
            v.tenant_id,
            v.status,
            short_time(v.access_token_expires_at.as_deref()),
            if v.last_error.is_empty() { "-" } else { &v.last_error }
        );
    }
    let _ = writeln!(out, "{} connection(s)", views.len());
    out
}

fn short_time(t: Option<&str>) -> String {
    t.map(|t| t.split('.').next().unwrap_or(t).trim_end_matches('Z').replace('T', " "))
        .unwrap_or_else(|| "-".into())
}

fn render_one(v: &ConnectionView) -> String {
    let mut out = String::new();
    let opt = |t: &Option<String>| t.clone().unwrap_or_else(|| "-".into());
    let text = |s: &str| if s.is_empty() { "-".to_owned() } else { s.to_owned() };
    for (label, value) in [
        ("tenant", v.tenant_id.clone()),
        ("provider", v.provider.clone()),
        ("status", v.status.clone()),
        ("status reason", text(&v.status_reason)),
        ("status changed at", opt(&v.status_changed_at)),
        ("scopes", text(&v.scopes.join(" "))),
        ("access token expires", opt(&v.access_token_expires_at)),
        ("has refresh token", v.has_refresh_token.to_string()),
        ("refresh token expires", opt(&v.refresh_token_expires_at)),
        ("authorized at", opt(&v.authorized_at)),
        ("refreshed at", opt(&v.refreshed_at)),
        ("keep-alive due", opt(&v.keepalive_due_at)),
        ("last error", text(&v.last_error)),
        ("last error at", opt(&v.last_error_at)),
        ("disconnected at", opt(&v.disconnected_at)),
    ] {
        let _ = writeln!(out, "{label:<22} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_yes_confirms_a_deletion() {
        for (answer, expected) in [
            ("y\n", true),
            ("YES\n", true),
            ("n\n", false),
            ("", false),
            ("yep\n", false),
        ] {
            assert_eq!(confirmed("t", "p", answer.as_bytes()).unwrap(), expected, "{answer:?}");
        }
    }
}
