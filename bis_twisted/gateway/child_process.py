"""A model-server child as the gateway sees its process: its output split into bounded lines
(``OutputLines``) and the process protocol that forwards them, spots the ready line and keeps
the last stderr lines (``ChildProtocol``). The ``Supervisor`` decides what to do; ``exits``
says what an exit was.

Output is split into bounded lines: a progress bar that never writes a newline costs
constant memory and time per byte (the shape of ``LineReceiver`` with its ``MAX_LENGTH``).
"""

import collections
import re
import time

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.python.logfile import LogFile

from ..protocol import READY_LINE
from . import child_output

MAX_LINE_BYTES = 8192      # a longer line is cut and marked
MAX_ERROR_CHARS = 300      # last_error as shown by /list_servers
PROGRESS_LOG_INTERVAL = 1.0  # seconds between two logged '\r' progress updates of one stream

_log = Logger()


def open_log_file(log_dir, name):
    """The child's own log file, ``<log_dir>/<name>.log`` (rotated), or None without a
    folder or when it cannot be opened (out of file descriptors, say: served without it)."""
    if not log_dir:
        return None
    try:
        return LogFile(name + '.log', log_dir, rotateLength=10_000_000, maxRotatedFiles=5)
    except OSError as exc:
        _log.warn('server {name}: no log file: {err}', name=name, err=exc)
        return None


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
            self._supervisor.child_ready(self.name, line[len(READY_LINE):].strip(), self)
            return
        if fd == 2:
            self.stderr_tail.append(short_error(self._supervisor.shown(line)))
        child_output.relay(self._log, self.name, fd, line)

    def processExited(self, reason):
        # the process is gone; its pipes may stay open for as long as a helper it started lives
        self.exited = True
        self._supervisor.child_exited(self.name, reason, self)

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
            self._supervisor.child_output_closed(self.name, self)

