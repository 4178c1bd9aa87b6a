# attache in a container: built in the official Rust image from the
# committed lockfile with the release profile (the same command as the
# README's release build), run from distroless: glibc, CA certificates, no
# shell, a numeric non-root user. attache writes nothing to disk, so the
# root filesystem can be read-only.
#
#   docker build -t attache .
#   docker run --read-only -v $PWD/config/examples:/etc/attache attache run -c /etc/attache/redis-ambassador.yaml

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p attache

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/attache /usr/local/bin/attache
# distroless' "nonroot" user, by number so that runAsNonRoot can verify it.
USER 65532:65532
# The admin port (/live, /startup, /ready, /metrics). Probes reach it on the
# pod IP: set `admin.listen: 0.0.0.0:9901` in the config.
EXPOSE 9901
ENTRYPOINT ["attache"]
CMD ["run", "-c", "/etc/attache/attache.yaml"]
