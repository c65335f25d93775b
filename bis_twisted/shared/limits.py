"""The HTTP server's limits against hostile or broken clients, for the gateway and the model
server alike: deadlines for a request's head and body, a cap on open connections, caps on a
body and on all the bodies being held at once, and a JSON answer with the right status for
what twisted.web would refuse with a bare 400 or a silent close.

twisted.web has an idle timeout only (``HTTPFactory(timeout=...)``), reset by every byte: a
client sending one header byte a second (slowloris) holds a connection for ever. Here a
request's head must arrive whole within ``head_timeout`` of its first byte (of the
connection, for the first request), its body within ``body_timeout`` plus its size at
``min_body_rate``; past that the answer is 408 and the connection closes. An idle kept-alive
connection between requests is governed by the idle timeout as before.
"""

import ctypes
import json
import resource

import attr
from twisted.internet.protocol import Protocol
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from ..protocol import DEFAULT_MAX_BODY_MB, REQUEST_ID_HEADER
from .twisted_private import BadRequestHookChannel, send_now

MIB = 1024 * 1024
DEFAULT_HEAD_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 10.0
DEFAULT_MIN_BODY_RATE = 64 * 1024  # bytes/s: a body's deadline grows with its size at this rate
DEFAULT_BODIES_IN_FLIGHT_MB = 256
IDLE_TIMEOUT = 60  # seconds a kept-alive connection may stay silent (twisted.web's default is 12 hours)


def default_max_connections():
    """Half the process's file-descriptor limit, at most 2048: the rest is for the
    connections to the model servers, log files and the children's pipes."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, min(2048, soft // 2))


@attr.s(frozen=True)
class Limits:
    """What one listening site allows; times in seconds, sizes in bytes."""

    max_body = attr.ib(default=DEFAULT_MAX_BODY_MB * MIB)
    head_timeout = attr.ib(default=DEFAULT_HEAD_TIMEOUT)
    body_timeout = attr.ib(default=DEFAULT_BODY_TIMEOUT)
    min_body_rate = attr.ib(default=DEFAULT_MIN_BODY_RATE)
    max_connections = attr.ib(factory=default_max_connections)
    max_bodies_in_flight = attr.ib(default=DEFAULT_BODIES_IN_FLIGHT_MB * MIB)
    idle_timeout = attr.ib(default=IDLE_TIMEOUT)
    overflow_timeout = attr.ib(default=2.0)  # a connection past the cap has this long to say what it wants
    linger = attr.ib(default=2.0)  # after a refusal, how long the rest of the request is read and dropped

    def body_deadline(self, length):
        """Seconds a body of ``length`` bytes (None: chunked, up to ``max_body``) may take."""
        expected = self.max_body if length is None else min(length, self.max_body)
        return self.body_timeout + expected / self.min_body_rate

    @classmethod
    def from_config(cls, config, max_body_mb=None):
        """From a config's top-level keys (the gateway's, or a model server's entry)."""
        values = {'max_body': int((max_body_mb or config.get('MAX_BODY_MB') or DEFAULT_MAX_BODY_MB) * MIB)}
        if config.get('HEAD_TIMEOUT') is not None:
            values['head_timeout'] = float(config['HEAD_TIMEOUT'])
        if config.get('BODY_TIMEOUT') is not None:
            values['body_timeout'] = float(config['BODY_TIMEOUT'])
        if config.get('MAX_CONNECTIONS') is not None:
            values['max_connections'] = int(config['MAX_CONNECTIONS'])
        if config.get('MAX_BODIES_MB') is not None:
            values['max_bodies_in_flight'] = int(config['MAX_BODIES_MB'] * MIB)
        return cls(**values)


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; elsewhere there is nothing to do
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def return_free_memory():
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def raw_answer(status_line, message, headers=(), fields=None):
    """The bytes of a complete ``Connection: close`` JSON answer, for a request that never
    reaches a route; ``fields``: more of the answer (the gateway's fields, the request id)."""
    body = json.dumps(dict({'ERROR': message}, **(fields or {}))).encode('utf-8')
    lines = ['HTTP/1.1 ' + status_line, 'Content-Type: application/json', 'Content-Length: %d' % len(body),
             'Connection: close']
    lines += ['{}: {}'.format(name, value) for name, value in headers]
    return ('\r\n'.join(lines) + '\r\n\r\n').encode('ascii') + body


