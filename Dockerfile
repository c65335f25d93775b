# The gateway image. Build:  docker build -t <account>/<repo> .
# Run (README):  docker run --pull=always -p 5002-5010:5002-5010 -v ai_vol:/aid_app/_cache \
#                  -e BIS_ADMIN_TOKEN <account>/<repo>
# or through ./run.sh, which restarts (and so updates) it after a remote POST /shutdown.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AID_APP_DOCKER=Yes

# tini is PID 1: it forwards docker's SIGTERM to twistd and reaps orphans that endpoint
# servers leave behind (twistd only reaps the children it spawned).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /aid_app

# the package first, so that editing an endpoint or the config keeps the pip layer cached
COPY setup.py README.md ./
COPY bis_twisted ./bis_twisted
RUN pip install --no-cache-dir ".[examples]"

COPY . .

# The gateway runs unprivileged and writes only under _cache (logs, _data/gw_state_history.json).
# A new named volume mounted there takes this ownership. A volume the original image (which
# ran as root) filled is root-owned: hand it over once with
#   docker run --rm -v ai_vol:/v --entrypoint chown <account>/<repo> -R 10001:10001 /v
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin aid \
    && mkdir -p /aid_app/_cache \
    && chown -R aid:aid /aid_app/_cache
USER aid

# 5002 is the gateway; endpoint servers take the next ports (5003-5010 with the README's
# `-p 5002-5010:5002-5010`), bound to 127.0.0.1 inside the container unless their HOST says so.
EXPOSE 5002

# Liveness of the gateway process (GET /health). Plain `docker run` only reports it
# (docker ps, docker inspect); run.sh restarts the container when the gateway exits.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BIS_PORT', '5002') + '/health', timeout=4)"]

ENTRYPOINT ["tini", "--"]
# --pidfile= : no twistd.pid, which /aid_app (root-owned) could not hold and which a
# restarted container would find stale
CMD ["twistd", "-n", "--pidfile=", "-y", "bis.tac"]
