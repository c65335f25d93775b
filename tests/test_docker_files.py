"""Dockerfile and run.sh: what can be checked without a Docker engine. run.sh runs for real
against a fake ``docker`` that records its arguments; the Dockerfile is parsed, and its
HEALTHCHECK command is run against a local HTTP server."""

import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_SH = os.path.join(ROOT, 'run.sh')
TOKEN = 'tok-3f9a-never-on-argv'
README_ARGS = ['run', '--rm', '--pull=never', '--read-only', '--tmpfs', '/tmp', '--stop-timeout', '30',
               '-p', '5002-5010:5002-5010', '-v', 'ai_vol:/aid_app/_cache', '-e', 'BIS_ADMIN_TOKEN']

FAKE_DOCKER = """#!/bin/sh
# records one call: its arguments one per line, then what it saw of the token variable
{
  for arg in "$@"; do printf '%s\\n' "$arg"; done
  printf -- '--- token: %s\\n' "${BIS_ADMIN_TOKEN-<unset>}"
} >> "$FAKE_DOCKER_LOG"
case "$1" in
  pull) exit "${FAKE_PULL_EXIT:-0}" ;;      # 1: the registry cannot be reached
  image) exit "${FAKE_IMAGE_EXIT:-0}" ;;    # image inspect; 1: no copy here
esac
runs=$(grep -c -x -- 'run' "$FAKE_DOCKER_LOG")
if [ -n "${FAKE_DOCKER_STOP_AFTER:-}" ] && [ "$runs" -ge "$FAKE_DOCKER_STOP_AFTER" ]; then
  kill -TERM "$PPID"   # stop run.sh's endless loop
fi
exit "${FAKE_DOCKER_EXIT:-0}"
"""

FAKE_SLEEP = """#!/bin/sh
# records the delay instead of waiting; stops run.sh after FAKE_SLEEP_STOP_AFTER sleeps
echo "$1" >> "$FAKE_SLEEP_LOG"
if [ -n "${FAKE_SLEEP_STOP_AFTER:-}" ] && [ "$(wc -l < "$FAKE_SLEEP_LOG")" -ge "$FAKE_SLEEP_STOP_AFTER" ]; then
  kill -TERM "$PPID"
fi
"""


