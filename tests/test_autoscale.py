"""The autoscaler on a ``ProcessReactor`` (MemoryReactor + Clock): a real ``Supervisor`` with
fake children, a fake HTTP client whose answers the test fires, time moved by ``advance``."""

import pytest

from bis_twisted.gateway.autoscale import Autoscaler
from bis_twisted.gateway.config import parse_config
from bis_twisted.errors import ConfigError
from bis_twisted.gateway.fleet import Fleet
from bis_twisted.protocol import expected_class_name
from bis_twisted.gateway.supervisor import Supervisor
from fakes import FakeChildren, ProcessReactor, described, send


@pytest.fixture
def world(tmp_path):
    folder = tmp_path / 'endpoints'
    folder.mkdir()
    (folder / 'demo.py').write_text('class {}:\n    pass\n'.format(expected_class_name('demo')))
    reactor = ProcessReactor()
    children = FakeChildren()

    def make(**entry):
        config = parse_config({'CONFIG_ENDPOINTS': {'demo': entry}}, 'config_gateway.txt', str(folder))
        supervisor = Supervisor(reactor=reactor)
        fleet = Fleet(config, supervisor, children, str(folder), reactor=reactor)
        fleet.register_children()
        supervisor.startService()
        scaler = Autoscaler(fleet.topology, fleet.router, fleet.operations, reactor=reactor)
        scaler.startService()
        return fleet, scaler

    make.reactor = reactor
    make.children = children
    return make


def seconds(reactor, n):
    """``n`` seconds, one at a time: the autoscaler samples once a second."""
    for _ in range(n):
        reactor.advance(1)


SCALED = dict(REPLICAS=1, MIN_REPLICAS=1, MAX_REPLICAS=3, TARGET_IN_FLIGHT=2)


def active(fleet):
    return [t.child_name for t in fleet.servers['demo'].targets if t.active]


def test_ports_for_max_replicas_are_reserved_and_only_replicas_start(world):
    fleet, _ = world(**SCALED)
    config = fleet.servers['demo'].config
    assert config.ports == (5003, 5004, 5005) and config.spare_ports == (5006, 5007, 5008)
    assert [p.proto.name for p in world.reactor.spawned] == ['demo#0']
    assert active(fleet) == ['demo#0']


def test_up_after_the_delay_down_after_its_delay_within_the_bounds(world):
    fleet, scaler = world(**SCALED, UPSCALE_DELAY=5, DOWNSCALE_DELAY=60)
    reactor = world.reactor
    reactor.ready('demo#0')
    calls = [send(fleet) for _ in range(5)]  # 5 in flight on one replica: over 2
    seconds(reactor, 5)
    # not yet: over the target on the samples of t=1..5 is 4 s over; the sample at 6 decides
    assert active(fleet) == ['demo#0']
    seconds(reactor, 1)
    assert active(fleet) == ['demo#0', 'demo#1']
    assert scaler.decisions[('demo', 'up')] == 1
    seconds(reactor, 10)
    assert active(fleet) == ['demo#0', 'demo#1']  # no second one while demo#1 is loading
    reactor.ready('demo#1')
    calls += [send(fleet) for _ in range(4)]  # 9 over 2 ready replicas
    seconds(reactor, 6)
    assert active(fleet) == ['demo#0', 'demo#1', 'demo#2']
    reactor.ready('demo#2')
    calls += [send(fleet) for _ in range(9)]
    seconds(reactor, 30)
    assert len(active(fleet)) == 3  # MAX_REPLICAS
    entry = described(fleet)
    assert entry['REPLICAS_TARGET'] == 3 and entry['REPLICAS_CURRENT'] == 3 and entry['MAX_REPLICAS'] == 3
    for call in world.children.calls:
        call.answer()
    for d in calls:
        assert d.called
    seconds(reactor, 60)
    assert len(active(fleet)) == 3  # idle, but not for 60 s yet
    seconds(reactor, 1)
    assert active(fleet) == ['demo#0', 'demo#1']
    assert world.reactor.child('demo#2').pid is None  # drained (nothing in flight) and stopped
    seconds(reactor, 61)
    assert active(fleet) == ['demo#0']
    seconds(reactor, 600)
    assert active(fleet) == ['demo#0']  # never below MIN_REPLICAS
    assert scaler.decisions == {('demo', 'up'): 2, ('demo', 'down'): 2}


