"""``InFlight``: the requests sent to the fleet and not answered yet, counted per target, per
child process and in all, and the waiters fired when a count falls to zero: a reload's old
process is stopped once it has answered what was sent to it (``when_child_idle``), the
gateway's stop drains what is in flight (``when_idle``).
"""

from twisted.internet import defer

from ..shared.waiters import Waiters


class InFlight:
    """Counts of requests in flight; waiters time out on ``clock``."""

    def __init__(self, clock):
        self._clock = clock
        self.total = 0
        self._per_child = {}    # child name -> requests sent to it and not answered
        self._child_idle = {}   # child name -> Waiters fired when that count is 0
        self._idle = Waiters()  # fired when the total is 0

    def started(self, target):
        """A request goes to ``target`` (its live process, ``target.child_name``); returns the
        child name to give ``done`` (the live process may change before the answer)."""
        child = target.child_name
        target.in_flight += 1
        self.total += 1
        self._per_child[child] = self._per_child.get(child, 0) + 1
        return child

    def done(self, target, child):
        """The request ``started`` sent to ``target``'s process ``child`` is over."""
        target.in_flight -= 1
        self.total -= 1
        left = self._per_child[child] = self._per_child[child] - 1
        if not left:
            del self._per_child[child]
            waiters = self._child_idle.pop(child, None)
            if waiters is not None:
                waiters.fire(None)
        if not self.total:
            self._idle.fire(None)

    def of_child(self, child):
        """Requests sent to process ``child`` and not answered yet."""
        return self._per_child.get(child, 0)

    def when_idle(self):
        """Fires when no request is in flight to any server (at once if none is)."""
        if not self.total:
            return defer.succeed(None)
        return self._idle.wait()

    def when_child_idle(self, child, timeout):
        """Fires when no request sent to process ``child`` is waiting for its answer (at
        once if none is), or after ``timeout`` seconds anyway."""
        if not self._per_child.get(child):
            return defer.succeed(None)
        d = self._child_idle.setdefault(child, Waiters()).wait()
        d.addTimeout(timeout, self._clock)
        d.addErrback(lambda f: f.trap(defer.TimeoutError) and None)
        return d
