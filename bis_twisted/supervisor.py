"""``Supervisor``: the model-server child processes: spawn, watch, restart, stop.

Written in the style of ``twisted.runner.procmon.ProcessMonitor`` (injected reactor, tunables
as class attributes, restart delay doubling up to a cap and reset after a child lived past
``threshold``, stop = TERM then KILL after ``killTime``), but our own class: procmon drops the
exit reason, keeps no restart count and gives no way to learn that a child is ready.

A child's stdin is a pipe the gateway keeps open: the model server exits when it closes, so a
gateway that dies, even by ``kill -9``, leaves no child behind.
"""

import collections
import os
import signal
import time

import attr
from twisted.application.service import Service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.logfile import LogFile

from .server import READY_LINE


@attr.s(frozen=True)
class ChildSpec:
    """How to start one child."""

    name = attr.ib()
    argv = attr.ib()  # argv[0] is the executable
    env = attr.ib(default=None)
    cwd = attr.ib(default=None)


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


class _Child:
    """The supervisor's mutable record of one child."""

    def __init__(self, spec):
        self.spec = spec
        self.protocol = None
        self.started_at = None
        self.ready = False
        self.port = None
        self.wanted = False
        self.restarts = 0
        self.delay = 0.0
        self.last_error = None
        self.kill_reason = None  # why we killed it ourselves, shown instead of 'signal 9'
        self.restart_call = None
        self.kill_call = None
        self.ready_waiters = []
        self.exit_waiters = []


class ChildProtocol(protocol.ProcessProtocol):
    """Forwards a child's output lines to the gateway's log (name in front) and its own log
    file, spots the ready line, and keeps the last stderr lines as the exit reason."""

    _log = Logger()

    def __init__(self, supervisor, name, logfile=None):
        self._supervisor = supervisor
        self.name = name
        self._logfile = logfile
        self._partial = {1: b'', 2: b''}
        self.stderr_tail = collections.deque(maxlen=5)

    def childDataReceived(self, fd, data):
        lines = (self._partial.get(fd, b'') + data).split(b'\n')
        self._partial[fd] = lines.pop()
        for raw in lines:
            self._line(fd, raw.decode('utf-8', 'replace').rstrip('\r'))

    def _line(self, fd, line):
        if self._logfile is not None:
            self._logfile.write('{} {}\n'.format(time.strftime('%Y-%m-%dT%H:%M:%S'), line))
        if fd == 1 and line.startswith(READY_LINE):
            self._supervisor._child_ready(self.name, line[len(READY_LINE):].strip())
            return
        if fd == 2 and line.strip():
            self.stderr_tail.append(line.strip())
        self._log.info('[{name}] {line}', name=self.name, line=line)

    def processEnded(self, reason):
        for fd, rest in self._partial.items():
            if rest:
                self._line(fd, rest.decode('utf-8', 'replace'))
        if self._logfile is not None:
            self._logfile.flush()
        self._supervisor._child_ended(self.name, reason, self)


