# One image for every ragbus service; docker-compose.yml runs one actor per container.
# The embedding model and the tiktoken vocabulary come inside the wheels: no download
# at start-up, no network needed beyond the bus, Qdrant and the LLM providers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ORT_DISABLE_TELEMETRY=1 \
    RAGBUS_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY actors actors
COPY subjects subjects
COPY runtime runtime
COPY config config
RUN pip install . \
    && useradd --create-home --uid 10001 ragbus \
    && mkdir -p /data \
    && chown ragbus /data

USER ragbus
VOLUME ["/data"]
ENTRYPOINT ["ragbus"]
CMD ["--help"]
