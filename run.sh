#!/usr/bin/env bash
# The README's update loop: run the gateway container; when it exits (a remote
# POST /shutdown after a new image was pushed, or a crash) pull the newest image and run again.
#
#   BIS_IMAGE=<account>/<repo>:<tag> BIS_ADMIN_TOKEN=<secret> nohup ./run.sh &
#
# BIS_IMAGE              the image to run (required)
# BIS_ADMIN_TOKEN        passed to the container by name (`-e BIS_ADMIN_TOKEN`): docker reads the
#                        value from this script's environment, so it never shows on a command line.
#                        Without it the admin routes (/shutdown) answer only from inside the container.
# DOCKER                 the docker command (default `docker`). With sudo, keep the token:
#                        DOCKER='sudo --preserve-env=BIS_ADMIN_TOKEN docker'
# BIS_RESTART_DELAY      seconds before the first restart after a crash (default 5); each crash
#                        in a row doubles it up to BIS_RESTART_DELAY_MAX (default 300). A clean
#                        exit (status 0: /shutdown for an update) or a run that lasted
#                        BIS_STABLE_SECONDS (default 300) starts again after BIS_RESTART_DELAY.
# BIS_PULL_TIMEOUT       seconds a pull may take (default 120). A pull that fails (registry
#                        unreachable) keeps the image already here; with none yet, it is retried
#                        with the same backoff.
# BIS_STOP_TIMEOUT       seconds `docker stop` waits before it kills (default 30: the gateway's
#                        drain plus its children's)
# BIS_RUN_ONCE=1         run the container once and exit with its status (for tests)
# BIS_SLEEP              the sleep command (default `sleep`; tests record the delays)
set -u

DOCKER=${DOCKER:-docker}
BIS_SLEEP=${BIS_SLEEP:-sleep}
BIS_RESTART_DELAY=${BIS_RESTART_DELAY:-5}
BIS_RESTART_DELAY_MAX=${BIS_RESTART_DELAY_MAX:-300}
BIS_STABLE_SECONDS=${BIS_STABLE_SECONDS:-300}
BIS_PULL_TIMEOUT=${BIS_PULL_TIMEOUT:-120}
BIS_STOP_TIMEOUT=${BIS_STOP_TIMEOUT:-30}

say() { echo "run.sh: $(date '+%Y-%m-%d %H:%M:%S') $*" >&2; }

if [ -z "${BIS_IMAGE:-}" ]; then
  echo "run.sh: BIS_IMAGE is not set; run e.g. BIS_IMAGE=<account>/<repo>:<tag> ./run.sh" >&2
  exit 2
fi
if [ -z "${BIS_ADMIN_TOKEN:-}" ]; then
  echo "run.sh: BIS_ADMIN_TOKEN is not set: a remote POST /shutdown will be refused (403)" >&2
fi

# the newest image, or the one already here when the registry cannot be reached;
# fails only when there is no image at all
pull() {
  local limit=()
  if command -v timeout >/dev/null 2>&1; then
    limit=(timeout "$BIS_PULL_TIMEOUT")
  fi
  # shellcheck disable=SC2086  # DOCKER may be a command with arguments (sudo ...)
  if ${limit[@]+"${limit[@]}"} $DOCKER pull --quiet "$BIS_IMAGE" >/dev/null; then
    return 0
  fi
  # shellcheck disable=SC2086
  if $DOCKER image inspect "$BIS_IMAGE" >/dev/null 2>&1; then
    say "cannot pull $BIS_IMAGE; running the image already here"
    return 0
  fi
  say "cannot pull $BIS_IMAGE and there is no copy here"
  return 1
}

delay=$BIS_RESTART_DELAY
while true; do
  if pull; then
    started=$SECONDS
    # --rm: each run is a new container; without it every restart leaves a stopped one behind.
    # --pull=never: the pull above decided which image runs.
    # --read-only + --tmpfs /tmp: the gateway writes only to its cache volume.
    # shellcheck disable=SC2086
    $DOCKER run --rm --pull=never --read-only --tmpfs /tmp --stop-timeout "$BIS_STOP_TIMEOUT" \
      -p 5002-5010:5002-5010 -v ai_vol:/aid_app/_cache -e BIS_ADMIN_TOKEN "$BIS_IMAGE"
    status=$?
    lived=$((SECONDS - started))
    say "container exited with status $status after ${lived}s"
    if [ "${BIS_RUN_ONCE:-0}" = 1 ]; then
      exit "$status"
    fi
    if [ "$status" = 0 ] || [ "$lived" -ge "$BIS_STABLE_SECONDS" ]; then
      delay=$BIS_RESTART_DELAY
    fi
  elif [ "${BIS_RUN_ONCE:-0}" = 1 ]; then
    exit 1
  fi
  say "starting again in ${delay}s"
  $BIS_SLEEP "$delay"
  delay=$((delay * 2))
  if [ "$delay" -gt "$BIS_RESTART_DELAY_MAX" ]; then
    delay=$BIS_RESTART_DELAY_MAX
  fi
done
