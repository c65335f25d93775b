"""The gateway's service tree on a fake reactor: when the port opens."""

import json

from bis_twisted.gateway.service import GatewayService, Options
from fakes import ProcessReactor
from procs import REPO_ROOT


def make_service(tmp_path, **top):
    config = dict(top, CONFIG_ENDPOINTS={'dummy_model_demo2': {'NR_WORKERS': 1}})
    path = tmp_path / 'config.json'
    path.write_text(json.dumps(config))
    reactor = ProcessReactor()
    options = Options(config=str(path), host='127.0.0.1', port=5002, endpoints=REPO_ROOT + '/endpoints',
                      cache=str(tmp_path / '_cache'))
    return reactor, GatewayService(options, reactor=reactor)


def test_port_opens_when_default_server_is_ready(tmp_path):
    reactor, service = make_service(tmp_path, DEFAULT_SERVER='dummy_model_demo2', NO_STARTUP_WAIT=False)
    service.startService()
    assert reactor.tcpServers == []
    reactor.advance(5)
    assert reactor.tcpServers == []
    reactor.ready('dummy_model_demo2')
    assert [port[0] for port in reactor.tcpServers] == [5002]


def test_port_opens_anyway_when_default_server_never_gets_ready(tmp_path):
    reactor, service = make_service(tmp_path, DEFAULT_SERVER='dummy_model_demo2', NO_STARTUP_WAIT=False)
    service.startService()
    reactor.advance(GatewayService.startup_wait_max - 1)
    assert reactor.tcpServers == []
    reactor.advance(1)
    assert [port[0] for port in reactor.tcpServers] == [5002]


def test_no_startup_wait_opens_the_port_at_once(tmp_path):
    reactor, service = make_service(tmp_path, DEFAULT_SERVER='dummy_model_demo2', NO_STARTUP_WAIT=True)
    service.startService()
    assert [port[0] for port in reactor.tcpServers] == [5002]
