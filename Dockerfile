# The gateway image. Build:
#   docker build -t <account>/<repo>:<tag> .                                  (slim: the package alone)
#   docker build --build-arg EXTRAS=examples -t <account>/<repo>:<tag>-examples .   (+ scikit-learn,
#     for endpoints/iris_classifier.py; the slim image cannot load that endpoint)
# Run (README "Docker and the update loop", or ./run.sh, which restarts it with backoff):
#   docker run --read-only --tmpfs /tmp --stop-timeout 30 -p 5002-5010:5002-5010 \
#     -v ai_vol:/aid_app/_cache -e BIS_ADMIN_TOKEN <account>/<repo>:<tag>
#
# The base is pinned to a patch release (bump it on purpose, not by a rebuild). Pinning to the
# digest as well (python:3.11.11-slim-bookworm@sha256:...) makes a rebuild byte-for-byte.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# -- build: the package and its dependencies in a venv; pip and its caches stay here -----------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY setup.py README.md ./
COPY bis_twisted ./bis_twisted
# the versions are bounded in setup.py, the one list of what the package needs
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# -- run: the venv, tini, and the files the gateway reads ---------------------------------------
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    AID_APP_DOCKER=Yes

# tini is PID 1: it forwards docker's SIGTERM to twistd and reaps orphans that endpoint
# servers leave behind (twistd only reaps the children it spawned).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/*

# The gateway runs unprivileged and writes only under _cache (logs, _data/gw_state_history.json),
# so the root filesystem may be read-only (docker run --read-only; Kubernetes
# readOnlyRootFilesystem) with a volume there and a tmpfs on /tmp. A new named volume mounted
# there takes this ownership. A volume the original image (which ran as root) filled is
# root-owned: hand it over once with
#   docker run --rm -v ai_vol:/v --entrypoint chown <account>/<repo> -R 10001:10001 /v
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin aid \
    && mkdir -p /aid_app/_cache \
    && chown -R 10001:10001 /aid_app/_cache

WORKDIR /aid_app
COPY --from=build /opt/venv /opt/venv
# only what the gateway reads at run time (.dockerignore keeps tests, bench and docs out too)
COPY bis.tac config_gateway.txt ./
COPY endpoints ./endpoints
USER 10001:10001

# 5002 is the gateway; endpoint servers take the next ports (5003-5010 with the README's
# `-p 5002-5010:5002-5010`), bound to 127.0.0.1 inside the container unless their HOST says so.
EXPOSE 5002

# Liveness of the gateway process (GET /health). Plain `docker run` only reports it
# (docker ps, docker inspect); run.sh restarts the container when the gateway exits.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BIS_PORT', '5002') + '/health', timeout=4)"]

# A stop takes up to 30 s: requests in flight get 10 s, their answers 10 s more, then each
# child its own 4 s drain before the KILL at 5 s (GatewayService.drain_timeout,
# Supervisor.killTime). Docker's default of 10 s would cut that short: stop with
# `docker stop -t 30` (run.sh passes --stop-timeout 30).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--"]
# --pidfile= : no twistd.pid, which the read-only /aid_app could not hold and which a
# restarted container would find stale
CMD ["twistd", "-n", "--pidfile=", "-y", "bis.tac"]
