# syntax=docker/dockerfile:1
# The weft controller image: one static binary in an empty root.
# Build from the repository root:
#   docker build -f deploy/docker/controller.Dockerfile -t weft/weft-controller:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Static with glibc: the binary needs no shared library, no NSS and no
# /etc in the image (weft resolves names itself).
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-gnu -p weft-controller --bin weft-controller \
 && cp target/x86_64-unknown-linux-gnu/release/weft-controller /weft-controller

FROM scratch
COPY --from=build /weft-controller /weft-controller
# The proxy's uid and gid (2510); the pod spec sets them too.
USER 2510:2510
EXPOSE 8090 9990
ENTRYPOINT ["/weft-controller"]
CMD ["serve", "--mode", "kubernetes"]
