"""``Supervisor``: the model-server child processes: spawn, watch, restart, stop.

Written in the style of ``twisted.runner.procmon.ProcessMonitor`` (injected reactor, tunables
as class attributes, restart delay doubling up to a cap and reset after a child lived past
``threshold``, stop = TERM then KILL after ``killTime``), but our own class: procmon drops the
exit reason, keeps no restart count and gives no way to learn that a child is ready.

What real endpoints do that this class is built for:
- a child's exit is acted on when the process exits (``processExited``), not when its pipes
  close (``processEnded``): a helper process it started may hold its stdout for hours;
- each child runs in a process group of its own (``setsid``), and the whole group is
  signalled, so no helper outlives its server and no stop waits for one;
- a spawn that fails (``EMFILE``) is an exit like any other, retried with the backoff;
- a child that loads for longer than its ``load_timeout`` is restarted, and one that keeps
  failing before it is ready is ``failed`` (still retried at the capped delay);
- output is split into bounded lines (``OutputLines``): a progress bar that never writes a
  newline costs constant memory and time per byte;
- a pid file per child lets the next gateway end a child that outlived this one.

A child's stdin is a pipe the gateway keeps open: the model server exits when it closes, so a
gateway that dies, even by ``kill -9``, leaves no child behind (unless the child is stopped
with SIGSTOP: the pid files cover that).
"""

import collections
import os
import re
import shutil
import signal
import time

import attr
import psutil
from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.logfile import LogFile

from ..protocol import MODEL_SERVER_MODULE, READY_LINE, TOKEN_VARIABLE
from ..shared.waiters import Waiters
from . import child_output

MAX_LINE_BYTES = 8192      # a longer line is cut and marked
MAX_ERROR_CHARS = 300      # last_error as shown by /list_servers
TRIAL_STDERR_WAIT = 1.0    # seconds a failed trial start waits for the child's last stderr line
PROGRESS_LOG_INTERVAL = 1.0  # seconds between two logged '\r' progress updates of one stream
# what a pid file's process must be running to be ours (the second: the module's former path)
CHILD_MODULES = (MODEL_SERVER_MODULE, 'bis_twisted.server')
_SETSID = shutil.which('setsid')  # util-linux: puts the exec'd child in a new session/group


def short_error(text, limit=MAX_ERROR_CHARS):
    """``text`` on one line, at most ``limit`` characters."""
    text = ' '.join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


class OutputLines:
    """Splits one output stream into lines on ``\\n`` and ``\\r``, in time and memory bounded
    per byte (the shape of ``LineReceiver`` with its ``MAX_LENGTH``).

    ``feed(data)`` returns ``[(line_bytes, kind)]`` with ``kind`` ``'line'`` (ended by
    ``\\n``), ``'progress'`` (ended by ``\\r``: a progress bar redrawing itself; the caller
    shows only some of them) or ``'cut'`` (longer than ``max_length``: its first
    ``max_length`` bytes, the rest up to the next line end is dropped)."""

    _separator = re.compile(rb'[\r\n]')

    def __init__(self, max_length=MAX_LINE_BYTES):
        self.max_length = max_length
        self._buffer = b''
        self._dropping = False  # inside a line already reported as cut

    def feed(self, data):
        out = []
        start = 0
        for match in self._separator.finditer(data):
            end = match.start()
            self._add(out, data[start:end], b'line' if match.group() == b'\n' else b'progress', ended=True)
            start = match.end()
        if start < len(data):
            self._add(out, data[start:], None, ended=False)
        return out

    def flush(self):
        """What is left without a line end (the stream closed)."""
        rest, self._buffer = self._buffer, b''
        dropping, self._dropping = self._dropping, False
        return [(rest, 'line')] if rest and not dropping else []

    def _add(self, out, piece, kind, ended):
        if self._dropping:
            if ended:
                self._dropping = False
            return
        if self._buffer:
            piece = self._buffer + piece  # bounded: the buffer never exceeds max_length
            self._buffer = b''
        if len(piece) > self.max_length:
            out.append((piece[:self.max_length], 'cut'))
            self._dropping = not ended
            return
        if ended:
            out.append((piece, 'line' if kind == b'line' else 'progress'))
        else:
            self._buffer = piece


