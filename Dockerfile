# syntax=docker/dockerfile:1.7
# Streamscan images, one Dockerfile, two targets:
#   docker build --target operator -t streamscan/operator:dev .   (controller and gateway binaries)
#   docker build --target worker   -t streamscan/worker:dev .     (analysis server)
#
# TLS libraries: rdkafka's `ssl` feature links OpenSSL dynamically. The runtime base,
# distroless/cc-debian12, ships Debian 12's libssl3/libcrypto3 (security-patched with the base
# image), and the builder is Debian 12 too, so the versions match; we do not vendor OpenSSL.
# zlib (librdkafka's compression) is the one library distroless lacks: LIBZ_SYS_STATIC=1 makes
# libz-sys compile it into the binary. The build fails if a binary needs any other shared library.
# Everything else is Rust (rustls for HTTPS, zstd compiled in).

ARG RUST_VERSION=1.89
FROM rust:${RUST_VERSION}-bookworm AS build
# librdkafka's bundled build (rdkafka-sys, no cmake): a C toolchain, make, OpenSSL headers, pkg-config.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
ENV LIBZ_SYS_STATIC=1 \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
WORKDIR /src
COPY . .
# Dependencies are cached by BuildKit cache mounts (registry, git, target) instead of cargo-chef.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p streamscan-operator -p streamscan-gateway -p streamscan-worker \
      --bin streamscan-operator --bin streamscan-gateway --bin streamscan-worker \
 && mkdir -p /out \
 && cp target/release/streamscan-operator target/release/streamscan-gateway target/release/streamscan-worker /out/
# Refuse a binary that needs a shared library the runtime image lacks.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN for bin in /out/*; do \
      extra="$(ldd "$bin" | awk '{print $1}' | grep -Ev '^(linux-vdso\.so|/lib64/ld-linux|/lib/ld-linux|libc\.so|libm\.so|libgcc_s\.so|libssl\.so\.3|libcrypto\.so\.3|libdl\.so|libpthread\.so|librt\.so)' || true)"; \
      if [ -n "$extra" ]; then echo "$bin needs libraries missing from distroless/cc: $extra" >&2; exit 1; fi; \
    done
# The worker's data directory, owned by the nonroot user (a volume in Kubernetes; this keeps
# `docker run` working with a read-only root filesystem plus --tmpfs/-v for it).
RUN mkdir -p /data/var/lib/streamscan

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/streamscan-operator /out/streamscan-gateway /usr/local/bin/
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/streamscan-operator"]
CMD ["controller"]

FROM gcr.io/distroless/cc-debian12:nonroot AS worker
COPY --from=build /out/streamscan-worker /usr/local/bin/streamscan-worker
COPY --from=build --chown=65532:65532 /data/var/lib/streamscan /var/lib/streamscan
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/streamscan-worker"]
CMD ["serve"]
