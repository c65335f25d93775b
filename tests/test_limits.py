"""limits.py on a task.Clock with an in-memory transport: the head and body deadlines, the
connection cap, and the twisted.web names the channel relies on; on both fronts (twisted.web's
``GuardedChannel`` and front.py's ``FrontChannel``), which keep the same limits."""

import json

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource

from bis_twisted.shared.front import FRONTS
from bis_twisted.shared.limits import Limits, OverflowProtocol
from bis_twisted.shared.web import make_site


class Hello(Resource):
    isLeaf = True

    def render(self, request):
        request.setHeader(b'Content-Type', b'application/json')
        return b'{"hello": 1}'


@pytest.fixture(params=sorted(FRONTS))
def channel(request):
    return FRONTS[request.param]


def site_on(clock, channel, **limits):
    site = make_site(Hello(), limits=Limits(**limits), channel=channel)
    site.reactor = clock
    return site


def connect(site, clock):
    protocol = site.buildProtocol(IPv4Address('TCP', '127.0.0.1', 40000))
    protocol.callLater = clock.callLater  # what HTTPFactory.buildProtocol sets from its reactor
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def status(transport):
    value = transport.value()
    return int(value.split(b' ', 2)[1]) if value.startswith(b'HTTP/1.1 ') else None


def error(transport):
    return json.loads(transport.value().split(b'\r\n\r\n', 1)[1])['ERROR']


def test_twisted_web_still_has_the_hooks_the_channel_overrides():
    for name in ('lineReceived', 'lineLengthExceeded', 'allHeadersReceived', 'allContentReceived',
                 'requestDone', 'rawDataReceived', '_respondToBadRequestAndDisconnect'):
        assert callable(getattr(HTTPChannel, name)), name
    assert HTTPChannel.maxHeaders and HTTPChannel.totalHeadersSize and HTTPChannel.MAX_LENGTH


def test_a_head_trickling_in_gets_408_at_the_head_deadline_however_often_bytes_come(channel):
    clock = task.Clock()
    site = site_on(clock, channel, head_timeout=10)
    protocol, transport = connect(site, clock)
    protocol.dataReceived(b'GET / HTTP/1.1\r\nHost: x\r\n')
    for _ in range(99):
        protocol.dataReceived(b'X')
        clock.advance(0.1)
    assert transport.value() == b''
    clock.advance(0.2)
    assert status(transport) == 408 and 'HEAD_TIMEOUT' in error(transport)
    clock.advance(2)  # the lingering close ends
    assert transport.disconnecting


def test_a_silent_connection_is_closed_without_an_answer(channel):
    clock = task.Clock()
    protocol, transport = connect(site_on(clock, channel, head_timeout=10), clock)
    clock.advance(10)
    assert transport.value() == b'' and transport.disconnecting


