"""Dynamic batching in the worker pool, on ``task.Clock``: time moves only when the test says,
and a worker's thread returns only when the test says (``HeldThreads``), so "a batch waits
10 ms" and "a full batch never waits" are exact, not timed."""

import pytest
from twisted.internet import defer, task

from bis_twisted import FlaskWorker
from bis_twisted.errors import QueueFull
from bis_twisted.model_server.pool import WorkerPool
from bis_twisted.model_server.app import ModelServer

TIMEOUT = 0.01


class ThreadlessClock(task.Clock):
    """A Clock whose ``callFromThread`` runs at once: the fake threads below are the test."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class HeldThreads:
    """Stands in for the pool's ThreadPool: building a worker runs at once; a call of
    ``execute``/``execute_batch`` waits in ``held`` until the test calls ``finish``."""

    def __init__(self):
        self.started = False
        self.max = 1
        self.held = []

    def start(self):
        self.started = True

    def stop(self):
        self.started = False

    def adjustPoolsize(self, minthreads=None, maxthreads=None):
        self.max = maxthreads

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        if getattr(f, '__name__', '') in ('execute', 'execute_batch'):
            self.held.append((on_result, f, args, kwargs))
            return
        on_result(True, f(*args, **kwargs))

    def batches(self):
        """The inputs of each held batch, in the order they started."""
        return [[call[0]['x'] for call in args[0]] for _on, _f, args, _kw in self.held]

    def finish(self, index=0):
        on_result, f, args, kwargs = self.held.pop(index)
        try:
            result = f(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - handed back like a real thread would
            on_result(False, exc)
        else:
            on_result(True, result)


class DoublingWorker(FlaskWorker):
    """A batched model a user writes: ``_predict`` takes the list, says what it saw, and
    doubles each number; ``x`` that is not a number fails ``_pre_process``."""

    def _pre_process(self, inputs):
        if not isinstance(inputs.get('x'), (int, float)):
            raise ValueError('x must be a number, got {!r}'.format(inputs.get('x')))
        return inputs['x']

    def _predict(self, prep_inputs):
        self._create_notification(notif='log', msg='batch of {}'.format(len(prep_inputs)))
        return [2 * x for x in prep_inputs]

    def _post_process(self, pred):
        return {'doubled': pred}


class Subject:
    def __init__(self, worker_class=DoublingWorker, size=2, max_batch_size=4, batch_timeout=TIMEOUT, max_queue=64):
        self.clock = ThreadlessClock()
        self.threads = HeldThreads()
        self.pool = WorkerPool(lambda index: worker_class(worker_id=index), size=size, max_queue=max_queue,
                               reactor=self.clock, threadpool=self.threads, max_batch_size=max_batch_size,
                               batch_timeout=batch_timeout)
        started = defer.Deferred.fromCoroutine(self.pool.start())
        assert started.called

    def send(self, *xs):
        return [defer.Deferred.fromCoroutine(self.pool.run({'x': x}, request_id='r{}'.format(x))) for x in xs]

    def finish_all(self):
        while self.threads.held:
            self.threads.finish()


def answers(deferreds):
    """(status, predict_result or ERROR, batch_size) of each fired Deferred."""
    out = []
    for d in deferreds:
        assert d.called, 'a request is not answered yet'
        _worker, _call_id, outcome = d.result
        out.append((outcome.status, outcome.body.get('predict_result', outcome.body.get('ERROR')), outcome.batch_size))
    return out


def test_a_lone_request_on_an_idle_pool_starts_at_once_in_a_batch_of_one():
    subject = Subject()
    [d] = subject.send(1)
    assert subject.threads.batches() == [[1]]  # no clock advance: nothing waited
    subject.finish_all()
    assert answers([d]) == [(200, {'doubled': 2}, 1)]


def test_requests_waiting_while_every_worker_is_busy_leave_together_when_one_is_free():
    subject = Subject(size=1, max_batch_size=4)
    first = subject.send(1)
    rest = subject.send(2, 3, 4, 5, 6)  # pile up behind the busy worker
    assert subject.threads.batches() == [[1]]
    subject.threads.finish()
    # the freed worker takes what is waiting now, up to MAX_BATCH_SIZE, without waiting
    assert subject.threads.batches() == [[2, 3, 4, 5]]
    subject.threads.finish()
    assert subject.threads.batches() == [[6]]
    subject.finish_all()
    assert answers(first + rest) == [(200, {'doubled': 2}, 1)] + [(200, {'doubled': 2 * x}, 4) for x in (2, 3, 4, 5)] + [
        (200, {'doubled': 12}, 1)]
    assert subject.pool.batch_sizes == {1: 2, 4: 1}


def test_a_free_worker_holds_off_while_the_other_is_busy_and_its_batch_fills():
    subject = Subject(size=2, max_batch_size=3)
    subject.send(1)  # worker 0 busy
    held = subject.send(2)  # worker 1 would start a batch of 1 < 3 with no other worker free: it waits
    assert subject.threads.batches() == [[1]]
    subject.clock.advance(TIMEOUT / 2)
    held += subject.send(3, 4)  # the third fills the batch: it leaves at once, before the timeout
    assert subject.threads.batches() == [[1], [2, 3, 4]]
    subject.finish_all()
    assert [size for _s, _r, size in answers(held)] == [3, 3, 3]


def test_a_batch_that_does_not_fill_leaves_at_the_timeout():
    subject = Subject(size=2, max_batch_size=8)
    subject.send(1)
    held = subject.send(2, 3)
    subject.clock.advance(TIMEOUT * 0.99)
    assert subject.threads.batches() == [[1]]
    subject.clock.advance(TIMEOUT * 0.02)
    assert subject.threads.batches() == [[1], [2, 3]]
    subject.finish_all()
    assert answers(held) == [(200, {'doubled': 4}, 2), (200, {'doubled': 6}, 2)]


def test_a_holding_worker_starts_when_another_worker_becomes_free():
    subject = Subject(size=2, max_batch_size=8)
    subject.send(1)
    subject.send(2, 3)
    subject.threads.finish()  # worker 0 is free again: nobody waits for a fuller batch any more
    assert subject.threads.batches() == [[2, 3]]
    assert subject.clock.getDelayedCalls() == []


def test_a_full_batch_never_waits():
    subject = Subject(size=1, max_batch_size=2)
    subject.send(1)
    subject.send(2, 3, 4)
    subject.threads.finish()
    assert subject.threads.batches() == [[2, 3]]
    assert subject.clock.getDelayedCalls() == []


def test_a_single_worker_never_waits_for_a_batch_at_low_load():
    subject = Subject(size=1, max_batch_size=32)
    for x in range(3):  # one request at a time, as a single client sends them
        [d] = subject.send(x)
        assert subject.threads.batches() == [[x]]
        assert subject.clock.getDelayedCalls() == []
        subject.threads.finish()
        assert d.called


def test_batch_timeout_zero_never_holds_a_worker():
    subject = Subject(size=2, max_batch_size=8, batch_timeout=0)
    subject.send(1)
    subject.send(2)
    assert subject.threads.batches() == [[1], [2]]


def test_one_bad_input_answers_400_alone_and_the_rest_of_its_batch_succeeds():
    subject = Subject(size=1, max_batch_size=4)
    subject.send(1)
    batch = subject.send(2, 'three', 4)
    subject.finish_all()
    (s2, r2, n2), (s3, r3, n3), (s4, r4, n4) = answers(batch)
    assert (s2, r2, s4, r4) == (200, {'doubled': 4}, 200, {'doubled': 8})
    assert s3 == 400 and "x must be a number, got 'three'" in r3
    assert n2 == n3 == n4 == 3
    notes = subject.pool._idle[0]._notifications.snapshot()
    # _predict saw the two good inputs; its notification is under both of their call ids
    calls = {str(d.result[1]) for d in (batch[0], batch[2])}
    for call_id in calls:
        assert [n['NOTIF'] for n in notes[call_id]] == ['batch of 2']
    assert {n['REQUEST_ID'] for call_id in calls for n in notes[call_id]} == {'r2', 'r4'}


def test_a_predict_that_raises_answers_500_to_every_request_of_its_batch():
    class FailingWorker(DoublingWorker):
        def _predict(self, prep_inputs):
            if 13 in prep_inputs:
                raise ArithmeticError('unlucky batch')
            return super()._predict(prep_inputs)

    subject = Subject(FailingWorker, size=1, max_batch_size=4)
    subject.send(1)
    batch = subject.send(2, 13, 4)
    subject.finish_all()
    after = subject.send(5)
    subject.finish_all()
    for status, error, size in answers(batch):
        assert status == 500 and error.startswith('_predict failed: ArithmeticError: unlucky batch') and size == 3
    assert answers(after) == [(200, {'doubled': 10}, 1)]  # the worker serves on
    assert batch[0].result[2].body['FailingWorker_ERROR']['ERR_TYPE'] == 'ArithmeticError'


@pytest.mark.parametrize('result, what', [([2], '1 results'), (None, 'a NoneType, not a list')])
def test_a_result_of_the_wrong_length_answers_500_to_all_saying_so(result, what):
    class ShortWorker(DoublingWorker):
        def _predict(self, prep_inputs):
            return result

    subject = Subject(ShortWorker, size=1, max_batch_size=4)
    subject.send(1)
    batch = subject.send(2, 3)
    subject.finish_all()
    for status, error, _size in answers(batch):
        assert status == 500
        assert '_predict returned {} for a batch of 2 inputs; it must return one result per input'.format(
            what) in error


def test_batch_and_unbatch_hooks_stack_the_inputs_and_split_the_result():
    class StackingWorker(DoublingWorker):
        def _batch(self, prep_inputs_list):
            return {'column': tuple(prep_inputs_list)}

        def _predict(self, prep_inputs):
            return {'column': tuple(3 * x for x in prep_inputs['column'])}

        def _unbatch(self, preds):
            return list(preds['column'])

    subject = Subject(StackingWorker, size=1, max_batch_size=4)
    subject.send(1)
    batch = subject.send(2, 3)
    subject.finish_all()
    assert [result for _s, result, _n in answers(batch)] == [{'doubled': 6}, {'doubled': 9}]


def test_a_request_cancelled_before_its_batch_started_is_dropped_from_it():
    subject = Subject(size=1, max_batch_size=4)
    subject.send(1)
    batch = subject.send(2, 3, 4)
    batch[1].cancel()  # the client went away while waiting
    assert batch[1].called and isinstance(batch[1].result.value, defer.CancelledError)
    batch[1].addErrback(lambda _f: None)
    assert subject.pool.queued == 2
    subject.threads.finish()
    assert subject.threads.batches() == [[2, 4]]
    subject.finish_all()
    assert answers([batch[0], batch[2]]) == [(200, {'doubled': 4}, 2), (200, {'doubled': 8}, 2)]


def test_a_holding_worker_whose_requests_are_all_cancelled_goes_back_to_idle():
    subject = Subject(size=2, max_batch_size=4)
    first = subject.send(1)
    [held] = subject.send(2)
    held.cancel()
    held.addErrback(lambda _f: None)
    assert subject.clock.getDelayedCalls() == []
    subject.finish_all()
    idle = subject.pool.when_idle()
    assert idle.called and first[0].called
    assert subject.pool.size == 2
    [d] = subject.send(3)  # both workers serve again
    assert subject.threads.batches() == [[3]]


def test_a_request_cancelled_after_its_batch_started_keeps_the_worker_until_the_batch_returns():
    subject = Subject(size=1, max_batch_size=4)
    batch = subject.send(1)
    batch[0].cancel()
    batch[0].addErrback(lambda _f: None)
    later = subject.send(2)
    assert (subject.pool.busy, subject.pool.queued) == (1, 1)
    subject.finish_all()
    assert answers(later) == [(200, {'doubled': 4}, 1)]


def test_max_queue_counts_requests_not_batches():
    subject = Subject(size=1, max_batch_size=4, max_queue=3)
    subject.send(1)
    subject.send(2, 3, 4)
    [refused] = subject.send(5)
    assert isinstance(refused.result.value, QueueFull)
    refused.addErrback(lambda _f: None)


def test_resize_during_a_batch_lets_the_batch_finish_and_the_new_workers_take_the_queue():
    subject = Subject(size=1, max_batch_size=2)
    running = subject.send(1)
    waiting = subject.send(2, 3, 4, 5)
    grown = defer.Deferred.fromCoroutine(subject.pool.resize(3))
    assert grown.result == 3
    # two new workers each took a batch of the waiting requests while the first still runs
    assert subject.threads.batches() == [[1], [2, 3], [4, 5]]
    shrunk = defer.Deferred.fromCoroutine(subject.pool.resize(1))
    assert shrunk.result == 1
    subject.finish_all()
    assert answers(running + waiting) == [(200, {'doubled': 2 * x}, 1 if x == 1 else 2) for x in (1, 2, 3, 4, 5)]
    assert subject.pool.size == 1
    subject.send(6, 7)
    assert subject.threads.batches() == [[6]]  # one worker left: 7 waits behind it


def test_stop_refuses_the_requests_a_holding_worker_was_waiting_for():
    subject = Subject(size=2, max_batch_size=4)
    subject.send(1)
    [held] = subject.send(2)
    subject.pool.stop()
    assert isinstance(held.result.value, QueueFull)
    held.addErrback(lambda _f: None)
    assert subject.clock.getDelayedCalls() == []


def test_the_server_reads_max_batch_size_and_batch_timeout_from_its_config():
    server = ModelServer('doubler', DoublingWorker, {}, {'MAX_BATCH_SIZE': 16, 'BATCH_TIMEOUT': 0.002},
                         reactor=ThreadlessClock())
    assert (server.pool.max_batch_size, server.pool.batch_timeout) == (16, 0.002)
    default = ModelServer('doubler', DoublingWorker, {}, {}, reactor=ThreadlessClock())
    assert (default.pool.max_batch_size, default.pool.batch_timeout) == (1, 0.01)


def test_metrics_show_a_batch_size_histogram_summed_over_the_replicas():
    from types import SimpleNamespace

    from prometheus_client.parser import text_string_to_metric_families

    from bis_twisted.gateway.metrics import GatewayMetrics

    class Fleet:
        servers = {'iris': SimpleNamespace(targets=[]), 'plain': SimpleNamespace(targets=[])}

    metrics = GatewayMetrics(Fleet(), supervisor=None, clock=task.Clock())
    # what two replicas' /health said: exact batch sizes since each started
    metrics.health = {'iris': [{'BATCHES': {'1': 5, '3': 2}}, {'BATCHES': {'32': 4}}, None], 'plain': [{}]}
    found = {(s.name, s.labels.get('le')): s.value
             for family in text_string_to_metric_families(metrics.render().decode())
             for s in family.samples if s.labels.get('endpoint') == 'iris' and s.name.startswith('bis_batch_size')}
    assert found[('bis_batch_size_bucket', '1')] == 5
    assert found[('bis_batch_size_bucket', '4')] == 7
    assert found[('bis_batch_size_bucket', '16')] == 7
    assert found[('bis_batch_size_bucket', '32')] == 11
    assert found[('bis_batch_size_bucket', '+Inf')] == 11
    assert found[('bis_batch_size_count', None)] == 11
    assert found[('bis_batch_size_sum', None)] == 5 + 6 + 128


def test_when_idle_waits_for_a_holding_worker_and_its_batch():
    subject = Subject(size=2, max_batch_size=4)
    subject.send(1)
    subject.send(2)  # held: worker 1 waits for a fuller batch while worker 0 runs
    idle = subject.pool.when_idle()
    subject.threads.finish()  # worker 0 done: the held batch starts
    assert not idle.called
    subject.finish_all()
    assert idle.called


def test_the_rest_of_a_running_batch_is_answered_when_one_of_its_callers_gave_up():
    subject = Subject(size=1, max_batch_size=4)
    subject.send(1)
    batch = subject.send(2, 3, 4)
    subject.threads.finish()
    assert subject.threads.batches() == [[2, 3, 4]]
    batch[1].cancel()  # the client of 3 went away while its batch runs
    batch[1].addErrback(lambda _f: None)
    subject.finish_all()
    assert answers([batch[0], batch[2]]) == [(200, {'doubled': 4}, 3), (200, {'doubled': 8}, 3)]
    assert subject.pool.when_idle().called


def test_requests_submitted_together_start_together_in_one_batch():
    # the frames of one read from the gateway: an idle worker does not start the first alone
    subject = Subject(size=1, max_batch_size=4)
    with subject.pool.gathered():
        sent = subject.send(1, 2, 3)
        assert subject.threads.batches() == []  # nothing starts inside
    assert subject.threads.batches() == [[1, 2, 3]]
    subject.finish_all()
    assert answers(sent) == [(200, {'doubled': 2 * x}, 3) for x in (1, 2, 3)]
    assert subject.pool.batch_sizes == {3: 1}


def test_requests_gathered_past_max_batch_size_fill_each_free_worker_in_turn():
    subject = Subject(size=2, max_batch_size=2)
    with subject.pool.gathered():
        sent = subject.send(1, 2, 3, 4, 5)
    assert subject.threads.batches() == [[1, 2], [3, 4]]
    subject.finish_all()
    assert answers(sent) == [(200, {'doubled': 2 * x}, 2) for x in (1, 2, 3, 4)] + [(200, {'doubled': 10}, 1)]


def test_gathered_requests_count_against_max_queue_past_what_the_free_workers_take():
    subject = Subject(size=1, max_batch_size=2, max_queue=3)
    with subject.pool.gathered():
        taken = subject.send(1, 2, 3, 4, 5)  # 2 start at its end, 3 wait
        [refused] = subject.send(6)
    assert isinstance(refused.result.value, QueueFull)
    refused.addErrback(lambda _f: None)
    assert subject.threads.batches() == [[1, 2]]
    subject.finish_all()
    assert [status for status, _result, _size in answers(taken)] == [200] * 5


def test_a_request_cancelled_while_gathered_never_starts():
    subject = Subject(size=1, max_batch_size=4)
    with subject.pool.gathered():
        first, gone, last = subject.send(1, 2, 3)
        gone.cancel()
        gone.addErrback(lambda _f: None)
        assert subject.threads.batches() == []
    assert subject.threads.batches() == [[1, 3]]
    subject.finish_all()
    assert answers([first, last]) == [(200, {'doubled': 2}, 2), (200, {'doubled': 6}, 2)]


def _closed_loop(subject, clients, rounds, compute=0.002, resend_gap=0.0005):
    """``clients`` that each send again once answered, one after the other ``resend_gap``
    apart (as a busy gateway relays them), against one worker whose batches take
    ``compute``: the sizes of the batches the pool ran, in order. The clients stop after
    ``rounds`` batches (nothing more is sent)."""
    subject.send(*range(clients))
    sizes, resends = [], []
    for _ in range(rounds):
        subject.clock.advance(compute)
        while not subject.threads.held:  # a worker holding off: time goes on until it starts
            subject.clock.advance(resend_gap)
        sizes.append(len(subject.threads.held[0][2][0]))
        subject.threads.finish()
        resends += [subject.clock.callLater(resend_gap * (i + 1), subject.send, i) for i in range(sizes[-1])]
    for call in resends:
        if call.active():
            call.cancel()
    subject.finish_all()
    return sizes


def test_under_steady_load_a_lone_worker_waits_for_its_clients_and_runs_full_batches():
    subject = Subject(size=1, max_batch_size=8)
    sizes = _closed_loop(subject, clients=6, rounds=600)  # about 2 s: the rate is known after the first
    assert sizes[-200:] == [6] * 200  # each batch is every client's request, not a trickle
    assert sizes[:20].count(6) < 20  # the first second, before the rate is known: as arrived


def test_the_tail_of_a_burst_never_waits():
    subject = Subject(size=1, max_batch_size=32)
    sent = subject.send(*range(40))  # at one instant, then nothing more
    assert subject.threads.batches() == [[0]]
    subject.threads.finish()
    assert subject.threads.batches() == [list(range(1, 33))]
    subject.threads.finish()
    assert subject.threads.batches() == [list(range(33, 40))]  # at once: nothing is due to come
    assert subject.clock.getDelayedCalls() == []
    subject.finish_all()
    assert all(d.called for d in sent)


def test_a_lone_client_sending_fast_never_waits():
    subject = Subject(size=1, max_batch_size=32)
    for x in range(3000):  # one at a time, 1 ms apart: a high rate, but never two at once
        subject.clock.advance(0.001)
        [d] = subject.send(x)
        assert subject.threads.batches() == [[x]]
        assert subject.clock.getDelayedCalls() == []
        subject.threads.finish()
        assert d.called


def test_a_goal_from_a_load_long_gone_is_forgotten():
    subject = Subject(size=1, max_batch_size=8)
    assert _closed_loop(subject, clients=6, rounds=600)[-1] == 6
    subject.clock.advance(5)  # quiet for a while
    for x in (100, 101):  # a lone client again: each starts at once
        [d] = subject.send(x)
        assert subject.threads.batches() == [[x]] and subject.clock.getDelayedCalls() == []
        subject.threads.finish()
        assert d.called
