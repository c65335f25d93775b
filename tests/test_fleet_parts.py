"""The fleet's parts one at a time, each built from the parts it takes (no ``Fleet``): the
in-flight counts on a ``Clock``, the topology and the router over a real ``Supervisor`` on a
``ProcessReactor`` (MemoryReactor + Clock) with fake children, one recycle path with one
guard and one counter, the exit report that is told once. Also: no module reads the fleet's
private state, and no class of the package is made of mixins."""

import ast
import os
import re

import pytest
from twisted.internet import defer
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock

from bis_twisted.errors import BadRequest, Conflict, ServerStopped, ServiceUnavailable, UnknownSignature
from bis_twisted.gateway.childspec import ChildSpec
from bis_twisted.gateway.config import parse_config
from bis_twisted.gateway.exits import ExitReport
from bis_twisted.gateway.health import HealthMonitor
from bis_twisted.gateway.inflight import InFlight
from bis_twisted.gateway.operations import Operations
from bis_twisted.gateway.probe import Probe
from bis_twisted.gateway.routing import Router
from bis_twisted.gateway.supervisor import Supervisor
from bis_twisted.gateway.topology import BLUE, GREEN, Topology
from bis_twisted.protocol import expected_class_name
from bis_twisted.shared.web import Answer
from fakes import FakeChildren, ProcessReactor, failure_of, result_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'bis_twisted')


class ControlledChildren(FakeChildren):
    """``FakeChildren`` that also take control calls (``/update_workers``): each is recorded
    and answered with ``control_answer``."""

    def __init__(self):
        super().__init__()
        self.control_calls = []
        self.control_answer = Answer(200, {'MESSAGE': 'OK'})

    async def send_json(self, url, data, timeout, headers=None):
        self.control_calls.append((url, data, headers))
        return self.control_answer


class Parts:
    """The fleet's parts wired as ``Fleet`` wires them, over fakes."""

    def __init__(self, tmp_path, endpoints):
        self.folder = tmp_path / 'endpoints'
        self.folder.mkdir()
        for name, entry in endpoints.items():
            if not entry.get('URLS'):
                (self.folder / (name + '.py')).write_text('class {}:\n    pass\n'.format(expected_class_name(name)))
        config = self.config(endpoints)
        self.reactor = ProcessReactor()
        self.reactor.obey_signals = False
        self.children = ControlledChildren()
        self.supervisor = Supervisor(reactor=self.reactor)
        self.topology = Topology(config, self.supervisor, self.children, str(self.folder), 'python3', '/run')
        self.in_flight = InFlight(self.reactor)
        self.router = Router(self.topology, self.supervisor, self.children, self.in_flight, self.reactor)
        self.operations = Operations(self.topology, self.supervisor, self.router, self.in_flight, self.children)
        self.probe = Probe(self.topology, self.supervisor, self.children, self.router, self.operations, self.reactor)
        self.supervisor.listeners.append(self.router.child_event)
        self.topology.register_all()
        self.supervisor.startService()

    def config(self, endpoints, keep=None):
        return parse_config({'CONFIG_ENDPOINTS': endpoints}, 'config_gateway.txt', str(self.folder),
                            gateway_port=5002, keep_ports=keep)

    def send(self, name='demo'):
        return defer.Deferred.fromCoroutine(self.router.run(name, b'{}'))


# -- in flight ------------------------------------------------------------------------------------
class _Target:
    def __init__(self, child):
        self.child_name = child
        self.in_flight = 0


def test_in_flight_counts_per_target_per_process_and_in_all_and_fires_the_idle_waiters():
    counts = InFlight(Clock())
    a, b = _Target('a'), _Target('b')
    first = counts.started(a)
    counts.started(a)
    counts.started(b)
    assert (a.in_flight, b.in_flight, counts.total, counts.of_child('a')) == (2, 1, 3, 2)
    idle, a_idle = counts.when_idle(), counts.when_child_idle('a', 10)
    a.child_name = 'a+'  # the live process changes: the requests sent to 'a' still count for 'a'
    counts.done(a, first)
    assert not a_idle.called
    counts.done(a, 'a')
    assert a_idle.called and not idle.called and counts.of_child('a') == 0
    counts.done(b, 'b')
    assert idle.called and counts.total == 0
    assert counts.when_idle().called and counts.when_child_idle('b', 10).called  # at once when idle


def test_a_child_idle_waiter_gives_up_after_its_timeout_without_an_error():
    clock = Clock()
    counts = InFlight(clock)
    counts.started(_Target('a'))
    waiting = counts.when_child_idle('a', 5)
    clock.advance(4.9)
    assert not waiting.called
    clock.advance(0.1)
    assert result_of(waiting) is None


