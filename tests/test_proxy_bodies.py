"""proxy.py: a large request body goes out in slices as the connection takes them (no
second whole copy in the transport), a small one at once; an answer over MAX_ANSWER_MB is
refused as it arrives."""

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import client as web_client

from bis_twisted.gateway.proxy import AnswerTooLarge, BytesProducer, _CappedBody


class PausingConsumer:
    """Pauses the producer after every write, as a transport with a full buffer does."""

    def __init__(self):
        self.writes = []
        self.producer = None

    def write(self, data):
        self.writes.append(data)
        self.producer.pauseProducing()


def test_a_small_body_is_written_at_once():
    producer = BytesProducer(b'{"a": 1}')
    consumer = PausingConsumer()
    consumer.producer = producer
    d = producer.startProducing(consumer)
    assert consumer.writes == [b'{"a": 1}'] and d.called


def test_a_large_body_is_written_in_slices_as_the_transport_resumes():
    data = bytes(range(256)) * 4096  # 1 MiB
    producer = BytesProducer(data)
    consumer = PausingConsumer()
    consumer.producer = producer
    done = producer.startProducing(consumer)
    assert len(consumer.writes) == 1 and not done.called
    while not done.called:
        producer.resumeProducing()
    assert b''.join(consumer.writes) == data
    assert max(len(w) for w in consumer.writes) == BytesProducer.slice_size


def test_a_stopped_large_body_writes_no_more():
    producer = BytesProducer(b'x' * (3 * BytesProducer.slice_size))
    consumer = PausingConsumer()
    consumer.producer = producer
    producer.startProducing(consumer)
    producer.stopProducing()
    producer.resumeProducing()
    assert len(consumer.writes) == 1


class FakeTransport:
    stopped = False

    def stopProducing(self):
        self.stopped = True


def capped(limit, too_large=False):
    finished = defer.Deferred()
    body = _CappedBody(finished, limit, "'demo'")
    body.too_large = too_large
    body.makeConnection(FakeTransport())
    results = []
    finished.addBoth(results.append)
    return body, results


def test_an_answer_within_the_cap_is_returned_whole():
    body, results = capped(10)
    body.dataReceived(b'12345')
    body.dataReceived(b'67890')
    body.connectionLost(Failure(web_client.ResponseDone()))
    assert results == [b'1234567890']


def test_an_answer_over_the_cap_is_refused_as_it_arrives_and_the_connection_aborted():
    body, results = capped(10)
    body.dataReceived(b'123456')
    body.dataReceived(b'789012')
    assert body.transport.stopped
    [failure] = results
    assert failure.check(AnswerTooLarge)
    assert "server 'demo' answered more than MAX_ANSWER_MB" in failure.getErrorMessage()
    body.connectionLost(Failure(web_client.ResponseFailed([])))  # later: ignored
    assert len(results) == 1


def test_an_announced_length_over_the_cap_is_refused_before_any_byte():
    body, results = capped(10, too_large=True)
    assert body.transport.stopped and results[0].check(AnswerTooLarge)
