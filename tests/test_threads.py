"""The workers' threads (``WorkerThreads``) and the coalesced way results come back to the
reactor (``ResultInbox``).

The inbox's bookkeeping is exact on a Clock whose ``callFromThread`` only queues; the race it
guards against is hammered from real threads under the real reactor, and counted: every
result arrives once, and the wake-ups asked for are never more than the results. The threads'
own tests count too (threads started, calls inside at once), never time.
"""

import collections
import functools
import sys
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from bis_twisted import FlaskWorker
from bis_twisted.errors import QueueFull
from bis_twisted.model_server.pool import WorkerPool
from bis_twisted.model_server.threads import ResultInbox, WorkerThreads, defer_in_thread, fire

WAIT_SECONDS = 10  # how long a thread waits at a barrier or an event before it gives up


class QueuedCalls(task.Clock):
    """A Clock whose ``callFromThread`` queues the call until ``run_queued``: the reactor's
    thread-call queue, turned by hand."""

    def __init__(self):
        super().__init__()
        self.queued = []

    def callFromThread(self, f, *args, **kwargs):
        self.queued.append((f, args, kwargs))

    def run_queued(self):
        queued, self.queued = self.queued, []
        for f, args, kwargs in queued:
            f(*args, **kwargs)


async def eventually(probe, what, timeout=WAIT_SECONDS):
    """Poll ``probe()`` on the reactor until it is true; fails past ``timeout`` saying what."""
    deadline = reactor.seconds() + timeout
    while not probe():
        if reactor.seconds() >= deadline:
            raise AssertionError('timed out waiting for {}'.format(what))
        await task.deferLater(reactor, 0.01, lambda: None)


# -- the inbox, by hand -------------------------------------------------------------------------
def test_results_put_while_a_drain_is_pending_share_its_one_wake_up_in_order():
    clock = QueuedCalls()
    inbox = ResultInbox(clock)
    seen = []

    for n in range(5):
        inbox.put(lambda ok, result: seen.append((ok, result)), True, n)

    assert len(clock.queued) == 1 and inbox.drains == 1
    clock.run_queued()
    assert seen == [(True, 0), (True, 1), (True, 2), (True, 3), (True, 4)]


def test_a_result_put_after_a_drain_ran_asks_for_another():
    clock = QueuedCalls()
    inbox = ResultInbox(clock)
    seen = []
    inbox.put(lambda ok, result: seen.append(result), True, 'first')
    clock.run_queued()

    inbox.put(lambda ok, result: seen.append(result), True, 'second')

    assert len(clock.queued) == 1 and inbox.drains == 2
    clock.run_queued()
    assert seen == ['first', 'second']


def test_a_result_put_while_the_drain_delivers_is_delivered_by_that_drain_without_a_wake_up():
    clock = QueuedCalls()
    inbox = ResultInbox(clock)
    seen = []

    def first(ok, result):
        seen.append(result)
        inbox.put(lambda ok, result: seen.append(result), True, 'put during the drain')

    inbox.put(first, True, 'first')
    clock.run_queued()

    assert seen == ['first', 'put during the drain']
    assert clock.queued == [] and inbox.drains == 1


def test_a_result_put_between_the_drains_last_pop_and_its_flag_is_not_left_behind():
    # the window the flag's order guards: the drain found the deque empty, and a thread puts
    # before the flag is cleared (it asks nothing: the flag still says a drain is running)
    clock = QueuedCalls()
    inbox = ResultInbox(clock)
    seen = []

    class PutOnEmptyLook(collections.deque):
        """A deque whose first look that finds it empty lets a 'thread' put right then."""

        looked = False

        def __bool__(self):
            empty = not len(self)
            if empty and not self.looked:
                self.looked = True
                inbox.put(lambda ok, result: seen.append(result), True, 'late')
                return False  # the drain saw it empty
            return not empty

    inbox._results = PutOnEmptyLook()
    inbox.put(lambda ok, result: seen.append(result), True, 'first')
    clock.run_queued()
    clock.run_queued()  # a drain asked for meanwhile, if any, finds nothing left

    assert seen == ['first', 'late']


