# syntax=docker/dockerfile:1
# The weft injector image (the mutating admission webhook): one static
# binary in an empty root.
# Build from the repository root:
#   docker build -f deploy/docker/injector.Dockerfile -t weft/weft-injector:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-gnu -p weft-injector --bin weft-injector \
 && cp target/x86_64-unknown-linux-gnu/release/weft-injector /weft-injector

FROM scratch
COPY --from=build /weft-injector /weft-injector
USER 2510:2510
EXPOSE 9443 9990
ENTRYPOINT ["/weft-injector"]
