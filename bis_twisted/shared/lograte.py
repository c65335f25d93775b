"""``RepeatLimiter``: one log line per cause per period, for the lines a flood of requests
repeats (refused admin calls, 5xx answers while a server restarts): the first line of a
cause goes out at once, the repeats within the period are counted, and when the period ends
one line says how many there were."""

import attr
from twisted.logger import Logger


@attr.s
class _Window:
    until = attr.ib()
    level = attr.ib()
    described = attr.ib()
    suppressed = attr.ib(default=0)
    call = attr.ib(default=None)


class RepeatLimiter:
    """``emit(level, cause, format, **fields)`` logs ``format`` on ``log`` unless a line of
    the same ``cause`` (any hashable) went out less than ``period`` seconds ago. Runs on the
    reactor thread (its timers are ``clock.callLater``)."""

    period = 1.0
    max_causes = 1000  # past this many remembered causes, those whose period ended are forgotten

    def __init__(self, log=None, clock=None, period=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self._log = log or Logger()
        self._clock = clock
        if period is not None:
            self.period = period
        self._windows = {}

    def emit(self, level, cause, format, **fields):
        now = self._clock.seconds()
        window = self._windows.get(cause)
        if window is not None and now < window.until:
            window.suppressed += 1
            if window.call is None:
                window.call = self._clock.callLater(window.until - now, self._summarize, cause)
            return
        if window is not None and window.call is not None:
            # its period is over but its timer has not run yet (a busy reactor runs it late):
            # its count goes out now, or the new period would take its place and lose it
            if window.call.active():
                window.call.cancel()
            self._summarize(cause)
        if len(self._windows) >= self.max_causes:
            self._windows = {k: w for k, w in self._windows.items() if w.call is not None or now < w.until}
        described = fields.pop('described', None) or format
        self._windows[cause] = _Window(until=now + self.period, level=level, described=described)
        getattr(self._log, level)(format, **fields)

    def _summarize(self, cause):
        window = self._windows.pop(cause, None)
        if window is None or not window.suppressed:
            return
        getattr(self._log, window.level)('{count} more like this in the last {period:g}s: {described}',
                                         count=window.suppressed, period=self.period, described=window.described)

    def flush(self):
        """Write the pending counts now (at stop)."""
        for cause, window in list(self._windows.items()):
            if window.call is not None and window.call.active():
                window.call.cancel()
            self._summarize(cause)
