# fhir-fence container image: one static binary and a CA bundle on an empty base, running as a
# numeric non-root user. No shell, no package manager, nothing else.
#
# With a registry (the Rust image is pulled, the binary built inside it):
#   docker build -t fhir-fence .
# (BuildKit, Docker's default builder since 23.0, buildah or podman: they build only the stages
# the image needs, and understand COPY --chmod.)
#
# Offline, from a static binary cargo built beforehand (what scripts/image and CI do; the Rust
# stage is never used, so nothing is pulled):
#   RUSTFLAGS='-C target-feature=+crt-static' cargo build --locked --profile image \
#       --target x86_64-unknown-linux-gnu --bin fhir-fence
#   mkdir -p target/image-context
#   cp target/x86_64-unknown-linux-gnu/image/fhir-fence /etc/ssl/certs/ca-certificates.crt target/image-context/
#   buildah build --build-arg FILES=prebuilt -t fhir-fence .
#
# The `image` cargo profile is the release build (fat LTO, one codegen unit) without debug info
# and symbols.

ARG RUST_VERSION=1.95
# Where the binary and the CA bundle come from: `build` (the Rust stage below) or `prebuilt`
# (target/image-context/ in the build context, filled by scripts/image).
ARG FILES=build

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# A static glibc binary (the final stage has no libc); build scripts and proc macros are
# built for the host without the flag, which is why the target is named.
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN target="$(uname -m)-unknown-linux-gnu" \
 && cargo build --locked --profile image --target "$target" --bin fhir-fence \
 && mkdir -p /out \
 && cp "target/$target/image/fhir-fence" /etc/ssl/certs/ca-certificates.crt /out/

FROM scratch AS prebuilt
COPY target/image-context/fhir-fence target/image-context/ca-certificates.crt /out/

# The stage chosen by FILES; the other one is never built (nothing pulled offline).
FROM ${FILES} AS files

FROM scratch
ARG VERSION=0.1.0
# Where the sources live (set it to your fork's URL when you publish the image).
ARG SOURCE=https://github.com/fhir-fence/fhir-fence
LABEL org.opencontainers.image.title="fhir-fence" \
      org.opencontainers.image.description="A sidecar proxy that enforces tenant isolation in front of an unmodified FHIR R4 server" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=files --chmod=0444 /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=files --chmod=0555 /out/fhir-fence /usr/local/bin/fhir-fence
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# 65532: the "nonroot" uid of distroless images; numeric, so runAsNonRoot can verify it
# without an /etc/passwd.
USER 65532:65532
# The public FHIR listener and the admin listener (/healthz, /readyz, /metrics) as in
# deploy/base/fence.toml.
EXPOSE 8080 9090
ENTRYPOINT ["fhir-fence"]
CMD ["serve", "--config", "/etc/fhir-fence/fence.toml"]