@pytest.fixture
def fake_docker(tmp_path):
    """A ``docker`` first on PATH and a ``sleep`` that records; ``calls()`` returns
    [(argv, token seen)] per docker call, ``runs()`` the argv of each ``docker run``,
    ``sleeps()`` the delays run.sh asked for."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    script = bin_dir / 'docker'
    script.write_text(FAKE_DOCKER)
    script.chmod(0o755)
    sleeper = bin_dir / 'fake_sleep'
    sleeper.write_text(FAKE_SLEEP)
    sleeper.chmod(0o755)
    log = tmp_path / 'docker_calls.txt'
    sleep_log = tmp_path / 'sleeps.txt'

    class Fake:
        path = str(script)
        env = {'PATH': '{}{}{}'.format(bin_dir, os.pathsep, os.environ.get('PATH', '')),
               'FAKE_DOCKER_LOG': str(log), 'HOME': str(tmp_path), 'BIS_SLEEP': str(sleeper),
               'FAKE_SLEEP_LOG': str(sleep_log)}

        @staticmethod
        def calls():
            if not log.exists():
                return []
            found, argv = [], []
            for line in log.read_text().splitlines():
                if line.startswith('--- token: '):
                    found.append((argv, line[len('--- token: '):]))
                    argv = []
                else:
                    argv.append(line)
            return found

        @classmethod
        def runs(cls):
            return [argv for argv, _ in cls.calls() if argv[:1] == ['run']]

        @staticmethod
        def sleeps():
            return [int(x) for x in sleep_log.read_text().split()] if sleep_log.exists() else []

    return Fake


def run_sh(fake, timeout=10, **env):
    return subprocess.run(['bash', RUN_SH], env=dict(fake.env, **env), capture_output=True,
                          text=True, timeout=timeout)


def test_run_sh_pulls_then_runs_the_readme_command_with_the_token_passed_by_name(fake_docker):
    done = run_sh(fake_docker, BIS_IMAGE='acme/bis:1.2', BIS_ADMIN_TOKEN=TOKEN, BIS_RUN_ONCE='1')
    assert done.returncode == 0, done.stderr
    [(pull, _), (argv, token_seen)] = fake_docker.calls()
    assert pull == ['pull', '--quiet', 'acme/bis:1.2']
    assert argv == README_ARGS + ['acme/bis:1.2']
    assert not any(TOKEN in arg for arg in argv)
    assert token_seen == TOKEN  # docker reads the value from its environment
    assert TOKEN not in done.stdout + done.stderr


def test_run_sh_passes_on_the_container_exit_status(fake_docker):
    done = run_sh(fake_docker, BIS_IMAGE='acme/bis', BIS_RUN_ONCE='1', FAKE_DOCKER_EXIT='7')
    assert done.returncode == 7
    assert 'exited with status 7' in done.stderr


def test_run_sh_without_image_says_what_to_set_and_runs_nothing(fake_docker):
    done = run_sh(fake_docker, BIS_RUN_ONCE='1')
    assert done.returncode == 2
    assert 'BIS_IMAGE' in done.stderr
    assert fake_docker.calls() == []


def test_run_sh_without_token_warns_and_still_runs(fake_docker):
    done = run_sh(fake_docker, BIS_IMAGE='acme/bis', BIS_RUN_ONCE='1')
    assert done.returncode == 0
    assert 'BIS_ADMIN_TOKEN is not set' in done.stderr
    argv, token_seen = fake_docker.calls()[-1]
    assert argv[-1] == 'acme/bis' and token_seen == '<unset>'


def test_run_sh_uses_the_docker_command_from_DOCKER(fake_docker, tmp_path):
    env = dict(fake_docker.env, PATH='/usr/bin:/bin')  # no `docker` on PATH at all
    done = subprocess.run(['bash', RUN_SH], env=dict(env, DOCKER=fake_docker.path,
                                                      BIS_IMAGE='acme/bis', BIS_RUN_ONCE='1'),
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert len(fake_docker.runs()) == 1


def test_run_sh_runs_the_container_again_after_it_exits(fake_docker):
    done = run_sh(fake_docker, BIS_IMAGE='acme/bis', FAKE_DOCKER_STOP_AFTER='3')
    assert fake_docker.runs() == [README_ARGS + ['acme/bis']] * 3
    assert [argv[0] for argv, _ in fake_docker.calls()] == ['pull', 'run'] * 3  # a pull before each run
    assert done.returncode != 0  # ended by the fake's SIGTERM, not by itself


def test_run_sh_backs_off_while_the_container_keeps_crashing(fake_docker):
    run_sh(fake_docker, BIS_IMAGE='acme/bis', FAKE_DOCKER_EXIT='1', BIS_RESTART_DELAY='5',
           BIS_RESTART_DELAY_MAX='60', FAKE_SLEEP_STOP_AFTER='6')
    assert fake_docker.sleeps() == [5, 10, 20, 40, 60, 60]


def test_run_sh_restarts_promptly_after_a_clean_exit(fake_docker):
    run_sh(fake_docker, BIS_IMAGE='acme/bis', FAKE_DOCKER_EXIT='0', BIS_RESTART_DELAY='5',
           FAKE_SLEEP_STOP_AFTER='3')
    assert fake_docker.sleeps() == [5, 5, 5]  # /shutdown for an update is no crash


def test_run_sh_keeps_the_last_image_when_the_registry_is_unreachable(fake_docker):
    done = run_sh(fake_docker, BIS_IMAGE='acme/bis', BIS_RUN_ONCE='1', FAKE_PULL_EXIT='1')
    assert done.returncode == 0, done.stderr
    assert [argv[:2] for argv, _ in fake_docker.calls()] == [['pull', '--quiet'], ['image', 'inspect'], ['run', '--rm']]
    assert fake_docker.runs() == [README_ARGS + ['acme/bis']]  # --pull=never: docker asks no registry
    assert 'running the image already here' in done.stderr


def test_run_sh_without_registry_or_image_retries_with_backoff_and_runs_nothing(fake_docker):
    done = run_sh(fake_docker, BIS_IMAGE='acme/bis', FAKE_PULL_EXIT='1', FAKE_IMAGE_EXIT='1',
                  BIS_RESTART_DELAY='2', FAKE_SLEEP_STOP_AFTER='3')
    assert fake_docker.runs() == []
    assert fake_docker.sleeps() == [2, 4, 8]
    assert 'no copy here' in done.stderr


def test_run_sh_is_executable_and_valid_bash():
    assert os.access(RUN_SH, os.X_OK)
    subprocess.run(['bash', '-n', RUN_SH], check=True)


def dockerfile_instructions():
    """[(INSTRUCTION, arguments)] with continuations joined and comments dropped, as
    Docker's parser reads the file."""
    instructions, pending = [], ''
    with open(os.path.join(ROOT, 'Dockerfile'), encoding='utf-8') as stream:
        for raw in stream:
            line = raw.strip()
            if not line or line.startswith('#'):
                continue
            if line.endswith('\\'):
                pending += line[:-1] + ' '
                continue
            keyword, _, arguments = (pending + line).partition(' ')
            instructions.append((keyword.upper(), arguments.strip()))
            pending = ''
    assert not pending, 'the Dockerfile ends inside a continued line'
    return instructions


def only(instructions, keyword):
    found = [arguments for name, arguments in instructions if name == keyword]
    assert found, 'no {} in the Dockerfile'.format(keyword)
    return found


def test_dockerfile_builds_on_slim_python_311_in_aid_app():
    instructions = dockerfile_instructions()
    [base] = only(instructions, 'ARG')[:1]
    assert re.fullmatch(r'PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?', base)
    froms = only(instructions, 'FROM')
    assert froms == ['${PYTHON_IMAGE} AS build', '${PYTHON_IMAGE}']  # two stages, one pinned base
    assert only(instructions, 'WORKDIR')[-1] == '/aid_app'
    assert any('AID_APP_DOCKER=Yes' in env for env in only(instructions, 'ENV'))