class Watchdog:
    """A channel's deadline (its head's, its body's or its idle time's: one at a time) on one
    DelayedCall per connection. ``arm`` moves two attributes; the DelayedCall moves only
    when a deadline comes sooner than it will fire, and when it fires before the deadline
    armed since, it is made again for what is left. So each request of a kept-alive
    connection arms its deadlines without touching the reactor's timers.

    ``call_later`` and ``seconds`` are the channel's reactor's (its site's)."""

    __slots__ = ('_call_later', '_seconds', '_call', '_fires', '_deadline', '_expired')

    def __init__(self, call_later, seconds):
        self._call_later = call_later
        self._seconds = seconds
        self._call = None
        self._fires = 0.0  # when _call fires
        self._deadline = 0.0
        self._expired = None

    def arm(self, seconds, expired):
        """``expired()`` ``seconds`` from now, in place of what was armed."""
        deadline = self._seconds() + seconds
        self._deadline, self._expired = deadline, expired
        if self._call is None:
            self._call, self._fires = self._call_later(seconds, self._fire), deadline
        elif deadline < self._fires:
            self._call.reset(seconds)
            self._fires = deadline

    def cancel(self):
        self._expired = None
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _fire(self):
        self._call = None
        expired = self._expired
        if expired is None:
            return
        left = self._deadline - self._seconds()
        if left > 0:  # armed again since: not yet
            self._call, self._fires = self._call_later(left, self._fire), self._deadline
            return
        self._expired = None
        expired()


def head_timeout_message(limits):
    return ('the request head did not arrive within {:g}s (HEAD_TIMEOUT); send the whole request at '
            'once'.format(limits.head_timeout))


def body_timeout_message(limits, length):
    return ('the request body did not arrive within {:g}s (BODY_TIMEOUT plus its size at {:g} KiB/s); send it '
            'at once, and no more than its Content-Length promised'.format(limits.body_deadline(length),
                                                                         limits.min_body_rate / 1024))


def linger_and_close(transport, reactor_call_later, linger):
    """Stop writing (the answer goes out first), keep reading and dropping until the client
    closes or ``linger`` passes. Closing with unread input would reset the connection, and
    the client could lose the answer still in flight."""
    getattr(transport, 'loseWriteConnection', transport.loseConnection)()
    return reactor_call_later(linger, transport.abortConnection)


class BodyBudget:
    """A request body's share of its site's caps: over ``max_body`` refused (413), and while
    the site already holds ``max_bodies_in_flight`` bytes of bodies refused (503 +
    ``Retry-After``). A ``Content-Length`` is judged as soon as the head is read
    (``refusal``), a chunked body as it arrives (``take``); ``release`` gives back what was
    counted, once the request ends however it ends."""

    def __init__(self, site):
        self.site = site
        self.refused = False
        self._received = 0
        self._reserved = 0

    def refusal(self, length):
        """Called with the head complete: None, or ``(status line, message, headers)``."""
        limits = self.site.limits
        if length is not None and length > limits.max_body:
            self.refused = True
            return _too_large(limits)
        if length and not self._reserve(length):
            self.refused = True
            return self._busy()
        return None

    def take(self, data, request):
        """Count a piece of ``request``'s body: True when it may be kept; else the request's
        channel refuses it (413 or 503), and False."""
        if self.refused:
            return False
        self._received += len(data)
        channel = request.channel
        if self._received > self.site.limits.max_body:
            refusal = _too_large(self.site.limits)
        elif channel.length is None and not self._reserve(len(data)):  # chunked: counted as it comes
            refusal = self._busy()
        else:
            return True
        self.refused = True
        channel.refuse(*refusal, request=request)
        return False

    def _busy(self):
        return ('503 Service Unavailable', self.site.bodies_busy_message(), (('Retry-After', '1'),))

    def _reserve(self, size):
        if not self.site.reserve_body(size):
            return False
        self._reserved += size
        return True

    def release(self):
        if self._reserved:
            self.site.release_body(self._reserved)
            self._reserved = 0


