# syntax=docker/dockerfile:1
# sagaflow: the release binary on Debian slim.
#
# Build stage: librdkafka is compiled from source by rdkafka-sys (its configure script and
# make, no cmake); the Rust image (Debian bookworm) carries gcc, make, perl, python3 and
# zlib's headers, which is all it needs. The migrations are embedded in the binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sagaflow \
 && cp target/release/sagaflow /usr/local/bin/sagaflow

# Runtime stage: the binary links zlib and glibc only; curl is for health checks.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home sagaflow
COPY --from=build /usr/local/bin/sagaflow /usr/local/bin/sagaflow
USER sagaflow
ENV SAGAFLOW_HTTP_ADDR=0.0.0.0:8080 \
    SAGAFLOW_LOG_FORMAT=json
EXPOSE 8080
# SIGTERM starts the graceful shutdown (SAGAFLOW_SHUTDOWN_TIMEOUT, 30 s by default).
STOPSIGNAL SIGTERM
ENTRYPOINT ["sagaflow"]
CMD ["serve"]
