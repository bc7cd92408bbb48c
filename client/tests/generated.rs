//! The stubs in `src/generated/` are checked in, so that building the crate needs neither protoc
//! nor the vault's repository. This test regenerates them from `proto/` at the repository root
//! and fails when they differ: a change to the contract must come with new stubs.
//!
//! To regenerate: `TOKEN_VAULT_CLIENT_REGENERATE=1 cargo test -p token-vault-client --test generated`.

use std::path::Path;

/// The messages that carry tokens: their `Debug` is written by hand (`src/proto.rs`), redacted.
const REDACTED_DEBUG: [&str; 3] = [
    ".tokenvault.v1.GetAccessTokenRequest",
    ".tokenvault.v1.GetAccessTokenResponse",
    ".tokenvault.v1.ImportConnectionRequest",
];

#[test]
fn the_checked_in_stubs_match_the_proto() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto_root = crate_dir.join("../proto");
    let out = std::env::temp_dir().join(format!("token-vault-client-stubs-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("a temporary directory");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("the vendored protoc");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .skip_debug(REDACTED_DEBUG)
        .out_dir(&out)
        .compile_with_config(
            config,
            &[proto_root.join("tokenvault/v1/token_vault.proto")],
            &[proto_root],
        )
        .expect("the proto compiles");
    let fresh = std::fs::read_to_string(out.join("tokenvault.v1.rs")).expect("generated stubs");
    let _ = std::fs::remove_dir_all(&out);

    let checked_in = crate_dir.join("src/generated/tokenvault.v1.rs");
    if std::env::var_os("TOKEN_VAULT_CLIENT_REGENERATE").is_some() {
        std::fs::write(&checked_in, &fresh).expect("write the stubs");
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == fresh,
        "client/src/generated/tokenvault.v1.rs is out of date with proto/: run \
         TOKEN_VAULT_CLIENT_REGENERATE=1 cargo test -p token-vault-client --test generated"
    );
}