def _too_large(limits):
    return ('413 Payload Too Large', 'request body over the limit of {} bytes; send less, or raise MAX_BODY_MB in '
            'the config'.format(limits.max_body), ())


class LimitedRequest(Request):
    """A request whose body is refused before it is buffered (``BodyBudget``): twisted.web
    has no body cap (Twisted #4898)."""

    def __init__(self, channel, *args, **kwargs):
        Request.__init__(self, channel, *args, **kwargs)
        self._budget = BodyBudget(channel.site)  # the channel is gone by the time the request ends

    def refusal(self, length):
        """Called with the head complete: None, or ``(status line, message, headers)``."""
        return self._budget.refusal(length)

    def finish(self):
        Request.finish(self)
        self._budget.release()

    def connectionLost(self, reason):
        Request.connectionLost(self, reason)
        self._budget.release()

    def handleContentChunk(self, data):
        if self._budget.take(data, self):
            Request.handleContentChunk(self, data)

    def requestReceived(self, command, path, version):
        if not self._budget.refused:
            Request.requestReceived(self, command, path, version)


# The deadlines of a channel, GuardedChannel's here and FrontChannel's (front.py) alike: each
# keeps them in a ``Watchdog`` (``_deadline``) and its state as ``_phase`` ('head', 'body',
# ...), ``_closing`` (refused: what comes is dropped), ``_head_started`` and ``length`` (the
# body's), and refuses with ``refuse(status_line, message, request=...)``.

def refusal_answer(site, status_line, message, headers=(), request=None):
    """The bytes of a channel's refusal: ``{"ERROR": message}``, and with the ``request`` (its
    head is in) the ``site``'s ``gateway_fields(request)`` as every other answer has, its
    request id as a header too."""
    fields = None
    gateway_fields = getattr(site, 'gateway_fields', None)
    if request is not None and gateway_fields is not None:
        fields = gateway_fields(request)
        if 'request_id' in fields:
            headers = tuple(headers) + ((REQUEST_ID_HEADER.decode('ascii'), fields['request_id']),)
    return raw_answer(status_line, message, headers, fields)


def disarm(channel):
    """Cancel ``channel``'s deadline and its linger after a refusal."""
    if channel._deadline is not None:
        channel._deadline.cancel()
    if channel._linger_call is not None and channel._linger_call.active():
        channel._linger_call.cancel()
    channel._linger_call = None


def arm(channel, seconds, expired):
    """``channel``'s deadline ``seconds`` from now: ``expired()`` then, unless armed again."""
    if channel._deadline is None:
        reactor = channel.site.reactor
        channel._deadline = Watchdog(channel.callLater, reactor.seconds)
    channel._deadline.arm(seconds, expired)


def head_expired(channel):
    """``channel``'s head deadline passed: 408, or a silent close when nothing was said."""
    if channel._phase != 'head' or channel._closing:
        return
    if not channel._head_started:
        channel.transport.loseConnection()  # connected and said nothing: nobody to answer
    else:
        channel.refuse('408 Request Timeout', head_timeout_message(channel.site.limits))


def body_expired(channel, request=None):
    """``channel``'s body deadline passed: 408 (carrying ``request``'s fields when given)."""
    if channel._phase != 'body' or channel._closing:
        return
    channel.refuse('408 Request Timeout', body_timeout_message(channel.site.limits, channel.length),
                   request=request)


def answer_head(version, code, reason, headers):
    """The head of an answer (``HTTPChannel.writeHeaders``'s bytes), which a channel holds
    (``held_head``) until the first of its body: twisted.web's ``Request`` writes the two
    one after the other, and they leave in one send. An answer without a body sends it when
    it is done (``requestDone``); a route that writes ``b''`` to send the head early has it
    sent with its first bytes of body instead."""
    lines = [version, b' ', code, b' ', reason, b'\r\n']
    for name, values in headers.getAllRawHeaders():
        for value in values:
            lines += (name, b': ', value, b'\r\n')
    lines.append(b'\r\n')
    return b''.join(lines)


