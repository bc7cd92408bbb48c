//! The `token-vault` command: wires configuration to the library and decides nothing itself.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use token_vault::{
    config::Settings,
    keys,
    operator::{self, connections::ConnectionsCommand, Output},
    startup, store, telemetry,
};

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
    /// `json`: one JSON document on standard output, for scripts (connections, doctor, keys status).
    #[arg(long, value_enum, default_value_t, global = true)]
    output: Output,
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
    /// See or disconnect connections of a running vault, over its gRPC API. A bearer token is
    /// read from --token-file or the TOKEN_VAULT_BEARER_TOKEN environment variable.
    Connections {
        #[command(flatten)]
        target: operator::Target,
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// Check this deployment: configuration, database and migrations, keyring, TLS files,
    /// providers' endpoints and clocks. One line per check; exits 1 if any fails.
    Doctor,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random key as a keyring line `<id>:<base64>`, to append to the keyring file.
    Generate {
        /// The new key's id.
        #[arg(long)]
        id: String,
        /// Mark the line `decrypt-only`: the key opens values but seals none until the marker
        /// is removed (the first step of a rotation; see docs/keys.md).
        #[arg(long)]
        decrypt_only: bool,
    },
    /// Re-seal every stored value under the active key, in short batches, while the vault
    /// serves. Run it once every replica has made the new key active; exits 1 if a value could
    /// not be re-sealed.
    Rewrap {
        /// Rows per transaction (default: keys.rewrap_batch_size).
        #[arg(long)]
        batch_size: Option<u32>,
    },
    /// Show how many stored values each key id still protects (read from the framing, nothing
    /// is decrypted). A key can be removed from the keyring once it protects none.
    Status,
}

/// mimalloc rather than the system allocator: the token cache frees and allocates ~1 KiB
/// values on every eviction, and glibc's per-thread arenas kept that freed memory, so the
/// process grew past what the bounded cache holds (measured by the scale scenario of
/// `scripts/bench`; docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("token-vault: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let output = cli.output;
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            operator::print_failure(output, &e);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Before anything can open a TLS connection (providers, or Postgres with sslmode=require).
    token_vault::startup::install_crypto_provider();
    match cli.command {
        Command::Keys(KeysCommand::Generate { id, decrypt_only }) => {
            let line = token_vault::crypto::Keyring::generate_line(&id, decrypt_only)?;
            print!("{}", line.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::Rewrap { batch_size }) => {
            let settings = Settings::load(cli.config.as_deref())?;
            let _telemetry = telemetry::init(&settings.log, &settings.telemetry)?;
            let keyring = keys::load_keyring(&settings.encryption, settings.mode)?.keyring;
            let store = admin_store(&settings)?;
            let options = keys::RewrapOptions {
                batch_size: batch_size.unwrap_or(settings.keys.rewrap_batch_size),
            };
            let report = keys::rewrap(&store, &keyring, &options).await?;
            println!(
                "re-sealed {} values under key {} ({} changed meanwhile and were left to the newer write; {} failed)",
                report.total_rewritten(),
                keyring.active().0,
                report.changed_meanwhile,
                report.failures.len()
            );
            for f in &report.failures {
                println!(
                    "  FAILED {} tenant {:?} provider {:?}: {}",
                    f.column.name(),
                    f.tenant_id,
                    f.provider,
                    f.error
                );
            }
            print!("{}", keys::key_usage(&store).await?.render(Some(&keyring)));
            Ok(if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Keys(KeysCommand::Status) => {
            let settings = Settings::load(cli.config.as_deref())?;
            // Logs go to stdout, which holds the one JSON document with `--output json`; the
            // rows say `(keyring not loaded)` where the text form's warning would.
            let _telemetry = match cli.output {
                Output::Text => Some(telemetry::init(&settings.log, &settings.telemetry)?),
                Output::Json => None,
            };
            // The counts need no key; the keyring only marks which ids are present.
            let keyring = keys::load_keyring(&settings.encryption, settings.mode)
                .map_err(|e| tracing::warn!(error = %e, "the keyring could not be loaded; showing counts only"))
                .ok()
                .map(|loaded| loaded.keyring);
            let usage = keys::key_usage(&admin_store(&settings)?).await?;
            match cli.output {
                Output::Json => operator::print_json(&serde_json::json!({ "keys": usage.rows(keyring.as_ref()) }))?,
                Output::Text => print!("{}", usage.render(keyring.as_ref())),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Connections { target, command } => {
            operator::connections::run(command, &target, cli.output, std::io::stdin().lock()).await
        }
        Command::Doctor => operator::doctor::run(cli.config.as_deref(), cli.output).await,
        Command::Healthcheck { addr } => Ok(if startup::probe_health(&addr).await? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Migrate => {
            let settings = Settings::load(cli.config.as_deref())?;
            let _telemetry = telemetry::init(&settings.log, &settings.telemetry)?;
            let store = startup::open_store(&settings.database, 1).await?;
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

/// A one-connection pool for the administrative commands (on SQLite, one reader and the
/// writer, each opened only when used).
fn admin_store(settings: &Settings) -> anyhow::Result<store::Store> {
    Ok(store::Store::connect_lazy(
        &settings.database.url,
        &store::PoolOptions {
            max_connections: 1,
            acquire_timeout: settings.database.acquire_timeout,
        },
    )?)
}
