# orch in a container: `docker build -t orch .`, then `docker run -v orch-home:/orch orch`.
#
# Three builder stages with cargo-chef, so the dependency layer is rebuilt only when Cargo.toml
# or Cargo.lock change, not on every source edit.

FROM rust:1-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /app

# The recipe: the manifests and lock file, reduced to what building the dependencies needs.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only; this layer stays cached while the recipe is unchanged.
RUN cargo chef cook --release --recipe-path recipe.json
# The sources. migrations/ must be in the build context: sqlx::migrate! embeds the SQL files
# into the binary at compile time.
COPY . .
RUN cargo build --release --locked --bin orch

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --user-group --no-create-home --home-dir /orch --shell /usr/sbin/nologin orch \
    && mkdir -p /orch \
    && chown orch:orch /orch
COPY --from=builder /app/target/release/orch /usr/local/bin/orch
COPY --chown=orch:orch dags/ /orch/dags/
WORKDIR /orch
ENV ORCH_HOME=/orch
USER orch
# orch.db, logs/ and .orch/ are created here; dags/ is copied into a new named volume.
VOLUME /orch
# The web UI and API; `orch serve` listens on loopback only unless ORCH_API_TOKEN is set and
# ORCH_LISTEN (or --listen) says 0.0.0.0:8080.
EXPOSE 8080
ENTRYPOINT ["orch"]
CMD ["serve"]
