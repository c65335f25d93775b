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
- output is split into bounded lines (``child_process``): a progress bar that never writes a
  newline costs constant memory and time per byte;
- an exit is told once (``exits.ExitReport``), with the last stderr line even when it is read
  after the exit was seen;
- a pid file per child (``pidfiles``) lets the next gateway end a child that outlived this one.

A child's stdin is a pipe the gateway keeps open: the model server exits when it closes, so a
gateway that dies, even by ``kill -9``, leaves no child behind (unless the child is stopped
with SIGSTOP: the pid files cover that).
"""

import collections
import os
import shutil
import signal

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from ..protocol import TOKEN_VARIABLE
from .child_process import ChildProtocol, open_log_file
from .childspec import ChildRecord
from .exits import ExitReport, describe_exit
from .pidfiles import PidFiles

_SETSID = shutil.which('setsid')  # util-linux: puts the exec'd child in a new session/group


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
        # signals a child's process group; the tests' fake reactor brings its own
        self._killpg = killpg or getattr(reactor, 'killpg', None) or os.killpg
        self._pid_files = PidFiles(pid_dir, self._killpg)
        self._children = collections.OrderedDict()
        self.listeners = []  # callables(name, event) for 'started' / 'ready' / 'exited'

    def shown(self, text):
        """``text`` with the endpoint files named relative to the endpoints folder."""
        return text.replace(self._hidden_folder, '') if self._hidden_folder else text

    # -- registry ------------------------------------------------------------------------------
    def add(self, spec, start=True):
        """Register a child; ``start`` says whether it runs when the service starts."""
        child = ChildRecord(spec, wanted=start)
        self._children[spec.name] = child
        if self.running and start:
            self._spawn(child)

    def replace_spec(self, spec):
        """Use ``spec`` from the child's next start on (a running child is left alone)."""
        self._children[spec.name].spec = spec

    def remove(self, name):
        """Stop a child (drained, as ``stop_child``) and forget it; fires when it has exited."""
        d = self.stop_child(name)
        d.addCallback(lambda _: self._children.pop(name, None))
        return d

    def status(self, name):
        return self._children[name].status(self._reactor.seconds(), self.crash_loop_after)

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
        self._pid_files.end_leftovers(list(self._children))
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
        proto = ChildProtocol(self, spec.name, open_log_file(self._log_dir, spec.name), clock=self._reactor)
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
        self._pid_files.write(spec.name, transport.pid)
        if spec.load_timeout:
            child.load_call = self._reactor.callLater(spec.load_timeout, self._load_timed_out, child, proto)
        self._log.info('started server {name} (pid {pid})', name=spec.name, pid=transport.pid)
        self._notify(spec.name, 'started')

    def _spawn_failed(self, child, exc):
        report = ExitReport('could not start the process: {}'.format(exc))
        self._log.error('server {name}: {reason}', name=child.spec.name, reason=report.exit_text)
        child.protocol = None
        child.pid = None
        if child.trial is not None:
            self._trial_failed(child, report)
            return
        child.failures += 1
        self._schedule_restart(child, report.error(), lived=0.0)

    def _load_timed_out(self, child, proto):
        child.load_call = None
        if child.protocol is proto and not child.ready:
            self.restart_child(child.spec.name, 'did not become ready within LOAD_TIMEOUT ({:g}s)'.format(
                child.spec.load_timeout))

    # -- what a child's process protocol reports ----------------------------------------------
    def child_ready(self, name, port_text, proto):
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

    def child_exited(self, name, reason, proto):
        child = self._children[name]
        if child.protocol is not proto:
            return
        pid = child.pid
        was_ready = child.ready
        child.protocol = None
        child.pid = None
        child.ready = False
        child.stopping = False
        child.cancel_timers()
        if pid is not None:
            # helpers it started go with it: they would hold its pipes and its memory
            self._signal_group(pid, signal.SIGKILL)
            self._pid_files.remove(name)
        lived = self._reactor.seconds() - (child.started_at or 0)
        report = child.report = ExitReport(describe_exit(reason), proto, child.kill_reason, self._reactor)
        child.kill_reason = None
        child.exit_waiters.fire(None)
        self._notify(name, 'exited')
        if child.trial is not None and not was_ready:
            self._trial_failed(child, report)
            return
        if not child.wanted or not self.running:
            self._log.info('server {name} stopped ({reason})', name=name, reason=report.text)
            return
        if not was_ready:
            child.failures += 1
        error = report.error()
        self._schedule_restart(child, error, lived)

        def told(report):
            # the last stderr line read after the exit names the error better (a traceback's end)
            if child.last_error == error:
                child.last_error = report.error()

        report.told.addCallback(told)

    def _trial_failed(self, child, report):
        trial, child.trial = child.trial, None
        child.wanted = False

        def told(report):
            if trial.called:
                return
            child.last_error = report.start_error()
            self._log.warn('server {name} did not start: {reason}', name=child.spec.name, reason=child.last_error)
            trial.errback(TrialFailed(child.last_error))

        report.told.addCallback(told)

    def child_output_closed(self, name, proto):
        """Every line of ``proto``'s process has been read (after its exit was seen)."""
        child = self._children.get(name)
        if child is not None and child.report is not None and child.report.proto is proto:
            child.report.output_closed()

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


class TrialFailed(Exception):
    """A child started on trial exited before it was ready; the message is one line."""
