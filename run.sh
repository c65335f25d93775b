#!/usr/bin/env bash
# The README's update loop: run the gateway container; when it exits (a remote
# POST /shutdown after a new image was pushed, or a crash) pull the newest image and run again.
#
#   BIS_IMAGE=<account>/<repo> BIS_ADMIN_TOKEN=<secret> nohup ./run.sh &
#
# BIS_IMAGE          the image to run (required)
# BIS_ADMIN_TOKEN    passed to the container by name (`-e BIS_ADMIN_TOKEN`): docker reads the
#                    value from this script's environment, so it never shows on a command line.
#                    Without it the admin routes (/shutdown) answer only from inside the container.
# DOCKER             the docker command (default `docker`). With sudo, keep the token:
#                    DOCKER='sudo --preserve-env=BIS_ADMIN_TOKEN docker'
# BIS_RESTART_DELAY  seconds between runs (default 5)
# BIS_RUN_ONCE=1     run the container once and exit with its status (for tests)
set -u

DOCKER=${DOCKER:-docker}
BIS_RESTART_DELAY=${BIS_RESTART_DELAY:-5}

if [ -z "${BIS_IMAGE:-}" ]; then
  echo "run.sh: BIS_IMAGE is not set; run e.g. BIS_IMAGE=<account>/<repo> ./run.sh" >&2
  exit 2
fi
if [ -z "${BIS_ADMIN_TOKEN:-}" ]; then
  echo "run.sh: BIS_ADMIN_TOKEN is not set: a remote POST /shutdown will be refused (403)" >&2
fi

while true; do
  # --rm: each run is a new container; without it every restart leaves a stopped one behind
  # shellcheck disable=SC2086  # DOCKER may be a command with arguments (sudo ...)
  $DOCKER run --rm --pull=always -p 5002-5010:5002-5010 -v ai_vol:/aid_app/_cache \
    -e BIS_ADMIN_TOKEN "$BIS_IMAGE"
  status=$?
  echo "run.sh: $(date '+%Y-%m-%d %H:%M:%S') container exited with status $status" >&2
  if [ "${BIS_RUN_ONCE:-0}" = 1 ]; then
    exit "$status"
  fi
  sleep "$BIS_RESTART_DELAY"
done