class _Burst:
    """Whether answers are being written in a burst (``answers_together``): many in one
    stretch of the reactor thread; and the channels holding answers until it ends."""

    depth = 0
    held = []

    def __enter__(self):
        _Burst.depth += 1

    def __exit__(self, *exc_info):
        _Burst.depth -= 1
        if not _Burst.depth and _Burst.held:
            held, _Burst.held = _Burst.held, []
            for channel in held:
                release_held(channel)
        return False


_BURST = _Burst()


def answers_together():
    """A context: the answers written inside it leave together as it ends, rather than each
    as it is made: their clients are woken by one burst of sends, not one send every few tens
    of microseconds (a client with many connections, a load balancer or a benchmark, then
    reads several per wake-up). A channel with ``burst_held`` (``FrontChannel``) holds them
    and sends them with ``send_now`` at the end (no ``epoll_ctl``), and releases them first
    (``release_held``) before anything else reaches its transport; another channel's go to its
    transport's buffer, sent when the reactor next polls. Used where one read brings the
    answers of many requests (the inner leg's frames)."""
    return _BURST


def release_held(channel):
    """Send what ``channel`` holds of a burst, now."""
    held = channel.burst_held
    if held:
        channel.burst_held = None
        if channel.transport is not None:
            send_now(channel.transport, b''.join(held))


def send_answer(channel, data):
    """``data`` of an answer to ``channel``'s client, after the head it holds: at once
    (``send_now``), or with the other answers of a burst (``answers_together``)."""
    head = channel.held_head
    if head is not None:
        channel.held_head = None
        data = head + data
    if data and channel.transport is not None:
        if not _Burst.depth:
            send_now(channel.transport, data)
            return
        held = getattr(channel, 'burst_held', False)
        if held is False:  # a channel that does not hold: its transport's buffer
            channel.transport.write(data)
        elif held is None:
            channel.burst_held = [data]
            _Burst.held.append(channel)
        else:
            held.append(data)