@pytest.fixture
def logged_failures():
    """The failures logged while the test runs."""
    seen = []

    def observe(event):
        if event.get('log_failure') is not None:
            seen.append(event['log_failure'])

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_a_consumer_that_raises_is_logged_and_the_results_after_it_are_still_delivered(logged_failures):
    clock = QueuedCalls()
    inbox = ResultInbox(clock)
    seen = []

    def broken(ok, result):
        raise RuntimeError('consumer bug')

    inbox.put(broken, True, 1)
    inbox.put(lambda ok, result: seen.append(result), True, 2)
    clock.run_queued()

    assert seen == [2]
    assert [str(failure.value) for failure in logged_failures] == ['consumer bug']


# -- the inbox, hammered from real threads under the real reactor --------------------------------
@pytest_twisted.ensureDeferred
async def test_results_from_many_threads_each_arrive_exactly_once():
    threads, per_thread = 8, 4000
    inbox = ResultInbox(reactor)
    seen = []
    start = threading.Barrier(threads, timeout=WAIT_SECONDS)

    def deliver(ok, result):
        seen.append(result)

    def hammer(index):
        start.wait()  # all threads put at once, so puts race the drains
        for n in range(per_thread):
            inbox.put(deliver, True, (index, n))
            if n % 4 == 0:
                time.sleep(0)  # lets the reactor in: drains run while others put

    running = [threading.Thread(target=hammer, args=(index,), daemon=True) for index in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the GIL changes hands every few bytecodes: far more interleavings
    try:
        for thread in running:
            thread.start()
        await eventually(lambda: len(seen) >= threads * per_thread, 'every result to arrive')
    finally:
        sys.setswitchinterval(interval)
    for thread in running:
        thread.join(WAIT_SECONDS)

    assert len(seen) == threads * per_thread
    assert set(seen) == {(index, n) for index in range(threads) for n in range(per_thread)}
    for index in range(threads):  # one thread's results arrive in the order it put them
        assert [n for i, n in seen if i == index] == list(range(per_thread))
    assert 1 <= inbox.drains <= threads * per_thread


# -- the threads --------------------------------------------------------------------------------
@pytest.fixture
def worker_threads():
    threads = WorkerThreads(name='test-workers')
    threads.start()
    yield threads
    threads.stop()


@pytest_twisted.ensureDeferred
async def test_a_call_answers_its_result_on_the_reactor_thread(worker_threads):
    inbox = ResultInbox(reactor)
    where = []

    def work(x):
        where.append(threading.current_thread())
        return x * 2

    answer = defer_in_thread(worker_threads, inbox, work, 21)
    result = await answer

    assert result == 42
    assert where[0] is not threading.current_thread()
    assert where[0].daemon  # a hook that never returns does not keep the process alive
    assert where[0].name.startswith('test-workers-')


@pytest_twisted.ensureDeferred
async def test_a_call_that_raises_answers_its_failure(worker_threads):
    inbox = ResultInbox(reactor)

    def broken():
        raise ValueError('bad input')

    with pytest.raises(ValueError, match='bad input'):
        await defer_in_thread(worker_threads, inbox, broken)


@pytest_twisted.ensureDeferred
async def test_calls_run_at_once_each_on_its_own_thread_and_idle_threads_are_reused(worker_threads):
    # four calls meet at a barrier that opens only when all four are inside at once
    inbox = ResultInbox(reactor)
    barrier = threading.Barrier(4, timeout=WAIT_SECONDS)

    def meet(n):
        barrier.wait()
        return n

    assert await defer.gatherResults([defer_in_thread(worker_threads, inbox, meet, n) for n in range(4)]) == [0, 1, 2, 3]
    assert worker_threads.threads == 4

    # one at a time from now on: each finds a thread idle, none is started
    for n in range(20):
        assert await defer_in_thread(worker_threads, inbox, lambda x: x, n) == n
    assert worker_threads.threads == 4


@pytest_twisted.ensureDeferred
async def test_a_call_never_waits_behind_a_call_that_does_not_return(worker_threads):
    inbox = ResultInbox(reactor)
    stuck = threading.Event()
    released = threading.Event()

    def never_returns():
        stuck.set()
        released.wait(WAIT_SECONDS)

    hung = defer_in_thread(worker_threads, inbox, never_returns)
    await eventually(stuck.is_set, 'the first call to start')

    assert await defer_in_thread(worker_threads, inbox, lambda: 'answered') == 'answered'
    assert worker_threads.threads == 2
    released.set()
    await hung


@pytest_twisted.ensureDeferred
async def test_stop_lets_each_thread_leave_and_drops_later_calls():
    threads = WorkerThreads(name='test-stop')
    threads.start()
    inbox = ResultInbox(reactor)
    assert await defer_in_thread(threads, inbox, lambda: 1) == 1
    [thread] = [t for t in threading.enumerate() if t.name.startswith('test-stop-')]

    threads.stop()

    await eventually(lambda: not thread.is_alive(), 'the thread to leave')
    dropped = defer_in_thread(threads, inbox, lambda: 2)
    assert not dropped.called and threads.threads == 0
    threads.start()  # started again, it serves on new threads
    assert await defer_in_thread(threads, inbox, lambda: 3) == 3


def test_a_failure_handed_over_by_a_fake_pool_as_a_bare_exception_is_a_failure():
    clock = QueuedCalls()
    inbox = ResultInbox(clock)

    class Immediate:
        def callInThreadWithCallback(self, on_result, function, *args):
            try:
                on_result(True, function(*args))
            except Exception as exc:  # noqa: BLE001 - as HeldThreads in test_batching hands it over
                on_result(False, exc)

    answer = defer_in_thread(Immediate(), inbox, lambda: 1 / 0)
    clock.run_queued()

    failures = []
    answer.addErrback(failures.append)
    assert isinstance(failures[0], Failure) and failures[0].check(ZeroDivisionError)


@pytest_twisted.ensureDeferred
async def test_a_thread_whose_result_cannot_be_handed_over_logs_it_and_serves_the_next_call(worker_threads,
                                                                                             logged_failures):
    inbox = ResultInbox(reactor)
    handed = threading.Event()

    def broken_on_result(ok, result):
        handed.set()
        raise RuntimeError('cannot hand over')

    worker_threads.callInThreadWithCallback(broken_on_result, lambda: 1)
    await eventually(handed.is_set, 'the result to be handed over')

    assert await defer_in_thread(worker_threads, inbox, lambda: 'next') == 'next'
    assert worker_threads.threads == 1
    assert [str(failure.value) for failure in logged_failures] == ['cannot hand over']


# -- the pool on them -----------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_pool_on_worker_threads_answers_each_of_many_requests_once_one_thread_per_worker_at_a_time():
    from bis_twisted import FlaskWorker
    from bis_twisted.model_server.pool import WorkerPool

    class Echo(FlaskWorker):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inside = 0
            self.most_inside = 0
            self.threads_seen = set()

        def _pre_process(self, inputs):
            return inputs['n']

        def _predict(self, n):
            self.inside += 1  # another thread inside this instance now would count 2
            self.most_inside = max(self.most_inside, self.inside)
            self.threads_seen.add(threading.current_thread())
            self.inside -= 1
            return n

        def _post_process(self, n):
            return {'n': n}

    workers = []

    def make(index):
        workers.append(Echo(worker_id=index))
        return workers[-1]

    pool = WorkerPool(make, size=4, max_queue=1000, reactor=reactor)
    await pool.start()
    try:
        answers = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(pool.run({'n': n})) for n in range(400)])
    finally:
        pool.stop()

    assert [outcome.body['predict_result']['n'] for _worker, _call_id, outcome in answers] == list(range(400))
    assert sorted(call_id for _worker, call_id, _outcome in answers) == list(range(1, 401))
    assert [worker.most_inside for worker in workers] == [1, 1, 1, 1]
    assert all(thread.daemon for worker in workers for thread in worker.threads_seen)
    assert (pool.busy, pool.queued) == (0, 0)


