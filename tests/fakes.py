"""A reactor for supervision tests (the idea of Twisted's test_procmon): ``MemoryReactor`` +
``Clock`` whose ``spawnProcess`` records fake processes; a test makes them print, become ready
and exit, and advances time by hand."""

import errno
import signal

from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from bis_twisted.protocol import READY_LINE

_SIGNAL_NAMES = {signal.SIGTERM: 'TERM', signal.SIGKILL: 'KILL'}


class FakeProcess:
    def __init__(self, reactor, proto, pid, args, child_fds, env=None):
        self.reactor = reactor
        self.env = env
        self.proto = proto
        self.pid = pid
        self.group = pid  # the process group it leads (setsid)
        self.args = args
        self.child_fds = child_fds
        self.signals = []

    def signalProcess(self, sig):
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(sig)
        if sig in ('TERM', 'KILL') and self.reactor.obey_signals:
            self.exit(ProcessTerminated(signal=15 if sig == 'TERM' else 9))

    def exit(self, reason, pipes_closed=True):
        """The process exits; with ``pipes_closed=False`` a helper it started keeps its
        output pipes open, so only ``processExited`` is seen until ``close_pipes()``."""
        if self.pid is not None:
            self.pid = None
            self._reason = Failure(reason)
            self.proto.processExited(self._reason)
            if pipes_closed:
                self.close_pipes()

    def close_pipes(self):
        self.proto.processEnded(self._reason)


class ProcessReactor(MemoryReactor, Clock):
    """Records spawns; a child is ready and exits when the test says so (or on TERM/KILL,
    while ``obey_signals``). ``spawn_error`` makes the next spawns raise it."""

    def __init__(self):
        MemoryReactor.__init__(self)
        Clock.__init__(self)
        self.spawned = []
        self.obey_signals = True
        self.spawn_error = None
        self.group_signals = []  # (group, signal name) sent to groups whose leader is gone
        self._next_pid = 100

    def spawnProcess(self, proto, executable, args=(), env=None, path=None, uid=None, gid=None,
                     usePTY=0, childFDs=None):
        if self.spawn_error is not None:
            raise self.spawn_error
        self._next_pid += 1
        process = FakeProcess(self, proto, self._next_pid, args, childFDs, env)
        proto.makeConnection(process)
        self.spawned.append(process)
        return process

    def killpg(self, group, sig):
        """The supervisor signals a child's whole group through this (``os.killpg``)."""
        name = _SIGNAL_NAMES.get(sig, sig)
        for process in self.spawned:
            if process.group == group:
                if process.pid is None:
                    self.group_signals.append((group, name))
                    raise ProcessLookupError(errno.ESRCH, 'no such process group')
                process.signalProcess(name)
                return
        raise ProcessLookupError(errno.ESRCH, 'no such process group')

    def child(self, name):
        """The latest process spawned for child ``name``."""
        for process in reversed(self.spawned):
            if process.proto.name == name:
                return process
        raise AssertionError('child {!r} was never spawned'.format(name))

    def ready(self, *names):
        for name in names:
            self.child(name).proto.childDataReceived(1, '{} 0\n'.format(READY_LINE).encode())