def test_a_dip_restarts_the_upscale_delay(world):
    fleet, scaler = world(**SCALED)
    world.reactor.ready('demo#0')
    [send(fleet) for _ in range(5)]
    seconds(world.reactor, 3)
    for call in world.children.calls:
        call.answer()
    seconds(world.reactor, 1)  # a sample at 0 in flight
    [send(fleet) for _ in range(5)]
    seconds(world.reactor, 4)
    assert active(fleet) == ['demo#0']
    seconds(world.reactor, 2)
    assert active(fleet) == ['demo#0', 'demo#1']


def test_a_removed_replica_leaves_the_rotation_and_stops_after_its_requests(world):
    fleet, scaler = world(**dict(SCALED, REPLICAS=2, TARGET_IN_FLIGHT=4), DOWNSCALE_DELAY=1)
    world.reactor.ready('demo#0', 'demo#1')
    first, second = send(fleet), send(fleet)  # one on each replica (the least busy is picked)
    on_first, on_second = world.children.calls
    assert on_first.port == 5003 and on_second.port == 5004
    seconds(world.reactor, 2)  # 1 in flight per replica, under half of 4: one replica goes
    assert active(fleet) == ['demo#0']
    assert world.reactor.child('demo#1').pid is not None  # still owes an answer
    third = send(fleet)
    assert world.children.calls[-1].port == 5003  # no new request goes to it
    on_second.answer()
    assert second.called
    assert world.reactor.child('demo#1').pid is None  # then it stopped (TERM)
    for call in (on_first, world.children.calls[-1]):
        call.answer()
    assert first.called and third.called


def test_scaling_keys_are_checked(tmp_path):
    (tmp_path / 'demo.py').write_text('class DemoWorker:\n    pass\n')
    with pytest.raises(ConfigError, match="autoscaling needs 'TARGET_IN_FLIGHT' too"):
        parse_config({'CONFIG_ENDPOINTS': {'demo': {'MAX_REPLICAS': 3}}}, 'c.txt', str(tmp_path))
    with pytest.raises(ConfigError, match="'REPLICAS' \\(4\\) must be between 'MIN_REPLICAS' \\(1\\) and "
                                          "'MAX_REPLICAS' \\(3\\)"):
        parse_config({'CONFIG_ENDPOINTS': {'demo': dict(SCALED, REPLICAS=4)}}, 'c.txt', str(tmp_path))


# -- GPU memory in /system_status -------------------------------------------------------------------
def test_gpu_memory_is_none_without_pynvml_and_listed_with_it(monkeypatch):
    import sys
    import types

    from bis_twisted.gateway.devices import gpu_memory

    monkeypatch.setitem(sys.modules, 'pynvml', None)  # not importable
    assert gpu_memory() is None

    fake = types.ModuleType('pynvml')
    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: 2
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetName = lambda h: b'Tesla T4'
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h + 1) * 1024 ** 3, total=16 * 1024 ** 3)
    monkeypatch.setitem(sys.modules, 'pynvml', fake)
    assert gpu_memory() == [{'device': 'cuda:0', 'name': 'Tesla T4', 'mem_used': 1.0, 'mem_total': 16.0},
                            {'device': 'cuda:1', 'name': 'Tesla T4', 'mem_used': 2.0, 'mem_total': 16.0}]

    def no_driver():
        raise RuntimeError('NVML Shared Library Not Found')
    fake.nvmlInit = no_driver
    assert gpu_memory() is None
