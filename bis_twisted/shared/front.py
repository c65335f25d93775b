"""``FrontChannel``: an HTTP/1.1 server channel on ``httptools`` (llhttp, the parser uvicorn
uses) for a ``GuardedSite``, in place of twisted.web's ``HTTPChannel`` (``GuardedChannel``).

twisted.web's channel parses a request line by line in Python (``LineReceiver``), checks
each header, and resets an idle timer on every read: about 40 % of the gateway's CPU per
``/run`` in a profile. Here llhttp parses in C and hands over the request line, whole
headers and body pieces. A request to one of the site's ``lean_paths`` (the gateway's
``/run``) is a ``FrontRequest`` (front_request.py), which answers without twisted.web's
``Request``; every other request is the site's ``requestFactory`` (``LimitedRequest``: a
``twisted.web.server.Request``). Either way the site's resource answers it as it would on
``HTTPChannel``, so every route, the access log (``site.log``), request ids, keys and the
admin rule are the same on both channels. It is the gateway's default front.

The limits are ``GuardedChannel``'s, with the same answers: the head within
``head_timeout`` of its first byte (of the connection, for the first request), the body
within ``body_deadline(length)`` (408), the request line within ``MAX_LENGTH`` (414), a
header line within ``MAX_LENGTH``, the head within ``totalHeadersSize`` and at most
``maxHeaders`` headers (431), the body caps of ``LimitedRequest`` (413, 503), and 400 for
what llhttp refuses, smuggling included: ``Content-Length`` beside ``Transfer-Encoding``,
two ``Content-Length`` headers, a ``Transfer-Encoding`` that does not end in ``chunked``.

Pipelined requests are parsed as they come and answered in order, one at a time; while a
parsed request waits for the one before it, the connection stops reading. A connection
keeps reading while its request is answered, so a client that goes away is seen at once
(the request's ``notifyFinish`` fails and the route is cancelled).
"""

import os

import httptools
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from ..errors import ConfigError
from .front_request import FrontRequest
from .limits import (GuardedChannel, answer_head, arm, body_expired, disarm, head_expired, linger_and_close,
                     refusal_answer, release_held, send_answer)

_CONTINUE = b'HTTP/1.1 100 Continue\r\n\r\n'
_HTTP_VERSIONS = {'1.1': b'HTTP/1.1', '1.0': b'HTTP/1.0'}
FRONT_VARIABLE = 'BIS_HTTP_FRONT'
_LEAN_METHODS = (b'POST', b'GET')  # on a site's lean_paths: a FrontRequest, not twisted.web's Request
DEFAULT_FRONT = 'httptools'  # the cheaper of the two per /run (bench/front_path_bench.py, peer_bench.py)


class _Stop(Exception):
    """Raised from a parser callback once the request is refused: llhttp stops there."""