def test_dockerfile_runs_as_a_user_that_owns_the_cache():
    instructions = dockerfile_instructions()
    user = only(instructions, 'USER')[-1]
    assert user not in ('root', '0') and not user.startswith(('root:', '0:'))
    names = [name for name, _ in instructions]
    # nothing after USER runs as root again, and the cache is handed to that user before it
    assert 'RUN' not in names[names.index('USER'):]
    assert any('chown' in run and user in run and '/aid_app/_cache' in run
               for run in only(instructions, 'RUN'))


def test_dockerfile_exposes_the_gateway_port_and_starts_twistd():
    instructions = dockerfile_instructions()
    assert '5002' in ' '.join(only(instructions, 'EXPOSE')).split()
    cmd = json.loads(only(instructions, 'CMD')[-1])  # exec form: signals reach the process
    assert cmd[:2] == ['twistd', '-n']
    assert cmd[-2:] == ['-y', 'bis.tac']


def healthcheck_command():
    arguments = only(dockerfile_instructions(), 'HEALTHCHECK')[-1]
    options, _, command = arguments.partition('CMD ')
    argv = json.loads(command)
    assert argv[0] == 'python'
    return [sys.executable] + argv[1:]


class Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == '/health' else 404)
        self.end_headers()

    def log_message(self, *args):
        pass  # keep the test output clean


@pytest.fixture
def health_server():
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Health)
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    Health.status = 200


def check_health(port):
    env = dict(os.environ, BIS_PORT=str(port))
    return subprocess.run(healthcheck_command(), env=env, capture_output=True, timeout=20)


def test_healthcheck_passes_when_health_answers_200(health_server):
    assert '/health' in shlex.join(healthcheck_command())
    done = check_health(health_server.server_address[1])
    assert done.returncode == 0, done.stderr


def test_healthcheck_fails_on_an_error_answer_or_no_server(health_server):
    Health.status = 503
    assert check_health(health_server.server_address[1]).returncode != 0
    port = health_server.server_address[1]
    health_server.shutdown()
    health_server.server_close()
    assert check_health(port).returncode != 0


def test_dockerignore_keeps_history_envs_and_caches_out():
    with open(os.path.join(ROOT, '.dockerignore'), encoding='utf-8') as stream:
        patterns = {line.strip() for line in stream if line.strip() and not line.startswith('#')}
    assert {'.git', '.venv', '_cache', '.pytest_cache'} <= patterns


def test_dockerignore_keeps_tests_bench_and_docs_out_of_the_build_context():
    with open(os.path.join(ROOT, '.dockerignore'), encoding='utf-8') as stream:
        patterns = {line.strip() for line in stream if line.strip() and not line.startswith('#')}
    assert {'tests', 'bench', 'docs', 'deploy'} <= patterns
    assert 'README.md' not in patterns and 'bis_twisted' not in patterns  # the build needs them


def test_the_slim_image_copies_only_what_the_gateway_reads_and_extras_are_a_build_arg():
    instructions = dockerfile_instructions()
    copies = only(instructions, 'COPY')
    assert not any(c.split()[0] == '.' for c in copies)  # no `COPY . .`
    assert 'EXTRAS=""' in only(instructions, 'ARG')  # slim unless --build-arg EXTRAS=examples
    assert any('.${EXTRAS:+[$EXTRAS]}' in run for run in only(instructions, 'RUN'))
    assert '--from=build /opt/venv /opt/venv' in copies
    # the build stage's pip is not in the final image's layers: every pip run is before the second FROM
    second_from = [i for i, (name, _) in enumerate(instructions) if name == 'FROM'][1]
    assert not any('pip install' in args for name, args in instructions[second_from:] if name == 'RUN')


def stop_budget_seconds():
    """The longest a gateway takes to stop after SIGTERM: requests in flight, then their
    answers, each bounded by the drain timeout, then the children's TERM-to-KILL time."""
    from bis_twisted.gateway.service import GatewayService
    from bis_twisted.gateway.supervisor import Supervisor
    return 2 * GatewayService.drain_timeout + Supervisor.killTime


def test_docker_stop_timeout_covers_the_gateways_drain(fake_docker):
    run_sh(fake_docker, BIS_IMAGE='acme/bis', BIS_RUN_ONCE='1')
    [argv] = fake_docker.runs()
    assert float(argv[argv.index('--stop-timeout') + 1]) >= stop_budget_seconds()
    assert only(dockerfile_instructions(), 'STOPSIGNAL') == ['SIGTERM']


def test_the_dockerfile_passes_hadolint():
    hadolint = os.path.join(os.path.dirname(sys.executable), 'hadolint')
    done = subprocess.run([hadolint, '--no-color', os.path.join(ROOT, 'Dockerfile')], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_dockerfile_fails_hadolint(tmp_path):
    broken = tmp_path / 'Dockerfile'
    broken.write_text('FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n')
    hadolint = os.path.join(os.path.dirname(sys.executable), 'hadolint')
    done = subprocess.run([hadolint, '--no-color', str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and 'DL3007' in done.stdout  # :latest is refused
