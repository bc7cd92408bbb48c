//! `--output text|json`: text for people (the default), one JSON document on stdout for scripts.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Prints `value` as one pretty-printed JSON document on stdout.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A command that failed before it had anything to print (an unreadable file, a bad flag
/// value): with `--output json` the error is the one JSON document on stdout, so that a script
/// never has to parse text; in both forms it goes to stderr too.
pub fn print_failure(output: Output, error: &anyhow::Error) {
    if output == Output::Json {
        let _ = print_json(&serde_json::json!({ "error": { "message": format!("{error:#}") } }));
    }
    eprintln!("token-vault: {error:#}");
}
