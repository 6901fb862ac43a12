# Sapphire container image: `docker build -t sapphire .`
#
# Two stages. The builder compiles every dependency in a layer of its own that depends only on
# the Cargo manifests and Cargo.lock (empty stand-ins replace our sources), so a change to our
# code rebuilds only our crates. The runtime stage is distroless: glibc and libgcc, no shell,
# no package manager, user 65532.
#
# Images are named with their registry and pinned by tag, not by digest: a digest cannot be
# fetched and verified offline, where this file is validated. Both tags move with security
# updates (rust:1.95-bookworm across 1.95.x patch releases, distroless :nonroot with Debian
# 12 fixes); pin digests once CI can read them (`docker buildx imagetools inspect`).
# The builder is Debian 12 (bookworm) to match the runtime's glibc (distroless cc-debian12).
#
# The image runs with a read-only root filesystem: everything Sapphire writes (journals, run
# state) goes under SAPPHIRE_DATA_DIR, which Kubernetes mounts as a PVC or an emptyDir.

# The base images, overridable with --build-arg for a registry mirror or locally built
# equivalents (docs/runbook.md, "The image"); the defaults are the images this file is for.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# 1. Dependencies. Only the manifests and the lock file are copied, with an empty stand-in for
#    every source file the manifests require (each crate's lib.rs, the root main.rs, and every
#    declared [[bench]], [[bin]], [[example]] and [[test]] target, found by the awk below), so
#    this layer is reused until a manifest changes. A new workspace member needs its COPY line
#    here and its name in the loop; deploy/tests/test_dockerfile.py says so when one is missing.
COPY Cargo.toml Cargo.lock ./
COPY core/Cargo.toml core/Cargo.toml
COPY gateway/Cargo.toml gateway/Cargo.toml
COPY agents/Cargo.toml agents/Cargo.toml
COPY persistence/Cargo.toml persistence/Cargo.toml
COPY benches/Cargo.toml benches/Cargo.toml
RUN set -eux; \
    for crate in . core gateway agents persistence benches; do \
      if [ "$crate" = . ]; then echo src/main.rs; else echo "$crate/src/lib.rs"; fi; \
      awk -v crate="$crate" ' \
        function flush() { if (kind != "" && (name != "" || path != "")) print crate "/" (path != "" ? path : dir[kind] "/" name ".rs"); kind = "" } \
        BEGIN { dir["bench"] = "benches"; dir["test"] = "tests"; dir["example"] = "examples"; dir["bin"] = "src/bin" } \
        /^\[\[(bench|bin|example|test)\]\]/ { flush(); kind = substr($0, 3, length($0) - 4); name = ""; path = ""; next } \
        /^\[/ { flush(); next } \
        kind != "" && /^name *=/ { name = $0; sub(/^name *= *"/, "", name); sub(/".*/, "", name) } \
        kind != "" && /^path *=/ { path = $0; sub(/^path *= *"/, "", path); sub(/".*/, "", path) } \
        END { flush() }' "$crate/Cargo.toml"; \
    done | sed 's|^\./||' | sort -u > /tmp/stand-ins; \
    cat /tmp/stand-ins; \
    while read -r file; do \
      mkdir -p "$(dirname "$file")"; \
      case "$file" in */lib.rs) : > "$file" ;; *) echo 'fn main() {}' > "$file" ;; esac; \
    done < /tmp/stand-ins; \
    cargo build --release --locked --bin sapphire; \
    xargs rm -f < /tmp/stand-ins

# 2. Our code. COPY keeps the files' own modification times, which can be older than the
#    stand-ins compiled above; touching them makes cargo see the change and rebuild our crates.
COPY . .
RUN set -eux; \
    find . -path ./target -prune -o -name '*.rs' -exec touch {} +; \
    cargo build --release --locked --bin sapphire; \
    install -D -m 0755 target/release/sapphire /out/usr/local/bin/sapphire; \
    install -d -m 0750 /out/var/lib/sapphire

FROM ${RUNTIME_IMAGE} AS runtime
LABEL org.opencontainers.image.title="sapphire" \
      org.opencontainers.image.description="Sapphire: a low-latency crypto trading engine" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/usr/local/bin/sapphire /usr/local/bin/sapphire
# The data directory exists and belongs to the runtime user, so the image also works under
# `docker run` without a volume (but not with --read-only: then it must be a volume, as it is
# in Kubernetes, where one is mounted over it).
COPY --from=builder --chown=65532:65532 /out/var/lib/sapphire /var/lib/sapphire
# The API (dashboard, /healthz, /readyz, /metrics) listens on every interface in the container,
# so `docker run -p 8080:8080 IMAGE` then `curl localhost:8080/healthz` works; outside a container
# the binary's default stays 127.0.0.1:8080. This is a default, below the configuration file's
# `[api] bind`; SAPPHIRE_HTTP_BIND and --http-bind still win over both.
ENV SAPPHIRE_DATA_DIR=/var/lib/sapphire \
    SAPPHIRE_HTTP_BIND_DEFAULT=0.0.0.0:8080
EXPOSE 8080
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
WORKDIR /var/lib/sapphire
# No HEALTHCHECK: distroless has no shell or curl, and Kubernetes probes /healthz and /readyz.
ENTRYPOINT ["/usr/local/bin/sapphire"]
CMD ["run"]
