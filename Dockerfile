# syntax=docker/dockerfile:1
# The `picloud` binary in a Debian slim image; one image for every role
# (the command picks it: manager, gateway, executor). compose.yaml builds
# it. Build: docker build -t picloud .
#
# Stage 1 compiles in the official Rust image; stage 2 holds the binary
# only, run as an unprivileged user.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p picloud \
    && cp target/release/picloud /picloud

FROM debian:bookworm-slim
# curl: the health checks in compose.yaml; ca-certificates: scripts' HTTPS
# egress (http::get).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/picloud --create-home picloud
COPY --from=build /picloud /usr/local/bin/picloud
USER picloud
ENV PICLOUD_LISTEN=0.0.0.0:8080 \
    PICLOUD_LOG_FORMAT=json
EXPOSE 8080
# SIGTERM drains the role (in-flight requests and jobs finish); give it
# the time: `docker stop -t 80` / stop_grace_period in compose.yaml.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/picloud"]
CMD ["--help"]
