# syntax=docker/dockerfile:1
#
# mpsync in a container:
#   docker build -t mpsync .
#   docker run --rm mpsync --help
#
# mpsync is built as one static executable: glibc linked in (-C target-feature=+crt-static), TLS by
# rustls with ring (no OpenSSL). It needs no C library and no other file at run time, so it runs in
# any Linux image of its CPU architecture, glibc or musl, with or without a shell. The final image is
# distroless/static: that executable, CA certificates (for kubeconfigs that name no certificate
# authority), the unprivileged user "nonroot" (uid 65532), and no shell.
#
# Most users want mpsync as the entrypoint of their own image, in front of their own program (see
# deploy/deployment-elect.yaml). The same COPY works into any base image:
#
#   FROM registry.example.com/mpsync:0.1.0 AS mpsync
#
#   FROM alpine:3.20            # or debian:12-slim, ubuntu:24.04, ubi9/ubi-minimal, busybox, ...
#   COPY --from=mpsync /usr/local/bin/mpsync /usr/local/bin/mpsync
#   COPY worker /app/worker
#   ENTRYPOINT ["/usr/local/bin/mpsync", "elect", "my-leader", "--", "/app/worker"]
#
#   FROM gcr.io/distroless/static-debian12:nonroot      # or scratch
#   COPY --from=mpsync /usr/local/bin/mpsync /usr/local/bin/mpsync
#   COPY worker /app/worker
#   ENTRYPOINT ["/usr/local/bin/mpsync", "elect", "my-leader", "--", "/app/worker"]
#
# What mpsync needs from the image at run time:
# - in a pod, nothing: the service account's ca.crt and token are mounted, the API server is an IP;
# - with a kubeconfig that carries certificate-authority(-data) or insecure-skip-tls-verify, nothing
#   but that kubeconfig (and the CA file it names);
# - with a kubeconfig that names no CA: a CA bundle (/etc/ssl/certs/ca-certificates.crt, or
#   SSL_CERT_FILE; scratch has none, distroless/static has one);
# - host names resolve through /etc/hosts and DNS (/etc/resolv.conf), which container runtimes mount.

FROM rust:1-slim-bookworm AS builder
WORKDIR /build

# Static, for the builder's own architecture. RUSTFLAGS with --target reaches mpsync and its
# dependencies only; build scripts and proc-macros stay dynamic, as they must.
ENV RUSTFLAGS="-C target-feature=+crt-static"

# Dependencies first, against a dummy crate, so that editing src/ rebuilds only mpsync itself: this
# layer is reused as long as Cargo.toml and Cargo.lock do not change. --locked: build exactly the
# versions in Cargo.lock, or fail.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --target "$(rustc --print host-tuple)" \
    && rm -rf src

# The real source. touch: COPY keeps the files' timestamps, which may be older than the dummy build's
# outputs; without it cargo could decide the dummy binary is up to date and ship it. The check runs
# the result in an empty root: it fails on a dynamic executable (no loader there) and on the dummy
# (which prints nothing).
COPY src ./src
RUN target="$(rustc --print host-tuple)" \
    && touch src/main.rs src/lib.rs \
    && cargo build --release --locked --target "$target" \
    && mkdir /empty-root \
    && cp "target/$target/release/mpsync" /empty-root/mpsync \
    && chroot /empty-root /mpsync --version > version.txt \
    && grep -q '^mpsync ' version.txt \
    && mv /empty-root/mpsync /mpsync

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /mpsync /usr/local/bin/mpsync
# Numeric, so that Kubernetes' runAsNonRoot can verify it: 65532 is distroless's "nonroot".
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mpsync"]
CMD ["--help"]
