# syntax=docker/dockerfile:1
# Every busbar service's image: the blog's, the shop's, the built-in event bus, and any other
# service crate in the workspace. The build arguments say which:
#   PACKAGE  the cargo package, e.g. posts
#   BIN      its binary, e.g. posts
#   PORT     the port it serves on by default (EXPOSE; the service listens on $PORT if set)
# Build from the repository root, the context: cargo needs every workspace member's manifest
# even to build one package.
#
#   docker build --build-arg PACKAGE=posts --build-arg BIN=posts --build-arg PORT=4000 \
#     -t ghcr.io/busbar-dev/posts .
#
# skaffold.yaml passes the same arguments for each image (docker.buildArgs), and
# xtask/tests/containers.rs holds them to `cargo metadata`, the charts and the manifests. The
# operator, which has no database, has its own operator/Dockerfile.

# Matches the workspace's toolchain (rustc 1.95); bookworm's glibc is the runtime's.
FROM rust:1.95.0-bookworm AS build
ARG PACKAGE
ARG BIN
ARG PORT
WORKDIR /src
COPY . .
# Cache mounts keep downloaded crates and compiled dependencies between builds, and the
# target directory's id is shared by all images, so dependencies compile once for the
# whole workspace. The binary is copied out because cache mounts are not image layers.
# It is installed under one name for every image: ENTRYPOINT cannot expand a build argument.
RUN --mount=type=cache,id=busbar-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=busbar-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=busbar-target,target=/src/target \
    : "${PACKAGE:?--build-arg PACKAGE=<cargo package> is required}" \
      "${BIN:?--build-arg BIN=<its binary> is required}" \
      "${PORT:?--build-arg PORT=<the port it serves on> is required}" \
    && cargo build --release --locked --package "$PACKAGE" --bin "$BIN" \
    && install -D -m 0755 "target/release/$BIN" /out/service \
    && mkdir /out/data

# glibc and libgcc only (SQLite is compiled in); runs as the numeric nonroot user so
# Kubernetes can verify runAsNonRoot.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG BIN
ARG PORT
LABEL org.opencontainers.image.source="https://github.com/busbar-dev/busbar" \
      org.opencontainers.image.title="${BIN}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/service /usr/local/bin/service
# The only place it writes: its SQLite database (with the root filesystem read-only,
# mount a volume here; in a cluster DATABASE_URL usually points at PostgreSQL instead).
# Working here also gives SQLite a writable fallback for its temporary files.
COPY --from=build --chown=65532:65532 /out/data /data
WORKDIR /data
ENV DATABASE_URL=sqlite:///data/${BIN}.db
USER 65532:65532
EXPOSE ${PORT}
ENTRYPOINT ["/usr/local/bin/service"]
