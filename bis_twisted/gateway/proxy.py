"""``ChildClient``: HTTP from the gateway to its model servers, over kept-alive connections.

The hot call (``post_json``, used by ``/run``) goes straight to a ``twisted.web.client.Agent``
on a persistent ``HTTPConnectionPool`` with the URL bytes built once per child: treq's
per-request work (URL parsing, IDNA, cookie jar) measured as the larger part of the proxy's
cost in our prototypes. Everything else (health pings, notifications, admin calls)
uses ``treq.client.HTTPClient`` over the same agent.

Every call has a deadline and is cancellable: when the gateway's client goes away, the call
to the child is abandoned (its connection aborted).

A child of ours is reached over the Unix socket it also listens on (``use_unix_socket``).
Given ``answer_fields``, the child writes them into its answer and marks it complete: that
answer comes back undecoded, as ``Answer.raw``, for the gateway to pass on as it is.

A child that answers ``application/x-ndjson`` streams: ``post_json`` then returns a
``ChildStream`` instead of reading the body, and the caller relays its lines as they come,
with the child's connection paused while the caller's client cannot take more.
"""

import json
import os
import sys
from urllib.parse import urlsplit

from treq.client import HTTPClient
from twisted.internet import defer, error as net_error
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.web import client as web_client
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from ..errors import BadGateway, GatewayTimeout
from ..protocol import ANSWER_COMPLETE_HEADER, ANSWER_FIELDS_HEADER, NDJSON_TYPE, REQUEST_ID_HEADER
from ..shared import tracing
from ..shared.twisted_private import QuietHTTPConnectionPool, standard_endpoint
from ..shared.web import Answer


DEFAULT_MAX_ANSWER = 64 * 1024 * 1024
_JSON_HEADERS = Headers({b'Content-Type': [b'application/json'], b'User-Agent': [b'bis-gateway']})

# failures that mean the request never reached the child: safe to retry, and "not up" to the user
_NOT_CONNECTED = (net_error.ConnectionRefusedError, net_error.ConnectError, net_error.DNSLookupError,
                  net_error.NoRouteError, web_client.RequestNotSent)


@implementer(IBodyProducer)
class BytesProducer:
    """A body already in memory. A small one is written at once (``FileBodyProducer`` would
    add a cooperator round trip per request); a large one in slices, as the connection
    takes them (the transport pauses and resumes this producer), so the transport never
    holds a second whole copy of it."""

    slice_size = 256 * 1024

    def __init__(self, data):
        self._data = data
        self.length = len(data)
        self._offset = 0
        self._paused = False
        self._consumer = None
        self._finished = None

    def startProducing(self, consumer):
        if self.length <= self.slice_size:
            consumer.write(self._data)
            return defer.succeed(None)
        self._consumer = consumer
        self._finished = defer.Deferred()
        self._write_slices()
        return self._finished

    def _write_slices(self):
        view = memoryview(self._data)
        while not self._paused and self._offset < self.length:
            end = self._offset + self.slice_size
            piece, self._offset = bytes(view[self._offset:end]), end
            self._consumer.write(piece)  # may pause us at once: the transport's buffer is full
        if self._offset >= self.length and not self._finished.called:
            self._data = None
            self._finished.callback(None)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        if self._finished is not None and self._paused and self._data is not None:
            self._paused = False
            self._write_slices()

    def stopProducing(self):
        # the request was abandoned: _newclient cancels the Deferred we returned
        self._paused = True
        self._data = None


