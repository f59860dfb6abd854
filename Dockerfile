# The one application image: web, Celery worker and beat, and the SIP edge all run from it
# (docker-compose.yml chooses the command). Runtime dependencies only; no dev tools.

# Stage 1: the edge's SIP core compiled with mypyc (edge/native.py). It needs a C compiler and
# mypy, which the application image does without; only the compiled modules are carried over.
FROM python:3.11 AS edge-native
WORKDIR /build
COPY requirements.txt requirements-dev.txt ./
RUN pip install --no-cache-dir -r requirements-dev.txt
COPY pyproject.toml ./
COPY edge ./edge
RUN python -m edge.native_build build && python -m edge.native_build status

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=config.settings \
    TRUNKLINE_VAR_DIR=/app/var

RUN groupadd --system trunkline \
    && useradd --system --gid trunkline --home-dir /app --no-create-home --shell /usr/sbin/nologin trunkline

WORKDIR /app

# jemalloc, for the edge's --allocator jemalloc (edge/runtime/allocator.py): preloaded into the
# edge's process only, never into the others.
RUN apt-get update && apt-get install -y --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, so a code change does not reinstall them. Every pin has a manylinux wheel.
COPY requirements.txt .
RUN pip install -r requirements.txt

# Code stays owned by root (the app cannot rewrite itself); only var/ is the app's to write:
# static files, the beat schedule, the edge's CDR journal.
COPY . .
# The compiled core and its manifest (the sources it was built from are the ones just copied).
COPY --from=edge-native /build/edge/ ./edge/
# Settings refuse to load without SECRET_KEY when DEBUG is off; this key exists only in this step.
RUN SECRET_KEY=build-only DEBUG=0 python manage.py collectstatic --no-input --verbosity 0 \
    && chown -R trunkline:trunkline /app/var

USER trunkline

# 8000 web (behind a TLS proxy); 5060 SIP over UDP and TCP, 5061 SIP over TLS. The edge's control
# API (8081) is deliberately not exposed: docker-compose.yml publishes it on loopback only.
EXPOSE 8000 5060/udp 5060/tcp 5061/tcp

# The web process's check. The image is shared: docker-compose.yml gives the other services
# their own. Host "localhost" must be in ALLOWED_HOSTS.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:8000/healthz', headers={'Host': 'localhost'}), timeout=4)"]

CMD ["uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--lifespan", "off"]
