# syntax=docker/dockerfile:1
# The herold-relay image: the relay binary on Debian bookworm, as a non-root
# user. The Helm chart (helm/herold) runs it with a read-only root filesystem
# and --config /etc/herold/config/config.toml.
#
#   docker build -t registry.example/herold/herold-relay:0.1.0 .
#
# The tag is the relay's crate version (Cargo.toml [workspace.package]),
# which is the chart's appVersion; never push `latest` for the chart to use.
#
# Build stage: the Rust release the repository pins (rust-toolchain.toml:
# 1.95.0; rustup in the image fetches it if the image's patch release
# differs). Its bookworm variant, so the binary links against the same glibc
# as the runtime stage below. No protoc is needed (protox compiles the .proto
# files) and no OpenSSL (rustls with ring).
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds
# (BuildKit); the binary is copied out of the cached target in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release -p herold-relay --locked \
 && install -D -m 0755 target/release/herold-relay /out/herold-relay

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="herold-relay" \
      org.opencontainers.image.description="Herold message relay node (QUIC, admin API, /metrics)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="EUPL-1.2"
# ca-certificates: for an https:// OTLP collector and TLS to other services.
# Not pinned to a Debian version (old ones vanish from the mirror); pin the
# base image by digest (RUNTIME_IMAGE=debian:bookworm-slim@sha256:...) for
# byte-for-byte rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid/gid (10001), the one the chart's securityContext names.
RUN groupadd --system --gid 10001 herold \
 && useradd --system --uid 10001 --gid herold --no-create-home \
      --home-dir /var/lib/herold --shell /usr/sbin/nologin herold \
 && install -d -o herold -g herold -m 0750 /var/lib/herold
COPY --from=build /out/herold-relay /usr/local/bin/herold-relay
USER 10001:10001
WORKDIR /var/lib/herold
# 7300/udp QUIC (devices), 7301/tcp the gRPC admin API, 7302/tcp /metrics,
# /healthz and /readyz. The relay binds them to 127.0.0.1 unless told
# otherwise (--listen, --admin-listen, --metrics-listen; the chart sets
# 0.0.0.0).
EXPOSE 7300/udp 7300/tcp 7301 7302
# SIGTERM drains (devices are told to reconnect elsewhere), within
# --drain-grace-secs.
STOPSIGNAL SIGTERM
ENTRYPOINT ["herold-relay"]
CMD ["--help"]
