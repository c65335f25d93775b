"""The gateway's end of the inner leg: ``/run`` to a child of its own in frames (see
``shared.frames``), over the Unix socket the child also takes HTTP on.

``InnerLeg`` is one child's connection, made when first needed and again after it was lost;
every request to that child rides on it at once. It answers as ``ChildClient.post_json``
does over HTTP (an ``Answer``, or a ``ChildStream`` to relay) and fails the same ways
(``NotConnected`` when the request never reached the child, ``ChildConnectionLost``,
``GatewayTimeout``, ``AnswerTooLarge``, ``CancelledError`` when our caller gave up), so the
routing above it does not know which leg carried a request.
"""

import collections
import itertools
import struct

import orjson
from twisted.internet import defer, error as net_error
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from ..errors import GatewayTimeout
from ..shared import tracing
from ..shared.frames import (ANSWER, CANCEL, CHUNK, CREDIT, END, FRAME_OVERHEAD, MAGIC, REQUEST, STREAM,
                             STREAM_WINDOW, TOO_LARGE, FrameError, FrameReceiver, credit_part, request_parts,
                             split_answer, split_status)
from ..shared.limits import answers_together
from ..shared.web import Answer
from .proxy import AnswerTooLarge, ChildConnectionLost, ChildStream, NotConnected, decoded_answer


_ONE_FRAME = struct.Struct('!I')  # a frame's length prefix


class InnerLeg:
    """The framed connection to the child listening at the Unix socket ``path``."""

    log = Logger()

    def __init__(self, reactor, path, max_answer, connect_timeout=5):
        self.reactor = reactor
        self._endpoint = UNIXClientEndpoint(reactor, path, timeout=connect_timeout)
        self.max_answer = max_answer
        self._protocol = None
        self._connecting = None  # a Deferred of the protocol, while connecting
        self._waiters = []  # the callers waiting for it

    def _connected(self):
        if self._protocol is not None and self._protocol.transport is not None:
            return defer.succeed(self._protocol)
        # each caller waits on its own Deferred: one giving up does not cancel the others'
        waiting = defer.Deferred()
        self._waiters.append(waiting)
        if self._connecting is None:
            factory = Factory.forProtocol(lambda: _InnerProtocol(self))
            factory.noisy = False  # no "Starting factory" line per connection
            self._connecting = self._endpoint.connect(factory)
            self._connecting.addBoth(self._made)
        return waiting

    def _made(self, result):
        self._connecting = None
        waiters, self._waiters = self._waiters, []
        made = isinstance(result, _InnerProtocol)
        if made:
            self._protocol = result
        for waiting in waiters:
            if not waiting.called:  # called: cancelled, its caller gave up
                waiting.callback(result) if made else waiting.errback(result)
        return None

    def close(self):
        """Drop the connection (the gateway is stopping): what is still in flight on it fails."""
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.loseConnection()

    def lost(self, protocol):
        """``protocol``'s connection is gone: the next request connects again."""
        if self._protocol is protocol:
            self._protocol = None

    def post(self, payload, timeout, what, request_id=None, answer_fields=None):
        """``payload`` (the inputs' JSON) to the child: a Deferred of its answer; see the
        module's docstring."""
        parent = tracing.traceparent()  # the hop's span, when tracing is on: the child's spans go under it
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return defer.Deferred.fromCoroutine(self._connect_and_post(parent, payload, timeout, what, request_id,
                                                                       answer_fields))
        return self._post(protocol, parent, payload, timeout, what, request_id, answer_fields)

    async def _connect_and_post(self, parent, payload, timeout, what, request_id, answer_fields):
        try:
            protocol = await self._connected()
        except (net_error.ConnectError, net_error.ConnectionRefusedError, net_error.ConnectionLost,
                net_error.ConnectionDone, OSError) as exc:
            raise NotConnected(type(exc).__name__) from None
        return await self._post(protocol, parent, payload, timeout, what, request_id, answer_fields)

    def _post(self, protocol, parent, payload, timeout, what, request_id, answer_fields):
        # the fields are JSON already (encoded once a second): put in as they are
        header = b'{"rid":%s,"fields":%s,"max":%d%s}' % (orjson.dumps(request_id), answer_fields or b'null',
                                                          self.max_answer, b',"tp":"%s"' % parent if parent else b'')
        return protocol.start(header, payload, timeout, what, answer_fields is not None).answer


