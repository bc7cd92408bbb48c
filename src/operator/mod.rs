//! The operator's subcommands beside `serve`: `connections` (a client of a running vault's
//! connection RPCs, with the credentials an operator holds) and `doctor` (checks of a
//! deployment's configuration, database, keyring, TLS files and providers). Both print text by
//! default and one JSON document with `--output json`; neither ever prints a token or secret.

pub mod connections;
pub mod doctor;
mod grpc;
mod output;

pub use grpc::{Target, TOKEN_ENV};
pub use output::{print_failure, print_json, Output};
