"""The worker pool on a real thread pool, and the model server's HTTP app.

Parallelism is proven without timing: hooks meet at a ``threading.Barrier`` (which only opens
when all of them are inside at once) or wait at a ``Gate`` the test opens. The test itself runs
on the reactor thread, so it never blocks: it learns how many hooks are inside through
Deferreds fired with ``callFromThread``.
"""

import threading

import pytest
import pytest_twisted
import treq
from treq.testing import StubTreq
from twisted.internet import defer, reactor, task
from twisted.python.failure import Failure
from twisted.web.server import Site

from bis_twisted import FlaskWorker
from bis_twisted.errors import BadRequest, QueueFull
from bis_twisted.model_server.pool import WorkerLoadError, WorkerPool
from bis_twisted.shared.security import AdminGuard
from bis_twisted.model_server.app import ModelServer

HOOK_TIMEOUT = 10  # seconds a hook may wait at a barrier or gate before it gives up


class Gate:
    """Pool threads wait in ``pass_through`` until the test calls ``open``; ``arrivals(n)``
    fires on the reactor thread once n hooks have come to the gate."""

    def __init__(self):
        self._opened = threading.Event()
        self.arrived = 0
        self._waiters = []

    def pass_through(self):  # in a pool thread
        reactor.callFromThread(self._arrive)
        if not self._opened.wait(HOOK_TIMEOUT):
            raise RuntimeError('the test never opened the gate')

    def _arrive(self):
        self.arrived += 1
        due = [d for count, d in self._waiters if count <= self.arrived]
        self._waiters = [(count, d) for count, d in self._waiters if count > self.arrived]
        for d in due:
            d.callback(self.arrived)

    def arrivals(self, count):
        if self.arrived >= count:
            return defer.succeed(self.arrived)
        waiter = defer.Deferred()
        self._waiters.append((count, waiter))
        return waiter.addTimeout(HOOK_TIMEOUT, reactor,
                                 onTimeoutCancel=lambda _result, _timeout: self._too_few(count))

    def _too_few(self, count):
        raise AssertionError('{} of the {} hooks expected came to the gate within {}s'.format(
            self.arrived, count, HOOK_TIMEOUT))

    def open(self):
        self._opened.set()

    def close(self):
        self._opened.clear()


