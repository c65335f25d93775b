"""What the gateway knows of one child: how to start it (``ChildSpec``) and what
``/list_servers`` shows of it (``ChildStatus``)."""

import attr


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
