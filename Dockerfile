# Container image for token-vault: a multi-stage build that compiles the binary exactly as CI
# does (cargo --locked, default features, SQLX_OFFLINE) and ships it alone on distroless.
#
#   docker build -t token-vault:0.1.0 .
#   docker run --rm -e TOKEN_VAULT_CONFIG=/etc/token-vault/settings.toml ... token-vault:0.1.0
#
# Configuration comes from the file named by TOKEN_VAULT_CONFIG and TOKEN_VAULT_* variables
# (README.md, "Configuration"); the Helm chart in helm/token-vault sets both. Building needs no
# database (the committed .sqlx/ query data) and no system protoc (build.rs uses a vendored one).

# The toolchain CI uses; bump together with the machines' rustc (Cargo.toml's rust-version is the floor).
ARG RUST_VERSION=1.95.0

# --- chef: the Rust toolchain plus cargo-chef, which splits dependency builds into their own layer.
# Debian 12 (bookworm), like the runtime image, so the binary links against the same glibc.
FROM rust:${RUST_VERSION}-slim-bookworm AS chef
WORKDIR /src
RUN cargo install cargo-chef --version 0.1.78 --locked

# --- planner: reduces the workspace to a recipe (manifests, lockfile, cargo config). The recipe
# only changes when dependencies change, so the next stage's dependency layer stays cached.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- builder: dependencies first (cached), then the vault itself.
FROM chef AS builder
# .cargo/config.toml sets this too; stated here so the image never depends on that file's content.
ENV SQLX_OFFLINE=true
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin token-vault

# --- runtime: glibc, libgcc, CA certificates and a nonroot user; no shell, no package manager.
# The CA bundle matters: the vault calls providers over HTTPS with rustls-platform-verifier, which
# on Linux trusts the system store (/etc/ssl/certs), present in distroless.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="token-vault" \
      org.opencontainers.image.description="A gRPC credential vault for third-party OAuth 2.0" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /src/target/release/token-vault /usr/local/bin/token-vault
# Fails the build if the binary cannot load in this image (missing library, glibc too old).
RUN ["/usr/local/bin/token-vault", "--version"]
# mimalloc keeps freed pages 10 s before handing them back to the system (its default is 1 s):
# longer than the token cache's sweep interval (vault.cache_max_age, 5 s by default), so the
# pages a sweep frees are reused by the entries put after it instead of being returned and
# faulted in again. Under sustained cache misses that re-faulting took ~700 page faults a second
# and ~7 % more CPU per call (one 60 s run each way; docs/performance.md, the cold cache). With a
# longer cache_max_age, raise it above that age (60 s at most: the sweep runs at least once a
# minute). mimalloc reads it only as the process starts.
ENV MIMALLOC_PURGE_DELAY=10000
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# gRPC API, grpc.health.v1 and reflection, on plaintext HTTP/2.
EXPOSE 50051
# For plain Docker; Kubernetes ignores HEALTHCHECK and uses the chart's gRPC probes instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/token-vault", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/token-vault"]
CMD ["serve"]