def test_the_body_deadline_grows_with_the_declared_length(channel):
    limits = Limits(body_timeout=10, min_body_rate=1000)
    assert limits.body_deadline(5000) == 15
    assert limits.body_deadline(None) == 10 + limits.max_body / 1000
    clock = task.Clock()
    protocol, transport = connect(site_on(clock, channel, body_timeout=10, min_body_rate=1000), clock)
    protocol.dataReceived(b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc')
    clock.advance(14.9)
    assert transport.value() == b''
    clock.advance(0.2)
    assert status(transport) == 408 and 'BODY_TIMEOUT' in error(transport)


def test_a_kept_alive_connection_idle_between_requests_is_not_cut_by_the_head_deadline(channel):
    clock = task.Clock()
    site = site_on(clock, channel, head_timeout=10)
    protocol, transport = connect(site, clock)
    protocol.dataReceived(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
    assert b'{"hello": 1}' in transport.value()
    transport.clear()
    clock.advance(30)
    assert not transport.disconnecting
    protocol.dataReceived(b'GET / HTTP/1.1\r\nHost: x\r\n')  # the next head's clock starts now
    clock.advance(10)
    assert status(transport) == 408


def test_past_max_connections_health_answers_and_the_rest_get_503(channel):
    clock = task.Clock()
    site = site_on(clock, channel, max_connections=2)
    held = [connect(site, clock) for _ in range(2)]
    assert site.open_connections == 2
    assert all(isinstance(p, channel) for p, _ in held)
    for line, code in ((b'GET /health HTTP/1.1\r\n', 200), (b'POST /run HTTP/1.1\r\n', 503)):
        protocol, transport = connect(site, clock)
        assert isinstance(protocol, OverflowProtocol)
        protocol.dataReceived(line)
        assert status(transport) == code
    protocol, transport = connect(site, clock)  # says nothing: answered when its time is up
    clock.advance(2)
    assert status(transport) == 503 and 'MAX_CONNECTIONS 2' in error(transport)
    held[0][0].connectionLost(None)
    assert site.open_connections == 1
    assert isinstance(connect(site, clock)[0], channel)


@pytest.mark.parametrize('head, code', [
    (b'GET /' + b'a' * 20000 + b' HTTP/1.1\r\n\r\n', 414),
    (b'GET / HTTP/1.1\r\nX: ' + b'a' * 20000 + b'\r\n\r\n', 431),
    (b'GET / HTTP/1.1\r\n' + b''.join(b'X-%d: %s\r\n' % (i, b'v' * 60) for i in range(300)) + b'\r\n', 431),
    (b'GET / HTTP/1.1\r\n' + b''.join(b'X-%d: v\r\n' % i for i in range(501)) + b'\r\n', 431),
    (b'GET / HTTP/1.1\r\nBad Header\r\n\r\n', 400),
])
def test_oversized_or_malformed_heads_answer_json_with_their_status(channel, head, code):
    clock = task.Clock()
    protocol, transport = connect(site_on(clock, channel), clock)
    protocol.dataReceived(head)
    assert status(transport) == code, transport.value()[:200]
    assert error(transport)


def test_freed_memory_is_handed_back_once_no_large_body_is_held_at_most_once_a_second(monkeypatch):
    import bis_twisted.shared.limits as limits_module
    trims = []
    monkeypatch.setattr(limits_module, 'return_free_memory', lambda: trims.append(clock.seconds()))
    clock = task.Clock()
    site = site_on(clock, FRONTS["twisted"])
    site.bodies_in_flight = 5
    site.large_body_released()  # another body is still held: not yet
    clock.advance(5)
    assert trims == []
    site.bodies_in_flight = 0
    site.large_body_released()
    clock.advance(0)
    assert trims == [5]
    site.large_body_released()
    site.large_body_released()
    clock.advance(0.5)
    assert trims == [5]
    clock.advance(0.5)
    assert trims == [5, 6]


def test_a_watchdog_keeps_one_timer_that_moves_only_when_a_deadline_comes_sooner():
    from bis_twisted.shared.limits import Watchdog

    clock = task.Clock()
    watchdog = Watchdog(clock.callLater, clock.seconds)
    fired = []

    watchdog.arm(10, lambda: fired.append('head'))
    first = clock.getDelayedCalls()[0]
    for _ in range(20):  # a kept-alive connection's requests: each arms later than the last
        clock.advance(0.25)  # exact in binary: the sums below are too
        watchdog.arm(10, lambda: fired.append('head'))
    assert clock.getDelayedCalls() == [first] and first.getTime() == 10  # not moved: a number was

    clock.advance(5)  # t=10: the timer fires, the deadline armed since is at 15: made again for the rest
    assert fired == [] and len(clock.getDelayedCalls()) == 1
    assert clock.getDelayedCalls()[0].getTime() == pytest.approx(15)

    watchdog.arm(1, lambda: fired.append('body'))  # sooner than the timer: the timer moves
    assert clock.getDelayedCalls()[0].getTime() == pytest.approx(11)
    clock.advance(1)
    assert fired == ['body'] and not clock.getDelayedCalls()  # only what was armed last

    watchdog.arm(3, lambda: fired.append('idle'))
    watchdog.cancel()
    clock.advance(10)
    assert fired == ['body'] and not clock.getDelayedCalls()


def test_answers_written_together_wait_for_the_reactor_and_a_lone_one_leaves_at_once(monkeypatch):
    import types

    from bis_twisted.shared import limits

    sent_now = []
    monkeypatch.setattr(limits, 'send_now', lambda transport, data: sent_now.append(data))
    channel = types.SimpleNamespace(held_head=b'HEAD ', transport=StringTransport())
    limits.send_answer(channel, b'one')
    assert sent_now == [b'HEAD one'] and channel.transport.value() == b''  # at once, head and body in one send

    channel.held_head = b'HEAD '
    with limits.answers_together():
        limits.send_answer(channel, b'two')
    assert channel.transport.value() == b'HEAD two' and len(sent_now) == 1  # in the transport's buffer
    limits.send_answer(channel, b'three')
    assert sent_now[-1] == b'three'  # the burst is over