# -- the topology -----------------------------------------------------------------------------------
def test_topology_gives_each_replica_a_blue_and_a_green_slot_and_starts_only_the_live_one(tmp_path):
    parts = Parts(tmp_path, {'demo': {'REPLICAS': 2}, 'off': {'DISABLED': True}})
    target = parts.topology.server('demo').targets[1]
    assert target.names == ['demo#1', 'demo#1+'] and target.slot == BLUE and target.other_slot == GREEN
    spec = parts.topology.child_spec(target.server.config, target, GREEN)
    assert spec.argv[spec.argv.index('--port') + 1] == '5007'  # the green slot: its spare port
    assert [p.proto.name for p in parts.reactor.spawned] == ['demo#0', 'demo#1']
    assert parts.topology.is_stopped(parts.topology.server('off'))
    with pytest.raises(UnknownSignature) as caught:
        parts.topology.server('dmeo')
    assert caught.value.message == "unknown SIGNATURE 'dmeo'; did you mean 'demo'?; available: demo"


def test_a_remote_server_cannot_be_started_or_stopped_from_here(tmp_path):
    parts = Parts(tmp_path, {'far': {'URLS': ['http://10.9.0.1:7000/run']}})
    with pytest.raises(BadRequest):
        parts.topology.spawned_server('far')
    assert not parts.topology.is_stopped(parts.topology.server('far'))


# -- the router -----------------------------------------------------------------------------------
def test_router_sends_to_the_least_busy_ready_replica_and_counts_it_in_flight(tmp_path):
    parts = Parts(tmp_path, {'demo': {'REPLICAS': 2}})
    assert failure_of(parts.send(), ServiceUnavailable).message == \
        "server 'demo' is starting (loading its workers); retry shortly"
    parts.reactor.ready('demo#0', 'demo#1')
    first, second = parts.send(), parts.send()
    assert parts.children.ports == [5003, 5004] and parts.in_flight.total == 2
    parts.children.calls[0].answer()
    assert result_of(first).status == 200 and parts.in_flight.of_child('demo#0') == 0
    parts.send()
    assert parts.children.ports[-1] == 5003
    assert not second.called


def test_router_says_a_stopped_server_is_stopped(tmp_path):
    parts = Parts(tmp_path, {'demo': {}})
    parts.reactor.obey_signals = True
    result_of(parts.operations.stop(parts.topology.server('demo')))
    assert failure_of(parts.send(), ServerStopped).retry_after is None


# -- one recycle path, one guard, one counter ----------------------------------------------------------
def test_a_recycle_starts_the_new_process_beside_the_old_and_counts_once(tmp_path):
    parts = Parts(tmp_path, {'demo': {}})
    parts.reactor.ready('demo')
    server = parts.topology.server('demo')
    target = server.targets[0]
    busy = parts.send()
    done = defer.Deferred.fromCoroutine(parts.operations.recycle(server, target, 'RSS 300 MB over MAX_RSS_MB 100'))
    assert parts.operations.busy('demo')
    # while it is under way, a reload is refused and a second recycle does nothing
    assert failure_of(defer.Deferred.fromCoroutine(parts.operations.reload(server)), Conflict).status == 409
    assert result_of(defer.Deferred.fromCoroutine(parts.operations.recycle(server, target, 'again'))) is False
    parts.reactor.ready('demo+')
    assert target.child_name == 'demo+' and parts.reactor.child('demo').signals == []  # it owes an answer
    parts.children.calls[0].answer()
    assert result_of(busy).status == 200 and parts.reactor.child('demo').signals[0] == 'TERM'
    parts.reactor.child('demo').exit(ProcessTerminated(signal=15))
    assert result_of(done) is True and not parts.operations.busy('demo')
    entry = result_of(defer.Deferred.fromCoroutine(parts.probe.describe(server)))
    assert (entry['RECYCLES'], entry['RESTARTS'], entry['PORT']) == (1, 0, 5004)


def test_a_recycle_whose_new_process_fails_keeps_the_old_one_and_counts_nothing(tmp_path):
    parts = Parts(tmp_path, {'demo': {}})
    parts.reactor.ready('demo')
    server = parts.topology.server('demo')
    done = defer.Deferred.fromCoroutine(parts.operations.recycle(server, server.targets[0], 'too large'))
    parts.reactor.child('demo+').exit(ProcessTerminated(exitCode=3))
    assert result_of(done) is False and server.targets[0].recycles == 0
    assert server.targets[0].child_name == 'demo' and parts.supervisor.is_ready('demo')


