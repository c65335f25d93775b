"""Streaming in one process: the worker's chunk stream (plain calls) and the pool's stream on
a real thread pool (the worker is held until the stream ended or was closed)."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from bis_twisted import FlaskWorker
from bis_twisted.model_server.pool import WorkerPool
from bis_twisted.model_server.app import ModelServer
from bis_twisted.model_server.pool import WorkerLoadError


class WordsWorker(FlaskWorker):
    """Yields words; records what happened to its generator."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.events = []

    def _pre_process(self, inputs):
        if inputs.get('BAD'):
            raise ValueError('BAD is set')
        return inputs.get('WORDS', ['a', 'b', 'c'])

    def _predict(self, words):
        try:
            for word in words:
                if word == 'boom':
                    raise KeyError('boom')
                yield word
            self.events.append('exhausted')
        except GeneratorExit:
            self.events.append('GeneratorExit')
            raise
        finally:
            self.events.append('finally')

    def _post_process(self, pred):
        return pred.upper()


class PlainWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs

    def _predict(self, inputs):
        return inputs

    def _post_process(self, pred):
        return pred


def test_a_generator_predict_streams_and_a_config_key_can_say_otherwise():
    assert WordsWorker.streams() is True
    assert PlainWorker.streams() is False
    assert PlainWorker.streams({'STREAM': True}) is True
    assert WordsWorker.streams({'stream': False}) is False


def test_post_process_runs_on_each_item_and_the_end_is_none():
    worker = WordsWorker()
    chunks = worker.execute_stream({}, call_id=1)
    answers = [chunks.next_chunk() for _ in range(4)]
    assert [a.body for a in answers[:3]] == [{'predict_result': 'A'}, {'predict_result': 'B'},
                                             {'predict_result': 'C'}]
    assert answers[3] is None and chunks.count == 3
    assert worker.events == ['exhausted', 'finally']


def test_close_mid_stream_raises_generator_exit_at_the_yield():
    worker = WordsWorker()
    chunks = worker.execute_stream({}, call_id=1)
    assert chunks.next_chunk().body == {'predict_result': 'A'}
    chunks.close()
    assert worker.events == ['GeneratorExit', 'finally']
    assert chunks.next_chunk() is None


def test_an_exception_mid_stream_is_an_error_outcome_and_pre_process_errors_are_400():
    worker = WordsWorker()
    chunks = worker.execute_stream({'WORDS': ['x', 'boom', 'y']}, call_id=1)
    assert chunks.next_chunk().status == 200
    failed = chunks.next_chunk()
    assert failed.status == 500 and 'KeyError' in failed.body['ERROR']
    assert failed.body['WordsWorker_ERROR']['ERR_FUNC'] == '_predict'
    assert chunks.next_chunk() is None
    refused = worker.execute_stream({'BAD': True}, call_id=2)
    assert refused.status == 400 and 'BAD is set' in refused.body['ERROR']


@pytest_twisted.ensureDeferred
async def test_the_pool_holds_the_worker_until_the_stream_is_closed():
    workers = []

    def make(index):
        workers.append(WordsWorker(worker_id=index))
        return workers[-1]

    pool = WorkerPool(make, size=1, max_queue=4, reactor=reactor)
    await pool.start()
    try:
        _worker, _call_id, stream = await pool.run_stream({'WORDS': ['a', 'b', 'c']})
        assert (await stream.next()).body == {'predict_result': 'A'}
        assert pool.busy == 1
        second = defer.ensureDeferred(pool.run_stream({'WORDS': ['z']}))
        assert pool.queued == 1  # the only worker is still streaming
        await stream.close()
        assert workers[0].events == ['GeneratorExit', 'finally']
        _worker, _call_id, other = await second
        assert (await other.next()).body == {'predict_result': 'Z'}
        assert await other.next() is None
        assert pool.busy == 0  # the end of a stream frees its worker without close()
    finally:
        pool.stop()


