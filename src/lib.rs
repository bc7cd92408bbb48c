//! token-vault: the one place that holds an OAuth 2.0 client secret and every customer's
//! tokens, and hands out valid access tokens over gRPC, refreshing each connection exactly once
//! across all replicas.
//!
//! A request flows top to bottom: `api` (gRPC adapters) -> `vault` (the flows) -> `oauth`
//! (the provider), `store` (Postgres) and `crypto` (sealing at rest). `auth` stands in front of
//! `api` (who is calling, may it), and `listener` in front of both (how many connections and
//! streams anyone may hold before that is known); `audit` records what callers did. `startup`
//! wires them; `config` and `telemetry` serve all.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod connection_key;
pub mod crypto;
#[doc(hidden)]
// The fuzz targets' logic: compiled for the unit tests (which replay the corpus on stable) and
// for the fuzz crate (feature `fuzzing`), never into the service.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod keys;
mod layers;
pub mod listener;
pub mod metrics;
pub mod oauth;
pub mod operator;
pub mod reload;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod vault;

/// Code generated from `proto/tokenvault/v1/token_vault.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tokenvault.v1");

    mod redacted;

    /// The encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tokenvault_descriptor");
}
