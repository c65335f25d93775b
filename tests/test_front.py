"""front.py's ``FrontChannel`` (httptools) beside twisted.web's ``GuardedChannel``, on a
task.Clock with an in-memory transport: request smuggling refused, pipelining answered in
order, HTTP/1.0, Expect: 100-continue, chunked bodies, a client that goes away, the idle
timeout, a stopping server's drain, and how the front is chosen (``HTTP_FRONT``, ``BIS_HTTP_FRONT``)."""

import json

import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from bis_twisted.errors import ConfigError
from bis_twisted.gateway.config_keys import TOP_KEYS
from bis_twisted.shared.drain import ConnectionDrain
from bis_twisted.shared.front import FRONTS, FrontChannel, front_channel
from bis_twisted.shared.limits import GuardedChannel, Limits
from bis_twisted.shared.web import make_site


class Echo(Resource):
    """Answers ``{"path": ..., "body": ...}``; with ``hold`` set, keeps each request
    unanswered in ``held`` until the test answers it."""

    isLeaf = True

    def __init__(self, hold=False):
        Resource.__init__(self)
        self.hold = hold
        self.held = []
        self.seen = []

    def render(self, request):
        self.seen.append(request.path)
        request.setHeader(b'Content-Type', b'application/json')
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return answer_of(request)


def answer_of(request):
    body = json.dumps({'path': request.path.decode(), 'body': request.content.read().decode()}).encode()
    request.setHeader(b'Content-Length', b'%d' % len(body))
    return body


def release(request):
    request.write(answer_of(request))
    request.finish()


class EveryPath:
    """A site's ``lean_paths`` that holds every path: each POST and GET is a ``FrontRequest``."""

    def __contains__(self, path):
        return True


# the fronts, and the httptools front answering POST and GET with its own FrontRequest
# (as the gateway answers /run) instead of twisted.web's Request
FRONT_VARIANTS = sorted(FRONTS) + ['httptools-lean']


@pytest.fixture(params=FRONT_VARIANTS)
def front(request):
    return request.param


def site_of(front, resource, limits):
    site = make_site(resource, limits=limits, channel=FRONTS[front.split('-')[0]])
    if front.endswith('-lean'):
        site.lean_paths = EveryPath()
    return site


def connect(front, resource, **limits):
    clock = task.Clock()
    site = site_of(front, resource, Limits(**limits))
    site.reactor = clock
    protocol = site.buildProtocol(IPv4Address('TCP', '127.0.0.1', 40000))
    protocol.callLater = clock.callLater
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock, site


def answers(data):
    """``[(status, headers, body)]`` of the HTTP answers in ``data``, in order."""
    found = []
    while data:
        head, _, rest = data.partition(b'\r\n\r\n')
        lines = head.split(b'\r\n')
        status = int(lines[0].split(b' ')[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(b':', 1) for line in lines[1:])}
        if status == 100:
            found.append((status, headers, b''))
            data = rest
            continue
        length = int(headers[b'content-length'])
        found.append((status, headers, rest[:length]))
        data = rest[length:]
    return found


def post(path, body, *extra):
    head = [b'POST ' + path + b' HTTP/1.1', b'Host: x', b'Content-Length: %d' % len(body)] + list(extra)
    return b'\r\n'.join(head) + b'\r\n\r\n' + body


@pytest.mark.parametrize('head', [
    b'Transfer-Encoding: chunked\r\nContent-Length: 3',
    b'Content-Length: 3\r\nTransfer-Encoding: chunked',
    b'Content-Length: 3\r\nContent-Length: 3',
    b'Content-Length: 3\r\nContent-Length: 30',
    b'Content-Length: 3, 3',
    b'Transfer-Encoding: gzip, chunked',
    b'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked',
    b'Content-Length: +3',
])
def test_request_smuggling_is_refused_with_a_json_400_and_the_route_never_runs(front, head):
    echo = Echo()
    protocol, transport, clock, _ = connect(front, echo)
    protocol.dataReceived(b'POST /run HTTP/1.1\r\nHost: x\r\n' + head + b'\r\n\r\n3\r\nabc\r\n0\r\n\r\n'
                          b'GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n')
    [(status, headers, body)] = answers(transport.value())
    assert status == 400 and headers[b'connection'] == b'close'
    assert json.loads(body)['ERROR']
    assert echo.seen == []
    clock.advance(2)
    assert transport.disconnecting


