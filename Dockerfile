# syntax=docker/dockerfile:1.7
# Every aitask image from one build; pick one with --target (make docker-build-<target>):
#   task-service, dispatcher, provider-volcengine, provider-openai, openai-door, upstream-simulator, envoy.
# The Python images share one runtime layer (the locked runtime dependencies, the generated
# stubs and every service package) and differ only in their command; the simulator's image
# adds its aiohttp.
# tests/deploy runs each target's CMD locally and checks its health, and
# deploy/check.py validates the Envoy config rendered below.

# The base images are build arguments: `make images-offline` (deploy/images/offline.sh) passes local ones made
# from Debian's packages where no image registry can be reached. PYTHON_BIN is PYTHON_IMAGE's interpreter (the
# venv links to it, so the build and runtime stages share the base).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG PYTHON_BIN=/usr/local/bin/python3.11
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG ENVOY_IMAGE=envoyproxy/envoy:v1.40.0
# OCI labels (make docker-build-* passes them): the release and the commit an image was built from.
ARG IMAGE_VERSION=dev
ARG IMAGE_REVISION=unknown

FROM ${UV_IMAGE} AS uv

# --- build: locked dependencies, generated stubs and descriptor set, Envoy's config
FROM ${PYTHON_IMAGE} AS build
ARG PYTHON_BIN
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PYTHON=${PYTHON_BIN}
WORKDIR /app
COPY pyproject.toml uv.lock ./
# The runtime dependencies and the `build` group (grpcio-tools, for the stubs). None of the default
# groups: `local` (Envoy's 100 MB wheel, honcho, aiohttp) and `dev` are for a checkout, not an image.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-default-groups --group build --no-install-project
COPY protos/ protos/
COPY scripts/protoc.py scripts/protoc.py
COPY gateway/ gateway/
# Stubs and descriptor set are not committed: generate them, in one step as `make protos` does.
RUN find protos -name '*.proto' -print0 | xargs -0 .venv/bin/python scripts/protoc.py
# The edge (gateway/edge.py): admin on loopback only, probes and metrics on their own listener (9902), JSON
# access logs, a per-IP limit for requests without credentials, the client address taken from the one proxy in
# front (Ingress or Gateway), a heap budget under the pod's 512 MiB limit.
RUN .venv/bin/python -m gateway.config --out /build/envoy.json --listen-host 0.0.0.0 --listen-port 8080 \
        --admin-host 127.0.0.1 --admin-port 9901 --task-service-host task-service --task-service-port 50051 \
        --openai-door-host openai-door --openai-door-port 8090 \
        --output-port 50055 \
        --cluster-type STRICT_DNS --descriptor /etc/aitask/aitask.pb \
        --probe-host 0.0.0.0 --probe-port 9902 --access-log --anonymous-rate-limit-per-ip 20 \
        --xff-trusted-hops 1 --max-heap-bytes 419430400
# grpcio-tools was needed only to generate the stubs: an exact sync without the group removes it.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-default-groups --no-install-project
# The simulator's aiohttp (the locked `simulator` group) beside the venv, for the upstream-simulator image alone.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv export --frozen --only-group simulator --no-hashes --no-emit-project --quiet -o /build/simulator.txt \
    && uv pip install --quiet --no-deps --target /app/simulator-packages -r /build/simulator.txt
COPY aitask_common/ aitask_common/
COPY task_service/ task_service/
COPY dispatcher_service/ dispatcher_service/
COPY provider_volcengine/ provider_volcengine/
COPY provider_openai/ provider_openai/
COPY openai_door/ openai_door/
COPY upstream_simulator/ upstream_simulator/
COPY deploy/docker/healthcheck.py healthcheck.py
# The root filesystem is read-only at run time: compile now, never at start-up.
RUN .venv/bin/python -m compileall -q aitask aitask_common task_service dispatcher_service \
        provider_volcengine provider_openai openai_door upstream_simulator

# --- runtime: what every Python service image holds; code owned by root, run as an unprivileged user
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 aitask \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin aitask
WORKDIR /app
COPY --from=build /app/.venv .venv
COPY --from=build /app/aitask aitask
COPY --from=build /app/aitask_common aitask_common
COPY --from=build /app/task_service task_service
COPY --from=build /app/dispatcher_service dispatcher_service
COPY --from=build /app/provider_volcengine provider_volcengine
COPY --from=build /app/provider_openai provider_openai
COPY --from=build /app/openai_door openai_door
COPY --from=build /app/upstream_simulator upstream_simulator
COPY --from=build /app/healthcheck.py healthcheck.py
# Containers listen on every interface; logs go to stdout only (the runtime collects them; no files to fill a
# volume).
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    METRICS_HOST=0.0.0.0 \
    LOG_FILE=off
ARG IMAGE_VERSION
ARG IMAGE_REVISION
LABEL org.opencontainers.image.title="aitask" \
      org.opencontainers.image.description="aitask: async AI-generation gateway services" \
      org.opencontainers.image.version="${IMAGE_VERSION}" \
      org.opencontainers.image.revision="${IMAGE_REVISION}"
USER 10001:10001

FROM runtime AS task-service
EXPOSE 50051 9464
CMD ["python", "-m", "task_service"]

FROM runtime AS dispatcher
EXPOSE 9465
CMD ["python", "-m", "dispatcher_service"]

FROM runtime AS provider-volcengine
EXPOSE 50061 9466
CMD ["python", "-m", "provider_volcengine"]

FROM runtime AS provider-openai
EXPOSE 50062 9467
CMD ["python", "-m", "provider_openai"]

FROM runtime AS openai-door
EXPOSE 8090 9469
CMD ["python", "-m", "openai_door"]

FROM runtime AS upstream-simulator
COPY --from=build /app/simulator-packages simulator-packages
ENV SIMULATOR_HOST=0.0.0.0 \
    PYTHONPATH=/app:/app/simulator-packages
EXPOSE 9100
CMD ["python", "-m", "upstream_simulator"]

# --- envoy: the official image with our config and descriptor set (Kubernetes mounts the
# same config from a ConfigMap over /etc/envoy).
FROM ${ENVOY_IMAGE} AS envoy
ARG IMAGE_VERSION
ARG IMAGE_REVISION
LABEL org.opencontainers.image.title="aitask-envoy" \
      org.opencontainers.image.description="aitask: Envoy edge (REST transcoding and native gRPC)" \
      org.opencontainers.image.version="${IMAGE_VERSION}" \
      org.opencontainers.image.revision="${IMAGE_REVISION}"
COPY --from=build /app/gateway/aitask.pb /etc/aitask/aitask.pb
COPY --from=build /build/envoy.json /etc/envoy/envoy.json
USER 101:101
EXPOSE 8080 9902
# Hot restart is for VMs; in a container a new pod replaces the old one.
CMD ["envoy", "-c", "/etc/envoy/envoy.json", "--disable-hot-restart", "--log-level", "info"]