class GuardedChannel(BadRequestHookChannel):
    """An HTTP/1.1 channel with the deadlines above, whose refusals answer JSON: 408 (too
    slow), 413 / 503 (body), 414 (request line over ``MAX_LENGTH``), 431 (a header line over
    ``MAX_LENGTH``, the head over ``totalHeadersSize``, more than ``maxHeaders`` headers),
    400 (malformed). It uses HTTPChannel's overridable methods (``lineReceived``,
    ``lineLengthExceeded``, ``allHeadersReceived``, ``allContentReceived``, ``requestDone``,
    and ``bad_request``, behind the one private hook, in ``twisted_private``) and keeps its
    own state, never HTTPChannel's private attributes."""

    _phase = 'head'  # 'head', 'body', 'handling' (a route runs), 'idle' (kept alive between requests)
    _deadline = None  # a Watchdog, made at the first
    _linger_call = None
    _head_started = False
    _head_size = 0
    _head_lines = 0
    _closing = False
    _counted = False
    _host = None

    def getHost(self):
        # each request asks (Request.__init__): the kernel is asked once per connection
        if self._host is None:
            self._host = HTTPChannel.getHost(self)
        return self._host

    def connectionMade(self):
        HTTPChannel.connectionMade(self)
        self.site.open_connections += 1
        self._counted = True
        self._begin_head(started=False)

    def connectionLost(self, reason):
        if self._counted:
            self.site.open_connections -= 1
            self._counted = False
        self._disarm()
        HTTPChannel.connectionLost(self, reason)

    # -- the deadlines ---------------------------------------------------------------------------
    def _begin_head(self, started=True):
        self._phase = 'head'
        self._head_started = started
        self._head_size = 0
        self._head_lines = 0
        arm(self, self.site.limits.head_timeout, self._head_expired)

    def _disarm(self):
        disarm(self)

    def _head_expired(self):
        head_expired(self)

    def _body_expired(self):
        body_expired(self)

    # -- reading ---------------------------------------------------------------------------------
    def dataReceived(self, data):
        if self._closing:
            return  # lingering after a refusal: what still comes is dropped
        if self._phase == 'idle':
            self._begin_head()
        elif self._phase == 'head':
            self._head_started = True
        HTTPChannel.dataReceived(self, data)

    def rawDataReceived(self, data):
        if not self._closing:
            HTTPChannel.rawDataReceived(self, data)

    def lineReceived(self, line):
        if self._closing:
            return
        if self._phase == 'idle':  # a pipelined request, replayed from the buffer
            self._begin_head()
        if self._phase == 'head':
            if not line and self._head_lines == 0:
                return HTTPChannel.lineReceived(self, line)  # the stray CRLF HTTPChannel tolerates
            self._head_size += len(line) + 2
            self._head_lines += 1
            if self._head_size > self.totalHeadersSize:
                if self._head_lines == 1:
                    return self._uri_too_long()
                return self._headers_too_large('the request head is over {} bytes'.format(self.totalHeadersSize))
            if self._head_lines > self.maxHeaders + 2:  # request line + headers + the empty line
                return self._headers_too_large('more than {} headers'.format(self.maxHeaders))
        HTTPChannel.lineReceived(self, line)

    def lineLengthExceeded(self, line):
        if self._closing:
            return
        if self._phase in ('head', 'idle') and self._head_lines == 0:
            self._uri_too_long()
        else:
            self._headers_too_large('a header line is over {} bytes'.format(self.MAX_LENGTH))

    def _uri_too_long(self):
        self.refuse('414 URI Too Long', 'the request line (method and URL) is over {} bytes; send the inputs '
                    'in a JSON body instead of the query string'.format(min(self.MAX_LENGTH, self.totalHeadersSize)))

    def _headers_too_large(self, what):
        self.refuse('431 Request Header Fields Too Large', '{}; send fewer or smaller headers'.format(what))

    def allHeadersReceived(self):
        self._phase = 'body'
        if self.length != 0:  # no body: allContentReceived follows at once
            arm(self, self.site.limits.body_deadline(self.length), self._body_expired)
        refusal = self.requests[-1].refusal(self.length)
        if refusal is not None:
            # before HTTPChannel's own: it would answer 'Expect: 100-continue' after our refusal
            self.refuse(*refusal, request=self.requests[-1])
            return
        HTTPChannel.allHeadersReceived(self)

    def allContentReceived(self):
        self._phase = 'handling'  # the deadline stays armed, ignored, for the next request to move
        HTTPChannel.allContentReceived(self)

    def requestDone(self, request):
        if self.held_head is not None:  # an answer without a body (HEAD, 204, 304, empty)
            send_answer(self, b'')
        self._phase = 'idle'  # before HTTPChannel replays pipelined input into lineReceived
        HTTPChannel.requestDone(self, request)

    # -- answering: head and body in one send ------------------------------------------------------
    held_head = None

    def writeHeaders(self, version, code, reason, headers):
        self.held_head = answer_head(version, code, reason, headers)

    def write(self, data):
        send_answer(self, data)

    def writeSequence(self, iovec):
        send_answer(self, b''.join(iovec))

    # -- refusing ----------------------------------------------------------------------------------
    def refuse(self, status_line, message, headers=(), request=None):
        """Answer ``status_line`` with ``{"ERROR": message}`` and close, without reading the
        rest of the request. With the ``request`` (its head is in), the answer carries the
        site's ``gateway_fields(request)`` as every other answer does, request id included."""
        if self._closing or self.transport is None:
            return
        self._closing = True
        self._disarm()
        self.transport.write(refusal_answer(self.site, status_line, message, headers, request))
        self._linger_call = linger_and_close(self.transport, self.callLater, self.site.limits.linger)

    def bad_request(self):
        self.refuse('400 Bad Request', 'malformed HTTP request (request line, headers or form body); send a JSON '
                    'object')


