"""Dockerfile and run.sh: what can be checked without a Docker engine. run.sh runs for real
against a fake ``docker`` that records its arguments; the Dockerfile is parsed, and its
HEALTHCHECK command is run against a local HTTP server."""

import http.server
import json
import os
import shlex
import subprocess
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_SH = os.path.join(ROOT, 'run.sh')
TOKEN = 'tok-3f9a-never-on-argv'
README_ARGS = ['run', '--rm', '--pull=always', '-p', '5002-5010:5002-5010',
               '-v', 'ai_vol:/aid_app/_cache', '-e', 'BIS_ADMIN_TOKEN']

FAKE_DOCKER = """#!/bin/sh
# records one call: its arguments one per line, then what it saw of the token variable
{
  for arg in "$@"; do printf '%s\\n' "$arg"; done
  printf -- '--- token: %s\\n' "${BIS_ADMIN_TOKEN-<unset>}"
} >> "$FAKE_DOCKER_LOG"
calls=$(grep -c -- '^--- token' "$FAKE_DOCKER_LOG")
if [ -n "${FAKE_DOCKER_STOP_AFTER:-}" ] && [ "$calls" -ge "$FAKE_DOCKER_STOP_AFTER" ]; then
  kill -TERM "$PPID"   # stop run.sh's endless loop
fi
exit "${FAKE_DOCKER_EXIT:-0}"
"""


@pytest.fixture
def fake_docker(tmp_path):
    """A ``docker`` first on PATH; ``calls()`` returns [(argv, token seen)] per call."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    script = bin_dir / 'docker'
    script.write_text(FAKE_DOCKER)
    script.chmod(0o755)
    log = tmp_path / 'docker_calls.txt'

    class Fake:
        path = str(script)
        env = {'PATH': '{}{}{}'.format(bin_dir, os.pathsep, os.environ.get('PATH', '')),
               'FAKE_DOCKER_LOG': str(log), 'HOME': str(tmp_path)}

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

    return Fake


def run_sh(fake, timeout=10, **env):
    return subprocess.run(['bash', RUN_SH], env=dict(fake.env, **env), capture_output=True,
                          text=True, timeout=timeout)


def test_run_sh_runs_the_readme_command_with_the_token_passed_by_name(fake_docker):
    done = run_sh(fake_docker, BIS_IMAGE='acme/bis', BIS_ADMIN_TOKEN=TOKEN, BIS_RUN_ONCE='1')
    assert done.returncode == 0, done.stderr
    [(argv, token_seen)] = fake_docker.calls()
    assert argv == README_ARGS + ['acme/bis']
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
    [(argv, token_seen)] = fake_docker.calls()
    assert argv[-1] == 'acme/bis' and token_seen == '<unset>'


def test_run_sh_uses_the_docker_command_from_DOCKER(fake_docker, tmp_path):
    env = dict(fake_docker.env, PATH='/usr/bin:/bin')  # no `docker` on PATH at all
    done = subprocess.run(['bash', RUN_SH], env=dict(env, DOCKER=fake_docker.path,
                                                      BIS_IMAGE='acme/bis', BIS_RUN_ONCE='1'),
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert len(fake_docker.calls()) == 1


def test_run_sh_runs_the_container_again_after_it_exits(fake_docker):
    done = run_sh(fake_docker, BIS_IMAGE='acme/bis', BIS_RESTART_DELAY='0',
                  FAKE_DOCKER_STOP_AFTER='3')
    assert [argv for argv, _ in fake_docker.calls()] == [README_ARGS + ['acme/bis']] * 3
    assert done.returncode != 0  # ended by the fake's SIGTERM, not by itself


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
    assert instructions[0][0] == 'FROM'
    assert instructions[0][1].startswith('python:3.11-slim')
    assert only(instructions, 'WORKDIR') == ['/aid_app']
    assert any('pip install --no-cache-dir ".[examples]"' in run or
               'pip install --no-cache-dir .[examples]' in run for run in only(instructions, 'RUN'))
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
