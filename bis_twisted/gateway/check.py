"""``bis-gateway check``: the authority on a config. It validates the config (every key at
every level: an unknown or misspelt one is a problem, with the key it most resembles), checks
that the ports it needs are free and not shared, and imports every enabled endpoint file the
way serving would (each in a child ``python`` of its own), without starting anything. With
``--load`` each child also builds one worker and runs its ``_load_model`` (within the
endpoint's ``LOAD_TIMEOUT``).

One line per problem, naming the file, the endpoint and the key; exit 1 if there is any, else
exit 0 with a one-line summary. The gateway's process never imports endpoint code, and
neither does this one: the imports happen in the children.
"""

import errno
import json
import os
import socket
import subprocess
import sys
import time

import psutil

from ..errors import ConfigError, EndpointLoadError
from .config import NO_HOST, load_config, parse_config, unknown_key_problems

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


def read_config_data(path):
    """The config file's JSON, or None when it is unreadable or not JSON (which
    ``config_problems`` reports)."""
    try:
        with open(path, encoding='utf-8') as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


# -- ports --------------------------------------------------------------------------------------
def port_in_use(host, port):
    """Why ``host:port`` cannot be listened on (one phrase), or None when it can."""
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # as Twisted's listenTCP: a port in TIME_WAIT is not "in use"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return 'port {} is in use by another process{}'.format(port, _holder(port))
        return exc.strerror or str(exc)
    finally:
        sock.close()
    return None


def _holder(port):
    """`` (pid 1234: python3)`` for the process listening on ``port``, when the system says."""
    try:
        for conn in psutil.net_connections(kind='tcp'):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return ' (pid {}: {})'.format(conn.pid, psutil.Process(conn.pid).name())
    except (psutil.Error, OSError):
        pass
    return ''


def shared_port_problems(label, data):
    """Every pair of entries whose ``PORT`` ranges (one port per replica) overlap, one
    line each, in the words ``config.py`` uses for the first one."""
    entries = data.get('CONFIG_ENDPOINTS') if isinstance(data, dict) else None
    taken, problems = {}, []
    for name, entry in (entries.items() if isinstance(entries, dict) else ()):
        if not isinstance(entry, dict) or entry.get('HOST') == NO_HOST or entry.get('URLS'):
            continue
        port = entry.get('PORT')
        if not isinstance(port, int) or isinstance(port, bool):
            continue
        slots = max(*(v if isinstance(v, int) and not isinstance(v, bool) else 1
                      for v in (entry.get('REPLICAS', 1), entry.get('MAX_REPLICAS', 1))))
        for p in range(port, port + slots):
            if p in taken:
                problems.append("{}: endpoint {!r}: key 'PORT': port {} is already used by {}".format(
                    label, name, p, taken[p]))
                break
            taken[p] = 'endpoint {!r}'.format(name)
    return problems


def port_problems(label, endpoints, host, gateway_port):
    """A line for each port the gateway or an enabled spawned endpoint would listen on that
    another process holds now."""
    problems = []
    reason = port_in_use(host, gateway_port)
    if reason is not None:
        problems.append("{}: the gateway (--port / BIS_PORT): {}".format(label, reason))
    for endpoint in endpoints:
        for port in endpoint.ports:
            reason = port_in_use(endpoint.host, port)
            if reason is not None:
                blame = "key 'PORT'" if 'PORT' in endpoint.entry else 'port counted up from the gateway\'s'
                problems.append('{}: endpoint {!r}: {}: {}'.format(label, endpoint.name, blame, reason))
                break
    return problems


# -- the endpoint files, each in a child ---------------------------------------------------------
def import_argv(endpoints_dir, server_class):
    return [sys.executable, '-m', 'bis_twisted.gateway.check', '--import-endpoint', endpoints_dir, server_class]


def load_argv(endpoints_dir, endpoint):
    return [sys.executable, '-m', 'bis_twisted.gateway.check', '--load-endpoint', endpoints_dir,
            endpoint.server_class, endpoint.name, json.dumps(endpoint.entry)]