def test_the_memory_check_leaves_a_server_alone_while_it_is_reloaded(tmp_path):
    parts = Parts(tmp_path, {'demo': {'REPLICAS': 2, 'MAX_RSS_MB': 100, 'HEALTH_INTERVAL': 1}})
    parts.reactor.ready('demo#0', 'demo#1')
    server = parts.topology.server('demo')
    monitor = HealthMonitor(parts.topology, parts.supervisor, parts.probe, parts.operations, reactor=parts.reactor,
                            rss_of=lambda pid: 300 * 2 ** 20)
    reload = defer.Deferred.fromCoroutine(parts.operations.reload(server))  # demo#0+ starts
    monitor.startService()
    try:
        parts.reactor.advance(5)
        assert [p.proto.name for p in parts.reactor.spawned] == ['demo#0', 'demo#1', 'demo#0+']
        parts.reactor.ready('demo#0+')
        parts.reactor.child('demo#0').exit(ProcessTerminated(signal=15))
        parts.reactor.ready('demo#1+')
        parts.reactor.child('demo#1').exit(ProcessTerminated(signal=15))
        assert result_of(reload) == 2
        assert [t.recycles for t in server.targets] == [0, 0]  # nothing recycled during the reload
        for _ in range(2):  # then the new processes are sampled, a beat at a time (and still too large)
            parts.reactor.advance(1)
        assert [p.proto.name for p in parts.reactor.spawned][-1] == 'demo#0'
    finally:
        monitor.stopService()


# -- a new config goes one way: the operations resize, reload, add and remove themselves ----------------
def test_a_config_that_changes_only_nr_workers_resizes_each_ready_replica_in_place_with_its_key(tmp_path):
    parts = Parts(tmp_path, {'demo': {'REPLICAS': 2}})
    parts.reactor.ready('demo#0', 'demo#1')
    server = parts.topology.server('demo')
    keep = {'demo': (server.config.ports, server.config.spare_ports)}
    done = result_of(defer.Deferred.fromCoroutine(parts.operations.apply_config(
        parts.config({'demo': {'REPLICAS': 2, 'NR_WORKERS': 3}}, keep))))
    assert done['RESIZED'] == ['demo'] and done['RELOADED'] == [] and len(parts.reactor.spawned) == 2
    assert [(url, data) for url, data, _ in parts.children.control_calls] == [
        (b'http://127.0.0.1:5003/update_workers', {'NR_WORKERS': 3}),
        (b'http://127.0.0.1:5004/update_workers', {'NR_WORKERS': 3})]
    assert [headers for _, _, headers in parts.children.control_calls] == [
        {'Authorization': 'Bearer {}'.format(t.admin_key)} for t in server.targets]
    assert server.config.nr_workers == 3
    # kept for the next start of either slot
    assert '"NR_WORKERS": 3' in parts.topology.child_spec(server.config, server.targets[0], GREEN).env[
        'BIS_SERVER_CONFIG']
    parts.children.control_answer = Answer(400, {'ERROR': 'NR_WORKERS too large'})
    failed = failure_of(defer.Deferred.fromCoroutine(parts.operations.apply_config(
        parts.config({'demo': {'REPLICAS': 2, 'NR_WORKERS': 99}}, keep))), ServiceUnavailable)
    assert failed.message == "server 'demo': NR_WORKERS 99 not applied: NR_WORKERS too large"
    assert server.config.nr_workers == 3


def test_a_fleet_given_its_own_resize_uses_it_instead_of_asking_the_replicas(tmp_path):
    parts = Parts(tmp_path, {'demo': {}})
    parts.reactor.ready('demo')
    server = parts.topology.server('demo')
    keep = {'demo': (server.config.ports, server.config.spare_ports)}

    async def never(server, size):
        raise BadRequest('{} is never resized in place'.format(server.name))

    refused = failure_of(defer.Deferred.fromCoroutine(parts.operations.apply_config(
        parts.config({'demo': {'NR_WORKERS': 2}}, keep), never)), BadRequest)
    assert refused.message == 'demo is never resized in place' and parts.children.control_calls == []


