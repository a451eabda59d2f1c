# syntax=docker/dockerfile:1
# The data-plane images, two targets of one build:
#   docker build -f deploy/docker/proxy.Dockerfile --target proxy -t weft/weft-proxy:0.1.0 .
#   docker build -f deploy/docker/proxy.Dockerfile --target init  -t weft/weft-init:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-gnu -p weft-proxy --bin weft-proxy --bin weft-init \
 && cp target/x86_64-unknown-linux-gnu/release/weft-proxy target/x86_64-unknown-linux-gnu/release/weft-init /

# weft-init installs its rules with the iptables nft tools
# (iptables-nft-restore, ip6tables-nft-restore, and -save to verify). This
# stage collects exactly those tools, the xtables extensions they load, and
# the shared libraries all of them need, into /rootfs.
FROM debian:bookworm-slim AS iptables
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
RUN set -eu; \
    mkdir -p /rootfs/usr/sbin; \
    cp -a /usr/sbin/xtables-nft-multi /rootfs/usr/sbin/; \
    for tool in iptables-nft-restore iptables-nft-save ip6tables-nft-restore ip6tables-nft-save; do \
      ln -s xtables-nft-multi "/rootfs/usr/sbin/$tool"; \
    done; \
    xt=/usr/lib/x86_64-linux-gnu/xtables; \
    mkdir -p "/rootfs$xt"; cp -a "$xt"/. "/rootfs$xt/"; \
    for file in /usr/sbin/xtables-nft-multi "$xt"/*.so; do \
      ldd "$file" | awk '/=>/ { print $3 } /^\t\/lib/ { print $1 }'; \
    done | sort -u | while read -r lib; do \
      [ -n "$lib" ] && cp -L --parents "$lib" /rootfs/; \
    done; \
    # The dynamic loader itself.
    cp -L --parents /lib64/ld-linux-x86-64.so.2 /rootfs/

# The proxy: one static binary in an empty root, run as 2510 (its own
# traffic is exempt from redirection by that uid).
FROM scratch AS proxy
COPY --from=build /weft-proxy /weft-proxy
USER 2510:2510
EXPOSE 15140 15143 15191
ENTRYPOINT ["/weft-proxy"]

# weft-init: the static binary and the iptables nft tools. It runs as root
# (uid 0) because iptables needs it; the pod spec the injector writes drops
# every capability except NET_ADMIN and NET_RAW, and it exits once the rules
# are in place.
FROM scratch AS init
COPY --from=iptables /rootfs/ /
COPY --from=build /weft-init /usr/local/bin/weft-init
ENV PATH=/usr/local/bin:/usr/sbin
USER 0:0
ENTRYPOINT ["/usr/local/bin/weft-init"]
