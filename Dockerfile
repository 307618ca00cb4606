# syntax=docker/dockerfile:1
# cdc-worker image: build with the Rust toolchain, run on debian-slim.
#   docker build -t cdc-worker .
#   docker run --rm -e DATABASE_URL=postgresql://... cdc-worker run

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
# The cache mounts keep the registry and target/ between builds; the binary is copied out of
# target/ because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cdc-worker \
    && cp target/release/cdc-worker /usr/local/bin/cdc-worker

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin cdc
COPY --from=build /usr/local/bin/cdc-worker /usr/local/bin/cdc-worker
COPY sql /usr/share/cdc-worker/sql
USER cdc
ENTRYPOINT ["/usr/local/bin/cdc-worker"]
CMD ["run"]
