"""``FrontRequest`` (the httptools front's own request for ``/run``) answers with the bytes
twisted.web's ``Request`` writes, on a task.Clock with an in-memory transport: a JSON answer,
a stream (chunked on HTTP/1.1, close-delimited on HTTP/1.0), a route that raises, a header
value that would split the head, and a client that goes away mid-stream."""

import re

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from bis_twisted.shared.front import FrontChannel
from bis_twisted.shared.front_request import FrontRequest
from bis_twisted.shared.limits import Limits
from bis_twisted.shared.web import make_site


class Route(Resource):
    """What the gateway's routes do to a request: read its body and headers, set a status and
    headers, answer whole (``Content-Length``) or as a stream of writes (``held``)."""

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.held = []
        self.seen = []

    def render(self, request):
        body = request.content.read()
        self.seen.append((type(request), request.method, request.path, request.args, body,
                          request.getHeader(b'x-request-id'), request.getHeader('X-Request-Id')))
        if request.path == b'/raise':
            raise ValueError('a bug in the route')
        if request.path == b'/stream':
            request.setHeader(b'Content-Type', b'application/x-ndjson')
            request.write(b'{"chunk": 1}\n')
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(201)
        request.setHeader(b'content-type', b'application/json')  # any case in: Header-Case out
        request.setHeader(b'X-Request-Id', request.getHeader(b'x-request-id') or b'made-here')
        request.setHeader(b'X-Note', 'two\r\nlines')  # a value that would split the head: folded
        answer = b'{"got": "%s"}' % body
        request.setHeader(b'Content-Length', b'%d' % len(answer))
        return answer


def connect(route, lean):
    clock = task.Clock()
    site = make_site(route, limits=Limits(), channel=FrontChannel)
    site.reactor = clock
    if lean:
        site.lean_paths = frozenset({b'/run', b'/stream', b'/raise'})
    protocol = site.buildProtocol(IPv4Address('TCP', '127.0.0.1', 40000))
    protocol.callLater = clock.callLater
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def without_date(data):
    return re.sub(rb'Date: [^\r]*\r\n', b'Date: -\r\n', data)


REQUEST = (b'POST /run?A=1&A=2&B= HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\r\nContent-Length: 5\r\n\r\nhello')


@pytest.mark.parametrize('request_bytes', [REQUEST, REQUEST.replace(b'Host: x', b'Host: x\r\nConnection: close')])
def test_an_answer_is_byte_for_byte_twisted_webs_but_the_date(request_bytes):
    written = {}
    for lean in (False, True):
        route = Route()
        protocol, transport = connect(route, lean)
        protocol.dataReceived(request_bytes)
        written[lean] = transport.value()
        seen_type, *seen = route.seen[0]
        assert (seen_type is FrontRequest) == lean
        assert seen == [b'POST', b'/run', {b'A': [b'1', b'2'], b'B': [b'']}, b'hello', b'abc', 'abc']
    assert without_date(written[True]) == without_date(written[False])
    assert (b'Connection: close\r\n' in written[True]) == (b'Connection: close' in request_bytes)
    assert written[True].startswith(b'HTTP/1.1 201 Created\r\n')
    assert b'Content-Type: application/json\r\n' in written[True]
    assert b'X-Note: two lines\r\n' in written[True]


def test_a_stream_is_chunked_as_twisted_web_chunks_it_and_the_connection_stays():
    written = {}
    for lean in (False, True):
        route = Route()
        protocol, transport = connect(route, lean)
        protocol.dataReceived(b'POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n')
        [request] = route.held
        request.write(b'{"chunk": 2}\n')
        request.write(b'')  # nothing: no empty chunk (it would end the stream)
        request.finish()
        written[lean] = transport.value()
        assert not transport.disconnecting
    assert without_date(written[True]) == without_date(written[False])
    assert written[True].endswith(b'Content-Type: application/x-ndjson\r\n' b'Transfer-Encoding: chunked\r\n\r\n'
                                  b'd\r\n{"chunk": 1}\n\r\n' b'd\r\n{"chunk": 2}\n\r\n' b'0\r\n\r\n')


def test_a_stream_to_an_http_1_0_client_ends_when_the_connection_does():
    route = Route()
    protocol, transport = connect(route, lean=True)
    protocol.dataReceived(b'POST /stream HTTP/1.0\r\nContent-Length: 0\r\n\r\n')
    [request] = route.held
    request.write(b'{"chunk": 2}\n')
    request.finish()
    head, _, body = transport.value().partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.0 200 OK') and b'Transfer-Encoding' not in head
    assert body == b'{"chunk": 1}\n{"chunk": 2}\n' and transport.disconnecting


def test_a_route_that_raises_answers_a_json_500_and_the_connection_serves_on():
    route = Route()
    protocol, transport = connect(route, lean=True)
    protocol.dataReceived(b'POST /raise HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n')
    head, _, body = transport.value().partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 500 Internal Server Error') and body == b'{"ERROR":"internal error: ValueError"}'
    transport.clear()
    protocol.dataReceived(REQUEST)
    assert transport.value().startswith(b'HTTP/1.1 201 Created') and not transport.disconnecting


def test_a_client_gone_mid_stream_fails_notify_finish_and_later_writes_are_dropped():
    route = Route()
    protocol, transport = connect(route, lean=True)
    protocol.dataReceived(b'POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n')
    [request] = route.held
    ended = []
    request.notifyFinish().addBoth(ended.append)
    protocol.connectionLost(Failure(ConnectionLost()))
    assert isinstance(ended[0], Failure) and request.channel is None
    request.write(b'{"chunk": 2}\n')  # dropped, as twisted.web drops it
    with pytest.raises(RuntimeError, match='connection was lost'):
        request.finish()
    assert protocol.site.bodies_in_flight == 0


def test_when_finished_calls_back_as_notify_finish_fires_in_order_without_a_deferred():
    route = Route()
    protocol, transport = connect(route, lean=True)
    for _ in range(2):  # pipelined: the second is handed over once the first is answered
        protocol.dataReceived(b'POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n')
    [done] = route.held
    seen = []
    done.when_finished(lambda result: seen.append(('call', result)))
    done.notifyFinish().addBoth(lambda result: seen.append(('deferred', result)))

    done.finish()
    assert seen == [('call', None), ('deferred', None)]
    done.when_finished(lambda result: seen.append(('late', result)))  # finished already: at once
    assert seen[-1] == ('late', None)
    gone = route.held[1]
    gone.when_finished(lambda result: seen.append(('lost', result)))
    protocol.connectionLost(Failure(ConnectionLost()))
    assert seen[-1][0] == 'lost' and isinstance(seen[-1][1], Failure) and seen[-1][1].check(ConnectionLost)
