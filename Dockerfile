# One image for every ragbus service; docker-compose.yml runs one actor per container.
# The embedding model and the tiktoken vocabulary come inside the wheels: no download
# at start-up, no network needed beyond the bus, Qdrant and the LLM providers.
#
# Two stages: the builder installs ragbus into a virtualenv and trims it
# (deploy/image/slim_venv.py: no pip/setuptools, no test folders, bytecode only for
# what the services import); the runtime stage copies that venv alone onto a fresh
# base and runs as an unprivileged user. Every dependency ships a manylinux wheel, so
# neither stage needs a compiler. Size: README, "Image".
#
# The base is pinned by tag; pin its digest too where you build
# (docker buildx imagetools inspect python:3.11.11-slim-bookworm) with
#   docker build --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY actors actors
COPY subjects subjects
COPY runtime runtime
COPY config config
COPY deploy/image/slim_venv.py /tmp/slim_venv.py
# the venv lives at the same path in both stages: its scripts' #! lines stay right
RUN python -m venv /opt/ragbus \
    && /opt/ragbus/bin/pip install --no-compile . \
    && /opt/ragbus/bin/python /tmp/slim_venv.py

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    RAGBUS_DATA_DIR=/data \
    PATH=/opt/ragbus/bin:$PATH
COPY --from=builder /opt/ragbus /opt/ragbus
RUN useradd --create-home --uid 10001 ragbus \
    && mkdir -p /data \
    && chown ragbus /data
USER ragbus
WORKDIR /home/ragbus
VOLUME ["/data"]
# the bridge's page and WebSocket; every process's Prometheus /metrics
EXPOSE 8765 8766 9464
# each service's check is in docker-compose.yml (`ragbus health NAME`): one image, many roles
ENTRYPOINT ["ragbus"]
CMD ["--help"]
