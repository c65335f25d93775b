"""Real processes in tests: start one in its own process group, read what it prints, wait for
a line or a condition with a deadline, and kill the whole group at the end.

Nothing here waits with a bare sleep: ``Proc.wait_for_line`` wakes on each line read,
``wait_until`` polls with a deadline, and both fail with what they saw last. Every helper takes
any argv, env and cwd, so the gateway's end-to-end tests use the same ones; only the last
section knows about ``bis_twisted`` (how to start one model server alone).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENDPOINTS_DIR = os.path.join(REPO_ROOT, 'endpoints')
# the twistd script installed beside this interpreter (a venv's bin/ or the system's)
TWISTD = os.path.join(os.path.dirname(sys.executable), 'twistd')
DEFAULT_TIMEOUT = 20.0  # seconds; a deadline, not a delay: waits end as soon as the event comes


class WaitTimeout(AssertionError):
    """A wait ran past its deadline; the message says what it saw."""


# -- waiting ------------------------------------------------------------------------------------
def wait_until(probe, until=bool, timeout=DEFAULT_TIMEOUT, what='the condition', interval=0.05):
    """Call ``probe()`` until ``until(result)`` is true and return that result.

    An exception from ``probe`` (connection refused while a server starts) counts as "not yet".
    Past ``timeout`` seconds, fails with the last result or exception seen.
    """
    deadline = time.monotonic() + timeout
    last = '<nothing: probe never returned>'
    while True:
        try:
            result = probe()
        except Exception as exc:  # not ready yet; remembered for the failure message
            last = '{}: {}'.format(type(exc).__name__, exc)
        else:
            if until(result):
                return result
            last = repr(result)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout('timed out after {:.1f}s waiting for {}; last seen: {}'.format(
                timeout, what, last[:2000]))
        time.sleep(min(interval, remaining))  # the poll interval of a deadline-bound poll


def process_gone(pid):
    """True when ``pid`` has exited (a zombie counts: its parent may never reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def free_port(host='127.0.0.1'):
    """A TCP port free right now. Prefer ``--port 0`` and reading the port back: another
    process may take this one before the caller binds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# -- processes ------------------------------------------------------------------------------------
def python_env(extra=None):
    """The environment for a Python child: this checkout importable, output unbuffered."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO_ROOT, env.get('PYTHONPATH')) if p)
    env['PYTHONUNBUFFERED'] = '1'
    env.update(extra or {})
    return env


class _LineReader(threading.Thread):
    """Reads one pipe to its end, so the child never blocks on a full pipe."""

    def __init__(self, stream, label, condition):
        super().__init__(name='procs-reader-' + label, daemon=True)
        self._stream = stream
        self._condition = condition
        self.lines = []
        self.closed = False

    def run(self):
        try:
            for line in iter(self._stream.readline, ''):
                with self._condition:
                    self.lines.append(line.rstrip('\r\n'))
                    self._condition.notify_all()
        finally:
            with self._condition:
                self.closed = True
                self._condition.notify_all()


class Proc:
    """One started process, leader of its own process group.

    ``stdin`` is a pipe held open by this test process by default: a child that watches its
    stdin (``--exit-with-parent``) sees it close when the test process dies.
    """

    def __init__(self, argv, env=None, cwd=None, stdin=subprocess.PIPE, name=None):
        self.argv = [str(arg) for arg in argv]
        self.name = name or ' '.join(self.argv[:4])
        self._condition = threading.Condition()
        self.popen = subprocess.Popen(
            self.argv, cwd=cwd or REPO_ROOT, env=python_env() if env is None else env,
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding='utf-8', errors='replace', bufsize=1,
            start_new_session=True,  # its own process group, killed as a whole
        )
        self._readers = {
            'stdout': _LineReader(self.popen.stdout, 'stdout', self._condition),
            'stderr': _LineReader(self.popen.stderr, 'stderr', self._condition),
        }
        for reader in self._readers.values():
            reader.start()

    @property
    def pid(self):
        return self.popen.pid

    @property
    def returncode(self):
        return self.popen.poll()

    def lines(self, stream='stdout'):
        with self._condition:
            return list(self._readers[stream].lines)

    @property
    def stdout_lines(self):
        return self.lines('stdout')

    @property
    def stderr_lines(self):
        return self.lines('stderr')

    def wait_for_line(self, pattern, timeout=DEFAULT_TIMEOUT, stream='stdout', since=0):
        """The ``re.Match`` of the first line of ``stream`` (from line index ``since``) that
        matches ``pattern``; fails if the stream ends or the deadline passes first."""
        regex = re.compile(pattern)
        reader = self._readers[stream]
        deadline = time.monotonic() + timeout
        checked = since
        with self._condition:
            while True:
                for line in reader.lines[checked:]:
                    match = regex.search(line)
                    if match:
                        return match
                checked = max(checked, len(reader.lines))
                if reader.closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
        if reader.closed:
            self._wait_quietly(2.0)
            problem = '{} closed (exit code {})'.format(stream, self.returncode)
        else:
            problem = 'still running after {:.1f}s'.format(timeout)
        raise WaitTimeout('{}: no {} line matching {!r}: {}\n{}'.format(
            self.name, stream, pattern, problem, self.describe()))

    def wait_exit(self, timeout=DEFAULT_TIMEOUT):
        """The exit code, once the process has exited; fails past the deadline."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout('{}: still running after {:.1f}s\n{}'.format(
                self.name, timeout, self.describe())) from None
        self._join_readers(2.0)
        return code

    def describe(self, tail=40):
        """What the process did: argv, pid, exit code and the last lines it printed."""
        parts = ['process {} (pid {}, exit code {})'.format(self.argv, self.pid, self.returncode)]
        for stream in ('stdout', 'stderr'):
            lines = self.lines(stream)
            parts.append('--- {} ({} lines, last {}):'.format(stream, len(lines), min(tail, len(lines))))
            parts.extend(lines[-tail:])
        return '\n'.join(parts)

    def send_signal(self, sig):
        """Signal the process itself (not its group)."""
        if self.returncode is None:
            self.popen.send_signal(sig)

    def kill(self):
        """SIGKILL the whole process group and every descendant still known, then reap."""
        targets = []
        if self.returncode is None:  # once reaped, the pid may belong to someone else
            try:
                targets = psutil.Process(self.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # orphans of a dead leader are still in the group
        except (ProcessLookupError, PermissionError):
            pass
        for child in targets:  # descendants that moved to a group of their own
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self._wait_quietly(5.0)
        self._join_readers(2.0)
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe:
                try:
                    pipe.close()
                except OSError:
                    pass

    def _wait_quietly(self, timeout):
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def _join_readers(self, timeout):
        for reader in self._readers.values():
            reader.join(timeout)


class Processes:
    """Every process a test (or a module) started; ``kill_all`` ends them all, also when
    the test failed. Use as a context manager or through the ``processes`` fixture."""

    def __init__(self):
        self.started = []

    def start(self, argv, **kwargs):
        proc = Proc(argv, **kwargs)
        self.started.append(proc)
        return proc

    def python(self, *args, **kwargs):
        """Start ``python <args>`` with this interpreter."""
        return self.start([sys.executable] + list(args), **kwargs)

    def kill_all(self, report=True):
        for proc in reversed(self.started):
            proc.kill()
            if report:  # pytest shows it only when the test failed
                print(proc.describe())
        self.started = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.kill_all()


# -- HTTP ----------------------------------------------------------------------------------------
class Response:
    """Status, headers and body of one answer, whatever its status."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode('utf-8', 'replace')

    def json(self):
        return json.loads(self.body.decode('utf-8'))

    def __repr__(self):
        return '<Response {} {}>'.format(self.status, self.text[:500])


# No proxy: an http_proxy in the environment must not route requests to 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method, url, body=None, headers=None, timeout=5.0):
    """One request; ``body`` is JSON-encoded unless it is bytes. 4xx and 5xx answer a
    Response; only a connection failure raises (OSError)."""
    headers = dict(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode('utf-8')
        headers.setdefault('Content-Type', 'application/json')
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with _opener.open(request, timeout=timeout) as answer:
            return Response(answer.status, dict(answer.headers), answer.read())
    except urllib.error.HTTPError as err:
        with err:
            return Response(err.code, dict(err.headers), err.read())


def get(url, **kwargs):
    return http('GET', url, **kwargs)


def post(url, body=None, **kwargs):
    return http('POST', url, body=body if body is not None else {}, **kwargs)


# -- one bis_twisted model server ------------------------------------------------------------------
READY_PATTERN = r'BIS-SERVER-READY (\d+)'


class ModelServerProcess:
    """A running ``python -m bis_twisted.model_server`` and where it listens."""

    def __init__(self, proc, host, port):
        self.proc = proc
        self.host = host
        self.port = port

    def url(self, path='/'):
        return 'http://{}:{}{}'.format(self.host, self.port, path)

    def get(self, path, **kwargs):
        return get(self.url(path), **kwargs)

    def post(self, path, body=None, **kwargs):
        return post(self.url(path), body, **kwargs)


def model_server_argv(name, endpoints=ENDPOINTS_DIR, config=None, port=0, host='127.0.0.1',
                      server_class=None, extra_args=()):
    argv = [sys.executable, '-m', 'bis_twisted.model_server', '--endpoints', str(endpoints), '--name', name,
            '--host', host, '--port', str(port), '--config-json', json.dumps(config or {})]
    if server_class:
        argv += ['--server-class', server_class]
    return argv + list(extra_args)


def start_model_server(processes, name, timeout=DEFAULT_TIMEOUT, env=None, **kwargs):
    """Start one model server on a port of its choosing and wait for its ready line;
    ``env``: variables added to its environment (``BIS_ADMIN_TOKEN``)."""
    host = kwargs.get('host', '127.0.0.1')
    proc = processes.start(model_server_argv(name, **kwargs), name='model server ' + name,
                           env=python_env(env) if env else None)
    port = int(proc.wait_for_line(READY_PATTERN, timeout=timeout).group(1))
    return ModelServerProcess(proc, host, port)