class ChildClient:
    """One connection pool for all children; ``max_per_host`` idle connections each."""

    def __init__(self, reactor=None, max_per_host=64, pool=None, agent=None, max_answer=DEFAULT_MAX_ANSWER,
                 inner_frames=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.max_answer = max_answer  # bytes: a longer answer is dropped (502) as it arrives
        if pool is None:
            pool = QuietHTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = max_per_host
            pool.cachedConnectionTimeout = 50  # under the child's idle timeout (60 s)
            pool.retryAutomatically = False  # a POST the child may have run is never replayed
        self.pool = pool
        self._endpoints = _LoopbackEndpoints(reactor)
        # /run to a child of ours goes in frames over its Unix socket (gateway.inner), unless
        # BIS_INNER_FRAMES=0 keeps it on HTTP (to compare the two)
        if inner_frames is None:
            inner_frames = os.environ.get('BIS_INNER_FRAMES', '1') != '0'
        self._inner = {} if inner_frames else None  # (host, port) -> InnerLeg
        self._inner_by_url = {}
        self.agent = agent or web_client.Agent.usingEndpointFactory(reactor, self._endpoints, pool=pool)
        self.http = HTTPClient(self.agent)

    def use_unix_socket(self, host, port, path):
        """Reach ``http://host:port`` through the Unix socket at ``path`` (a child of ours
        that listens on both), and send it ``/run`` in frames there."""
        self._endpoints.use_unix_socket(host, port, path)
        if self._inner is not None:
            from .inner import InnerLeg
            self._inner[(host.encode('ascii'), port)] = InnerLeg(self._reactor, path, self.max_answer)
            self._inner_by_url.clear()

    def _inner_leg(self, url):
        if self._inner is None:
            return None
        try:
            return self._inner_by_url[url]
        except KeyError:
            parts = urlsplit(url)
            leg = self._inner_by_url[url] = self._inner.get((parts.hostname, parts.port))
            if leg is not None:
                leg.max_answer = self.max_answer
            return leg

    async def post_json(self, url, payload, timeout, what, request_id=None, answer_fields=None):
        """POST ``payload`` (bytes) to ``url`` (bytes); ``what`` names the server in errors.

        Raises ``NotConnected`` when the request never reached the child (the caller may try
        another replica), ``GatewayTimeout``, ``BadGateway`` (``ChildConnectionLost`` when the
        child dropped the connection), or ``CancelledError`` when our own caller gave up."""
        leg = self._inner_leg(url)
        if leg is not None:
            return await leg.post(payload, timeout, what, request_id, answer_fields)
        response_holder = []

        def keep_response(response):
            response_holder.append(response)
            return response

        headers = _JSON_HEADERS
        if request_id is not None or answer_fields is not None:
            headers = _JSON_HEADERS.copy()
            if request_id is not None:
                headers.setRawHeaders(REQUEST_ID_HEADER, [request_id.encode('ascii')])
            if answer_fields is not None:
                headers.setRawHeaders(ANSWER_FIELDS_HEADER, [answer_fields])
        headers = tracing.with_context(headers)  # the hop's traceparent, when tracing is on
        d = self.agent.request(b'POST', url, headers, BytesProducer(payload))
        d.addCallback(keep_response)
        d.addCallback(lambda response: _STREAMING if _is_streaming(response) else read_capped_body(
            response, self.max_answer, what))
        # Not Deferred.addTimeout: cancelling an Agent request fails it with
        # ResponseNeverReceived([CancelledError]), which addTimeout does not turn into a
        # TimeoutError; our own timer knows it fired.
        timed_out = []

        def expire():
            timed_out.append(True)
            d.cancel()

        timer = self._reactor.callLater(timeout, expire)
        try:
            raw = await d
        except _NOT_CONNECTED as exc:
            raise NotConnected(type(exc).__name__) from None
        except (defer.CancelledError, web_client.ResponseNeverReceived, web_client.ResponseFailed,
                web_client.RequestTransmissionFailed, web_client.PartialDownloadError,
                net_error.ConnectionLost, net_error.ConnectionDone) as exc:
            if timed_out:
                raise GatewayTimeout('server {} did not answer within its TIMEOUT of {:g}s'.format(
                    what, timeout)) from None
            if _was_cancelled(exc):
                raise defer.CancelledError() from None  # our caller gave up (client gone)
            raise ChildConnectionLost('server {} closed the connection before answering ({}); it may have '
                                      'crashed'.format(what, _short(exc))) from None
        finally:
            if timer.active():
                timer.cancel()
        status = response_holder[0].code
        if raw is _STREAMING:
            return ChildStream(self._reactor, response_holder[0], timeout, what, max_line=self.max_answer)
        if answer_fields is not None and response_holder[0].headers.hasHeader(ANSWER_COMPLETE_HEADER):
            return Answer(status, {}, raw=raw)  # the fields are in: passed through as it is
        return decoded_answer(status, raw, what)

    async def get_json(self, url, timeout):
        """GET for the non-hot routes (health pings, notifications)."""
        return await self._call(self.http.get(url), timeout)

    async def send_json(self, url, data, timeout, headers=None):
        """POST ``data`` as JSON for the non-hot routes (admin calls)."""
        return await self._call(self.http.post(url, json=data, headers=headers), timeout)

    async def _call(self, d, timeout):
        d.addTimeout(timeout, self._reactor)
        response = await d
        raw = await response.content()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {'ERROR': 'not JSON: {!r}'.format(raw[:200])}
        return Answer(response.code, body if isinstance(body, dict) else {'VALUE': body})

    def close(self):
        for leg in (self._inner or {}).values():
            leg.close()
        return self.pool.closeCachedConnections()


def decoded_answer(status, raw, what):
    """The ``Answer`` of a child's body ``raw``, or ``BadGateway`` when it is not a JSON object."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    except RecursionError:
        raise BadGateway('server {} answered JSON nested deeper than the gateway decodes (about {} levels); '
                         'return a flatter structure'.format(what, sys.getrecursionlimit())) from None
    finally:
        del raw  # the decoded body is what lives on
    if not isinstance(body, dict):
        raise BadGateway('server {} answered HTTP {} with something that is not a JSON object'.format(
            what, status))
    return Answer(status, body)


class AnswerTooLarge(BadGateway):
    """A model server's answer over ``MAX_ANSWER_MB``."""


def read_capped_body(response, limit, what):
    """``readBody`` with a cap: a Deferred of the body's bytes, or ``AnswerTooLarge`` as soon
    as more than ``limit`` bytes are announced or have arrived (the connection is then
    aborted: the rest is never buffered)."""
    finished = defer.Deferred(lambda d: protocol.abort())
    protocol = _CappedBody(finished, limit, what)
    if response.length is not web_client.UNKNOWN_LENGTH and response.length > limit:
        protocol.too_large = True
    response.deliverBody(protocol)
    return finished


class _CappedBody(Protocol):
    too_large = False

    def __init__(self, finished, limit, what):
        self._finished = finished
        self._limit = limit
        self._what = what
        self._chunks = []
        self._size = 0

    def connectionMade(self):
        if self.too_large:
            self._refuse()

    def dataReceived(self, data):
        if self.too_large:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._refuse()
            return
        self._chunks.append(data)

    def _refuse(self):
        self.too_large = True
        self._chunks = []
        self.abort()
        if not self._finished.called:
            self._finished.errback(AnswerTooLarge('server {} answered more than MAX_ANSWER_MB ({:g} MiB); return '
                                                  'less, or raise MAX_ANSWER_MB in the config'.format(
                                                      self._what, self._limit / (1024 * 1024))))

    def abort(self):
        if self.transport is not None:
            self.transport.stopProducing()  # for a response body: abort the connection

    def connectionLost(self, reason):
        if self._finished.called:
            return
        if reason.check(web_client.ResponseDone):
            data, self._chunks = b''.join(self._chunks), None
            self._finished.callback(data)
        elif reason.check(web_client.PotentialDataLoss):
            self._finished.errback(web_client.PartialDownloadError(None, None, b''))
        else:
            self._finished.errback(reason)


_STREAMING = object()


def _is_streaming(response):
    # a streaming answer's body is read by ChildStream.relay, line by line
    kind = response.headers.getRawHeaders(b'content-type')
    return bool(kind) and kind[0].split(b';')[0].strip() == NDJSON_TYPE


@implementer(IPushProducer)
class ChildStream:
    """A child's streaming answer: ``relay(on_line)`` calls ``on_line(line)`` for each line
    of its body as it arrives and fires when the body ended; ``TIMEOUT`` bounds each gap
    between two pieces of it. It is the push producer of whoever consumes the lines: pausing
    it stops reading the child's socket, so the child's sending waits, not our memory."""

    def __init__(self, reactor, response, timeout, what, max_line=DEFAULT_MAX_ANSWER):
        self._reactor = reactor
        self.max_line = max_line  # MAX_ANSWER_MB bounds each chunk of a stream, not the stream
        self.response = response
        self.status = response.code
        self.timeout = timeout
        self.what = what
        self._protocol = None
        self.ended = defer.Deferred()  # fires (with None) once the stream is over, however

    def relay(self, on_line):
        self._protocol = _LineRelay(self, on_line)
        self.response.deliverBody(self._protocol)
        self._protocol.done.addBoth(self._ended)
        return self._protocol.done

    def _ended(self, result):
        if not self.ended.called:
            self.ended.callback(None)
        return result

    def pauseProducing(self):
        if self._protocol is not None:
            self._protocol.pause()

    def resumeProducing(self):
        if self._protocol is not None:
            self._protocol.resume()

    def stopProducing(self):
        """Drop the child's connection: the child sees its client gone and stops the stream."""
        if self._protocol is not None:
            self._protocol.abort()
        else:  # never relayed: drop the connection unread
            self.response.deliverBody(_Abort())
            self._ended(None)


class _Abort(Protocol):
    """A body nobody will read: the connection it comes on is dropped at once."""

    def connectionMade(self):
        self.transport.stopProducing()

    def connectionLost(self, reason):
        pass


class _LineRelay(Protocol):
    def __init__(self, stream, on_line):
        self._stream = stream
        self._on_line = on_line
        self._buffer = b''
        # cancelled when the gateway's client went away: the child's connection goes too
        self.done = defer.Deferred(lambda _d: self.abort())
        self._error = None
        self._timer = None
        self._paused = False
        self._aborted = False

    def connectionMade(self):
        self._arm()

    def _arm(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None if self._paused else self._stream._reactor.callLater(self._stream.timeout, self._expired)

    def _expired(self):
        self._timer = None
        self._fail(GatewayTimeout('server {} sent nothing more of its stream within its TIMEOUT of {:g}s'.format(
            self._stream.what, self._stream.timeout)))

    def _fail(self, error):
        if self._error is None:
            self._error = error
        self.abort()

    def abort(self):
        if not self._aborted and self.transport is not None:
            self._aborted = True
            self.transport.stopProducing()

    def pause(self):
        # a client that reads slowly is not the child's fault: no gap timer while paused
        self._paused = True
        self._arm()
        if self.transport is not None and not self._aborted:
            self.transport.pauseProducing()

    def resume(self):
        self._paused = False
        self._arm()
        if self.transport is not None and not self._aborted:
            self.transport.resumeProducing()

    def dataReceived(self, data):
        if self._aborted:
            return
        self._arm()
        lines = (self._buffer + data).split(b'\n') if self._buffer else data.split(b'\n')
        self._buffer = lines.pop()
        if len(self._buffer) > self._stream.max_line:
            self._fail(AnswerTooLarge('server {} sent a chunk of its stream over MAX_ANSWER_MB ({:g} MiB)'.format(
                self._stream.what, self._stream.max_line / (1024 * 1024))))
            return
        for line in lines:
            if line:
                self._on_line(line)

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._error is None and reason.check(web_client.ResponseDone) and not self._aborted:
            if self._buffer and not self.done.called:
                self._on_line(self._buffer)
            if not self.done.called:
                self.done.callback(None)
            return
        error = self._error or ChildConnectionLost('server {} closed the connection in the middle of its stream '
                                                   '({}); it may have crashed'.format(
                                                       self._stream.what, reason.getErrorMessage()))
        if not self.done.called:  # else cancelled: nobody waits for it any more
            self.done.errback(error)


@implementer(IAgentEndpointFactory)
class _LoopbackEndpoints:
    """Endpoints to the children, made once per (host, port): the child's Unix socket when it
    has one, else TCP with TCP_NODELAY.

    The default factory builds a ``HostnameEndpoint`` per request (IDNA-encoding the host
    each time), and Nagle's algorithm held the request's body back behind its headers until
    the child's delayed ACK, ~40 ms at a time under load.
    """

    def __init__(self, reactor, connect_timeout=5):
        self._reactor = reactor
        self._timeout = connect_timeout
        self._cache = {}
        self._unix = {}  # (host, port) -> the Unix socket that child also listens on

    def use_unix_socket(self, host, port, path):
        key = (host.encode('ascii'), port)
        self._unix[key] = path
        self._cache.pop((b'http',) + key, None)

    def endpointForURI(self, uri):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            path = self._unix.get((uri.host, uri.port)) if uri.scheme == b'http' else None
            if path is not None:
                endpoint = UNIXClientEndpoint(self._reactor, path, timeout=self._timeout)
            elif uri.scheme != b'http':
                endpoint = standard_endpoint(self._reactor, uri, self._timeout)
            else:
                endpoint = _NoDelayEndpoint(TCP4ClientEndpoint(self._reactor, uri.host.decode('ascii'), uri.port,
                                                               timeout=self._timeout))
            self._cache[key] = endpoint
        return endpoint


@implementer(IStreamClientEndpoint)
class _NoDelayEndpoint:
    def __init__(self, wrapped):
        self._wrapped = wrapped

    def connect(self, factory):
        return self._wrapped.connect(factory).addCallback(_no_delay)


def _no_delay(protocol):
    protocol.transport.setTcpNoDelay(True)
    return protocol


class ChildConnectionLost(BadGateway):
    """The child dropped the connection mid-request: it is probably dying."""


class NotConnected(Exception):
    """The request never reached the child: safe to send elsewhere."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def _was_cancelled(exc):
    if isinstance(exc, defer.CancelledError):
        return True
    return any(r.check(defer.CancelledError) for r in getattr(exc, 'reasons', None) or ())


def _short(exc):
    reasons = getattr(exc, 'reasons', None)
    if reasons:
        return '; '.join(r.getErrorMessage() for r in reasons)
    return str(exc) or type(exc).__name__