def test_a_config_that_adds_and_removes_servers_starts_and_drains_them_in_the_file_s_order(tmp_path):
    parts = Parts(tmp_path, {'demo': {}, 'old': {}})
    parts.reactor.obey_signals = True
    parts.reactor.ready('demo', 'old')
    busy = parts.send('old')
    (parts.folder / 'new.py').write_text('class {}:\n    pass\n'.format(expected_class_name('new')))
    keep = {name: (s.config.ports, s.config.spare_ports) for name, s in parts.topology.servers.items()}
    applying = defer.Deferred.fromCoroutine(parts.operations.apply_config(
        parts.config({'new': {}, 'demo': {}}, keep)))
    assert not applying.called and parts.reactor.child('old').signals == []  # it owes an answer
    assert list(parts.topology.servers) == ['demo']  # out of the rotation meanwhile
    parts.children.calls[0].answer()
    assert result_of(busy).status == 200 and parts.reactor.child('old').signals[0] == 'TERM'
    done = result_of(applying)
    assert (done['ADDED'], done['REMOVED'], done['UNCHANGED']) == (['new'], ['old'], ['demo'])
    assert list(parts.topology.servers) == ['new', 'demo']
    assert [p.proto.name for p in parts.reactor.spawned][-1] == 'new'


# -- the exit report ------------------------------------------------------------------------------------
class _Proto:
    def __init__(self, closed=False, tail=()):
        self.closed = closed
        self.stderr_tail = list(tail)


def test_an_exit_report_is_told_once_when_the_output_closes():
    clock = Clock()
    proto = _Proto()
    report = ExitReport('exit code 1', proto, clock=clock)
    told = []
    report.told.addCallback(lambda r: told.append(r.error()))
    assert report.error() == 'exit code 1' and told == []
    proto.stderr_tail.append('KeyError: weights')
    report.output_closed()
    report.output_closed()
    clock.advance(5)
    assert told == ['exit code 1: KeyError: weights']


def test_an_exit_report_whose_output_stays_open_is_told_after_its_wait_and_names_a_kill_first():
    clock = Clock()
    report = ExitReport('killed by signal 9', _Proto(tail=['loading...']), 'did not become ready within '
                        'LOAD_TIMEOUT (30s)', clock=clock, wait=1.0)
    told = []
    report.told.addCallback(told.append)
    clock.advance(0.9)
    assert told == []
    clock.advance(0.1)
    assert told == [report]
    assert report.error() == 'did not become ready within LOAD_TIMEOUT (30s)'
    assert report.start_error() == 'did not become ready within LOAD_TIMEOUT (30s): loading...'
    assert ExitReport('could not start the process: EMFILE').told.called  # nothing spawned: told at once


def test_a_child_exit_is_reported_once_to_the_restart_with_its_late_stderr_line(tmp_path):
    reactor = ProcessReactor()
    supervisor = Supervisor(reactor=reactor)
    supervisor.add(ChildSpec(name='a', argv=['python']))
    supervisor.startService()
    process = reactor.child('a')
    process.exit(ProcessTerminated(exitCode=1), pipes_closed=False)
    assert supervisor.status('a').last_error == 'exit code 1'
    process.proto.childDataReceived(2, b'KeyError: weights\n')
    reactor.advance(supervisor.minRestartDelay)  # restarted before its old pipes closed
    process.close_pipes()
    assert supervisor.status('a').last_error == 'exit code 1: KeyError: weights'
    assert supervisor.status('a').restarts == 1 and len(reactor.spawned) == 2


def test_a_start_on_trial_names_the_traceback_s_last_line_even_when_it_is_read_after_the_exit(tmp_path):
    # the exit is seen with the traceback's first line read and its last one still in the pipe
    reactor = ProcessReactor()
    supervisor = Supervisor(reactor=reactor)
    supervisor.add(ChildSpec(name='a+', argv=['python']), start=False)
    supervisor.startService()
    trial = supervisor.start_trial('a+')
    process = reactor.child('a+')
    process.proto.childDataReceived(2, b'Traceback (most recent call last):\n')
    process.exit(ProcessTerminated(exitCode=3), pipes_closed=False)
    assert not trial.called
    process.proto.childDataReceived(2, b'  File "endpoints/a.py", line 9, in _load_model\nOSError: no GPU\n')
    process.close_pipes()
    assert str(failure_of(trial, Exception)) == 'exit code 3: OSError: no GPU'


# -- the shape -------------------------------------------------------------------------------------------
def _sources():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                with open(path, encoding='utf-8') as f:
                    yield path, f.read()


def test_no_module_reads_a_private_attribute_of_the_fleet():
    found = ['{}: {}'.format(os.path.relpath(path, ROOT), m.group())
             for path, text in _sources() for m in re.finditer(r'fleet\._\w+', text)]
    assert found == []


def test_no_class_of_the_package_is_made_of_several_of_the_package_s_classes():
    trees = {path: ast.parse(text) for path, text in _sources()}
    ours = {node.name for tree in trees.values() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    mixed = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, 'attr', None) for b in node.bases]
                if len([b for b in bases if b in ours]) > 1:
                    mixed.append('{}: {}({})'.format(os.path.relpath(path, ROOT), node.name, ', '.join(bases)))
    assert mixed == []
