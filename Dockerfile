# sessiongate: multi-stage build, small non-root runtime image.
#   docker build -t sessiongate .
#   docker run -p 8080:8080 -v $PWD/sessiongate.toml:/etc/sessiongate/sessiongate.toml:ro \
#       -e SESSIONGATE_SECRET_VALUE=... sessiongate
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sessiongate

FROM debian:bookworm-slim
# CA certificates: rediss:// verifies Redis against the system roots.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sessiongate \
    && mkdir -p /etc/sessiongate /var/lib/sessiongate \
    && chown sessiongate /var/lib/sessiongate
COPY --from=build /src/target/release/sessiongate /usr/local/bin/sessiongate
COPY config/sessiongate.toml /etc/sessiongate/sessiongate.toml
USER 10001
# The config is read from this path; mount your own over it.
ENV SESSIONGATE_CONFIG=/etc/sessiongate/sessiongate.toml
EXPOSE 8080
# Asks the admin listener (admin.listen, default 127.0.0.1:9090) for /healthz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["/usr/local/bin/sessiongate", "health"]
ENTRYPOINT ["/usr/local/bin/sessiongate"]
CMD ["run"]
