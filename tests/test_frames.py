"""The inner leg in one process, on a real Unix socket and the real reactor: the gateway's
``ChildClient`` (frames through ``gateway.inner``) against a model server's ``InnerOrHTTP``
factory, which also still answers HTTP on the same socket."""

import json
import os
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXServerEndpoint

from bis_twisted import FlaskWorker
from bis_twisted.gateway.inner import FrameStream
from bis_twisted.gateway.proxy import AnswerTooLarge, ChildClient, ChildConnectionLost, NotConnected
from bis_twisted.errors import GatewayTimeout
from bis_twisted.model_server.app import ModelServer
from bis_twisted.model_server.frames import InnerOrHTTP
from bis_twisted.protocol import encode_answer_fields
from bis_twisted.shared.frames import STREAM_WINDOW
from bis_twisted.shared.drain import ConnectionDrain
from bis_twisted.shared.limits import MIB, Limits
from bis_twisted.shared.web import make_site

GATE = threading.Event()


class EchoWorker(FlaskWorker):
    def _pre_process(self, inputs):
        if inputs.get('WAIT'):
            GATE.wait(10)
        return inputs

    def _predict(self, inputs):
        return {'echo': inputs.get('X'), 'big': 'y' * inputs.get('BIG', 0)}

    def _post_process(self, pred):
        return pred


class BatchedEchoWorker(FlaskWorker):
    """Batched (``MAX_BATCH_SIZE`` > 1): ``_predict`` takes the list of inputs."""

    def _pre_process(self, inputs):
        return inputs

    def _predict(self, batch):
        return [{'echo': inputs.get('X'), 'batch': len(batch)} for inputs in batch]

    def _post_process(self, pred):
        return pred


class WordsWorker(FlaskWorker):
    events = []

    def _pre_process(self, inputs):
        return inputs.get('WORDS', ['a', 'b'])

    def _predict(self, words):
        try:
            for word in words:
                if word == 'wait':
                    GATE.wait(10)
                yield word
        except GeneratorExit:
            WordsWorker.events.append('GeneratorExit')
            raise

    def _post_process(self, pred):
        return pred


class BigChunksWorker(FlaskWorker):
    made = 0

    def _pre_process(self, inputs):
        return inputs['COUNT']

    def _predict(self, count):
        for _ in range(count):
            BigChunksWorker.made += 1
            yield 'z' * 32 * 1024

    def _post_process(self, pred):
        return pred


async def serve(worker_class, config=None, limits=None):
    server = ModelServer('subject', worker_class, {}, dict(config or {}), reactor=reactor)
    await server.start()
    site = make_site(server.resource(), limits=limits)
    factory = InnerOrHTTP(site, server, ConnectionDrain(site, reactor=reactor), reactor=reactor)
    address = '\0bis-test-frames-{}-{}'.format(os.getpid(), id(server))
    port = await UNIXServerEndpoint(reactor, address).listen(factory)
    client = ChildClient(reactor=reactor, inner_frames=True)
    client.use_unix_socket('127.0.0.1', 1, address)
    server.site = site
    return server, port, client


async def close(server, port, client):
    GATE.set()
    await client.close()
    await port.stopListening()
    server.pool.stop()
    GATE.clear()


URL = b'http://127.0.0.1:1/run'


@pytest_twisted.ensureDeferred
async def test_answers_come_back_in_frames_complete_with_the_gateway_fields_and_many_share_one_connection():
    server, port, client = await serve(EchoWorker, {'NR_WORKERS': 2})
    try:
        fields = encode_answer_fields({'hostname': 'gw'})
        answers = await defer.gatherResults([defer.Deferred.fromCoroutine(client.post_json(
            URL, json.dumps({'X': i}).encode(), 5, "'subject'", request_id='r{}'.format(i), answer_fields=fields))
            for i in range(20)])
        bodies = [json.loads(a.raw) for a in answers]
        assert [b['predict_result']['echo'] for b in bodies] == list(range(20))
        assert {b['hostname'] for b in bodies} == {'gw'} and bodies[3]['request_id'] == 'r3'
        assert len(client._inner) == 1 and len(server.pool.batch_sizes) >= 1
        plain = await client.post_json(URL, b'{"X": 7}', 5, "'subject'")  # no fields: decoded here
        assert plain.status == 200 and plain.body['predict_result']['echo'] == 7
        refused = await client.post_json(URL, b'[1]', 5, "'subject'")
        assert refused.status == 400 and 'JSON object' in refused.body['ERROR']
    finally:
        await close(server, port, client)