class CountingWorker(FlaskWorker):
    """Echoes ``{"n": ...}``; counts the threads inside one instance at once."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self._threads_inside = 0
        self.most_threads_inside = 0

    def execute(self, inputs, call_id, request_id=None):
        with self._lock:
            self._threads_inside += 1
            self.most_threads_inside = max(self.most_threads_inside, self._threads_inside)
        try:
            return super().execute(inputs, call_id)
        finally:
            with self._lock:
                self._threads_inside -= 1

    def _pre_process(self, inputs):
        return inputs

    def _predict(self, prep_inputs):
        return prep_inputs

    def _post_process(self, pred):
        return {'n': pred.get('n'), 'worker': self.worker_id}


def waiting_worker_class(wait):
    """A CountingWorker whose ``_predict`` first calls ``wait()`` (a barrier or a gate)."""

    class WaitingWorker(CountingWorker):
        def _predict(self, prep_inputs):
            wait()
            return prep_inputs

    return WaitingWorker


async def eventually(probe, until, what, timeout=HOOK_TIMEOUT):
    """Await ``probe()`` until ``until(result)``; fails past ``timeout`` with the last result."""
    deadline = reactor.seconds() + timeout
    while True:
        result = await defer.maybeDeferred(probe)
        if until(result):
            return result
        if reactor.seconds() >= deadline:
            raise AssertionError('timed out waiting for {}; last seen: {!r}'.format(what, result))
        await task.deferLater(reactor, 0.02, lambda: None)


class PoolUnderTest:
    def __init__(self, worker_class, size, max_queue):
        self.workers = []
        self.requests = []
        self.pool = WorkerPool(self._make_worker, size=size, max_queue=max_queue, reactor=reactor)
        self._worker_class = worker_class

    def _make_worker(self, index):
        worker = self._worker_class(worker_id=index)
        self.workers.append(worker)
        return worker

    def request(self, inputs):
        """``pool.run(inputs)`` as a Deferred of ``(worker, call_id, outcome)``."""
        running = defer.Deferred.fromCoroutine(self.pool.run(inputs))
        self.requests.append(running)
        return running


class Pools:
    """What a test built; the teardown opens every gate, lets every request end and stops
    every pool and listening port, whether the test passed or not."""

    def __init__(self):
        self.gates = []
        self.subjects = []
        self.pools = []
        self.ports = []

    def gate(self):
        gate = Gate()
        self.gates.append(gate)
        return gate

    def pool(self, worker_class=CountingWorker, size=4, max_queue=16):
        subject = PoolUnderTest(worker_class, size, max_queue)
        self.subjects.append(subject)
        self.pools.append(subject.pool)
        return subject

    def server(self, worker_class, config, **kwargs):
        server = ModelServer('test_server', worker_class, {}, config, reactor=reactor, **kwargs)
        self.pools.append(server.pool)
        return server

    def listen(self, server):
        port = reactor.listenTCP(0, Site(server.resource()), interface='127.0.0.1')
        self.ports.append(port)
        return 'http://127.0.0.1:{}'.format(port.getHost().port)

    async def close(self):
        for gate in self.gates:
            gate.open()
        pending = [d for subject in self.subjects for d in subject.requests]
        await defer.DeferredList(pending, consumeErrors=True)
        for pool in self.pools:
            # a cancelled call's thread may still be on its way out
            await eventually(lambda: pool.busy, lambda busy: busy == 0, 'the pool to be idle')
            pool.stop()
        for port in self.ports:
            await port.stopListening()


@pytest_twisted.async_yield_fixture
async def pools():
    built = Pools()
    yield built
    await built.close()


def statuses(results):
    return [outcome.status for _worker, _call_id, outcome in results]


# -- the pool -----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_four_requests_run_at_once_on_four_workers(pools):
    # A request alone at the barrier would time out (BrokenBarrierError -> 500): all four
    # answer 200 only if all four _predict calls were running at the same time.
    barrier = threading.Barrier(4, timeout=HOOK_TIMEOUT)
    subject = pools.pool(waiting_worker_class(barrier.wait), size=4)
    await subject.pool.start()

    results = await defer.gatherResults([subject.request({'n': n}) for n in range(4)])

    assert statuses(results) == [200] * 4
    assert sorted(worker.worker_id for worker, _, _ in results) == [0, 1, 2, 3]
    assert [outcome.body['predict_result']['n'] for _, _, outcome in results] == [0, 1, 2, 3]


@pytest_twisted.ensureDeferred
async def test_a_fifth_request_waits_in_the_queue_until_a_worker_is_free(pools):
    gate = pools.gate()
    subject = pools.pool(waiting_worker_class(gate.pass_through), size=4)
    await subject.pool.start()
    first_four = [subject.request({'n': n}) for n in range(4)]
    await gate.arrivals(4)

    fifth = subject.request({'n': 4})

    assert (subject.pool.busy, subject.pool.queued) == (4, 1)
    assert not fifth.called
    gate.open()
    results = await defer.gatherResults(first_four + [fifth])
    assert statuses(results) == [200] * 5
    assert results[4][2].body['predict_result']['n'] == 4
    assert (subject.pool.busy, subject.pool.queued) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_a_request_beyond_max_queue_is_refused_with_503(pools):
    gate = pools.gate()
    subject = pools.pool(waiting_worker_class(gate.pass_through), size=1, max_queue=1)
    await subject.pool.start()
    running = subject.request({'n': 1})
    await gate.arrivals(1)
    waiting = subject.request({'n': 2})

    with pytest.raises(QueueFull) as refused:
        await subject.request({'n': 3})

    assert refused.value.status == 503
    assert 'MAX_QUEUE' in str(refused.value)
    gate.open()
    assert statuses(await defer.gatherResults([running, waiting])) == [200, 200]


@pytest_twisted.ensureDeferred
async def test_resize_shrinks_and_grows_without_dropping_a_request_in_flight(pools):
    gate = pools.gate()
    subject = pools.pool(waiting_worker_class(gate.pass_through), size=2)
    await subject.pool.start()
    in_flight = [subject.request({'n': n}) for n in range(2)]
    await gate.arrivals(2)

    assert await subject.pool.resize(1) == 1
    gate.open()
    assert statuses(await defer.gatherResults(in_flight)) == [200, 200]

    # one worker left: of two new requests, one runs and one waits
    gate.close()
    after_shrink = [subject.request({'n': n}) for n in (2, 3)]
    await gate.arrivals(3)
    assert (subject.pool.busy, subject.pool.queued) == (1, 1)

    # growing hands the waiting request to a new worker while the first is still busy
    assert await subject.pool.resize(3) == 3
    await gate.arrivals(4)
    assert (subject.pool.busy, subject.pool.queued) == (2, 0)
    gate.open()
    assert statuses(await defer.gatherResults(after_shrink)) == [200, 200]
    assert subject.pool.size == 3


@pytest.mark.parametrize('size', [0, -1, 'two', True, 1.5, None])
def test_resize_to_anything_but_a_positive_integer_is_a_bad_request(size):
    pool = WorkerPool(lambda index: CountingWorker(worker_id=index), size=1, max_queue=1, reactor=reactor)

    resized = defer.Deferred.fromCoroutine(pool.resize(size))

    failure = result_of(resized, expect_failure=True)
    assert failure.check(BadRequest)
    assert failure.value.status == 400
    assert 'NR_WORKERS must be an integer >= 1' in failure.value.message


@pytest_twisted.ensureDeferred
async def test_cancelling_the_caller_does_not_free_the_worker_before_its_hook_returns(pools):
    gate = pools.gate()
    subject = pools.pool(waiting_worker_class(gate.pass_through), size=1)
    await subject.pool.start()
    abandoned = subject.request({'n': 1})
    await gate.arrivals(1)

    abandoned.cancel()  # what a client disconnect or a deadline does
    with pytest.raises(defer.CancelledError):
        await abandoned
    next_request = subject.request({'n': 2})

    assert (subject.pool.busy, subject.pool.queued) == (1, 1)
    gate.open()
    worker, _, outcome = await next_request
    assert outcome.body['predict_result']['n'] == 2
    assert worker.most_threads_inside == 1


@pytest_twisted.ensureDeferred
async def test_a_failing_load_model_makes_start_raise_worker_load_error_naming_it(pools):
    class BrokenModelWorker(CountingWorker):
        def _load_model(self):
            raise RuntimeError('weights file missing')

    subject = pools.pool(BrokenModelWorker, size=2)

    with pytest.raises(WorkerLoadError) as failed:
        await subject.pool.start()

    message = str(failed.value)
    assert message.startswith('_load_model failed: RuntimeError: weights file missing (')
    assert 'test_pool.py:' in message
    assert '\n' not in message


@pytest_twisted.ensureDeferred
async def test_a_failing_worker_constructor_makes_start_raise_worker_load_error(pools):
    class NoConstructWorker(CountingWorker):
        def __init__(self, **kwargs):
            raise KeyError('MODEL_PATH')

    subject = pools.pool(NoConstructWorker, size=1)

    with pytest.raises(WorkerLoadError, match=r"^building the worker failed: KeyError: 'MODEL_PATH'"):
        await subject.pool.start()


# -- the model server's routes, in memory -----------------------------------------------------------
def result_of(deferred, expect_failure=False):
    """The result of a Deferred that has already fired (StubTreq fires synchronously)."""
    results = []
    deferred.addBoth(results.append)
    assert results, 'the Deferred has not fired'
    result = results[0]
    if expect_failure:
        assert isinstance(result, Failure), 'expected a failure, got {!r}'.format(result)
        return result
    if isinstance(result, Failure):
        result.raiseException()
    return result


class Answer:
    def __init__(self, response):
        self.status = response.code
        self.headers = response.headers
        self.json = result_of(treq.json_content(response))


def call(server, method, path, **kwargs):
    """One request through StubTreq: no network, no threads."""
    stub = StubTreq(server.resource())
    return Answer(result_of(stub.request(method, 'http://model-server' + path, **kwargs)))


@pytest.fixture
def loading_server():
    """A ModelServer whose workers were never started: routes that need no worker thread."""
    return ModelServer('echo', CountingWorker, {}, {'NR_WORKERS': 2}, reactor=reactor)


def test_health_answers_503_loading_before_the_workers_are_loaded(loading_server):
    answer = call(loading_server, 'GET', '/health')

    assert answer.status == 503
    assert answer.json['STATUS'] == 'LOADING'


def test_run_before_the_workers_are_loaded_answers_503_with_retry_after(loading_server):
    answer = call(loading_server, 'POST', '/run', json={'n': 1})

    assert answer.status == 503
    assert answer.headers.getRawHeaders(b'Retry-After') == [b'1']
    assert 'still loading' in answer.json['ERROR']


@pytest.mark.parametrize('body, message', [
    (b'{"n": 1', 'request body is not valid JSON'),
    (b'[1, 2]', 'request body must be a JSON object, not list'),
    (b'\xff\xfe', 'request body is not UTF-8 text'),
], ids=['truncated', 'array', 'not-utf8'])
def test_run_with_a_body_that_is_not_a_json_object_answers_400(loading_server, body, message):
    answer = call(loading_server, 'POST', '/run', data=body, headers={b'Content-Type': [b'application/json']})

    assert answer.status == 400
    assert message in answer.json['ERROR']


def test_an_unknown_route_answers_404_json(loading_server):
    answer = call(loading_server, 'GET', '/no_such_route')

    assert answer.status == 404
    assert answer.json == {'ERROR': '404 Not Found: /no_such_route'}


def test_a_wrong_method_answers_405_json(loading_server):
    answer = call(loading_server, 'GET', '/update_workers')

    assert answer.status == 405
    assert answer.json['ERROR'].startswith('405 ')


def test_get_paths_lists_the_routes_with_the_configured_execution_path():
    server = ModelServer('echo', CountingWorker, {}, {}, reactor=reactor, execution_path='/predict')

    answer = call(server, 'GET', '/get_paths')

    assert answer.json == {'PATHS': ['/predict', '/notifications', '/update_workers', '/get_paths', '/health']}
    assert call(server, 'POST', '/predict', json={}).status == 503  # routed (still loading), not 404


def test_notifications_answers_general_and_per_call_lists(loading_server):
    loading_server.notifications.add(5, 'LOG', 'CountingWorker', 'predicting on 5')

    answer = call(loading_server, 'POST', '/notifications', json={'SIGNATURE': 'echo'})

    assert answer.status == 200
    assert answer.json['GENERAL'] == []
    assert [(item['NOTIFICATION_TYPE'], item['MODULE'], item['NOTIF']) for item in answer.json['5']] == [
        ('LOG', 'CountingWorker', 'predicting on 5')]


@pytest.mark.parametrize('body, message', [
    ({}, 'send {"NR_WORKERS": <integer >= 1>}'),
    ({'NR_WORKERS': 0}, 'NR_WORKERS must be an integer >= 1, got 0'),
    ({'NR_WORKERS': 'many'}, "NR_WORKERS must be an integer >= 1, got 'many'"),
])
def test_update_workers_with_a_bad_count_answers_400(body, message):
    token = 'pool-test-admin-token'
    server = ModelServer('echo', CountingWorker, {}, {'NR_WORKERS': 2}, reactor=reactor,
                         guard=AdminGuard(token, require_token=True))
    answer = call(server, 'POST', '/update_workers', json=body, headers={'Authorization': 'Bearer ' + token})

    assert answer.status == 400
    assert answer.json['ERROR'] == message


@pytest_twisted.ensureDeferred
async def test_a_started_server_is_healthy_and_says_so_in_its_notifications(pools):
    server = pools.server(CountingWorker, {'NR_WORKERS': 2})
    await server.start()

    health = call(server, 'GET', '/health')
    notifications = call(server, 'GET', '/notifications')

    assert health.status == 200
    assert (health.json['STATUS'], health.json['NR_WORKERS'], health.json['BUSY']) == ('OK', 2, 0)
    assert [item['NOTIF'] for item in notifications.json['GENERAL']] == ['server ready with 2 workers']


# -- the model server on a real socket -----------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_the_reactor_answers_while_every_worker_is_blocked_and_the_queue_is_full(pools):
    gate = pools.gate()
    server = pools.server(waiting_worker_class(gate.pass_through), {'NR_WORKERS': 4, 'MAX_QUEUE': 1})
    await server.start()
    base = pools.listen(server)

    def post_run(n):
        return treq.post(base + '/run', json={'SIGNATURE': 'test_server', 'n': n}, persistent=False)

    def health():
        return treq.get(base + '/health', persistent=False).addCallback(treq.json_content)

    blocked = [post_run(n) for n in range(4)]
    await gate.arrivals(4)

    assert (await health())['BUSY'] == 4
    queued = post_run(4)
    await eventually(health, lambda body: body['QUEUED'] == 1, 'the fifth request to be queued')
    refused = await post_run(5)
    assert refused.code == 503
    assert refused.headers.getRawHeaders(b'Retry-After') == [b'1']
    assert 'MAX_QUEUE' in (await treq.json_content(refused))['ERROR']

    gate.open()
    answers = await defer.gatherResults(blocked + [queued])
    assert [answer.code for answer in answers] == [200] * 5
    bodies = await defer.gatherResults([treq.json_content(answer) for answer in answers])
    assert [body['predict_result']['n'] for body in bodies] == [0, 1, 2, 3, 4]
    assert all(body['signature'].endswith('.test_server.WaitingWorker.{}'.format(body['worker_id']))
               for body in bodies)
