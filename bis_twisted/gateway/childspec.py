"""What the gateway knows of one child: how to start it (``ChildSpec``), the supervisor's
running record of it (``ChildRecord``) and what ``/list_servers`` shows of it
(``ChildStatus``, a snapshot of the record)."""

import attr

from ..shared.waiters import Waiters


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


class ChildRecord:
    """The supervisor's mutable record of one child: its spec, its process now, its counts
    and the timers and waiters that hang on it."""

    def __init__(self, spec, wanted):
        self.spec = spec
        self.wanted = wanted
        self.protocol = None  # the ChildProtocol of the running process, None when none runs
        self.pid = None
        self.started_at = None
        self.ready = False
        self.port = None
        self.stopping = False  # told to stop (TERM or KILL sent) and not exited yet
        self.restarts = 0
        self.failures = 0  # exits before ready, in a row
        self.delay = 0.0
        self.last_error = None
        self.kill_reason = None  # why we killed it ourselves, for its exit report
        self.report = None  # the ExitReport of its last exit
        self.restart_call = None
        self.kill_call = None
        self.load_call = None
        self.ready_waiters = Waiters()
        self.exit_waiters = Waiters()
        self.trial = None  # start_trial's Deferred while the start is on trial

    def cancel_timers(self):
        """The kill and load timers of a process that is gone."""
        for call in (self.kill_call, self.load_call):
            if call is not None and call.active():
                call.cancel()
        self.kill_call = self.load_call = None

    def status(self, now, crash_loop_after):
        next_in = None
        if self.restart_call is not None and self.restart_call.active():
            next_in = max(0.0, self.restart_call.getTime() - now)
        return ChildStatus(name=self.spec.name, running=self.protocol is not None, ready=self.ready,
                           wanted=self.wanted, pid=self.pid, port=self.port, started_at=self.started_at,
                           restarts=self.restarts, last_error=self.last_error, next_restart_in=next_in,
                           failed=self.failures >= crash_loop_after, stopping=self.stopping)