@pytest_twisted.ensureDeferred
async def test_requests_that_arrive_in_one_read_share_one_batch():
    server, port, client = await serve(BatchedEchoWorker, {'NR_WORKERS': 1, 'MAX_BATCH_SIZE': 32})
    try:
        # sent in one turn of the reactor: one write, one read in the child, one batch
        answers = await defer.gatherResults([defer.Deferred.fromCoroutine(client.post_json(
            URL, json.dumps({'X': i}).encode(), 5, "'subject'")) for i in range(20)])
        assert [a.body['predict_result'] for a in answers] == [{'echo': i, 'batch': 20} for i in range(20)]
        assert server.pool.batch_sizes == {20: 1}
    finally:
        await close(server, port, client)


@pytest_twisted.ensureDeferred
async def test_the_same_socket_still_answers_http():
    server, port, client = await serve(EchoWorker)
    try:
        http = ChildClient(reactor=reactor, inner_frames=False)
        http.use_unix_socket('127.0.0.1', 1, client._inner[(b'127.0.0.1', 1)]._endpoint._path)
        answer = await http.post_json(URL, b'{"X": "http"}', 5, "'subject'")
        assert answer.status == 200 and answer.body['predict_result']['echo'] == 'http'
        await http.close()
    finally:
        await close(server, port, client)


@pytest_twisted.ensureDeferred
async def test_a_caller_that_gives_up_drops_its_queued_request_in_the_child():
    server, port, client = await serve(EchoWorker)
    try:
        running = defer.Deferred.fromCoroutine(client.post_json(URL, b'{"WAIT": 1, "X": 1}', 5, "'subject'"))
        queued = defer.Deferred.fromCoroutine(client.post_json(URL, b'{"X": 2}', 5, "'subject'"))
        await _until(lambda: server.pool.queued == 1)
        queued.cancel()
        with pytest.raises(defer.CancelledError):
            await queued
        await _until(lambda: server.pool.queued == 0)
        GATE.set()
        assert (await running).body['predict_result']['echo'] == 1
        assert server.pool.batch_sizes[1] == 1  # the cancelled request never ran
    finally:
        await close(server, port, client)


@pytest_twisted.ensureDeferred
async def test_deadline_answer_cap_and_a_child_that_is_not_there():
    server, port, client = await serve(EchoWorker)
    try:
        with pytest.raises(GatewayTimeout, match='did not answer within its TIMEOUT of 0.2s'):
            await client.post_json(URL, b'{"WAIT": 1}', 0.2, "'subject'")
        await _until(lambda: not server.pool.busy or GATE.set())
        client.max_answer = 1000
        for leg in client._inner.values():
            leg.max_answer = 1000
        with pytest.raises(AnswerTooLarge, match='more than MAX_ANSWER_MB'):
            await client.post_json(URL, b'{"BIG": 5000}', 5, "'subject'")
        assert (await client.post_json(URL, b'{"X": 3}', 5, "'subject'")).status == 200  # the connection stays
    finally:
        await close(server, port, client)
    gone = ChildClient(reactor=reactor, inner_frames=True)
    gone.use_unix_socket('127.0.0.1', 2, '\0bis-test-frames-nobody-{}'.format(os.getpid()))
    with pytest.raises(NotConnected):
        await gone.post_json(b'http://127.0.0.1:2/run', b'{}', 5, "'nobody'")


@pytest_twisted.ensureDeferred
async def test_a_stream_relays_its_lines_and_a_client_gone_closes_the_generator():
    server, port, client = await serve(WordsWorker)
    try:
        stream = await client.post_json(URL, b'{"WORDS": ["x", "y"]}', 5, "'subject'")
        assert isinstance(stream, FrameStream) and stream.status == 200
        lines = []
        await stream.relay(lines.append)
        assert [json.loads(line).get('predict_result') for line in lines] == ['x', 'y', None]
        assert json.loads(lines[-1])['chunks'] == 2
        WordsWorker.events.clear()
        stream = await client.post_json(URL, b'{"WORDS": ["x", "wait", "z"]}', 5, "'subject'")
        done = stream.relay(lambda line: None)
        stream.stopProducing()  # what the gateway does when its client went away
        GATE.set()
        await _until(lambda: WordsWorker.events == ['GeneratorExit'])
        await _until(lambda: not server.pool.busy)
        assert stream.ended.called and not done.called
    finally:
        await close(server, port, client)


