//! The `token-vault` command: wires configuration to the library and decides nothing itself.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use token_vault::{config::Settings, startup, store, telemetry};

#[derive(Parser)]
#[command(
    name = "token-vault",
    version,
    about = "A credential vault for third-party OAuth 2.0"
)]
struct Cli {
    /// A TOML configuration file; TOKEN_VAULT_* environment variables override it.
    #[arg(long, short, env = "TOKEN_VAULT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (runs migrations first unless database.migrate_on_start is false).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Ask a running vault's grpc.health.v1 whether it is SERVING; exit 0 if so (a probe).
    Healthcheck {
        /// The address to ask.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
    },
    /// Key management.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random key as a keyring line `<id>:<base64>`, to append to the keyring file.
    Generate {
        /// The new key's id.
        #[arg(long)]
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("token-vault: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("token-vault: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keys(KeysCommand::Generate { id }) => {
            let (_, line) = token_vault::crypto::Keyring::generate_with_id(&id)?;
            print!("{}", line.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { addr } => Ok(if startup::probe_health(&addr).await? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Migrate => {
            let settings = Settings::load(cli.config.as_deref())?;
            let _telemetry = telemetry::init(&settings.log, &settings.telemetry)?;
            if settings.database.create_if_missing {
                store::Store::create_database_if_missing(&settings.database.url).await?;
            }
            let store = store::Store::connect_lazy(
                &settings.database.url,
                &store::PoolOptions {
                    max_connections: 1,
                    acquire_timeout: settings.database.acquire_timeout,
                },
            )?;
            store.migrate().await?;
            tracing::info!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => {
            let settings = Settings::load(cli.config.as_deref())?;
            // Dropped after the server stops, flushing buffered spans and metrics.
            let _telemetry = telemetry::init(&settings.log, &settings.telemetry)?;
            let app = startup::Application::build(settings).await?;
            app.run_until(startup::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
