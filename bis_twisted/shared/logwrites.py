"""``LinesPerTurn``: a log file whose lines of one reactor turn leave in one write.

twisted.logger's ``FileLogObserver`` writes and flushes each event: with an access-log line
per request, a busy gateway made two ``write`` calls per request (stdout and ``gateway.log``).
Wrapped in ``LinesPerTurn``, the lines the reactor thread logs are kept until the reactor's
next turn (``callLater(0)``) and written together. A line is never held longer than that;
lines logged from another thread, or while the reactor is not running (before it starts, and
after it stopped), are written at once, after those held; the reactor's shutdown writes what
is held. One ``LinesPerTurn`` may write to several files (``also``): the gateway's stdout and its
rotated ``gateway.log`` get the same lines from one observer, so a line is filtered and
formatted once, not once per file.
"""

import threading

from twisted.python.compat import ioType


class LinesPerTurn:
    """A file-like object for ``FileLogObserver`` (it is given text) over ``out`` and the files
    in ``also``, each a text or binary file."""

    def __init__(self, out, reactor, also=()):
        self._outs = [(each, ioType(each) is bytes) for each in (out,) + tuple(also)]
        self._reactor = reactor
        self._held = []
        self._call = None
        self._lock = threading.Lock()
        self._reactor_thread = None
        reactor.callWhenRunning(self._running)
        reactor.addSystemEventTrigger('after', 'shutdown', self.write_held)

    def _running(self):
        self._reactor_thread = threading.get_ident()

    def write(self, text):
        on_reactor = self._reactor_thread == threading.get_ident()
        if on_reactor and self._reactor.running:
            self._held.append(text)
            if self._call is None:
                self._call = self._reactor.callLater(0, self.write_held)
            return
        if on_reactor:  # stopping: what is held first
            self.write_held()
        with self._lock:
            self._write(text)

    def flush(self):
        """``FileLogObserver`` flushes each event: the lines held go at the next turn."""

    def write_held(self):
        """Write the lines held (the reactor thread only)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        held, self._held = self._held, []
        if held:
            with self._lock:
                self._write(''.join(held))

    def _write(self, text):
        data = None
        for out, binary in self._outs:
            if binary and data is None:
                data = text.encode('utf-8')
            out.write(data if binary else text)
            out.flush()