@pytest_twisted.ensureDeferred
async def test_a_stream_no_one_reads_waits_in_the_child_not_in_the_gateway():
    # A stream the gateway has not begun to relay, or whose client's connection is full
    # (the stream paused), holds at most STREAM_WINDOW bytes of its chunks here: the child's
    # generator waits for credit, however long the gateway takes.
    server, port, client = await serve(BigChunksWorker, {'NR_WORKERS': 2})
    line = len(json.dumps({'predict_result': 'z' * 32 * 1024}))
    window_lines = STREAM_WINDOW // line + 1  # a chunk goes while any credit is left
    try:
        BigChunksWorker.made = 0
        stream = await client.post_json(URL, b'{"COUNT": 100}', 5, "'subject'")
        await _until(lambda: BigChunksWorker.made >= window_lines)
        await _round_trips(client)  # on the same connection: the child had its turns
        assert BigChunksWorker.made == window_lines
        lines = []

        def on_line(data):
            lines.append(data)
            if len(lines) == 20:
                stream.pauseProducing()  # what the client's full connection does

        done = stream.relay(on_line)
        # credit goes back a quarter window at a time: at least 18 of the 20 had theirs
        await _until(lambda: len(lines) >= 18 + window_lines, what=lambda: (len(lines), BigChunksWorker.made, window_lines))
        await _round_trips(client)
        assert BigChunksWorker.made <= 20 + window_lines  # 20 passed on, then a window at most
        assert len(lines) == BigChunksWorker.made  # what the child made is here, not on its way
        stream.resumeProducing()
        await done
        assert len(lines) == 101 and json.loads(lines[-1])['chunks'] == 100
    finally:
        await close(server, port, client)


@pytest_twisted.ensureDeferred
async def test_framed_bodies_share_the_max_bodies_mb_budget_of_http_ones():
    # 1 MiB of bodies at once: one request of 600 KiB waits in the pool holding its body, a
    # second one gets the 503 an HTTP request would, and the budget is whole again after
    server, port, client = await serve(EchoWorker, {'NR_WORKERS': 2}, limits=Limits(max_bodies_in_flight=MIB))
    body = json.dumps({'WAIT': 1, 'PAD': 'p' * 600 * 1024}).encode()
    try:
        waiting = defer.Deferred.fromCoroutine(client.post_json(URL, body, 5, "'subject'"))
        await _until(lambda: server.pool.busy == 1)
        assert server.site.bodies_in_flight == len(body)
        refused = await client.post_json(URL, json.dumps({'PAD': 'q' * 600 * 1024}).encode(), 5, "'subject'")
        assert refused.status == 503 and 'MAX_BODIES_MB' in refused.body['ERROR']
        GATE.set()
        assert (await waiting).status == 200
        assert server.site.bodies_in_flight == 0
        again = await client.post_json(URL, json.dumps({'X': 1, 'PAD': 'r' * 600 * 1024}).encode(), 5, "'subject'")
        assert again.status == 200 and again.body['predict_result']['echo'] == 1
        assert server.site.bodies_in_flight == 0
    finally:
        await close(server, port, client)


@pytest_twisted.ensureDeferred
async def test_a_child_that_drops_the_connection_fails_what_was_in_flight():
    server, port, client = await serve(EchoWorker)
    try:
        waiting = defer.Deferred.fromCoroutine(client.post_json(URL, b'{"WAIT": 1}', 5, "'subject'"))
        await _until(lambda: server.pool.busy == 1)
        leg = client._inner[(b'127.0.0.1', 1)]
        leg._protocol.transport.abortConnection()
        with pytest.raises(ChildConnectionLost, match='closed the connection before answering'):
            await waiting
        GATE.set()
        assert (await client.post_json(URL, b'{"X": 4}', 5, "'subject'")).status == 200  # connects again
    finally:
        await close(server, port, client)


async def _round_trips(client, count=3):
    for _ in range(count):
        empty = await client.post_json(URL, b'{"COUNT": 0}', 5, "'subject'")
        lines = []
        await empty.relay(lines.append)
        assert json.loads(lines[-1])['chunks'] == 0


async def _until(condition, timeout=10.0, what=None):
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError('condition not met within {}s{}'.format(timeout, '' if what is None else what()))
        await _sleep(0.01)


