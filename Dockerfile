# syntax=docker/dockerfile:1
# One image for every Concord process: the four stream workers (the default entrypoint,
# `python -m concord.worker SERVICE`) and the one-shot `concord` commands (topics create,
# db migrate), which docker-compose.yml runs by overriding the entrypoint.
#
#   docker build -t concord:latest .
#   docker run --rm -e CONCORD_BOOTSTRAP_SERVERS=kafka:9092 concord:latest ingestion

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: resolve and install the package and its pinned dependencies into a venv --------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler only in this stage, for any dependency without a wheel for this platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# README.md* so the build does not break while the repository has no README yet.
COPY pyproject.toml README.md* ./
COPY services ./services
# A regular (not editable) install: the package, its SQL migrations and its package data
# land in the venv's site-packages; the Avro schemas are copied separately below. No extras:
# the `local` extra (the local stack's broker and PostgreSQL binaries, Faker) stays out.
RUN pip install --upgrade pip setuptools wheel \
    && pip install .

# --- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="concord" \
      org.opencontainers.image.description="Kafka stream processors for clinical data conflicts"

# CONCORD_SCHEMA_DIR: the Avro codec reads schemas/ from here (the package is installed in
# site-packages, away from the repository's schemas/ folder).
# CONCORD_WEB_HOST: /metrics and /health must be reachable from other containers.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONCORD_SCHEMA_DIR=/opt/concord/schemas \
    CONCORD_WEB_HOST=0.0.0.0

RUN groupadd --system --gid 10001 concord \
    && useradd --system --uid 10001 --gid concord --no-log-init \
       --home-dir /var/lib/concord --create-home --shell /usr/sbin/nologin concord

COPY --from=build /opt/venv /opt/venv
COPY schemas /opt/concord/schemas

# The working directory is the only writable place the workers need (Faust's data dir).
WORKDIR /var/lib/concord
USER concord:concord

EXPOSE 6066

ENTRYPOINT ["python", "-m", "concord.worker"]
