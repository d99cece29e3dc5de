# syntax=docker/dockerfile:1

# One image for all four services. The entrypoint is the `titanium` command;
# Kubernetes (k8s/) and docker-compose.yml pick the service with the arguments,
# e.g. `serve users --host 0.0.0.0 --port 8001`. No HEALTHCHECK: the Kubernetes
# probes call /health and /ready.
#
# tests/test_delivery.py runs this file's build-stage RUN lines in a fresh
# virtualenv and starts the ENTRYPOINT + CMD, so keep them plain shell.

# Both stages: the same exact patch release, so a rebuild of a commit gets the
# same Python (and the virtualenv's interpreter path holds in the runtime
# stage); .github/dependabot.yml proposes newer ones.
FROM python:3.11.14-slim-bookworm AS build

WORKDIR /src

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Exactly the locked set: --no-deps installs nothing the lock does not name,
# --only-binary keeps compilers out of the build, and `pip check` fails the
# build when the lock misses a dependency of a locked package.
COPY requirements.lock ./
RUN pip install --no-cache-dir --no-deps --only-binary=:all: --requirement requirements.lock \
    && pip check

# The project last, so a source change reuses the dependency layer above; the
# second `pip check` holds its requirements against the lock. Then pip and
# setuptools leave the virtualenv: the runtime stage copies it whole and needs
# no packaging tools.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && pip uninstall --yes pip setuptools

FROM python:3.11.14-slim-bookworm AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="titanium" \
      org.opencontainers.image.description="Titanium blog platform: api-gateway, auth-service, user-service, blog-service" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

# pip and setuptools come with the base image and are not needed at run time:
# removing them takes the packaging tools (and their advisories) out of the
# image. uid/gid 10001 is what the Kubernetes securityContext runs as; the data
# directory is the one writable path besides /tmp (SQLite files, local keys).
RUN python -m pip uninstall --yes pip setuptools wheel \
    && groupadd --system --gid 10001 titanium \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin titanium \
    && install --directory --owner=10001 --group=10001 --mode=0750 /var/lib/titanium

# Owned by root and so read-only for the service user.
COPY --from=build /opt/venv /opt/venv

# Bytecode was compiled at install time; the root filesystem is read-only in
# Kubernetes, so the interpreter must not try to write more.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/var/lib/titanium

WORKDIR /var/lib/titanium
USER 10001:10001

# api-gateway, user-service, auth-service, blog-service.
EXPOSE 8000 8001 8002 8005

ENTRYPOINT ["titanium"]
CMD ["serve", "gateway", "--host", "0.0.0.0"]