# -- a busy worker's next request, waiting in its thread -------------------------------------
def gated_calls():
    """``(call, gate, ran)``: ``call(name)`` notes ``(name, its thread)`` in ``ran`` and returns
    ``name``; the call named ``'first'`` waits for ``gate`` first."""
    gate = threading.Event()
    ran = []

    def call(name):
        if name == 'first':
            gate.wait(WAIT_SECONDS)
        ran.append((name, threading.current_thread()))
        return name

    return call, gate, ran


@pytest_twisted.ensureDeferred
async def test_a_follower_runs_in_the_thread_of_the_call_it_follows_right_after_it(worker_threads):
    inbox = ResultInbox(reactor)
    call, gate, ran = gated_calls()
    first, second = defer.Deferred(), defer.Deferred()
    handle = worker_threads.callInThreadWithCallback(inbox.sender(functools.partial(fire, first)), call, 'first')
    follower = worker_threads.follow(handle, inbox.sender(functools.partial(fire, second)), call, 'second')
    assert follower is not None
    assert worker_threads.follow(handle, lambda ok, result: None, call, 'third') is None  # one at a time
    gate.set()

    assert await first == 'first' and await second == 'second'
    assert [name for name, _thread in ran] == ['first', 'second']
    assert ran[0][1] is ran[1][1] and worker_threads.threads == 1  # its thread went on: none was started
    assert worker_threads.follow(handle, lambda ok, result: None, call, 'late') is None  # that call has ended
    assert worker_threads.unfollow(handle, follower) is False


