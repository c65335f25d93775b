"""The model server's end of the inner leg: ``/run`` in frames (see ``shared.frames``) for the
gateway that spawned it, beside HTTP on the same Unix socket.

``InnerOrHTTP`` is the factory of that socket: a connection that opens with ``MAGIC`` is
framed (``FrameServer``), anything else is handed to the HTTP site as it came. A framed
request runs as an HTTP one does (the same checks, the same pool, the same answer bytes): it
is a call of ``ModelServer``, not a second implementation of it.
"""

import attr
import orjson
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import BisError, ServiceUnavailable
from ..protocol import SIGNATURE
from ..shared import tracing
from ..shared.frames import (ANSWER, CANCEL, CHUNK, CREDIT, END, FRAME_OVERHEAD, MAGIC, REQUEST, STREAM,
                             STREAM_WINDOW, TOO_LARGE, FrameError, FrameReceiver, answer_parts, split_credit,
                             split_request, status_part)
from ..shared.web import dumps_spaced, encode_answer, parse_json_object
from .app import next_line
from .pool import PooledStream
from .v2 import take_v2

FIRST_BYTES_SECONDS = 10.0  # a connection that says nothing for this long is dropped


class InnerOrHTTP(Factory):
    """Builds, for each connection, the frame server or the HTTP site's channel, by its first bytes."""

    noisy = False  # the server says where it serves in lines of its own

    def __init__(self, site, server, drain=None, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.site = site
        self.server = server
        self.drain = drain
        self.max_frame = site.limits.max_body + FRAME_OVERHEAD

    def buildProtocol(self, addr):
        return _FirstBytes(self, addr)

    def build_frames(self):
        protocol = FrameServer(self.server, self.max_frame, self.site)
        if self.drain is not None:
            self.drain.track(protocol)
        return protocol


class _FirstBytes(Protocol):
    """Waits for enough bytes to tell the two apart, then hands the connection over."""

    def __init__(self, factory, addr):
        self._factory = factory
        self._addr = addr
        self._buffer = b''
        self._inner = None
        self._timer = None

    def connectionMade(self):
        self._timer = self._factory._reactor.callLater(FIRST_BYTES_SECONDS, self.transport.abortConnection)

    def dataReceived(self, data):
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._buffer += data
        if len(self._buffer) < len(MAGIC) and MAGIC.startswith(self._buffer):
            return
        self._timer.cancel()
        data, self._buffer = self._buffer, b''
        if data.startswith(MAGIC):
            inner, data = self._factory.build_frames(), data[len(MAGIC):]
        else:
            inner = self._factory.site.buildProtocol(self._addr)
        if inner is None:
            self.transport.loseConnection()
            return
        self._inner = inner
        inner.makeConnection(self.transport)
        if data:
            inner.dataReceived(data)

    def connectionLost(self, reason):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._inner is not None:
            self._inner.connectionLost(reason)


@implementer(IPushProducer)
class FrameServer(FrameReceiver):
    """The frames of one connection from the gateway; each ``REQUEST`` runs at once, many at a
    time; those of one read go to the pool together."""

    _log = Logger()

    def __init__(self, server, max_frame, bodies):
        self.MAX_LENGTH = max_frame
        self._server = server
        self._bodies = bodies  # the site whose MAX_BODIES_MB budget framed bodies share with HTTP's
        self.calls = {}  # number -> _Call, while it runs
        self.paused = False  # the transport's buffer is full: streams wait
        self.persistent = True  # set False by a drain: close once the last call is answered

    # -- what ConnectionDrain reads -----------------------------------------------------------
    @property
    def requests(self):
        return list(self.calls)

    def connectionMade(self):
        self.transport.registerProducer(self, True)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        for call in list(self.calls.values()):
            call.flow.wake()

    def stopProducing(self):
        pass  # the connection is going: connectionLost cancels what runs

    def dataReceived(self, data):
        # the requests of one read arrived together: they start together (one batch, when batched)
        with self._server.pool.gathered():
            FrameReceiver.dataReceived(self, data)

    def lengthLimitExceeded(self, length):
        self._log.warn('a frame of {n} bytes is over the largest body taken: closing the connection', n=length)
        self.transport.abortConnection()

    def frame_received(self, kind, number, payload):
        try:
            if kind == REQUEST:
                header, body = split_request(payload)
                self._start(number, header, body)
            elif kind == CANCEL:
                call = self.calls.pop(number, None)
                if call is not None:
                    call.running.cancel()
            elif kind == CREDIT:
                size = split_credit(payload)
                call = self.calls.get(number)
                if call is not None:
                    call.flow.granted(size)
            else:
                raise FrameError('a frame of kind {}'.format(kind))
        except FrameError as exc:
            self._log.warn('a frame that does not parse ({error}): closing the connection', error=exc)
            self.transport.abortConnection()

    def _start(self, number, header, body):
        try:
            fields = orjson.loads(header)
            rid, gateway_fields, max_answer = fields['rid'], fields.get('fields'), int(fields['max'])
            parent = fields.get('tp')  # the gateway's hop span, when tracing is on
        except (ValueError, KeyError, TypeError) as exc:
            raise FrameError('a request header that does not parse: {}'.format(exc)) from None
        if not isinstance(gateway_fields, dict) or not all(isinstance(v, str) for v in gateway_fields.values()):
            gateway_fields = None  # as over HTTP: an answer without them, completed by the gateway
        call = _Call(number, rid, max_answer, _Flow(self), size_hint=len(body))
        self.calls[number] = call
        call.traced = tracing.start_framed(parent if isinstance(parent, str) else None, rid, self._server.name)
        if body and not self._bodies.reserve_body(len(body)):
            status, data = encode_answer(503, {'ERROR': self._bodies.bodies_busy_message()})
            self._answer(call, status, data, False)
            return
        call.reserved = len(body)
        call.running = defer.Deferred.fromCoroutine(self._serve(call, gateway_fields, body))
        call.running.addErrback(self._failed, call)

    def _failed(self, failure, call):
        if not failure.check(defer.CancelledError):
            self._log.failure('serving a framed request', failure)
            self._finished(call, 500)
        else:
            self._finished(call, 499)  # the gateway's client went away (nginx's code for it)

    def _finished(self, call, status):
        tracing.end_framed(call.traced, status)
        call.traced = None
        if call.reserved:
            self._bodies.release_body(call.reserved)
            call.reserved = 0
        if self.calls.get(call.number) is call:
            del self.calls[call.number]
        if not self.calls and not self.persistent and self.transport is not None:
            self.transport.loseConnection()

    def _send(self, call, kind, *parts):
        if self.calls.get(call.number) is call and self.transport is not None:
            self.send_frame(kind, call.number, *parts)

    def _answer(self, call, status, data, complete):
        if len(data) > call.max_answer:
            self._send(call, TOO_LARGE)
        elif self.calls.get(call.number) is call and self.transport is not None:
            self.send_frame(ANSWER, call.number, *answer_parts(status, complete, data), now=True)
        self._finished(call, status)

    async def _serve(self, call, gateway_fields, body):
        server = self._server
        try:
            inputs = parse_json_object(body)
            del body
            if not server.ready:
                raise ServiceUnavailable('server {!r} is still loading its workers; retry shortly'.format(
                    server.name))
            inputs.pop(SIGNATURE, None)
            if server.schema_check is not None:
                pending = server.checked_input(inputs, call.size_hint)
                if pending is not None:
                    await pending
            v2 = take_v2(inputs, server.streaming)  # a V2 infer: its inputs typed, its answer shaped at the end
            if server.streaming:
                worker, call_id, outcome = await server.pool.run_stream(inputs, call.rid)
                if isinstance(outcome, PooledStream):
                    await self._stream(call, worker, call_id, outcome)
                    return
            else:
                worker, call_id, outcome = await server.pool.run(inputs, call.rid)
            del inputs
            status, data, complete = await server.encoded_answer(worker, call_id, outcome, call.rid, gateway_fields,
                                                                 v2)
        except BisError as exc:
            body = dict({'ERROR': exc.message}, **exc.extra)
            status, data = encode_answer(exc.status, body)
            complete = False
        except defer.CancelledError:
            raise
        except Exception as exc:  # as the HTTP route's handler answers it: a 500 without a traceback
            self._log.failure('unexpected error answering a framed request {rid}', rid=call.rid)
            status, data = encode_answer(500, {'ERROR': 'internal error: {}'.format(type(exc).__name__)})
            complete = False
        self._answer(call, status, data, complete)

    async def _stream(self, call, worker, call_id, stream):
        """The chunks as ``CHUNK`` frames, paced by the gateway's credit and by the connection;
        the last frame is ``END`` (the summary, or the error that ended the stream)."""
        server = self._server
        ended = None
        sent = 0
        span = tracing.start_stream(call.rid)
        try:
            while True:
                line, ended = await next_line(call.flow, stream, sent + 1)
                if line is None:
                    break
                if len(line) > call.max_answer:  # the gateway would drop it: it says so itself
                    self._send(call, TOO_LARGE)
                    tracing.end_stream(span, sent, 'a chunk over MAX_ANSWER_MB')
                    self._finished(call, 502)
                    return
                if not sent:
                    self._send(call, STREAM, status_part(200))
                self._send(call, CHUNK, line)
                call.flow.spent(len(line))
                sent += 1
        finally:
            # at the end, after an error, or cancelled (the gateway's client went away): the
            # generator stops at its next yield and the worker goes back to the pool
            stream.close().addErrback(lambda failure: self._log.failure('closing a stream', failure))
        tracing.end_stream(span, sent, ended.body.get('ERROR') if ended is not None else None)
        summary = server.call_fields(worker, call_id, call.rid)
        summary['chunks'] = sent
        if ended is not None:
            self._log.warn('request {rid}: the stream ended with an error after {n} chunks: {error}', rid=call.rid,
                           n=sent, error=ended.body.get('ERROR'))
            body = dict(ended.body, **summary)
            if not sent:  # nothing sent yet: an ordinary error answer
                status, data = encode_answer(ended.status, body)
                self._answer(call, status, data, False)
                return
            body['status'] = ended.status  # what the HTTP status would have said
        else:
            body = summary
        if not sent:
            self._send(call, STREAM, status_part(200))
        self._send(call, END, dumps_spaced(body))
        self._finished(call, ended.status if ended is not None else 200)

    def connectionLost(self, reason):
        calls, self.calls = self.calls, {}
        for call in calls.values():
            call.running.cancel()


@attr.s(eq=False)
class _Call:
    number = attr.ib()
    rid = attr.ib()
    max_answer = attr.ib()
    flow = attr.ib()
    running = attr.ib(default=None)
    size_hint = attr.ib(default=None)
    reserved = attr.ib(default=0)  # bytes of its body counted against MAX_BODIES_MB until it ends
    traced = attr.ib(default=None)  # its span, when tracing is on (``tracing.start_framed``)


class _Flow:
    """A stream's pace: ``writable()`` fires while the gateway's credit lasts and the
    connection's buffer is not full, else when both hold again. A chunk goes when any credit
    is left, so one larger than the window still goes (the credit is then below zero until
    the gateway has passed it on)."""

    def __init__(self, connection):
        self._connection = connection
        self.credit = STREAM_WINDOW
        self._waiting = None

    def writable(self):
        if self.credit > 0 and not self._connection.paused:
            return defer.succeed(None)
        if self._waiting is None:
            self._waiting = defer.Deferred()
        return self._waiting

    def spent(self, size):
        self.credit -= size

    def granted(self, size):
        self.credit += size
        self.wake()

    def wake(self):
        if self.credit <= 0 or self._connection.paused:
            return
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:
            waiting.callback(None)