class FrontChannel(Protocol):
    """One client connection of a ``GuardedSite`` (``site``, ``requestFactory`` and
    ``callLater`` are set by the site, as for ``HTTPChannel``). ``requests`` are the requests
    whose head is in and whose answer is not done, oldest first; ``persistent`` False closes
    the connection once they are answered (``ConnectionDrain``)."""

    maxHeaders = HTTPChannel.maxHeaders
    totalHeadersSize = HTTPChannel.totalHeadersSize
    MAX_LENGTH = HTTPChannel.MAX_LENGTH

    site = None
    factory = None
    requestFactory = None
    persistent = True
    length = 0  # the body length of the request being read: None when chunked (LimitedRequest reads it)

    def __init__(self):
        self.requests = []
        self._parser = httptools.HttpRequestParser(self)
        self._phase = 'head'  # 'head', 'body', 'idle' (between requests, or after the last one)
        self._head_started = False
        self._deadline = None  # a Watchdog (limits.arm): the head's, the body's or the idle time's
        self._linger_call = None
        self._closing = False  # refused: what still comes is dropped
        self._last = False  # a request said it is the last (Connection: close, HTTP/1.0)
        self._paused = False
        self._counted = False
        self._reading = None  # the request whose body is being read
        self._ready = []  # requests read whole, waiting for the one before them to be answered
        self._url = b''
        self._headers = []
        self._head_size = 0
        self._raw_head = 0
        self._expect = False
        self._refused = None  # the request refused, when its head was in
        self._refusal = None  # a refusal's answer, written once the requests before it are answered
        self._host = None

    def callLater(self, seconds, f, *args):  # replaced by the site's reactor's (HTTPFactory.buildProtocol)
        from twisted.internet import reactor
        return reactor.callLater(seconds, f, *args)

    # -- the connection ----------------------------------------------------------------------------
    def connectionMade(self):
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)  # as HTTPChannel: no answer waits for the client's delayed ACK
        self.site.open_connections += 1
        self._counted = True
        self._begin_head(started=False)

    def connectionLost(self, reason=None):
        if self._counted:
            self.site.open_connections -= 1
            self._counted = False
        self._disarm()
        requests, self.requests, self._ready = self.requests, [], []
        for request in requests:
            if not request.finished:
                request.connectionLost(reason if reason is not None else Failure(ConnectionError('connection lost')))

    def dataReceived(self, data):
        if self._closing or self._last and self._phase == 'idle':
            return  # refused and lingering, or past the last request: dropped
        phase = self._phase
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # not served: the request is answered as any other, and is the connection's last
            self._last = True
            if self._reading is not None:
                self.bad_request('an upgrade with a body')
            elif not self.requests and self.transport is not None:  # answered already
                self.loseConnection()
            return
        except httptools.HttpParserError as exc:
            if not (self._closing or self._last and self._phase == 'idle'):  # past the last request: dropped
                self.bad_request(str(exc))
            return
        if self._phase == 'head' and phase in ('head', 'idle') and self._head_started and not self._closing:
            # all of it is head: what llhttp holds of an unfinished header line is counted here
            self._raw_head += len(data)
            if self._raw_head > self.totalHeadersSize + self.MAX_LENGTH:
                self._headers_too_large('the request head is over {} bytes'.format(self.totalHeadersSize))

    # -- llhttp's callbacks ------------------------------------------------------------------------
    def on_message_begin(self):
        if self._closing or self._last:
            raise _Stop()
        if self._phase == 'idle':
            self._begin_head()
        self._head_started = True
        self._url = b''
        self._headers = []
        self._head_size = 0
        self._raw_head = 0
        self._expect = False

    def on_url(self, url):
        self._url += url
        if len(self._url) + 16 > min(self.MAX_LENGTH, self.totalHeadersSize):  # with method and version
            self._uri_too_long()
            raise _Stop()

    def on_header(self, name, value):
        line = len(name) + len(value) + 4
        self._headers.append((name, value))
        self._head_size += line
        if line > self.MAX_LENGTH:
            self._headers_too_large('a header line is over {} bytes'.format(self.MAX_LENGTH))
        elif len(self._url) + 16 + self._head_size > self.totalHeadersSize:
            self._headers_too_large('the request head is over {} bytes'.format(self.totalHeadersSize))
        elif len(self._headers) > self.maxHeaders:
            self._headers_too_large('more than {} headers'.format(self.maxHeaders))
        else:
            return
        raise _Stop()

    def on_headers_complete(self):
        parser = self._parser
        version = _HTTP_VERSIONS.get(parser.get_http_version(), b'HTTP/1.0')
        method, url, raw_headers = parser.get_method(), self._url, self._headers
        length = 0
        connection = None
        for name, value in raw_headers:
            lowered = name.lower()
            if lowered == b'content-length':
                length = int(value)  # llhttp let one through, of digits only
            elif lowered == b'transfer-encoding':
                length = None  # llhttp refuses a Content-Length beside it, and a last coding not chunked
                if value.strip().lower() != b'chunked':  # "gzip, chunked": refused, as twisted.web does
                    self.bad_request('Transfer-Encoding {!r}: only chunked is read'.format(value[:40].decode('latin-1')))
                    raise _Stop()
            elif lowered == b'expect':
                self._expect = value.lower() == b'100-continue'
            elif lowered == b'connection':
                connection = value
        self._headers = []
        if method in _LEAN_METHODS and url.split(b'?', 1)[0] in self.site.lean_paths:
            request = FrontRequest(self, method, url, version, raw_headers)
        else:
            request = self.requestFactory(self)
            request.method, request.uri, request.clientproto = method, url, version
            headers = request.requestHeaders
            for name, value in raw_headers:
                headers.addRawHeader(name, value)
            request.parseCookies()
        if version != b'HTTP/1.1' or not parser.should_keep_alive():
            self._last = True  # twisted.web's rule: an HTTP/1.0 request is the connection's last
            if version == b'HTTP/1.1' and connection is not None:
                request.setHeader(b'Connection', b'close')
        self.requests.append(request)
        self._reading = request
        self.length = length
        self._phase = 'body'
        request.gotLength(length)
        if length != 0:
            arm(self, self.site.limits.body_deadline(length), self._body_expired)
        refusal = request.refusal(length)
        if refusal is not None:
            self.refuse(*refusal, request=request)
            raise _Stop()
        if self._expect and length != 0 and version == b'HTTP/1.1' and self.requests[0] is request:
            release_held(self)
            self.transport.write(_CONTINUE)
            self._expect = False

    def on_body(self, data):
        self._reading.handleContentChunk(data)
        if self._closing:
            raise _Stop()

    def on_message_complete(self):
        request, self._reading = self._reading, None
        self._phase = 'idle'
        if request is None:
            return
        if self.requests and self.requests[0] is request:
            self._process(request)
        else:
            self._ready.append(request)
            self._pause()

    # -- answering ---------------------------------------------------------------------------------
    def _process(self, request):
        request.requestReceived(request.method, request.uri, request.clientproto)

    def requestDone(self, request):
        """Called by the request when its answer is written whole."""
        if self.held_head is not None:  # an answer without a body (HEAD, 204, 304, empty)
            send_answer(self, b'')
        if self.requests and self.requests[0] is request:
            del self.requests[0]
        else:
            self.requests.remove(request)
        if self.transport is None:
            return
        if self._ready:  # read whole while this one was answered: its turn
            self._resume()
            self._process(self._ready.pop(0))
            return
        if self._closing:
            if self._refusal is not None and not self._answering():
                self._write_refusal()
            return
        if not self.persistent or (self._last and not self.requests and not self._reading):
            self.loseConnection()
            return
        if self.requests:
            if self._expect and self.requests[0] is self._reading:
                release_held(self)
                self.transport.write(_CONTINUE)  # the next request waited for this one's answer
                self._expect = False
            self._resume()
        elif self._phase == 'idle':
            arm(self, self.site.limits.idle_timeout, self._idle_expired)

    burst_held = None  # answers held until the burst that wrote them ends (limits.answers_together)
    held_head = None  # an answer's head, sent with the first of its body (limits.send_answer)

    def writeHeaders(self, version, code, reason, headers):
        self.held_head = answer_head(version, code, reason, headers)

    def write(self, data):
        send_answer(self, data)

    def writeSequence(self, data):
        send_answer(self, b''.join(data))

    def registerProducer(self, producer, streaming):
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.transport.unregisterProducer()

    def getPeer(self):
        return self.transport.getPeer()

    def getHost(self):
        # each request asks (twisted.web's Request.__init__): the socket's own address, asked
        # of the kernel once per connection, not once per request
        host = self._host
        if host is None:
            host = self._host = self.transport.getHost()
        return host

    def isSecure(self):
        return False

    def loseConnection(self):
        release_held(self)  # an answer of a burst first (limits.answers_together)
        self.transport.loseConnection()

    def _pause(self):
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _resume(self):
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    # -- the deadlines (as GuardedChannel's) -------------------------------------------------------
    def _begin_head(self, started=True):
        self._phase = 'head'
        self._head_started = started
        self._head_size = 0
        arm(self, self.site.limits.head_timeout, self._head_expired)

    def _disarm(self):
        disarm(self)

    def _head_expired(self):
        head_expired(self)

    def _body_expired(self):
        body_expired(self, self._reading)

    def _idle_expired(self):
        # it closes only a connection that is idle when it fires
        if self._phase == 'idle' and not self.requests and self.transport is not None:
            self.loseConnection()

    # -- refusing ----------------------------------------------------------------------------------
    def _uri_too_long(self):
        self.refuse('414 URI Too Long', 'the request line (method and URL) is over {} bytes; send the inputs '
                    'in a JSON body instead of the query string'.format(min(self.MAX_LENGTH, self.totalHeadersSize)))

    def _headers_too_large(self, what):
        self.refuse('431 Request Header Fields Too Large', '{}; send fewer or smaller headers'.format(what))

    def bad_request(self, reason):
        self.refuse('400 Bad Request', 'malformed HTTP request: {}; send one well-formed HTTP/1.1 request (one '
                    'Content-Length or Transfer-Encoding: chunked, not both)'.format(reason.rstrip('.')))

    def refuse(self, status_line, message, headers=(), request=None):
        """``GuardedChannel.refuse``: answer ``{"ERROR": message}`` and close without reading
        the rest; with the ``request`` (its head is in) the answer carries the site's fields."""
        if self._closing or self.transport is None:
            return
        self._closing = True
        self._disarm()
        self._refusal = refusal_answer(self.site, status_line, message, headers, request)
        self._refused = request
        if not self._answering():  # else after the answers owed before it (pipelined requests)
            self._write_refusal()

    def _answering(self):
        return any(r is not self._refused for r in self.requests)

    def _write_refusal(self):
        answer, self._refusal = self._refusal, None
        self._resume()  # read and drop what still comes while the answer goes out
        release_held(self)
        self.transport.write(answer)
        self._linger_call = linger_and_close(self.transport, self.callLater, self.site.limits.linger)


FRONTS = {'twisted': GuardedChannel, 'httptools': FrontChannel}


def front_channel(configured=None, environ=None):
    """The channel class of the front named by ``BIS_HTTP_FRONT`` (it wins), else by the
    config's ``HTTP_FRONT`` (validated with the config), else ``DEFAULT_FRONT``."""
    environ = os.environ if environ is None else environ
    name = environ.get(FRONT_VARIABLE, '').strip() or configured or DEFAULT_FRONT
    if name not in FRONTS:
        raise ConfigError('{} must be {}, got {!r}'.format(
            FRONT_VARIABLE, ' or '.join('"{}"'.format(n) for n in FRONTS), name))
    return FRONTS[name]