class Supervisor(Service):
    """Starts registered children and keeps the wanted ones running."""

    threshold = 5.0        # a child that lived this long resets its restart delay
    killTime = 5.0         # seconds between TERM and KILL when stopping
    minRestartDelay = 0.2
    maxRestartDelay = 30.0

    _log = Logger()

    def __init__(self, reactor=None, log_dir=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._log_dir = log_dir
        self._children = collections.OrderedDict()
        self.listeners = []  # callables(name, event) for 'ready' / 'exited'

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

    def status(self, name):
        child = self._children[name]
        pid = child.protocol.transport.pid if child.protocol and child.protocol.transport else None
        next_in = None
        if child.restart_call is not None and child.restart_call.active():
            next_in = max(0.0, child.restart_call.getTime() - self._reactor.seconds())
        return ChildStatus(name=name, running=child.protocol is not None, ready=child.ready,
                           wanted=child.wanted, pid=pid, port=child.port, started_at=child.started_at,
                           restarts=child.restarts, last_error=child.last_error, next_restart_in=next_in)

    def is_ready(self, name):
        return self._children[name].ready

    def when_ready(self, name):
        """A Deferred that fires when the child prints its ready line (at once if it has)."""
        child = self._children[name]
        if child.ready:
            return defer.succeed(name)
        d = defer.Deferred(canceller=lambda d: child.ready_waiters.remove(d))
        child.ready_waiters.append(d)
        return d

    # -- service -------------------------------------------------------------------------------
    def startService(self):
        Service.startService(self)
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
        self._cancel_restart(child)
        if child.protocol is None and self.running:
            self._spawn(child)

    def stop_child(self, name):
        """Stop a child and do not restart it; fires when it has exited."""
        child = self._children[name]
        child.wanted = False
        self._cancel_restart(child)
        return self._terminate(child)

    def restart_child(self, name, reason):
        """Kill a child that misbehaves (hung, say); it is started again as after a crash."""
        child = self._children[name]
        child.kill_reason = reason
        self._log.warn('restarting server {name}: {reason}', name=name, reason=reason)
        return self._terminate(child, kill_now=True)

    def _terminate(self, child, kill_now=False):
        if child.protocol is None:
            return defer.succeed(None)
        d = defer.Deferred()
        child.exit_waiters.append(d)
        if kill_now:
            self._signal(child, 'KILL')
        else:
            self._signal(child, 'TERM')
            if child.kill_call is None or not child.kill_call.active():
                child.kill_call = self._reactor.callLater(self.killTime, self._signal, child, 'KILL')
        return d

    def _signal(self, child, sig):
        if child.protocol is None:
            return
        transport = child.protocol.transport
        try:
            transport.signalProcess(sig)
            if sig == 'TERM':
                # a SIGSTOP-ed child does not act on TERM until it is continued
                transport.signalProcess(signal.SIGCONT)
        except (error.ProcessExitedAlready, OSError):
            pass

    def _cancel_restart(self, child):
        if child.restart_call is not None and child.restart_call.active():
            child.restart_call.cancel()
        child.restart_call = None

    # -- spawning and exits --------------------------------------------------------------------
    def _spawn(self, child):
        spec = child.spec
        logfile = None
        if self._log_dir:
            logfile = LogFile(spec.name + '.log', self._log_dir, rotateLength=10_000_000, maxRotatedFiles=5)
        proto = ChildProtocol(self, spec.name, logfile)
        child.protocol = proto
        child.ready = False
        child.started_at = self._reactor.seconds()
        env = dict(os.environ if spec.env is None else spec.env)
        # the admin token is the gateway's secret: endpoint code has no use for it
        env.pop('BIS_ADMIN_TOKEN', None)
        self._reactor.spawnProcess(proto, spec.argv[0], list(spec.argv), env=env, path=spec.cwd,
                                   childFDs={0: 'w', 1: 'r', 2: 'r'})
        self._log.info('started server {name} (pid {pid})', name=spec.name, pid=proto.transport.pid)

    def _child_ready(self, name, port_text):
        child = self._children[name]
        child.ready = True
        try:
            child.port = int(port_text)
        except ValueError:
            pass
        waiters, child.ready_waiters = child.ready_waiters, []
        for d in waiters:
            d.callback(name)
        self._notify(name, 'ready')

    def _child_ended(self, name, reason, proto):
        child = self._children[name]
        if child.protocol is not proto:
            return
        child.protocol = None
        child.ready = False
        if child.kill_call is not None and child.kill_call.active():
            child.kill_call.cancel()
        child.kill_call = None
        lived = self._reactor.seconds() - (child.started_at or 0)
        exit_text = _describe_exit(reason)
        if proto.stderr_tail:
            exit_text = '{}: {}'.format(exit_text, proto.stderr_tail[-1])
        waiters, child.exit_waiters = child.exit_waiters, []
        for d in waiters:
            d.callback(None)
        self._notify(name, 'exited')
        if not child.wanted or not self.running:
            self._log.info('server {name} stopped ({reason})', name=name, reason=exit_text)
            return
        child.last_error = child.kill_reason or exit_text
        child.kill_reason = None
        if lived >= self.threshold:
            child.delay = self.minRestartDelay
        else:
            child.delay = min(max(child.delay * 2, self.minRestartDelay), self.maxRestartDelay)
        child.restarts += 1
        self._log.warn('server {name} exited ({reason}); restart #{n} in {delay:.1f}s',
                       name=name, reason=exit_text, n=child.restarts, delay=child.delay)
        child.restart_call = self._reactor.callLater(child.delay, self._restart, child)

    def _restart(self, child):
        child.restart_call = None
        if child.wanted and child.protocol is None and self.running:
            self._spawn(child)

    def _notify(self, name, event):
        for listener in list(self.listeners):
            listener(name, event)


def _describe_exit(reason):
    value = reason.value
    if getattr(value, 'signal', None):
        return 'killed by signal {}'.format(value.signal)
    if getattr(value, 'exitCode', None) is not None:
        return 'exit code {}'.format(value.exitCode)
    return str(value)
