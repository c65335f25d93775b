"""``bis-gateway check``: validate the config and import every enabled endpoint file the way
serving would (each in a child ``python`` of its own), without starting anything.

One line per problem, naming the file, the endpoint and the key; exit 1 if there is any, else
exit 0 with a one-line summary. The gateway's process never imports endpoint code, and
neither does this one: the imports happen in the children.
"""

import json
import os
import subprocess
import sys
import time

from ..errors import ConfigError, EndpointLoadError
from .config import load_config, parse_config

IMPORT_TIMEOUT = 120.0  # seconds an endpoint file may take to import (heavy ML imports)


def config_problems(path, endpoints_dir, gateway_port):
    """``(problems, endpoints)``: every problem found in the config (as many as can be told
    apart: the whole file, then each entry alone) and the entries that are usable."""
    try:
        return [], list(load_config(path, endpoints_dir, gateway_port).endpoints)
    except ConfigError as exc:
        problems = [str(exc)]
    try:
        with open(path, encoding='utf-8') as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return problems, []  # unreadable or not JSON: that one line says it all
    if not isinstance(data, dict) or not isinstance(data.get('CONFIG_ENDPOINTS'), dict):
        return problems, []
    endpoints = []
    top = {k: v for k, v in data.items() if k not in ('CONFIG_ENDPOINTS', 'DEFAULT_SERVER')}
    _collect(problems, lambda: parse_config(dict(top, CONFIG_ENDPOINTS={}), path, endpoints_dir, gateway_port))
    for name, entry in data['CONFIG_ENDPOINTS'].items():
        config = _collect(problems, lambda: parse_config({'CONFIG_ENDPOINTS': {name: entry}}, path, endpoints_dir,
                                                         gateway_port))
        if config is not None:
            endpoints.extend(config.endpoints)
    return problems, endpoints


def _collect(problems, parse):
    try:
        return parse()
    except ConfigError as exc:
        if str(exc) not in problems:
            problems.append(str(exc))
        return None


def import_argv(endpoints_dir, server_class):
    return [sys.executable, '-m', 'bis_twisted.gateway.check', '--import-endpoint', endpoints_dir, server_class]


def import_problems(label, endpoints, endpoints_dir, timeout=IMPORT_TIMEOUT):
    """Import each endpoint's file in a child of its own, all at once; a problem line for
    each that fails."""
    started = []
    for endpoint in endpoints:
        proc = subprocess.Popen(import_argv(endpoints_dir, endpoint.server_class), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors='replace')
        started.append((endpoint, proc))
    deadline = time.monotonic() + timeout
    problems = []
    for endpoint, proc in started:
        where = '{}: endpoint {!r}'.format(label, endpoint.name)
        try:
            _, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            problems.append("{}: key 'SERVER_CLASS': {}.py did not finish importing within {:.0f} s".format(
                where, os.path.join(endpoints_dir, endpoint.server_class), timeout))
            continue
        if proc.returncode != 0:
            lines = [line for line in err.splitlines() if line.strip()]
            last = lines[-1] if lines else 'no message'
            if proc.returncode != 2:  # not our one line: the file exited or crashed on import
                last = '{}.py: exit code {} while importing: {}'.format(
                    os.path.join(endpoints_dir, endpoint.server_class), proc.returncode, last)
            problems.append('{}: {}'.format(where, last))
    return problems


def run_check(options, out=None):
    """Check ``options``' config and endpoint files; print the problems (or the summary) to
    ``out`` and return the exit code."""
    out = out or sys.stdout
    endpoints_dir = options.endpoints  # as given: the lines name files as the user wrote them
    problems, endpoints = config_problems(options.config, endpoints_dir, options.port)
    served = [e for e in endpoints if e.is_spawned and not e.disabled]
    problems += import_problems(options.config, served, endpoints_dir)
    for problem in problems:
        out.write(problem.replace('\n', ' ') + '\n')
    if problems:
        out.write('bis-gateway check: {} problem{} in {}\n'.format(
            len(problems), '' if len(problems) == 1 else 's', options.config))
        return 1
    support = sum(1 for e in endpoints if e.is_support)
    remote = sum(1 for e in endpoints if e.is_remote)
    disabled = sum(1 for e in endpoints if e.is_spawned and e.disabled)
    out.write('bis-gateway check: {} OK: {} endpoint{} imported{}{}{}\n'.format(
        options.config, len(served), '' if len(served) == 1 else 's',
        ', {} disabled'.format(disabled) if disabled else '',
        ', {} remote'.format(remote) if remote else '',
        ', {} support process{}'.format(support, '' if support == 1 else 'es') if support else ''))
    return 0


def _import_endpoint(endpoints_dir, server_class):
    """The child's side: import the file as the model server would; one line and exit 2 if
    it cannot be used."""
    from ..model_server.loader import load_endpoint

    try:
        load_endpoint(endpoints_dir, server_class)
    except EndpointLoadError as exc:
        sys.stderr.write(str(exc).replace('\n', ' ') + '\n')
        sys.stderr.flush()
        os._exit(2)
    sys.stdout.flush()
    os._exit(0)  # threads the user's module may have started do not keep us


if __name__ == '__main__':
    if len(sys.argv) == 4 and sys.argv[1] == '--import-endpoint':
        _import_endpoint(sys.argv[2], sys.argv[3])
    sys.stderr.write('usage: python -m bis_twisted.check --import-endpoint <endpoints dir> <server class>\n')
    sys.exit(64)