@attr.s(frozen=True)
class ChildSpec:
    """How to start one child."""

    name = attr.ib()
    argv = attr.ib()  # argv[0] is the executable
    env = attr.ib(default=None)
    cwd = attr.ib(default=None)
    load_timeout = attr.ib(default=None)  # seconds from spawn to the ready line, at most


@attr.s(frozen=True)
class ChildStatus:
    """What ``/list_servers`` shows of a child (a snapshot; the supervisor's state moves on)."""

    name = attr.ib()
    running = attr.ib()
    ready = attr.ib()
    wanted = attr.ib()
    pid = attr.ib()
    port = attr.ib()
    started_at = attr.ib()
    restarts = attr.ib()
    last_error = attr.ib()
    next_restart_in = attr.ib()
    failed = attr.ib(default=False)  # failed before ready crash_loop_after times in a row
    recycles = attr.ib(default=0)    # replaced on purpose (memory), not counted as crashes
    stopping = attr.ib(default=False)  # told to stop (drain) and not exited yet

    @property
    def state(self):
        if not self.wanted:
            return 'stopped'
        if self.failed and not self.ready:
            return 'failed'
        if self.stopping and self.running:
            return 'recycling'
        if self.running:
            return 'ready' if self.ready else 'starting'
        return 'restarting'


class _Child:
    """The supervisor's mutable record of one child."""

    def __init__(self, spec):
        self.spec = spec
        self.protocol = None
        self.pid = None
        self.started_at = None
        self.ready = False
        self.port = None
        self.wanted = False
        self.restarts = 0
        self.recycles = 0
        self.failures = 0  # exits before ready, in a row
        self.delay = 0.0
        self.last_error = None
        self.kill_reason = None  # why we killed it ourselves, shown instead of 'signal 9'
        self.recycle_reason = None  # set while a recycle's TERM is pending
        self.stopping = False
        self.restart_call = None
        self.kill_call = None
        self.load_call = None
        self.exit_info = None  # (protocol, exit text without stderr, error shown) of the last exit
        self.ready_waiters = Waiters()
        self.exit_waiters = Waiters()
        self.trial = None  # start_trial's Deferred while the start is on trial
        self.trial_output = None  # a failed trial waiting for the child's last stderr line


class ChildProtocol(protocol.ProcessProtocol):
    """Forwards a child's output lines to the gateway's log (name in front) and its own log
    file, spots the ready line, and keeps the last stderr lines as the exit reason."""

    _log = Logger()

    def __init__(self, supervisor, name, logfile=None, clock=None):
        self._supervisor = supervisor
        self.name = name
        self._logfile = logfile
        self._clock = clock
        self._streams = {1: OutputLines(), 2: OutputLines()}
        self._progress_logged_at = {1: None, 2: None}
        self.stderr_tail = collections.deque(maxlen=5)
        self.exited = False
        self.closed = False  # its output pipes are closed: every line has been read

    def childDataReceived(self, fd, data):
        stream = self._streams.get(fd)
        if stream is None:
            return
        for raw, kind in stream.feed(data):
            if not raw.strip():
                continue
            if kind == 'progress' and not self._show_progress(fd):
                continue
            line = raw.decode('utf-8', 'replace')
            if kind == 'cut':
                line += ' [line cut at {} bytes]'.format(stream.max_length)
            self._line(fd, line)

    def _show_progress(self, fd):
        # a bar redraws itself many times a second: one update a second reaches the log
        now = self._clock.seconds() if self._clock is not None else time.monotonic()
        last = self._progress_logged_at[fd]
        if last is not None and now - last < PROGRESS_LOG_INTERVAL:
            return False
        self._progress_logged_at[fd] = now
        return True

    def _line(self, fd, line):
        if not line.strip():
            return
        if self._logfile is not None:
            self._logfile.write(child_output.file_line(self.name, fd, line))
        if fd == 1 and line.startswith(READY_LINE):
            self._supervisor._child_ready(self.name, line[len(READY_LINE):].strip(), self)
            return
        if fd == 2:
            self.stderr_tail.append(short_error(self._supervisor.shown(line)))
        child_output.relay(self._log, self.name, fd, line)

    def processExited(self, reason):
        # the process is gone; its pipes may stay open for as long as a helper it started lives
        self.exited = True
        self._supervisor._child_ended(self.name, reason, self)

    def processEnded(self, reason):
        self.closed = True
        for fd, stream in self._streams.items():
            for raw, _ in stream.flush():
                self._line(fd, raw.decode('utf-8', 'replace'))
        if self._logfile is not None:
            self._logfile.close()
        if not self.exited:  # a transport that reports only the end
            self.processExited(reason)
        else:
            self._supervisor._child_output_closed(self.name, self)


