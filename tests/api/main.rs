//! The integration suite: the real server on a random port, the generated gRPC client, a real
//! Postgres database per test, and a scripted authorization server over HTTP.

// In tests an unwrap is an assertion.
#![allow(clippy::unwrap_used)]

mod audit;
mod authorization;
mod callers;
mod client_crate;
mod client_secrets;
mod connection_counts;
mod discovery;
mod doctor;
mod errors;
mod events;
mod failover;
mod faulty_proxy;
mod feedback;
mod grant_safety;
mod helpers;
mod hostile;
mod import;
mod keepalive;
mod keys;
mod lifecycle_delete;
mod listener;
mod listing;
mod mock_http;
mod operator_cli;
#[path = "../support/otlp_collector.rs"]
mod otlp_collector;
mod pending;
mod postgres_pool;
mod private_postgres;
mod prometheus;
mod provider;
mod python_example;
mod query_plans;
mod refresh;
mod reliability;
mod reload;
mod replicas;
mod report;
mod secrets_in_logs;
mod service;
mod sqlite_store;
mod tcp_switch;
mod telemetry;
#[path = "../support/test_db.rs"]
mod test_db;