def _sleep(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


# -- the deadlines of the calls, on a Clock --------------------------------------------------------
def _leg_on_clock():
    from twisted.internet import task
    from twisted.internet.testing import StringTransport

    from bis_twisted.gateway.inner import InnerLeg, _InnerProtocol

    clock = task.Clock()
    leg = InnerLeg(clock, '\0bis-test-frames-clock', 1 * MIB)
    protocol = _InnerProtocol(leg)
    transport = StringTransport()
    protocol.makeConnection(transport)
    leg._protocol = protocol
    return clock, leg, protocol, transport


def _answer(protocol, number, body=b'{"ok": 1}'):
    from bis_twisted.shared.frames import ANSWER, answer_parts, _HEAD
    import struct
    frame = _HEAD.pack(ANSWER, number) + b''.join(answer_parts(200, False, body))
    protocol.dataReceived(struct.pack('!I', len(frame)) + frame)


def _sent_kinds(transport):
    """The kinds of the frames written (after the connection's MAGIC)."""
    import struct
    from bis_twisted.shared.frames import MAGIC
    data = transport.value()[len(MAGIC):]
    kinds = []
    while data:
        (size,) = struct.unpack_from('!I', data)
        kinds.append(data[4])
        data = data[4 + size:]
    return kinds


def test_many_calls_share_one_deadline_timer_and_only_the_unanswered_ones_time_out():
    from bis_twisted.shared.frames import CANCEL, REQUEST

    clock, leg, protocol, transport = _leg_on_clock()
    answers = []
    for n in range(5):
        answers.append(leg.post(b'{"X": %d}' % n, 10, "'subject'"))
        clock.advance(1)
    assert len(clock.getDelayedCalls()) == 1  # one timer for five calls, not five

    _answer(protocol, 1)  # the calls are numbered from 1: answers[0]
    _answer(protocol, 4)  # answers[3]
    clock.advance(6.5)  # 11.5: past the first two deadlines (calls made at 0 and 1, TIMEOUT 10)
    assert answers[0].called and answers[0].result.status == 200
    failures = []
    answers[1].addErrback(failures.append)
    assert failures and failures[0].check(GatewayTimeout)
    assert 'did not answer within its TIMEOUT of 10s' in failures[0].getErrorMessage()
    assert not answers[2].called and not answers[4].called  # theirs have not passed yet
    assert _sent_kinds(transport) == [REQUEST] * 5 + [CANCEL]  # the child drops the one that timed out

    clock.advance(1)
    assert answers[3].result.status == 200  # answered in time: not expired by the deadline it had
    answers[2].addErrback(failures.append)
    assert len(failures) == 2
    clock.advance(2)
    answers[4].addErrback(failures.append)
    assert len(failures) == 3 and not clock.getDelayedCalls() and not protocol._deadlines


def test_a_call_with_a_sooner_deadline_than_the_one_before_it_gets_its_own_timer():
    clock, leg, protocol, transport = _leg_on_clock()
    slow = leg.post(b'{}', 60, "'subject'")
    fast = leg.post(b'{}', 1, "'subject'")  # TIMEOUT lowered by a reload in between
    assert len(clock.getDelayedCalls()) == 2

    clock.advance(1)
    failures = []
    fast.addErrback(failures.append)
    assert failures and failures[0].check(GatewayTimeout) and not slow.called

    _answer(protocol, 1)
    assert slow.result.status == 200
    clock.advance(60)
    assert not clock.getDelayedCalls()


def test_a_cancelled_call_stops_its_timer_and_tells_the_child():
    from bis_twisted.shared.frames import CANCEL, REQUEST

    clock, leg, protocol, transport = _leg_on_clock()
    protocol.start(b'{}', b'{}', 60, "'subject'", False)  # one in the shared order
    own = leg.post(b'{}', 1, "'subject'")  # its own timer
    own.cancel()
    own.addErrback(lambda failure: failure.trap(defer.CancelledError))

    assert len(clock.getDelayedCalls()) == 1
    assert _sent_kinds(transport) == [REQUEST, REQUEST, CANCEL]


def test_the_answers_of_one_read_are_written_together_and_a_lone_one_at_once():
    import struct

    from bis_twisted.shared import limits
    from bis_twisted.shared.frames import ANSWER, answer_parts, _HEAD

    clock, leg, protocol, transport = _leg_on_clock()
    seen = []
    for n in range(3):
        leg.post(b'{}', 10, "'subject'").addCallback(lambda answer: seen.append(limits._Burst.depth))

    def frame(number):
        body = _HEAD.pack(ANSWER, number) + b''.join(answer_parts(200, False, b'{"ok": 1}'))
        return struct.pack('!I', len(body)) + body

    protocol.dataReceived(frame(1) + frame(2))  # one read, two answers: written together
    protocol.dataReceived(frame(3))  # alone: at once
    assert seen == [1, 1, 0] and limits._Burst.depth == 0
