"""The fakes of the unit tests, in one place.

- ``ProcessReactor``: a reactor for supervision tests (the idea of Twisted's test_procmon):
  ``MemoryReactor`` + ``Clock`` whose ``spawnProcess`` records fake processes; a test makes
  them print, become ready and exit, and advances time by hand.
- ``FakeChildren``: the fleet's client to its children, answering with Deferreds the test
  fires; the ``reactor``, ``children`` and ``make_fleet`` fixtures build a real ``Fleet`` on
  them (a module imports the fixtures it uses from here).
- ``FakeFleet``: what the routes, the metrics and the reload watcher use of a ``Fleet``.
"""

import errno
import json
import signal
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError, ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from bis_twisted.errors import ServiceUnavailable
from bis_twisted.gateway.config import parse_config
from bis_twisted.gateway.fleet import Fleet
from bis_twisted.gateway.proxy import NotConnected
from bis_twisted.gateway.supervisor import Supervisor
from bis_twisted.protocol import READY_LINE, expected_class_name
from bis_twisted.shared.web import Answer

GATEWAY_PORT = 5002

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


# -- a real Fleet on fake children ----------------------------------------------------------------------------
class Call:
    def __init__(self, url, payload):
        self.url = url
        self.payload = payload
        self.cancelled = False
        self.deferred = defer.Deferred(canceller=self._cancel)

    def _cancel(self, d):
        self.cancelled = True  # the real client aborts its connection here

    @property
    def port(self):
        return int(self.url.rsplit(b':', 1)[1].split(b'/')[0])

    def answer(self, status=200, **body):
        self.deferred.callback(Answer(status, dict({'predict_result': 'ok'}, **body)))


class FakeChildren:
    """The fleet's HTTP client. ``post_json`` records each call and answers with a Deferred the
    test fires (or at once with ``answer_at_once``); URLs in ``refusing`` fail with
    ``NotConnected`` (the request never reached them); bases in ``down`` fail ``/health``."""

    def __init__(self):
        self.calls = []      # requests that reached a child
        self.refused = []    # urls that refused a request
        self.refusing = set()
        self.down = set()
        self.hung = set()       # bases whose /health never answers
        self.unanswered = []    # the pings sent to them
        self.answer_at_once = None

    def post_json(self, url, payload, timeout, what, **kwargs):
        if url in self.refusing:
            self.refused.append(url)
            return defer.fail(NotConnected('ConnectionRefusedError'))
        call = Call(url, payload)
        self.calls.append(call)
        if self.answer_at_once is not None:
            call.deferred.callback(Answer(200, dict(self.answer_at_once, port=call.port)))
        return call.deferred

    def get_json(self, url, timeout):
        base = url.rsplit(b'/', 1)[0]
        if base in self.down:
            return defer.fail(ConnectionRefusedError())
        if base in self.hung:  # connected, never answered (SIGSTOP-ed): the test may fail it later
            self.unanswered.append(defer.Deferred())
            return self.unanswered[-1]
        return defer.succeed(Answer(200, {'STATUS': 'OK', 'NR_WORKERS': 1}))

    @property
    def ports(self):
        return [call.port for call in self.calls]


@pytest.fixture
def reactor():
    return ProcessReactor()


@pytest.fixture
def children():
    return FakeChildren()


@pytest.fixture
def make_fleet(tmp_path, reactor, children):
    """``make_fleet(CONFIG_ENDPOINTS)``: the fleet of that config, children spawned (not ready)."""
    folder = tmp_path / 'endpoints'
    folder.mkdir()

    def make(endpoints):
        for name, entry in endpoints.items():
            if entry.get('HOST') != 'NO_HOST' and not entry.get('URLS'):
                server_class = entry.get('SERVER_CLASS', name)
                (folder / (server_class + '.py')).write_text(
                    'class {}:\n    pass\n'.format(expected_class_name(server_class)))
        config = parse_config({'CONFIG_ENDPOINTS': endpoints}, 'config_gateway.txt', str(folder),
                              gateway_port=GATEWAY_PORT)
        supervisor = Supervisor(reactor=reactor)
        fleet = Fleet(config, supervisor, children, str(folder), reactor=reactor)
        fleet.register_children()
        supervisor.startService()
        return fleet

    return make


def send(fleet, name='demo', payload=b'{"INPUT_VALUE": 1}'):
    return defer.Deferred.fromCoroutine(fleet.run(name, payload))


def result_of(d):
    results = []
    d.addBoth(results.append)
    assert results, 'the Deferred has not fired'
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d, *types):
    results = []
    d.addBoth(results.append)
    assert results, 'the Deferred has not fired'
    assert isinstance(results[0], Failure), 'expected a failure, got {!r}'.format(results[0])
    assert results[0].check(*types), results[0]
    return results[0].value


def described(fleet, name='demo'):
    """What /list_servers shows of server ``name``."""
    return result_of(defer.Deferred.fromCoroutine(fleet.describe(fleet.servers[name])))


def in_flight(fleet, name='demo'):
    return [replica['IN_FLIGHT'] for replica in described(fleet, name)['REPLICAS']]


# -- a fake Fleet --------------------------------------------------------------------------------
class FakeFleet:
    """What the routes, the metrics and the reload watcher use of a ``Fleet``: servers named
    ``names`` (a file each in ``endpoints_dir`` when given), ``run`` answering ``answers`` in
    order (an Answer, or an error it raises), ``reload`` recorded."""

    def __init__(self, names=(), endpoints_dir=None):
        self.endpoints_dir = endpoints_dir
        self.servers = {name: SimpleNamespace(
            name=name, targets=[SimpleNamespace(active=True)],
            config=SimpleNamespace(has_file=True, is_remote=False, is_spawned=True, server_class=name, entry={}))
            for name in names}
        self.sent = []
        self.answers = []
        self.ready = True
        self.reloaded = []

    async def run(self, name, payload, request_id=None, answer_fields=None):
        self.sent.append((name, json.loads(payload)))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def unready(self):
        return [] if self.ready else sorted(self.servers)

    def target_ready(self, target):
        return self.ready

    def unavailable(self, server):
        return ServiceUnavailable('server {!r} is starting (loading its workers); retry shortly'.format(server.name))

    def is_stopped(self, server):
        return False

    async def reload(self, server):
        self.reloaded.append(server.name)
        return 1