@pytest_twisted.ensureDeferred
async def test_a_follower_taken_back_before_its_thread_begins_it_never_runs(worker_threads):
    inbox = ResultInbox(reactor)
    call, gate, ran = gated_calls()

    first = defer.Deferred()
    handle = worker_threads.callInThreadWithCallback(inbox.sender(functools.partial(fire, first)), call, 'first')
    follower = worker_threads.follow(handle, lambda ok, result: ran.append(('handed over', None)), call, 'second')

    assert worker_threads.unfollow(handle, follower) is True
    gate.set()
    assert await first == 'first'
    assert await defer_in_thread(worker_threads, inbox, call, 'after') == 'after'  # the thread serves on
    assert [name for name, _thread in ran] == ['first', 'after']


class GatedEcho(FlaskWorker):
    """A model whose ``_predict`` for ``n`` waits until the test opens gate ``n``, and says
    which worker ran it."""

    gates = collections.defaultdict(threading.Event)
    ran = []

    def _pre_process(self, inputs):
        return inputs['n']

    def _predict(self, n):
        if not self.gates[n].wait(WAIT_SECONDS):
            raise TimeoutError('gate {} was never opened'.format(n))
        self.ran.append((n, self.worker_id))
        return n

    def _post_process(self, n):
        return {'n': n}


@pytest.fixture
def gated_pool():
    GatedEcho.gates.clear()
    GatedEcho.ran = []
    pools = []

    async def make(size):
        pool = WorkerPool(lambda index: GatedEcho(worker_id=index), size=size, max_queue=32, reactor=reactor)
        await pool.start()
        pools.append(pool)
        return pool

    yield make
    for gate in list(GatedEcho.gates.values()):
        gate.set()
    for pool in pools:
        pool.stop()


def _send(pool, n):
    return defer.Deferred.fromCoroutine(pool.run({'n': n}))


@pytest_twisted.ensureDeferred
async def test_a_request_behind_a_blocked_call_goes_to_the_worker_that_becomes_free(gated_pool):
    pool = await gated_pool(2)
    answers = [_send(pool, n) for n in range(4)]  # 0 and 1 run; 2 and 3 wait behind them in their threads
    assert (pool.busy, pool.queued) == (2, 2)

    GatedEcho.gates[1].set()
    GatedEcho.gates[3].set()  # worker 1 ends both its calls while 0 blocks worker 0
    got = {3: await answers[3]}
    GatedEcho.gates[2].set()
    got[2] = await answers[2]  # not stuck behind 0: the free worker took it

    assert got[2][2].body['predict_result'] == {'n': 2}
    assert dict(GatedEcho.ran)[2] == dict(GatedEcho.ran)[1]
    assert not answers[0].called and 0 not in dict(GatedEcho.ran)
    GatedEcho.gates[0].set()
    got[0], got[1] = await answers[0], await answers[1]
    assert sorted(call_id for _worker, call_id, _outcome in got.values()) == [1, 2, 3, 4]
    assert (pool.busy, pool.queued) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_a_request_cancelled_while_it_waits_behind_a_call_is_never_run(gated_pool):
    pool = await gated_pool(1)
    running, behind = _send(pool, 0), _send(pool, 1)
    assert (pool.busy, pool.queued) == (1, 1)

    behind.cancel()  # its client went away
    assert pool.queued == 0
    GatedEcho.gates[1].set()
    GatedEcho.gates[0].set()
    await running
    await pool.when_idle()

    assert [n for n, _worker in GatedEcho.ran] == [0]
    assert behind.called and isinstance(behind.result, Failure) and behind.result.check(defer.CancelledError)
    behind.addErrback(lambda _failure: None)