class _InnerProtocol(FrameReceiver):
    def __init__(self, leg):
        self.leg = leg
        self.MAX_LENGTH = leg.max_answer + FRAME_OVERHEAD
        self._numbers = itertools.count(1)
        self._calls = {}
        # each call's deadline, in the order they were made: one timer for the earliest, not
        # one DelayedCall per request (TIMEOUT is one per server, so they come in order)
        self._deadlines = collections.deque()
        self._deadline_timer = None

    def connectionMade(self):
        self.transport.write(MAGIC)

    def dataReceived(self, data):
        # a read of several answers: their clients' answers leave together (answers_together)
        if len(data) > _ONE_FRAME.size and _ONE_FRAME.unpack_from(data)[0] + _ONE_FRAME.size < len(data):
            with answers_together():
                FrameReceiver.dataReceived(self, data)
        else:
            FrameReceiver.dataReceived(self, data)

    def start(self, header, payload, timeout, what, completes):
        number = next(self._numbers) & 0xFFFFFFFF
        call = _Call(self, number, timeout, what, completes)
        self._calls[number] = call
        self._watch(call, timeout)
        # the connection's only request leaves at once; with others in flight, with their turn's
        self.send_frame(REQUEST, number, *request_parts(header, payload), now=len(self._calls) == 1)
        return call

    # -- the calls' deadlines: until its answer (or its stream) begins, TIMEOUT from its start ------
    def _watch(self, call, timeout):
        reactor = self.leg.reactor
        deadline = reactor.seconds() + timeout
        deadlines = self._deadlines
        if deadlines and deadline < deadlines[-1][0]:  # sooner than one made before it (TIMEOUT was lowered)
            call.timer = reactor.callLater(timeout, call.expire)
            return
        deadlines.append((deadline, call))
        if self._deadline_timer is None:
            self._deadline_timer = reactor.callLater(timeout, self._expire_due)

    def _trim(self):
        """Drop the deadlines at the front whose calls are answered (they mostly are in order)."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][1].answer.called:
            deadlines.popleft()

    def _expire_due(self):
        self._deadline_timer = None
        self._trim()
        now = self.leg.reactor.seconds()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            deadlines.popleft()[1].expire()
            self._trim()
        if deadlines:
            self._deadline_timer = self.leg.reactor.callLater(deadlines[0][0] - now, self._expire_due)

    def forget(self, call, tell_child):
        if self._calls.get(call.number) is call:
            del self._calls[call.number]
            if tell_child and self.transport is not None:
                self.send_frame(CANCEL, call.number)

    def send_credit(self, call, size):
        if self._calls.get(call.number) is call and self.transport is not None:
            self.send_frame(CREDIT, call.number, credit_part(size))

    def frame_received(self, kind, number, payload):
        call = self._calls.get(number)
        if call is None:
            return  # a request we gave up on: its late frames are dropped
        try:
            if kind == ANSWER:
                self.forget(call, False)
                call.answered(*split_answer(payload))
                self._trim()
            elif kind == STREAM:
                call.stream_began(split_status(payload))
                self._trim()
            elif kind == CHUNK:
                call.stream.line(bytes(payload))
            elif kind == END:
                self.forget(call, False)
                call.stream.line(bytes(payload))
                call.stream.finish(None)
            elif kind == TOO_LARGE:
                self.forget(call, False)
                call.too_large()
            else:
                raise FrameError('a frame of kind {}'.format(kind))
        except (FrameError, AttributeError) as exc:  # AttributeError: a stream frame of no stream
            self.leg.log.warn('server {what}: a frame that does not parse ({error}); closing the connection',
                              what=call.what, error=exc)
            self.transport.abortConnection()

    def lengthLimitExceeded(self, length):
        # its frame is never buffered: the connection goes, and each request on it with it
        self.leg.log.warn('a child sent a frame of {n} bytes, over MAX_ANSWER_MB: closing the connection', n=length)
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.leg.lost(self)
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.lost(reason)
        self.transport = None
        if self._deadline_timer is not None and self._deadline_timer.active():
            self._deadline_timer.cancel()
        self._deadline_timer = None
        self._deadlines.clear()


class _Call:
    """One request on the connection: its answer, or its stream once it began."""

    def __init__(self, protocol, number, timeout, what, completes):
        self.protocol = protocol
        self.number = number
        self.timeout = timeout
        self.what = what
        self.completes = completes
        self.stream = None
        self.timer = None  # its own deadline's DelayedCall, when it is not in the protocol's order
        self.answer = defer.Deferred(self._cancelled)

    def _cancelled(self, _answer):
        self.protocol.forget(self, True)
        self._stop_timer()

    def _stop_timer(self):
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def expire(self):
        """Its deadline passed before its answer began: the child drops it, its caller has a 504."""
        self.timer = None
        if self.answer.called:
            return
        self.protocol.forget(self, True)
        self.answer.errback(GatewayTimeout('server {} did not answer within its TIMEOUT of {:g}s'.format(
            self.what, self.timeout)))

    def answered(self, status, complete, raw):
        if self.answer.called:
            return
        self._stop_timer()
        if complete and self.completes:
            self.answer.callback(Answer(status, {}, raw=raw))  # the fields are in: passed through as it is
            return
        try:
            answer = decoded_answer(status, raw, self.what)
        except Exception as exc:  # BadGateway: the child's answer is not a JSON object
            self.answer.errback(exc)
            return
        self.answer.callback(answer)

    def stream_began(self, status):
        self._stop_timer()
        self.stream = FrameStream(self, status)
        if not self.answer.called:
            self.answer.callback(self.stream)

    def too_large(self):
        self._stop_timer()
        error = AnswerTooLarge('server {} answered more than MAX_ANSWER_MB ({:g} MiB); return less, or raise '
                               'MAX_ANSWER_MB in the config'.format(self.what, self.protocol.leg.max_answer / 2 ** 20))
        if self.stream is not None:
            self.stream.finish(AnswerTooLarge('server {} sent a chunk of its stream over MAX_ANSWER_MB ({:g} '
                                              'MiB)'.format(self.what, self.protocol.leg.max_answer / 2 ** 20)))
        elif not self.answer.called:
            self.answer.errback(error)

    def lost(self, reason):
        self._stop_timer()
        if self.stream is not None:
            self.stream.finish(ChildConnectionLost('server {} closed the connection in the middle of its stream '
                                                   '({}); it may have crashed'.format(self.what,
                                                                                      reason.getErrorMessage())))
        elif not self.answer.called:
            self.answer.errback(ChildConnectionLost('server {} closed the connection before answering ({}); it may '
                                                    'have crashed'.format(self.what, reason.getErrorMessage())))


class FrameStream(ChildStream):
    """A child's streaming answer in frames, with ``ChildStream``'s promises: ``relay(on_line)``,
    ``TIMEOUT`` between two pieces, pausing it pauses the child's generator: the child's credit
    (``CREDIT``) is given back only for lines passed on while not paused, so at most
    ``STREAM_WINDOW`` bytes of it wait here, before ``relay`` as while paused."""

    def __init__(self, call, status):
        self._call = call
        self._reactor = call.protocol.leg.reactor
        self.status = status
        self.timeout = call.timeout
        self.what = call.what
        self.max_line = call.protocol.leg.max_answer
        self.ended = defer.Deferred()
        self._on_line = None
        self._early = []  # lines before relay() was called
        self._done = None
        self._result = None  # (error or None) once finished before relay()
        self._paused = False
        self._owed = 0  # bytes passed on whose credit the child has not had back yet
        self._timer = None
        self._arm()

    def relay(self, on_line):
        self._on_line = on_line
        self._done = defer.Deferred(lambda _d: self.stopProducing())
        early, self._early = self._early, []
        for line in early:
            self._pass_on(line)
        if self._result is not None:
            self._settle(*self._result)
        return self._done

    def line(self, data):
        self._arm()
        if self._on_line is None:
            self._early.append(data)
        else:
            self._pass_on(data)

    def _pass_on(self, data):
        self._on_line(data)  # may pause this stream: the client's connection is full
        self._owed += len(data)
        self._give_credit()

    def _give_credit(self):
        # a frame per quarter window, not per line: a stream of small tokens costs few frames
        if not self._paused and self._owed >= STREAM_WINDOW // 4:
            owed, self._owed = self._owed, 0
            self._call.protocol.send_credit(self._call, owed)

    def finish(self, error):
        self._disarm()
        self._call.protocol.forget(self._call, False)
        if self._done is None:
            self._result = (error,)
            if not self.ended.called:
                self.ended.callback(None)
            return
        self._settle(error)

    def _settle(self, error):
        if not self.ended.called:
            self.ended.callback(None)
        if self._done is not None and not self._done.called:
            if error is None:
                self._done.callback(None)
            else:
                self._done.errback(error)

    def _arm(self):
        self._disarm()
        if not self._paused:
            self._timer = self._reactor.callLater(self.timeout, self._expired)

    def _disarm(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _expired(self):
        self._timer = None
        self._call.protocol.forget(self._call, True)
        self.finish(GatewayTimeout('server {} sent nothing more of its stream within its TIMEOUT of {:g}s'.format(
            self.what, self.timeout)))

    def pauseProducing(self):
        # a client that reads slowly is not the child's fault: no gap timer while paused
        self._paused = True
        self._disarm()

    def resumeProducing(self):
        self._paused = False
        self._arm()
        self._give_credit()

    def stopProducing(self):
        """The gateway's client went away: the child closes the generator."""
        self._disarm()
        self._call.protocol.forget(self._call, True)
        if not self.ended.called:
            self.ended.callback(None)
