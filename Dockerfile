# One image for every vmplane role; docker-compose.yml picks the subcommand.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p vmplane

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/vmplane /usr/local/bin/vmplane
VOLUME /data
ENTRYPOINT ["vmplane"]
