# syntax=docker/dockerfile:1
#
# mpsync in a container:
#   docker build -t mpsync .
#   docker run --rm mpsync --help
#
# The final image is distroless: the mpsync binary on top of what gcr.io/distroless/cc has (glibc,
# libgcc, CA certificates; no shell), running as the unprivileged user "nonroot" (uid 65532).
# mpsync links glibc; TLS is rustls with ring, so no OpenSSL.
#
# Most users want mpsync as the entrypoint of their own image, in front of their own program
# (see deploy/deployment-elect.yaml):
#
#   FROM registry.example.com/mpsync:0.1.0 AS mpsync
#   FROM your-base-image
#   COPY --from=mpsync /usr/local/bin/mpsync /usr/local/bin/mpsync
#   COPY worker /app/worker
#   ENTRYPOINT ["/usr/local/bin/mpsync", "elect", "my-leader", "--", "/app/worker"]
#
# mpsync is linked dynamically against glibc (and libgcc_s): copy it into a glibc image as new as
# Debian 12, Ubuntu 22.04 or UBI 9, not into Alpine (musl).

FROM rust:1-slim-bookworm AS builder
WORKDIR /build

# Dependencies first, against a dummy crate, so that editing src/ rebuilds only mpsync itself: this
# layer is reused as long as Cargo.toml and Cargo.lock do not change. --locked: build exactly the
# versions in Cargo.lock, or fail.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real source. touch: COPY keeps the files' timestamps, which may be older than the dummy build's
# outputs; without it cargo could decide the dummy binary is up to date and ship it. The version check
# fails on the dummy, which prints nothing.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && ./target/release/mpsync --version > version.txt \
    && grep -q '^mpsync ' version.txt

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /build/target/release/mpsync /usr/local/bin/mpsync
# Numeric, so that Kubernetes' runAsNonRoot can verify it: 65532 is distroless's "nonroot".
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mpsync"]
CMD ["--help"]
