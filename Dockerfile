# The fleet's one image: `reencrypt worker`, `reencrypt exporter`, and every operator command
# (`docker compose run --rm cli sweep status`). Configuration comes only from the environment
# (REENCRYPT_STORE, REENCRYPT_KEYS, REDIS_URL, ...: see README "Configuration"); credentials for
# Azure from DefaultAzureCredential (workload identity in Kubernetes), never from the image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY tracker_reencrypt ./tracker_reencrypt
COPY worker ./worker
COPY coordinator ./coordinator
RUN pip install . \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin reencrypt \
    && mkdir -p /data \
    && chown reencrypt /data

USER 10001
# Embedded services' state (only used without REDIS_URL) and the local store of the compose rig.
ENV REENCRYPT_HOME=/home/reencrypt/.reencrypt
VOLUME ["/data"]

# `reencrypt worker` execs Celery, so SIGTERM reaches Celery's main process directly and starts
# a warm shutdown: every pool process finishes the batch in hand, commits it, and exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["reencrypt"]
CMD ["--help"]
