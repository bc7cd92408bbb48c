//! Compiles the public contract in `proto/` into Rust, and writes the descriptor set that the
//! server's reflection service hands to tools such as grpcurl.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build free of system packages: a fresh machine or container
    // needs nothing but cargo. An explicit PROTOC still wins, for distributions that prefer theirs.
    if env::var_os("PROTOC").is_none() {
        env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // The messages that carry tokens get a redacting `Debug` by hand (src/proto/redacted.rs).
        .skip_debug([
            ".tokenvault.v1.GetAccessTokenRequest",
            ".tokenvault.v1.GetAccessTokenResponse",
            ".tokenvault.v1.ImportConnectionRequest",
        ])
        .file_descriptor_set_path(out_dir.join("tokenvault_descriptor.bin"))
        .compile_protos(&["proto/tokenvault/v1/token_vault.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds the migrations at compile time; a new file in the folder must
    // rebuild the crate, or the binary would run without it.
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