class Supervisor(Service):
    """Starts registered children and keeps the wanted ones running."""

    threshold = 5.0        # a child that lived this long resets its restart delay
    killTime = 5.0         # seconds between TERM and KILL when stopping
    minRestartDelay = 0.2
    maxRestartDelay = 30.0
    crash_loop_after = 5   # exits before ready in a row that make a child 'failed'

    _log = Logger()

    def __init__(self, reactor=None, log_dir=None, pid_dir=None, killpg=None, endpoints_dir=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        # a child's errors reach answers (a 503's reason): files named relative to this folder
        self._hidden_folder = os.path.join(os.path.abspath(endpoints_dir), '') if endpoints_dir else None
        self._log_dir = log_dir
        self._pid_dir = pid_dir
        # signals a child's process group; the tests' fake reactor brings its own
        self._killpg = killpg or getattr(reactor, 'killpg', None) or os.killpg
        self._children = collections.OrderedDict()
        self.listeners = []  # callables(name, event) for 'ready' / 'exited'

    def shown(self, text):
        """``text`` with the endpoint files named relative to the endpoints folder."""
        return text.replace(self._hidden_folder, '') if self._hidden_folder else text

    # -- registry ------------------------------------------------------------------------------
    def add(self, spec, start=True):
        """Register a child; ``start`` says whether it runs when the service starts."""
        child = _Child(spec)
        child.wanted = start
        self._children[spec.name] = child
        if self.running and start:
            self._spawn(child)

    def replace_spec(self, spec):
        """Use ``spec`` from the child's next start on (a running child is left alone)."""
        self._children[spec.name].spec = spec

    def names(self):
        return list(self._children)

    def remove(self, name):
        """Stop a child (drained, as ``stop_child``) and forget it; fires when it has exited."""
        d = self.stop_child(name)
        d.addCallback(lambda _: self._children.pop(name, None))
        return d

    def status(self, name):
        child = self._children[name]
        next_in = None
        if child.restart_call is not None and child.restart_call.active():
            next_in = max(0.0, child.restart_call.getTime() - self._reactor.seconds())
        return ChildStatus(name=name, running=child.protocol is not None, ready=child.ready,
                           wanted=child.wanted, pid=child.pid, port=child.port, started_at=child.started_at,
                           restarts=child.restarts, last_error=child.last_error, next_restart_in=next_in,
                           failed=child.failures >= self.crash_loop_after, recycles=child.recycles,
                           stopping=child.stopping)

    def is_ready(self, name):
        child = self._children[name]
        return child.ready and not child.stopping

    def when_ready(self, name):
        """A Deferred that fires when the child prints its ready line (at once if it has)."""
        child = self._children[name]
        if child.ready:
            return defer.succeed(name)
        return child.ready_waiters.wait()

    # -- service -------------------------------------------------------------------------------
    def startService(self):
        Service.startService(self)
        self._end_leftovers()
        for child in self._children.values():
            if child.wanted and child.protocol is None:
                self._spawn(child)

    def stopService(self):
        Service.stopService(self)
        return defer.DeferredList([self.stop_child(name) for name in self._children])

    # -- control -------------------------------------------------------------------------------
    def start_child(self, name):
        """Run a child that is not running (a disabled or killed one too)."""
        child = self._children[name]
        child.wanted = True
        child.delay = 0.0
        child.failures = 0
        self._cancel_restart(child)
        if child.protocol is None and self.running:
            self._spawn(child)

    def start_trial(self, name):
        """Start a stopped child whose start is on trial (new code): fires with its name when
        it is ready; fails with ``TrialFailed`` (the one-line reason: the load error, the
        LOAD_TIMEOUT) when it exits before, and then it is not started again."""
        child = self._children[name]
        d = defer.Deferred()
        child.trial = d
        self.start_child(name)
        if child.trial is d and child.protocol is None and not self.running:
            child.trial = None
            d.errback(TrialFailed('the gateway is not running'))
        return d

    def stop_child(self, name):
        """Stop a child and do not restart it; fires when it has exited."""
        child = self._children[name]
        child.wanted = False
        self._cancel_restart(child)
        return self._terminate(child)

    def restart_child(self, name, reason):
        """Kill a child that misbehaves (hung, say); it is started again as after a crash."""
        child = self._children[name]
        if child.protocol is None:
            return defer.succeed(None)
        child.kill_reason = reason
        self._log.warn('restarting server {name}: {reason}', name=name, reason=reason)
        return self._terminate(child, kill_now=True)

    def recycle_child(self, name, reason):
        """Replace a healthy child on purpose (it grew too large): it stops taking requests,
        finishes those it has (TERM, then KILL after ``killTime``) and starts again at once.
        Counted in ``recycles``, not in ``restarts``. Fires when the old process has exited."""
        child = self._children[name]
        if child.protocol is None or child.stopping:
            return defer.succeed(None)
        child.recycle_reason = reason
        self._log.info('recycling server {name}: {reason}', name=name, reason=reason)
        return self._terminate(child)

    def _terminate(self, child, kill_now=False):
        if child.protocol is None:
            return defer.succeed(None)
        d = child.exit_waiters.wait()
        child.stopping = True
        if kill_now:
            self._signal(child, signal.SIGKILL)
        else:
            self._signal(child, signal.SIGTERM)
            if child.kill_call is None or not child.kill_call.active():
                child.kill_call = self._reactor.callLater(self.killTime, self._signal, child, signal.SIGKILL)
        return d

    def _signal(self, child, sig):
        """``sig`` to the child's whole process group (its helpers too)."""
        if child.protocol is None or child.pid is None:
            return
        self._signal_group(child.pid, sig)
        if sig == signal.SIGTERM:
            # a SIGSTOP-ed child does not act on TERM until it is continued
            self._signal_group(child.pid, signal.SIGCONT)

    def _signal_group(self, pgid, sig):
        try:
            self._killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already (or, without setsid, never existed: see _spawn)
        except OSError as exc:
            self._log.warn('cannot signal process group {pgid}: {err}', pgid=pgid, err=exc)

    def _cancel_restart(self, child):
        if child.restart_call is not None and child.restart_call.active():
            child.restart_call.cancel()
        child.restart_call = None

    # -- spawning and exits --------------------------------------------------------------------
    def _spawn(self, child):
        spec = child.spec
        proto = ChildProtocol(self, spec.name, self._open_log(spec.name), clock=self._reactor)
        env = dict(os.environ if spec.env is None else spec.env)
        # the admin token is the gateway's secret: endpoint code has no use for it
        env.pop(TOKEN_VARIABLE, None)
        argv = list(spec.argv)
        if _SETSID:
            # setsid(1) execs the child as the leader of a new process group (same pid)
            argv = [_SETSID] + argv
        child.started_at = self._reactor.seconds()
        child.ready = False
        child.stopping = False
        try:
            transport = self._reactor.spawnProcess(proto, argv[0], argv, env=env, path=spec.cwd,
                                                   childFDs={0: 'w', 1: 'r', 2: 'r'})
        except Exception as exc:  # EMFILE, ENOMEM, a missing interpreter: an exit like any other
            self._spawn_failed(child, exc)
            return
        child.protocol = proto
        child.pid = transport.pid
        self._write_pid(spec.name, transport.pid)
        if spec.load_timeout:
            child.load_call = self._reactor.callLater(spec.load_timeout, self._load_timed_out, child, proto)
        self._log.info('started server {name} (pid {pid})', name=spec.name, pid=transport.pid)

    def _spawn_failed(self, child, exc):
        reason = 'could not start the process: {}'.format(exc)
        self._log.error('server {name}: {reason}', name=child.spec.name, reason=reason)
        child.protocol = None
        child.pid = None
        if child.trial is not None:
            self._trial_failed(child, None, reason)
            return
        child.failures += 1
        self._schedule_restart(child, short_error(reason), lived=0.0)

    def _open_log(self, name):
        if not self._log_dir:
            return None
        try:
            return LogFile(name + '.log', self._log_dir, rotateLength=10_000_000, maxRotatedFiles=5)
        except OSError as exc:  # out of file descriptors, say: serve without the per-child file
            self._log.warn('server {name}: no log file: {err}', name=name, err=exc)
            return None

    def _load_timed_out(self, child, proto):
        child.load_call = None
        if child.protocol is proto and not child.ready:
            self.restart_child(child.spec.name, 'did not become ready within LOAD_TIMEOUT ({:g}s)'.format(
                child.spec.load_timeout))

    def _child_ready(self, name, port_text, proto):
        child = self._children[name]
        if child.protocol is not proto:
            return
        child.ready = True
        child.failures = 0
        if child.load_call is not None and child.load_call.active():
            child.load_call.cancel()
        child.load_call = None
        try:
            child.port = int(port_text)
        except ValueError:
            pass
        child.ready_waiters.fire(name)
        trial, child.trial = child.trial, None
        if trial is not None:
            trial.callback(name)
        self._notify(name, 'ready')

    def _child_ended(self, name, reason, proto):
        child = self._children[name]
        if child.protocol is not proto:
            return
        pid = child.pid
        was_ready = child.ready
        child.protocol = None
        child.pid = None
        child.ready = False
        child.stopping = False
        for call in (child.kill_call, child.load_call):
            if call is not None and call.active():
                call.cancel()
        child.kill_call = child.load_call = None
        if pid is not None:
            # helpers it started go with it: they would hold its pipes and its memory
            self._signal_group(pid, signal.SIGKILL)
            self._remove_pid(name)
        lived = self._reactor.seconds() - (child.started_at or 0)
        exit_text = _describe_exit(reason)
        child.exit_info = (proto, exit_text, child.kill_reason is None)
        if proto.stderr_tail:
            exit_text = '{}: {}'.format(exit_text, proto.stderr_tail[-1])
        child.exit_waiters.fire(None)
        self._notify(name, 'exited')
        if child.trial is not None and not was_ready:
            self._trial_failed(child, proto, child.kill_reason or exit_text)
            return
        recycle, child.recycle_reason = child.recycle_reason, None
        if not child.wanted or not self.running:
            child.kill_reason = None
            self._log.info('server {name} stopped ({reason})', name=name, reason=exit_text)
            return
        if recycle is not None:
            child.recycles += 1
            self._log.info('server {name} recycled ({reason}); starting a new one', name=name, reason=recycle)
            child.restart_call = self._reactor.callLater(0, self._restart, child)
            return
        if not was_ready:
            child.failures += 1
        error_text = child.kill_reason or exit_text
        child.kill_reason = None
        self._schedule_restart(child, short_error(error_text), lived)

    def _trial_failed(self, child, proto, reason):
        trial, child.trial = child.trial, None
        child.wanted = False
        child.kill_reason = None
        child.recycle_reason = None

        def fire():
            child.trial_output = None
            if trial.called:
                return
            text = reason
            if proto is not None and proto.stderr_tail and proto.stderr_tail[-1] not in reason:
                text = '{}: {}'.format(reason, proto.stderr_tail[-1])
            child.last_error = short_error(text)
            self._log.warn('server {name} did not start: {reason}', name=child.spec.name, reason=child.last_error)
            trial.errback(TrialFailed(child.last_error))

        if proto is not None and not proto.stderr_tail and not proto.closed:
            # the load error is the child's last stderr line, which may be read after the exit
            child.trial_output = fire
            self._reactor.callLater(TRIAL_STDERR_WAIT, fire)
        else:
            fire()

    def _child_output_closed(self, name, proto):
        # stderr read after the exit was seen (its last lines often are the traceback)
        child = self._children.get(name)
        if child is None:
            return
        if child.trial_output is not None:
            child.trial_output()
        if child.exit_info is None or child.exit_info[0] is not proto or not proto.stderr_tail:
            return
        _, exit_text, from_exit = child.exit_info
        child.exit_info = None
        if from_exit and child.last_error is not None and child.last_error.startswith(exit_text):
            child.last_error = short_error('{}: {}'.format(exit_text, proto.stderr_tail[-1]))

    def _schedule_restart(self, child, error_text, lived):
        child.last_error = error_text
        if lived >= self.threshold:
            child.delay = self.minRestartDelay
        else:
            child.delay = min(max(child.delay * 2, self.minRestartDelay), self.maxRestartDelay)
        child.restarts += 1
        if child.failures == self.crash_loop_after:
            self._log.error('server {name} failed {n} times before it was ready; still retrying every {cap:g}s '
                            'at most: {reason}', name=child.spec.name, n=child.failures, cap=self.maxRestartDelay,
                            reason=error_text)
        self._log.warn('server {name} exited ({reason}); restart #{n} in {delay:.1f}s',
                       name=child.spec.name, reason=error_text, n=child.restarts, delay=child.delay)
        child.restart_call = self._reactor.callLater(child.delay, self._restart, child)

    def _restart(self, child):
        child.restart_call = None
        if child.wanted and child.protocol is None and self.running:
            self._spawn(child)

    def _notify(self, name, event):
        for listener in list(self.listeners):
            listener(name, event)

    # -- pid files: children a previous gateway left behind ------------------------------------
    def _pid_path(self, name):
        safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)
        return os.path.join(self._pid_dir, safe + '.pid')

    def _write_pid(self, name, pid):
        if not self._pid_dir or pid is None:
            return
        try:
            os.makedirs(self._pid_dir, exist_ok=True)
            with open(self._pid_path(name), 'w', encoding='ascii') as fh:
                fh.write('{}\n'.format(pid))
        except OSError as exc:
            self._log.warn('server {name}: cannot write its pid file: {err}', name=name, err=exc)

    def _remove_pid(self, name):
        if self._pid_dir:
            try:
                os.remove(self._pid_path(name))
            except OSError:
                pass

    def _end_leftovers(self):
        """End the children a previous gateway with this cache left running (it was killed
        while one was stopped with SIGSTOP, say): they would hold their ports. A pid file's
        process is ours only if it runs the model server under the same name."""
        if not self._pid_dir:
            return
        for name in self._children:
            path = self._pid_path(name)
            try:
                with open(path, encoding='ascii') as fh:
                    pid = int(fh.read().strip())
            except (OSError, ValueError):
                continue
            try:
                process = psutil.Process(pid)
                cmdline = process.cmdline()
                owner = _running_gateway(process.parent())
            except (psutil.Error, OSError):
                cmdline, owner = [], None
            if owner is not None and _is_child_command(cmdline, name):
                # another gateway started from the same cache folder: its child, not a leftover
                self._log.warn('server {name} (pid {pid}) belongs to another running gateway (pid {owner}) that '
                               'uses this cache folder; left alone: give each gateway a cache of its own (--cache)',
                               name=name, pid=pid, owner=owner)
                continue
            if _is_child_command(cmdline, name) and pid != os.getpid():
                self._log.warn('ending server {name} (pid {pid}) left running by a previous gateway',
                               name=name, pid=pid)
                for target in (lambda s: self._killpg(pid, s), lambda s: os.kill(pid, s)):
                    try:
                        target(signal.SIGKILL)
                    except OSError:
                        pass
            self._remove_pid(name)


class TrialFailed(Exception):
    """A child started on trial exited before it was ready; the message is one line."""


def _running_gateway(parent):
    """The pid of ``parent`` when it is a live gateway other than this one, else None."""
    if parent is None or parent.pid in (1, os.getpid()):
        return None
    try:
        cmdline = parent.cmdline()
    except (psutil.Error, OSError):
        return None
    programs = {os.path.basename(part) for part in cmdline[:2]}  # "bis-gateway" or "python .../bis-gateway"
    named = any(part in _GATEWAY_MODULES or part.endswith('.tac') for part in cmdline[1:])
    return parent.pid if named or programs & {'bis-gateway', 'twistd'} else None


_GATEWAY_MODULES = ('bis_twisted.gateway.cli', 'bis_twisted.cli')


def _is_child_command(cmdline, name):
    return any(module in cmdline for module in CHILD_MODULES) and '--name' in cmdline and \
        cmdline[cmdline.index('--name') + 1:cmdline.index('--name') + 2] == [name]


def _describe_exit(reason):
    value = reason.value
    if getattr(value, 'signal', None):
        return 'killed by signal {}'.format(value.signal)
    if getattr(value, 'exitCode', None) is not None:
        return 'exit code {}'.format(value.exitCode)
    return str(value)