@pytest_twisted.ensureDeferred
async def test_stop_refuses_a_request_waiting_behind_a_call(gated_pool):
    pool = await gated_pool(1)
    running = _send(pool, 0)
    behind = _send(pool, 1)

    pool.stop()

    failures = []
    behind.addErrback(failures.append)
    assert failures and failures[0].check(QueueFull)
    GatedEcho.gates[0].set()
    await running  # what runs when the pool stops runs to its end
    assert [n for n, _worker in GatedEcho.ran] == [0]


@pytest_twisted.ensureDeferred
async def test_requests_chain_behind_a_busy_call_in_order_and_one_cancelled_in_the_middle_never_runs(gated_pool):
    from bis_twisted.model_server.pool import FOLLOWERS

    pool = await gated_pool(1)
    answers = [_send(pool, n) for n in range(FOLLOWERS + 2)]  # one runs, FOLLOWERS behind it, one waits
    assert (pool.busy, pool.queued) == (1, FOLLOWERS + 1)

    answers[2].cancel()  # in the middle of the chain: its client went away
    answers[2].addErrback(lambda failure: failure.trap(defer.CancelledError))
    assert pool.queued == FOLLOWERS
    for n in range(FOLLOWERS + 2):
        GatedEcho.gates[n].set()
    for n, answer in enumerate(answers):
        if n != 2:
            await answer
    await pool.when_idle()

    ran = [n for n, _worker in GatedEcho.ran]
    assert ran == [n for n in range(FOLLOWERS + 2) if n != 2]  # in order, the cancelled one skipped
    assert (pool.busy, pool.queued) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_no_request_stays_behind_a_blocked_call_while_another_worker_serves(gated_pool):
    from bis_twisted.model_server.pool import FOLLOWERS

    pool = await gated_pool(2)
    count = 2 + 2 * FOLLOWERS + 2  # both workers busy, both chains full, two more in the queue
    answers = [_send(pool, n) for n in range(count)]
    assert (pool.busy, pool.queued) == (2, count - 2)

    for n in range(1, count):  # all but request 0, whose call blocks worker 0
        GatedEcho.gates[n].set()
    for answer in answers[1:]:  # each free turn of worker 1 takes back what waits behind worker 0
        await answer

    ran = [n for n, _worker in GatedEcho.ran]
    assert sorted(ran) == list(range(1, count)) and not answers[0].called
    assert {worker for n, worker in GatedEcho.ran} == {1}  # all of it by the worker that was free
    GatedEcho.gates[0].set()
    await answers[0]


@pytest_twisted.ensureDeferred
async def test_what_waits_behind_a_call_that_runs_long_goes_to_the_worker_that_serves(gated_pool, monkeypatch):
    from bis_twisted.model_server import pool as pool_module

    pool = await gated_pool(2)
    count = 2 + 2 * pool_module.FOLLOWERS + 2
    answers = [_send(pool, n) for n in range(count)]  # 0 and 1 run, 8 wait behind them, 2 queue
    GatedEcho.gates[1].set()
    await answers[1]  # worker 1 goes on to its next; one more request chains behind it
    monkeypatch.setattr(pool_module, 'FOLLOW_WAIT', 0.0)  # every call running now has run "long"
    pool._watch_long_calls()  # its periodic look, now: both calls are slow, their followers go back
    assert pool.queued == count - 3 and pool._following == 0  # 0 and 3 run, 1 is answered
    GatedEcho.gates[3].set()
    await answers[3]  # worker 1's call ended: it takes the head of the queue, worker 0 stays slow
    for n in range(1, count):
        GatedEcho.gates[n].set()
    for answer in answers[1:]:
        await answer

    ran = [n for n, _worker in GatedEcho.ran]
    assert {worker for _n, worker in GatedEcho.ran} == {1} and not answers[0].called
    assert ran.index(2) < ran.index(count - 1)  # the oldest of those before the newest request
    GatedEcho.gates[0].set()
    await answers[0]
