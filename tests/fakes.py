"""A reactor for supervision tests (the idea of Twisted's test_procmon): ``MemoryReactor`` +
``Clock`` whose ``spawnProcess`` records fake processes; a test makes them print, become ready
and exit, and advances time by hand."""

from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from bis_twisted.server import READY_LINE


class FakeProcess:
    def __init__(self, reactor, proto, pid, args, child_fds):
        self.reactor = reactor
        self.proto = proto
        self.pid = pid
        self.args = args
        self.child_fds = child_fds
        self.signals = []

    def signalProcess(self, sig):
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(sig)
        if sig in ('TERM', 'KILL') and self.reactor.obey_signals:
            self.exit(ProcessTerminated(signal=15 if sig == 'TERM' else 9))

    def exit(self, reason):
        if self.pid is not None:
            self.pid = None
            self.proto.processEnded(Failure(reason))


class ProcessReactor(MemoryReactor, Clock):
    """Records spawns; a child is ready and exits when the test says so (or on TERM/KILL,
    while ``obey_signals``)."""

    def __init__(self):
        MemoryReactor.__init__(self)
        Clock.__init__(self)
        self.spawned = []
        self.obey_signals = True
        self._next_pid = 100

    def spawnProcess(self, proto, executable, args=(), env=None, path=None, uid=None, gid=None,
                     usePTY=0, childFDs=None):
        self._next_pid += 1
        process = FakeProcess(self, proto, self._next_pid, args, childFDs)
        proto.makeConnection(process)
        self.spawned.append(process)
        return process

    def child(self, name):
        """The latest process spawned for child ``name``."""
        for process in reversed(self.spawned):
            if process.proto.name == name:
                return process
        raise AssertionError('child {!r} was never spawned'.format(name))

    def ready(self, *names):
        for name in names:
            self.child(name).proto.childDataReceived(1, '{} 0\n'.format(READY_LINE).encode())
