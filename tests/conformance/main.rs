//! The conformance suite: the vault's gRPC API driven end to end against a real, independently
//! written OAuth 2.0 server, `oidc-provider` (tests/conformance/server/server.mjs), set up to
//! behave like Understory's Ory Hydra: it rotates refresh tokens, revokes a grant whose refresh
//! token is reused, holds one auth method per client, and takes the audience as RFC 8707
//! `resource`. Each test starts its own server on a free port and its own vault (in-process, or
//! as `token-vault` processes) on its own database; the customer's browser is headless.
//!
//! Run alone with `cargo nextest run --test conformance`; needs Node.js and `npm ci`.

// In tests an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

mod authserver;
mod browser;
mod disconnect;
mod failures;
mod flow;
mod harness;
mod keepalive;
mod outage;
mod presets;
mod refresh;
mod replicas;
mod revocation;
#[path = "../support/test_db.rs"]
mod test_db;
