# syntax=docker/dockerfile:1
#
# imagelock container image: a release build on the official Rust image, run on Debian slim
# as an unprivileged user. Build: docker build -t imagelock .
#
# Why Debian slim and not distroless: git2 is built with its "https" feature and without a
# vendored OpenSSL (Cargo.toml is not changed for the image), so the binary links libssl.so.3
# and libcrypto.so.3 dynamically, and libz-sys links the system libz.so.1. `ldd` on a build
# shows exactly: libssl.so.3, libcrypto.so.3, libz.so.1, libgcc_s.so.1, libm.so.6, libc.so.6.
# bookworm-slim has glibc, libgcc and zlib1g (Priority: required) and we add libssl3 and
# ca-certificates (OpenSSL and rustls both verify against /etc/ssl/certs). distroless/cc has
# libssl3, but zlib is not among its documented contents (cc-debian13 dropped it,
# GoogleContainerTools/distroless#1887), and a missing library would only show when the pod
# starts; slim with named packages fails at build time instead. libssh2 is vendored by libssh2-sys and libgit2 by git2, so neither is needed at
# run time. Builder and runtime are both bookworm, so the glibc the binary was linked
# against is the one it runs with.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
# pkg-config and libssl-dev for openssl-sys, zlib1g-dev for libz-sys. The full rust image
# already has them through buildpack-deps; naming them keeps the build from depending on
# that. gcc and perl (for aws-lc-sys) come with the image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The registry and target directories are BuildKit cache mounts, so a rebuild after a source
# change recompiles only imagelock. The binary is copied out of the cache mount in the same
# step because the mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin imagelock \
 && install -D -m 0755 target/release/imagelock /out/imagelock

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 imagelock \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/imagelock --create-home \
      --shell /usr/sbin/nologin imagelock \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/imagelock /etc/imagelock
COPY --from=builder /out/imagelock /usr/local/bin/imagelock
# libgit2 looks for $HOME/.ssh/known_hosts to check an SSH remote's host key; the Helm chart
# mounts one there (git.ssh.knownHosts).
ENV HOME=/home/imagelock
# Numeric, so that Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 65532:65532
WORKDIR /var/lib/imagelock
# 8081 admin (/healthz, /readyz, /metrics, /status), 8082 hooks (HTTP), 8443 webhook (HTTPS).
EXPOSE 8081 8082 8443
ENTRYPOINT ["imagelock"]
CMD ["serve", "--config", "/etc/imagelock/config.yaml"]