def test_pipelined_requests_are_answered_in_order_one_at_a_time(front):
    echo = Echo(hold=True)
    protocol, transport, _, _ = connect(front, echo)
    protocol.dataReceived(post(b'/a', b'1') + post(b'/b', b'22') + b'GET /c HTTP/1.1\r\nHost: x\r\n\r\n')
    assert echo.seen == [b'/a'] and transport.value() == b''  # /b waits for /a's answer
    release(echo.held[0])
    assert echo.seen == [b'/a', b'/b']
    release(echo.held[1])
    release(echo.held[2])
    assert [(s, json.loads(b)) for s, _, b in answers(transport.value())] == [
        (200, {'path': '/a', 'body': '1'}), (200, {'path': '/b', 'body': '22'}), (200, {'path': '/c', 'body': ''})]
    assert not transport.disconnecting


def test_a_pipelined_request_refused_is_answered_after_the_one_before_it(front):
    echo = Echo(hold=True)
    protocol, transport, clock, _ = connect(front, echo, max_body=10)
    protocol.dataReceived(post(b'/a', b'1') + post(b'/big', b'x' * 11))
    release(echo.held[0])
    statuses = [s for s, _, _ in answers(transport.value())]
    assert statuses == [200, 413] and echo.seen == [b'/a']


def test_http_1_0_is_answered_in_kind_and_the_connection_closes(front):
    protocol, transport, _, _ = connect(front, Echo())
    protocol.dataReceived(b'GET /old HTTP/1.0\r\n\r\n')
    assert transport.value().startswith(b'HTTP/1.0 200 ')
    assert transport.disconnecting


def test_connection_close_closes_after_the_answer(front):
    protocol, transport, _, _ = connect(front, Echo())
    protocol.dataReceived(post(b'/a', b'1', b'Connection: close'))
    [(status, headers, _)] = answers(transport.value())
    assert status == 200 and headers[b'connection'] == b'close' and transport.disconnecting


def test_expect_100_continue_gets_100_then_the_answer(front):
    protocol, transport, _, _ = connect(front, Echo())
    protocol.dataReceived(b'POST /run HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n')
    assert transport.value() == b'HTTP/1.1 100 Continue\r\n\r\n'
    protocol.dataReceived(b'ok')
    assert [(s, json.loads(b or b'null')) for s, _, b in answers(transport.value())] == [
        (100, None), (200, {'path': '/run', 'body': 'ok'})]


def test_a_chunked_body_reaches_the_route_whole(front):
    protocol, transport, _, _ = connect(front, Echo())
    protocol.dataReceived(b'POST /run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n')
    protocol.dataReceived(b'2\r\nde\r\n0\r\n\r\n')
    [(status, _, body)] = answers(transport.value())
    assert (status, json.loads(body)['body']) == (200, 'abcde')


def test_a_client_gone_mid_request_fails_its_notify_finish_and_frees_its_slot(front):
    echo = Echo(hold=True)
    protocol, transport, _, site = connect(front, echo)
    protocol.dataReceived(post(b'/a', b'1'))
    finished = []
    echo.held[0].notifyFinish().addErrback(finished.append)
    assert site.open_connections == 1
    protocol.connectionLost(Failure(ConnectionDone()))
    assert len(finished) == 1 and site.open_connections == 0


def test_an_idle_kept_alive_connection_is_closed_at_the_idle_timeout_only(front):
    protocol, transport, clock, _ = connect(front, Echo(), idle_timeout=60, head_timeout=10)
    protocol.dataReceived(post(b'/a', b'1'))
    clock.advance(59)
    protocol.dataReceived(post(b'/b', b'2'))  # a request moves the idle deadline on
    clock.advance(59)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting
    assert [s for s, _, _ in answers(transport.value())] == [200, 200]


def test_an_upgrade_request_is_answered_as_any_other_and_closes_the_connection():
    protocol, transport, _, _ = connect('httptools', Echo())
    protocol.dataReceived(b'GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n')
    [(status, _, _)] = answers(transport.value())
    assert status == 200 and transport.disconnecting


