"""``ExitReport``: what one exit of a child says, told once.

A child's exit is seen when its process exits; the last lines it wrote to stderr (often the
traceback's last line: the reason) may be read a moment later, when its pipes close. The
report holds what is known at the exit (``error()``, for the restart that is scheduled at
once) and fires ``told`` once, when the output is all read, or ``OUTPUT_WAIT`` seconds after
the exit when it is not by then: the supervisor takes the final words from there (the
``last_error`` of ``/list_servers``, the reason a start on trial failed).
"""

from twisted.internet import defer

from .child_process import short_error

OUTPUT_WAIT = 1.0  # seconds an exit waits for the child's last stderr line


def describe_exit(reason):
    """``'exit code 3'``, ``'killed by signal 9'`` or the failure's text, of a process-ended
    ``Failure``."""
    value = reason.value
    if getattr(value, 'signal', None):
        return 'killed by signal {}'.format(value.signal)
    if getattr(value, 'exitCode', None) is not None:
        return 'exit code {}'.format(value.exitCode)
    return str(value)


class ExitReport:
    """One exit: ``exit_text`` (``describe_exit``, or why the process could not start),
    ``kill_reason`` (why we killed it ourselves, shown instead of the signal), and the last
    stderr line of ``proto`` (a ``ChildProtocol``, None when nothing was spawned)."""

    def __init__(self, exit_text, proto=None, kill_reason=None, clock=None, wait=OUTPUT_WAIT):
        self.exit_text = exit_text
        self.proto = proto
        self.kill_reason = kill_reason
        self.told = defer.Deferred()
        self._wait_call = None
        if proto is None or proto.closed:
            self._tell()
        else:
            self._wait_call = clock.callLater(wait, self._tell)

    def output_closed(self):
        """The child's pipes closed: every line it wrote has been read."""
        self._tell()

    def _tell(self):
        if self._wait_call is not None and self._wait_call.active():
            self._wait_call.cancel()
        self._wait_call = None
        if not self.told.called:
            self.told.callback(self)

    @property
    def last_line(self):
        return self.proto.stderr_tail[-1] if self.proto is not None and self.proto.stderr_tail else None

    @property
    def text(self):
        """What it died of, with its last stderr line."""
        line = self.last_line
        return '{}: {}'.format(self.exit_text, line) if line else self.exit_text

    def error(self):
        """The one line ``/list_servers`` shows: why we killed it, else ``text``."""
        return short_error(self.kill_reason or self.text)

    def start_error(self):
        """Why a start on trial failed: why we killed it (``LOAD_TIMEOUT``) or what it died
        of, with its last stderr line (the load error) when that is not said already."""
        reason = self.kill_reason or self.exit_text
        line = self.last_line
        if line and line not in reason:
            reason = '{}: {}'.format(reason, line)
        return short_error(reason)
