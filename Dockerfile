# reeld on Debian bookworm, in two stages. The package lists mirror
# scripts/deps.sh: the build stage installs its BUILD_PKGS, the runtime
# stage only the shared libraries build/reeld links against (libevent,
# libpq, libcurl, json-c, mbedTLS, cmark-gfm, pocketsphinx and its
# en-us model) plus ffmpeg. Keep them in step with it.
#
#   docker build -t reeld .
#   docker run -p 8080:8080 -e DATABASE_URL=postgresql://user:pass@db/reeld reeld
#
# The image holds no PostgreSQL: give it DATABASE_URL (without it reeld
# looks for the private cluster of `make run` under the data dir, which
# does not exist here). `reeld serve` applies the migrations at start.

FROM debian:bookworm AS build
ENV DEBIAN_FRONTEND=noninteractive
# BUILD_PKGS of scripts/deps.sh
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential pkg-config clang libclang-rt-14-dev libevent-dev libpq-dev \
      libcurl4-openssl-dev libjson-c-dev libmbedtls-dev node-llhttp libcmark-gfm-dev \
      libcmark-gfm-extensions-dev libpocketsphinx-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make -j"$(nproc)" && build/reeld --version

FROM debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive
# Runtime libraries of build/reeld, ffmpeg (media work), ca-certificates
# (outbound HTTPS: JWKS, providers) and curl (the HEALTHCHECK).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libevent-2.1-7 libevent-openssl-2.1-7 libpq5 libcurl4 libjson-c5 \
      libmbedtls14 libmbedcrypto7 libmbedx509-1 libcmark-gfm0.29.0.gfm.6 \
      libcmark-gfm-extensions0.29.0.gfm.6 libpocketsphinx3 libsphinxbase3 pocketsphinx-en-us \
      ffmpeg ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
# The binary finds its migrations in <bindir>/../share/reeld/schema.
COPY --from=build /src/build/reeld /usr/local/bin/reeld
COPY --from=build /src/schema /usr/local/share/reeld/schema
RUN useradd --system --home-dir /var/lib/reeld --shell /usr/sbin/nologin reeld \
 && mkdir -p /var/lib/reeld \
 && chown reeld:reeld /var/lib/reeld
ENV REELD_DATA_DIR=/var/lib/reeld \
    REELD_LISTEN=0.0.0.0:8080
VOLUME /var/lib/reeld
WORKDIR /var/lib/reeld
USER reeld
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["reeld"]
CMD ["serve"]