@pytest_twisted.ensureDeferred
async def test_a_streaming_endpoint_with_batching_refuses_to_start():
    server = ModelServer('words', WordsWorker, {}, {'MAX_BATCH_SIZE': 4}, reactor=reactor)
    with pytest.raises(WorkerLoadError, match='MAX_BATCH_SIZE is 4 but _predict streams'):
        await server.start()


# -- the gateway's reading of a child's stream, on a Clock -----------------------------------
class FakeChildTransport:
    """What ``Response.deliverBody`` hands its protocol: a producer of the child's socket."""

    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append('pause')

    def resumeProducing(self):
        self.calls.append('resume')

    def stopProducing(self):
        self.calls.append('stop')


class FakeResponse:
    code = 200

    def __init__(self):
        self.protocol = None

    def deliverBody(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(FakeChildTransport())


def child_stream(timeout=5.0, max_line=1000):
    from twisted.internet.task import Clock
    from bis_twisted.gateway.proxy import ChildStream
    clock = Clock()
    response = FakeResponse()
    stream = ChildStream(clock, response, timeout, "'words'", max_line=max_line)
    lines = []
    done = stream.relay(lines.append)
    return clock, response, stream, lines, done


def test_lines_split_across_reads_arrive_whole_and_the_end_fires_done():
    from twisted.python.failure import Failure
    from twisted.web.client import ResponseDone
    _clock, response, stream, lines, done = child_stream()
    response.protocol.dataReceived(b'{"predict_result": 1}\n{"predict_res')
    assert lines == [b'{"predict_result": 1}']
    response.protocol.dataReceived(b'ult": 2}\n{"chunks": 2}')
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert lines == [b'{"predict_result": 1}', b'{"predict_result": 2}', b'{"chunks": 2}']
    assert done.called and stream.ended.called


def test_timeout_bounds_each_gap_but_not_a_pause_the_client_asked_for():
    from twisted.python.failure import Failure
    from twisted.internet.error import ConnectionLost
    from bis_twisted.errors import GatewayTimeout
    clock, response, stream, _lines, done = child_stream(timeout=5.0)
    clock.advance(4)
    response.protocol.dataReceived(b'{"predict_result": 1}\n')
    clock.advance(4)  # 8 s since the start, 4 since the last chunk: still fine
    stream.pauseProducing()
    clock.advance(60)  # the client reads slowly: not the child's fault
    assert response.protocol.transport.calls == ['pause']
    stream.resumeProducing()
    clock.advance(5)
    assert response.protocol.transport.calls == ['pause', 'resume', 'stop']
    response.protocol.connectionLost(Failure(ConnectionLost()))
    failure = []
    done.addErrback(failure.append)
    assert failure[0].check(GatewayTimeout) and 'TIMEOUT of 5s' in failure[0].getErrorMessage()


def test_a_chunk_over_the_answer_cap_drops_the_child_connection():
    from twisted.python.failure import Failure
    from twisted.internet.error import ConnectionLost
    from bis_twisted.gateway.proxy import AnswerTooLarge
    _clock, response, _stream, _lines, done = child_stream(max_line=100)
    response.protocol.dataReceived(b'{"predict_result": "' + b'x' * 200)
    assert response.protocol.transport.calls == ['stop']
    response.protocol.connectionLost(Failure(ConnectionLost()))
    failure = []
    done.addErrback(failure.append)
    assert failure[0].check(AnswerTooLarge)


def test_notifications_of_a_closed_stream_go_under_its_call_id():
    from bis_twisted.notifications import Notifications

    class Noting(WordsWorker):
        def _predict(self, words):
            try:
                yield from words
            finally:
                self._create_notification(notif='log', msg='cleaned up')

    notes = Notifications()
    chunks = Noting(notifications=notes).execute_stream({}, call_id=7, request_id='r7')
    chunks.next_chunk()
    chunks.close()
    assert [n['NOTIF'] for n in notes.snapshot().get('7', [])] == ['cleaned up']
