"""The gateway's service tree on a fake reactor: when the port opens and what /health says
meanwhile, the order it stops in, and what it does when it cannot serve (port taken, cache
folder in use)."""

import json
import os

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import LogLevel, globalLogPublisher

from bis_twisted.errors import ConfigError
from bis_twisted.gateway.service import GatewayService, Options, PortInUse
from fakes import ProcessReactor
from procs import REPO_ROOT


def port_free(host, port):
    """The port check of these tests: the fake reactor's port is always free."""


def make_service(tmp_path, port_check=port_free, **top):
    config = dict(top, CONFIG_ENDPOINTS={'dummy_model_demo2': {'NR_WORKERS': 1}})
    path = tmp_path / 'config.json'
    path.write_text(json.dumps(config))
    reactor = ProcessReactor()
    options = Options(config=str(path), host='127.0.0.1', port=5002, endpoints=REPO_ROOT + '/endpoints',
                      cache=str(tmp_path / '_cache'))
    return reactor, GatewayService(options, reactor=reactor, port_check=port_check)


def health(service):
    """``(status, body)`` of ``GET /health`` of the service's gateway, in memory."""
    stub = StubTreq(service.gateway.resource())

    async def ask():
        answer = await stub.get('http://gateway/health')
        return answer.code, await answer.json()

    d = defer.ensureDeferred(ask())
    stub.flush()
    results = []
    d.addBoth(results.append)
    return results[0]


def test_port_opens_at_once_and_health_says_starting_until_default_server_is_ready(tmp_path):
    reactor, service = make_service(tmp_path, DEFAULT_SERVER='dummy_model_demo2', NO_STARTUP_WAIT=False)
    service.startService()
    assert [port[0] for port in reactor.tcpServers] == [5002]
    status, body = health(service)
    assert status == 200 and body['STATUS'] == 'starting' and body['LOADING'] == {'dummy_model_demo2': '0:00:00'}
    reactor.advance(5)
    assert health(service)[1]['LOADING'] == {'dummy_model_demo2': '0:00:05'}
    assert not service.listening._said_serving
    reactor.ready('dummy_model_demo2')
    status, body = health(service)
    assert status == 200 and body['STATUS'] == 'OK' and 'LOADING' not in body
    assert service.listening._said_serving and [port[0] for port in reactor.tcpServers] == [5002]


def test_health_stops_saying_starting_when_default_server_never_gets_ready(tmp_path):
    reactor, service = make_service(tmp_path, DEFAULT_SERVER='dummy_model_demo2', NO_STARTUP_WAIT=False)
    service.startService()
    reactor.advance(GatewayService.startup_wait_max - 1)
    assert health(service)[1]['STATUS'] == 'starting'
    reactor.advance(1)
    body = health(service)[1]
    assert body['STATUS'] == 'OK' and body['LOADING'] == {'dummy_model_demo2': '0:02:00'}  # still loading


def test_no_startup_wait_opens_the_port_at_once(tmp_path):
    reactor, service = make_service(tmp_path, DEFAULT_SERVER='dummy_model_demo2', NO_STARTUP_WAIT=True)
    service.startService()
    assert [port[0] for port in reactor.tcpServers] == [5002]


# -- what it does when it cannot serve --------------------------------------------------------------
def test_a_port_in_use_exits_2_before_any_child_is_started(tmp_path, capsys):
    def taken(host, port):
        raise PortInUse('cannot listen on {}:{}: address already in use'.format(host, port))

    reactor, service = make_service(tmp_path, port_check=taken, DEFAULT_SERVER='dummy_model_demo2')
    with pytest.raises(SystemExit) as exited:
        service.startService()

    assert exited.value.code == 2
    assert reactor.spawned == [] and reactor.tcpServers == []
    assert capsys.readouterr().err == 'bis-gateway: cannot listen on 127.0.0.1:5002: address already in use\n'
    make_service(tmp_path)  # the cache folder was let go


def test_a_port_that_fails_after_the_children_started_stops_them_and_exits_2(tmp_path, capsys):
    reactor, service = make_service(tmp_path, NO_STARTUP_WAIT=False, DEFAULT_SERVER='dummy_model_demo2')

    class Refusing:
        def listen(self, factory):
            return defer.fail(CannotListenError('127.0.0.1', 5002, OSError('address already in use')))

    service.listening._endpoint = Refusing()
    stopped = []
    reactor.stop = lambda: stopped.append(True)
    service.startService()
    reactor.ready('dummy_model_demo2')

    assert stopped == [True]
    assert 'cannot listen' in capsys.readouterr().err
    after = [trigger for trigger in reactor.triggers.get('after', {}).get('shutdown', [])]
    assert [(f.__name__, args) for f, args, _kw in after] == [('_exit_now', (2,))]


def test_a_second_gateway_on_the_same_cache_folder_is_refused_naming_the_first(tmp_path):
    make_service(tmp_path)
    with pytest.raises(ConfigError) as refused:
        make_service(tmp_path)

    message = str(refused.value)
    assert 'pid {}'.format(os.getpid()) in message
    assert str(tmp_path / '_cache') in message and '--cache' in message
    assert (tmp_path / '_cache' / 'gateway.lock').read_text() == '{}\n'.format(os.getpid())


# -- the stop order -------------------------------------------------------------------------------------
def test_the_tree_stops_in_reverse_each_part_after_the_one_before_has_stopped(tmp_path):
    reactor, service = make_service(tmp_path, DEFAULT_SERVER='dummy_model_demo2', NO_STARTUP_WAIT=True)
    service.startService()
    stops = []
    pending = {}
    for part in service:
        name = getattr(part, 'name', None) or type(part).__name__

        def stop(name=name, real=part.stopService):
            stops.append(name)
            pending[name] = defer.Deferred()
            pending[name].addCallback(lambda _: real())
            return pending[name]

        part.stopService = stop

    done = service.stopService()
    order = ['StallWatch', 'AddressSpreader', 'Autoscaler', 'candidate health', 'HealthMonitor', 'LoadProgress',
             'port', 'drain', 'rollouts', 'Supervisor', 'client', 'history']
    for index, name in enumerate(order):
        assert stops == order[:index + 1], 'stopped {} before {} had'.format(stops[-1], order[index - 1])
        pending[name].callback(None)
    assert done.called
    assert not service.running and not any(part.running for part in service)


def test_a_clean_stop_logs_nothing_above_info_and_a_failing_part_is_logged_and_passed(tmp_path):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor, service = make_service(tmp_path, DEFAULT_SERVER='dummy_model_demo2', NO_STARTUP_WAIT=True)
        service.startService()
        reactor.ready('dummy_model_demo2')
        assert service.stopService().called
        assert [e for e in events if e['log_level'] > LogLevel.info] == []
        assert all(p.signals == ['TERM'] for p in reactor.spawned)

        (tmp_path / 'again').mkdir()
        reactor, service = make_service(tmp_path / 'again', NO_STARTUP_WAIT=True)
        service.startService()
        service.health.stopService = lambda: 1 / 0
        assert service.stopService().called
    finally:
        globalLogPublisher.removeObserver(events.append)
    errors = [e for e in events if e['log_level'] > LogLevel.info]
    assert [e['log_format'] for e in errors] == ['stopping the gateway: {service} failed; going on']
    assert errors[0]['service'] == 'HealthMonitor' and errors[0]['log_level'] == LogLevel.error
    assert not service.supervisor.running  # the parts after it stopped anyway
