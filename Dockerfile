# syntax=docker/dockerfile:1
#
# Palisade's images, from one build:
#   docker build -t palisade .                         the sidecar and control plane (the last stage, `final`)
#   docker build --target init -t palisade-init .      the injected init container: the same binary with iptables
#   docker build --build-arg PGO=0 ...                 a plain `cargo build --release` instead of the
#                                                      profile-guided build (faster to build, about a third
#                                                      more CPU per request; docs/benchmarks.md)
#
# The binary is the one the benchmarks measure: scripts/build-pgo.sh trains it with bench/pair.sh (it
# installs nginx and oha for that, so the builder needs the network to Debian and crates.io).

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS builder
ARG PGO=1
# cmake: pingora's zlib-ng; curl and procps: the PGO training's health checks.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake curl procps \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN if [ "$PGO" = "1" ]; then \
        scripts/build-pgo.sh && cp target/pgo/release/palisade /palisade; \
    else \
        cargo build --release --locked && cp target/release/palisade /palisade; \
    fi \
    && /palisade --version

# The init container: `palisade init-net` needs iptables (nft and legacy tools, both families). The pod
# runs it as root with NET_ADMIN and NET_RAW only and a read-only root filesystem (injection mounts a
# small tmpfs on /run for iptables-legacy's lock).
FROM debian:${DEBIAN}-slim AS init
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /palisade /usr/local/bin/palisade
# The image's own user is unprivileged; the injected pod spec runs init-net as root with two capabilities.
USER 65534:65534
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/palisade"]
CMD ["init-net", "--help"]

# The sidecar and the control plane: the binary and its C library only (distroless), uid 2102, nothing
# writable needed (configuration comes from files or PALISADE_CONFIG; logs and events go to stdout/stderr).
FROM gcr.io/distroless/cc-debian12:nonroot AS final
COPY --from=builder /palisade /usr/local/bin/palisade
USER 2102:2102
EXPOSE 15000 15001 15006
# Kubernetes probes /live and /ready on the admin port; the image has no shell for a Docker HEALTHCHECK.
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/palisade"]
CMD ["sidecar"]