def test_a_stopping_server_closes_an_idle_connection_at_once_and_a_busy_one_after_its_answer(front):
    echo = Echo(hold=True)
    clock = task.Clock()
    site = site_of(front, echo, Limits())
    site.reactor = clock
    drain = ConnectionDrain(site, reactor=clock)
    connections = []
    for _ in range(2):
        protocol = site.buildProtocol(IPv4Address('TCP', '127.0.0.1', 40000))
        protocol.callLater = clock.callLater
        transport = StringTransport()
        protocol.makeConnection(transport)
        connections.append((protocol, transport))
    (busy, busy_transport), (idle, idle_transport) = connections
    busy.dataReceived(post(b'/a', b'1'))
    idle.dataReceived(b'GET /b HTTP/1.1\r\nHost: x\r\n\r\n')
    release(echo.held[1])  # the idle one was answered: kept alive, nothing owed
    done = defer.Deferred.fromCoroutine(drain.close_when_answered(5))
    assert idle_transport.disconnecting and not busy_transport.disconnecting
    release(echo.held[0])
    assert busy_transport.disconnecting
    assert [s for s, _, _ in answers(busy_transport.value())] == [200]
    for protocol, _ in connections:
        protocol.connectionLost(Failure(ConnectionDone()))
    assert done.called


@implementer(ITCPTransport)
class TCPTransport(StringTransport):
    nodelay = False

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled


def test_answers_go_out_without_waiting_for_the_clients_delayed_ack(front):
    site = site_of(front, Echo(), Limits())
    site.reactor = task.Clock()
    protocol = site.buildProtocol(IPv4Address('TCP', '127.0.0.1', 40000))
    transport = TCPTransport()
    protocol.makeConnection(transport)
    assert transport.nodelay is True  # Nagle off: a head and a body written apart go out at once


def test_the_front_is_chosen_by_the_variable_then_the_config_then_the_default():
    assert front_channel(None, {}) is FrontChannel  # the default: the cheaper per /run
    assert front_channel('twisted', {}) is GuardedChannel
    assert front_channel('httptools', {}) is FrontChannel
    assert front_channel('httptools', {'BIS_HTTP_FRONT': 'twisted'}) is GuardedChannel
    assert front_channel(None, {'BIS_HTTP_FRONT': ' httptools '}) is FrontChannel
    with pytest.raises(ConfigError, match='BIS_HTTP_FRONT must be "twisted" or "httptools", got \'uvicorn\''):
        front_channel(None, {'BIS_HTTP_FRONT': 'uvicorn'})
    assert TOP_KEYS['HTTP_FRONT'].accepts('httptools') and not TOP_KEYS['HTTP_FRONT'].accepts('h11')


def test_a_config_with_an_unknown_http_front_is_refused(tmp_path):
    from bis_twisted.gateway.config import load_config
    path = tmp_path / 'config_gateway.txt'
    path.write_text(json.dumps({'HTTP_FRONT': 'fast', 'CONFIG_ENDPOINTS': {}}))
    with pytest.raises(ConfigError, match="HTTP_FRONT"):
        load_config(str(path), str(tmp_path), 5002)
    path.write_text(json.dumps({'HTTP_FRONT': 'httptools', 'CONFIG_ENDPOINTS': {}}))
    assert load_config(str(path), str(tmp_path), 5002).http_front == 'httptools'


def test_answers_of_a_burst_leave_together_at_its_end_and_before_a_close():
    from bis_twisted.shared.front import FrontChannel
    from bis_twisted.shared.limits import answers_together

    echo = Echo(hold=True)
    protocol, transport, clock, site = connect('httptools', echo)
    protocol.dataReceived(post(b'/a', b'1'))
    closing, closing_transport, _clock, _site = connect('httptools', echo)
    closing.dataReceived(post(b'/b', b'2', b'Connection: close'))
    assert isinstance(protocol, FrontChannel) and len(echo.held) == 2

    with answers_together():
        release(echo.held[0])
        assert transport.value() == b''  # held until the burst ends
        release(echo.held[1])  # Connection: close: its answer goes before the close
        assert closing_transport.disconnecting and closing_transport.value().startswith(b'HTTP/1.1 200')
    assert [status for status, _headers, _body in answers(transport.value())] == [200]
    assert not transport.disconnecting