class OverflowProtocol(Protocol):
    """A connection past ``max_connections``: it gets ``overflow_timeout`` to send its
    request line; ``GET /health`` answers 200 (the process is alive, so a liveness probe
    does not restart a gateway under attack), anything else 503 with ``Retry-After``. Then
    it is closed."""

    _answered = False

    def __init__(self, site):
        self.site = site
        self._buffer = b''
        self._timer = None

    def connectionMade(self):
        self.site.overflowed += 1
        self._timer = self.site.reactor.callLater(self.site.limits.overflow_timeout, self._answer)

    def dataReceived(self, data):
        if self._answered:
            return
        self._buffer += data[:4096]
        if b'\n' in self._buffer or len(self._buffer) >= 4096:
            self._answer()

    def _answer(self):
        if self._answered:
            return
        self._answered = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        parts = self._buffer.split(b'\n', 1)[0].split()
        limits = self.site.limits
        if len(parts) >= 2 and parts[0] == b'GET' and parts[1].split(b'?', 1)[0] == b'/health':
            body = json.dumps({'STATUS': 'OK', 'CONNECTIONS': self.site.open_connections,
                               'MAX_CONNECTIONS': limits.max_connections}).encode('ascii')
            head = ('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n'
                    'Connection: close\r\n\r\n' % len(body)).encode('ascii')
            self.transport.write(head + body)
        else:
            self.transport.write(raw_answer(
                '503 Service Unavailable', 'too many open connections ({} of MAX_CONNECTIONS {}); retry '
                'shortly'.format(self.site.open_connections, limits.max_connections), (('Retry-After', '1'),)))
        self._timer = linger_and_close(self.transport, self.site.reactor.callLater, limits.linger)

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


class GuardedSite(Site):
    """A ``Site`` with ``limits``: its channels are ``GuardedChannel``, its requests
    ``LimitedRequest``; past ``max_connections`` open connections a new one gets an
    ``OverflowProtocol``."""

    protocol = GuardedChannel
    gateway_fields = None  # request -> the fields every answer carries (the gateway's), or None
    lean_paths = frozenset()  # paths FrontChannel answers with a FrontRequest (see front_request.py)

    def __init__(self, resource, limits=None, **kwargs):
        self.limits = limits or Limits()
        Site.__init__(self, resource, requestFactory=LimitedRequest, timeout=self.limits.idle_timeout, **kwargs)
        self.open_connections = 0
        self.overflowed = 0  # connections refused by the cap, since the start
        self.bodies_in_flight = 0  # bytes of request bodies held now
        self._trim_wanted = False
        self._trim_call = None
        self._trimmed_at = float('-inf')

    def reserve_body(self, size):
        """Count ``size`` bytes of a body held, unless that goes over ``MAX_BODIES_MB`` (False)."""
        if self.bodies_in_flight + size > self.limits.max_bodies_in_flight:
            return False
        self.bodies_in_flight += size
        return True

    def release_body(self, size):
        self.bodies_in_flight -= size
        if size >= MIB:
            self.large_body_released()

    def bodies_busy_message(self):
        return 'the server holds {:g} MiB of request bodies already (MAX_BODIES_MB); retry shortly'.format(
            self.limits.max_bodies_in_flight / MIB)

    def large_body_released(self):
        """Once no body is held, hand the freed heap back to the system (at most once a
        second): glibc keeps it for reuse, and the gateway's RSS would stay at its peak."""
        self._trim_wanted = True
        if self.bodies_in_flight == 0 and self._trim_call is None:
            delay = max(0.0, self._trimmed_at + 1.0 - self.reactor.seconds())
            self._trim_call = self.reactor.callLater(delay, self._trim)

    def _trim(self):
        self._trim_call = None
        if self.bodies_in_flight == 0 and self._trim_wanted:
            self._trim_wanted = False
            self._trimmed_at = self.reactor.seconds()
            return_free_memory()

    def buildProtocol(self, addr):
        if self.open_connections >= self.limits.max_connections:
            protocol = OverflowProtocol(self)
            protocol.factory = self
            return protocol
        return Site.buildProtocol(self, addr)