def import_problems(label, endpoints, endpoints_dir, timeout=IMPORT_TIMEOUT, load=False):
    """Import each endpoint's file in a child of its own, all at once (with ``load``, build a
    worker and run its ``_load_model`` too, within ``IMPORT_TIMEOUT`` + its ``LOAD_TIMEOUT``);
    a problem line for each that fails."""
    started = []
    for endpoint in endpoints:
        argv = load_argv(endpoints_dir, endpoint) if load else import_argv(endpoints_dir, endpoint.server_class)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, errors='replace')
        started.append((endpoint, proc, time.monotonic() + timeout + (endpoint.load_timeout if load else 0.0)))
    problems = []
    for endpoint, proc, deadline in started:
        where = '{}: endpoint {!r}'.format(label, endpoint.name)
        try:
            _, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            if load:
                problems.append("{}: key 'LOAD_TIMEOUT': {}.py did not import and load within {:.0f} s".format(
                    where, os.path.join(endpoints_dir, endpoint.server_class), timeout + endpoint.load_timeout))
            else:
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


def run_check(options, out=None, load=False):
    """Check ``options``' config and endpoint files (with ``load``, run each ``_load_model``
    too); print the problems (or the summary) to ``out`` and return the exit code."""
    out = out or sys.stdout
    endpoints_dir = options.endpoints  # as given: the lines name files as the user wrote them
    problems, endpoints = config_problems(options.config, endpoints_dir, options.port)
    data = read_config_data(options.config)
    for problem in unknown_key_problems(data, options.config, endpoints_dir) + shared_port_problems(
            options.config, data):
        if problem not in problems:
            problems.append(problem)
    served = [e for e in endpoints if e.is_spawned and not e.disabled]
    problems += port_problems(options.config, served, options.host, options.port)
    problems += import_problems(options.config, served, endpoints_dir, load=load)
    for problem in problems:
        out.write(problem.replace('\n', ' ') + '\n')
    if problems:
        out.write('bis-gateway check: {} problem{} in {}\n'.format(
            len(problems), '' if len(problems) == 1 else 's', options.config))
        return 1
    support = sum(1 for e in endpoints if e.is_support)
    remote = sum(1 for e in endpoints if e.is_remote)
    disabled = sum(1 for e in endpoints if e.is_spawned and e.disabled)
    out.write('bis-gateway check: {} OK: {} endpoint{} {}{}{}{}\n'.format(
        options.config, len(served), '' if len(served) == 1 else 's', 'loaded' if load else 'imported',
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


def _load_endpoint(endpoints_dir, server_class, name, entry):
    """The child's side of ``--load``: import the file, build one worker with the entry's
    config as the model server does, and run its ``_load_model``; one line and exit 2 if any
    step fails (for ``_load_model``: the exception and the line that raised it)."""
    from ..logger import Logger as CompatLogger
    from ..logger import describe_failure, error_info
    from ..model_server.loader import load_endpoint

    try:
        loaded = load_endpoint(endpoints_dir, server_class)
    except EndpointLoadError as exc:
        _fail(str(exc))
    for stage, step in (('building the worker', None), ('_load_model', 'startup')):
        try:
            if step is None:
                worker = loaded.worker_class(log=CompatLogger(lib_name=name), default_config=loaded.default_config,
                                             worker_id=0, upstream_config=entry, server_name=name)
            else:
                worker.startup()
        except Exception as exc:  # the user's code: reported in one line, at its own line
            _fail(describe_failure(stage, _user_frame(error_info(type(exc), exc, sys.exc_info()[2]),
                                                      exc.__traceback__, endpoints_dir)))
    sys.stdout.flush()
    os._exit(0)


def _user_frame(info, tb, endpoints_dir):
    """``info`` pointing at the innermost line of the endpoints folder that the error went
    through (the user's line, not the library's deep inside which it was raised)."""
    import traceback

    folder = os.path.abspath(endpoints_dir) + os.sep
    mine = [f for f in traceback.extract_tb(tb) if os.path.abspath(f.filename).startswith(folder)]
    if not mine:
        return info
    frame = mine[-1]
    err_type, _, _, _, err_msg = info
    where = os.path.relpath(frame.filename) if not os.path.isabs(endpoints_dir) else frame.filename
    return err_type, where, frame.name, frame.lineno, err_msg


def _fail(line):
    sys.stderr.write(line.replace('\n', ' ') + '\n')
    sys.stderr.flush()
    os._exit(2)


if __name__ == '__main__':
    if len(sys.argv) == 4 and sys.argv[1] == '--import-endpoint':
        _import_endpoint(sys.argv[2], sys.argv[3])
    if len(sys.argv) == 6 and sys.argv[1] == '--load-endpoint':
        _load_endpoint(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]))
    sys.stderr.write('usage: python -m bis_twisted.gateway.check --import-endpoint <endpoints dir> <server class>\n'
                     '       python -m bis_twisted.gateway.check --load-endpoint <endpoints dir> <server class> '
                     '<name> <entry JSON>\n')
    sys.exit(64)
