# persona, built from this repository.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev \
    libssl-dev libsasl2-dev libzstd-dev zlib1g-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin persona

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libcurl4 \
    libssl3 libsasl2-2 libzstd1 zlib1g curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/persona /usr/local/bin/persona
COPY connect /etc/persona/connect
USER nobody
EXPOSE 8080
ENTRYPOINT ["persona"]
CMD ["serve"]
