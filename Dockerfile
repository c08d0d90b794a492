# syntax=docker/dockerfile:1
#
# fulcrum in a container:
#   docker build -t fulcrum .
#   docker run -d --name fulcrum -p 8080:8080 -p 9901:9901 \
#     -v "$PWD/fulcrum.toml:/etc/fulcrum/fulcrum.toml:ro" fulcrum
#   docker kill --signal=HUP fulcrum      # reload
#   docker stop fulcrum                   # drains for runtime.shutdown_grace, then exits
#
# `docker stop` sends SIGKILL after 10 s unless given -t: the default config drains for 8 s;
# with a longer runtime.shutdown_grace, pass `docker stop -t <grace + 5>`.
#
# The image runs as an unprivileged user and checks itself with `fulcrum probe` against the
# admin listener's /healthz (no curl in the image). The admin listener must therefore be
# enabled, and reachable on 127.0.0.1 inside the container (a bind of 0.0.0.0 is fine).
#
# A profile-guided build (about 5 % less CPU per request and 2 MiB less memory; the README's
# "Performance"): `docker build --build-arg PGO=1 -t fulcrum .`. It runs benches/pgo.sh in
# the build stage: an instrumented build, a minute and a half of training on the stage's
# loopback by examples/pgo_train.rs, and the build that uses the profile. It takes about
# three times as long as the plain build and fetches the toolchain's llvm-tools with rustup.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
ARG PGO=0
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
# The caches keep the registry and compiled dependencies between builds; the binary is
# copied out of the cached target directory so the next stage can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "$PGO" = 1 ]; then \
      rustup component add llvm-tools \
      && bash benches/pgo.sh \
      && install -m 0755 target/pgo/release/fulcrum /usr/local/bin/fulcrum; \
    else \
      cargo build --release --locked --bin fulcrum \
      && install -m 0755 target/release/fulcrum /usr/local/bin/fulcrum; \
    fi

FROM debian:${DEBIAN_RELEASE}-slim
# No packages needed: the binary links only glibc, and probes its own health.
RUN groupadd --system --gid 10001 fulcrum \
 && useradd --system --uid 10001 --gid fulcrum --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fulcrum \
 && mkdir -p /etc/fulcrum
COPY --from=build /usr/local/bin/fulcrum /usr/local/bin/fulcrum
COPY config/container.toml /etc/fulcrum/fulcrum.toml
USER 10001:10001
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/fulcrum", "probe", "--admin", "127.0.0.1:9901", "--timeout", "3s"]
ENTRYPOINT ["/usr/local/bin/fulcrum", "--log-format", "json"]
CMD ["run", "--config", "/etc/fulcrum/fulcrum.toml"]
