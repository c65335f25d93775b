"""``WorkerPool``: a server's worker instances, the queue in front of them and their threads.

Each request goes to an idle worker and runs in a worker thread (``threads.WorkerThreads``;
results come back through a ``threads.ResultInbox``), so a blocking ``_predict`` never blocks
the reactor, and an instance is used by one thread at a time. When every worker is busy,
requests wait in a FIFO queue of at most ``max_queue``; beyond that ``QueueFull`` (503). A
worker is released only when its thread has returned, even if the caller gave up (client
gone, timeout): a late result is dropped, never overlapped.

With ``max_batch_size`` n > 1 a worker that becomes free takes up to n of the requests waiting
*now* and runs them as one batch (``worker.execute_batch``), so batches grow with load and an
idle server starts a lone request at once. Only when it would start fewer than its goal and
no other worker is free may it hold off for more, at most ``batch_timeout`` seconds (a
``callLater`` on the injected reactor); it starts as soon as its goal is waiting or another
worker becomes free. The goal is n while another worker runs. Else, when requests arrive
steadily (at the last ``LOAD_MEMORY`` seconds' rate, at least one more is due within
``batch_timeout``), it is the most requests the server held at once (waiting and running)
within those seconds, up to n: the clients of the batch that just ended send again soon, and
waiting for them makes one full batch instead of a trickle of small ones. A server that sees
one request at a time (a lone client) or the tail of a burst never waits. A request cancelled
before its batch started is dropped from it.
Requests submitted inside ``gathered()`` (the frames of one read from the gateway) wait for
its end, then start together: they arrived together, so they share a batch.

With batching off and every worker busy, the waiting requests go behind the busy workers'
calls, in turns, up to ``FOLLOWERS`` each, in their threads (``WorkerThreads.follow``): a
thread goes on to the next without a wake-up, and a chain of several keeps it going while the
reactor thread, which refills the chains, waits for the GIL (a wake-up saved is microseconds:
it is for short calls). They still count as queued. Behind a call that has run
``FOLLOW_WAIT`` seconds no request is put, and those waiting there go back to the head of the
queue, for the other workers (checked every ``FOLLOW_WAIT / 2`` seconds, not per request);
so do all of them when a worker is free with nothing else to take. One cancelled before its
thread begins it never runs.

A streaming request (``run_stream``) holds its worker until its ``PooledStream`` ended or was
closed; each chunk is made in a worker thread. Streaming requests are never batched.
"""

import collections
import functools
import itertools
import sys
import time

import attr
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import BadRequest, QueueFull
from ..logger import describe_failure, error_info
from ..protocol import DEFAULT_BATCH_TIMEOUT, NR_WORKERS_RULE, valid_nr_workers
from ..shared.waiters import Waiters
from ..shared.web import Answer
from ..worker import folder_of, shown_path
from .threads import ResultInbox, WorkerThreads, defer_in_thread


LOAD_MEMORY = 1.0  # seconds of arrivals a lone worker's goal is made of (see the module's docstring)
FOLLOWERS = 4  # requests that may wait behind a busy worker's call, in its thread
FOLLOW_WAIT = 0.05  # seconds a call may run before what waits behind it goes to the other workers


class WorkerLoadError(Exception):
    """A worker could not be built or its ``_load_model`` failed; the message is one line."""


class WorkerPool:
    """``size`` workers made by ``make_worker(index)``; ``run(inputs)`` answers
    ``(worker, call_id, outcome)``."""

    _log = Logger()

    def __init__(self, make_worker, size, max_queue, reactor=None, threadpool=None, max_batch_size=1,
                 batch_timeout=DEFAULT_BATCH_TIMEOUT):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._make_worker = make_worker
        self._target = size
        self.max_queue = max_queue
        # daemon threads (see WorkerThreads); a test hands in a fake of ThreadPool's shape
        self._threadpool = threadpool or WorkerThreads(name='bis-workers')
        self._inbox = ResultInbox(reactor)
        self._idle = collections.deque()
        self._busy = set()
        self._waiting = collections.deque()
        self._retire = 0
        self._loading = 0
        self._indexes = itertools.count()
        self._last_call_id = 0
        self._resize_lock = defer.DeferredLock()
        self._idle_waiters = Waiters()
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout
        self._holding = None  # (worker, DelayedCall): a free worker holding off for a fuller batch
        self._gathering = 0  # inside gathered(): submitted requests wait for its end
        self._gathered = _Gathered(self)  # a class, not contextlib's generator: it is entered once per read
        self._running = 0  # requests in the batches that run
        self._load = (0, float('-inf'))  # the most requests held at once lately, and when
        self._arrivals = (float('-inf'), 0, 0)  # (this period's start, its arrivals, the last period's)
        self.batch_sizes = collections.Counter()  # size -> batches run, for /health and /metrics
        # one request at a time (no batching): a busy worker's next request may wait in its
        # thread, behind the call it runs (WorkerThreads.follow), so the thread goes on to it
        # without a wake-up; a fake thread pool without ``follow`` never does this
        self._follow = getattr(self._threadpool, 'follow', None) if max_batch_size == 1 else None
        self._calls = {}  # worker -> the handle of the call its thread runs (when it can be followed)
        self._followers = {}  # worker -> deque of (job, handle): its next requests, behind that call
        self._following = 0  # the requests in those chains
        self._slow = set()  # workers whose call has run FOLLOW_WAIT seconds: nothing follows them
        self._watch = None  # the DelayedCall of _watch_long_calls, while requests follow

    # -- numbers shown in status ------------------------------------------------------------
    @property
    def size(self):
        """Workers serving or about to (loading), less those marked for retirement."""
        return len(self._idle) + len(self._busy) + self._loading - self._retire + (self._holding is not None)

    @property
    def busy(self):
        return len(self._busy)

    @property
    def queued(self):
        """Requests not begun: in the queue, or behind a busy worker's call in its thread."""
        return len(self._waiting) + self._following

    # -- life cycle ----------------------------------------------------------------------------
    async def start(self):
        if not self._threadpool.started:
            self._threadpool.start()
        await self._grow(self._target)

    def stop(self):
        """Drop idle workers and refuse queued requests; threads still running a hook are
        daemons and are not waited for."""
        if self._holding is not None:
            self._holding[1].cancel()
            self._holding = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._take_back_all()
        while self._waiting:
            self._waiting.popleft().answer.errback(QueueFull('server is stopping'))
        self._idle.clear()
        if not self._busy:
            self._threadpool.stop()

    async def resize(self, size):
        """Grow or shrink to ``size`` workers; requests in flight finish on the worker they
        have, and retired workers leave when they are released."""
        if not valid_nr_workers(size):
            raise BadRequest('NR_WORKERS must be {}, got {!r}'.format(NR_WORKERS_RULE, size))
        await self._resize_lock.acquire()
        try:
            current = self.size
            if size > current:
                await self._grow(size - current)
            elif size < current:
                self._shrink(current - size)
            self._target = size
        finally:
            self._resize_lock.release()
        return self.size

    async def _grow(self, count):
        self._threadpool.adjustPoolsize(maxthreads=max(self._threadpool.max, self.size + count))
        # a retirement still pending is cancelled before new workers are built
        reuse = min(self._retire, count)
        self._retire -= reuse
        count -= reuse
        if count <= 0:
            return
        self._loading += count
        results = await defer.DeferredList(
            [self.call_in_thread(self._build, next(self._indexes)) for _ in range(count)], consumeErrors=True)
        self._loading -= count
        errors = [result for ok, result in results if not ok]
        for ok, worker in results:
            if ok:
                self._release(worker)
        if errors:
            self._shrink(len(results) - len(errors))
            raise WorkerLoadError(errors[0].getErrorMessage())

    def _build(self, index):
        try:
            worker = self._make_worker(index)
        except Exception as exc:  # the user's __init__: reported in one line
            raise WorkerLoadError(describe_failure('building the worker', error_info(type(exc), exc, sys.exc_info()[2]))) from None
        try:
            worker.startup()
        except Exception as exc:  # the user's _load_model
            info = error_info(type(exc), exc, sys.exc_info()[2])
            # the file as an answer shows it: relative to the endpoints folder or its import root
            info = info[:1] + (shown_path(info[1], folder_of(type(worker))),) + info[2:]
            raise WorkerLoadError(describe_failure('_load_model', info)) from None
        return worker

    def _shrink(self, count):
        while count and self._idle:
            self._idle.pop()
            count -= 1
        self._retire += count

    # -- requests --------------------------------------------------------------------------
    async def run(self, inputs, request_id=None):
        """``(worker, call_id, outcome)``; raises ``QueueFull`` at once when every worker is
        busy and ``max_queue`` requests wait. Cancelling it drops the request if it has not
        started, and only abandons the answer if it has."""
        return await self._submit(inputs, request_id)

    async def run_stream(self, inputs, request_id=None):
        """``(worker, call_id, outcome)`` where ``outcome`` is a ``PooledStream`` to read the
        chunks from, or the error Answer of a call that did not start (``_pre_process``
        failed). The worker stays busy until the stream ended or ``close()`` finished."""
        return await self._submit(inputs, request_id, stream=True)

    def _submit(self, inputs, request_id, stream=False):
        if self._full():
            raise QueueFull('all {} workers are busy and {} requests are waiting (MAX_QUEUE); '
                            'retry later'.format(self.busy, len(self._waiting)))
        job = _Job(inputs, request_id, stream=stream)
        job.answer = defer.Deferred(canceller=lambda _d: self._cancelled(job))
        self._waiting.append(job)
        self._note_load()
        if not self._gathering:
            self._dispatch()
        return job.answer

    def _note_load(self):
        now = self._reactor.seconds()
        held = len(self._waiting) + self._running
        most, when = self._load
        if held >= most or now - when > LOAD_MEMORY:
            self._load = (held, now)
        began, count, before = self._arrivals
        if now - began >= LOAD_MEMORY:  # a new period: the one that ended (if just before) is the rate
            began, count, before = now, 0, count if now - began < 2 * LOAD_MEMORY else 0
        self._arrivals = (began, count + 1, before)

    def _batch_goal(self):
        """How many waiting requests a free worker may hold off for (see the module's docstring)."""
        if self._busy:
            return self.max_batch_size
        now = self._reactor.seconds()
        began, count, before = self._arrivals
        if now - began >= 2 * LOAD_MEMORY:
            return 1  # nothing arrived for a while
        rate = max(count, before if now - began < LOAD_MEMORY else 0) / LOAD_MEMORY
        if rate * self.batch_timeout < 1:
            return 1  # not one more is due before the timeout: nothing to wait for
        most, when = self._load
        return min(self.max_batch_size, most) if now - when <= LOAD_MEMORY else 1

    def _full(self):
        free = len(self._idle) + (self._holding is not None)
        if self._gathering:  # the free workers take up to a batch each of what waits, at its end
            return len(self._waiting) >= self.max_queue + free * self.max_batch_size
        return not free and len(self._waiting) + self._following >= self.max_queue

    def gathered(self):
        """A context: requests submitted inside start together at its end (nothing starts before)."""
        return self._gathered

    def _gather(self):
        self._gathering += 1

    def _gathered_end(self):
        self._gathering -= 1
        if not self._gathering:
            self._dispatch()

    def _cancelled(self, job):
        if job.follows is not None:  # behind a busy worker's call: dropped if its thread has not begun it
            if not self._take_back(job):
                return  # begun: it runs on, as below
        elif not job.begun:  # still waiting: it leaves the queue (and any batch being formed)
            self._waiting.remove(job)
        else:
            return  # it runs on: its worker is released when the hook returns, its answer dropped
        if not self._gathering:
            self._dispatch()
        self._check_idle()

    def _dispatch(self):
        """Start what can start now: a free worker takes up to ``max_batch_size`` waiting
        requests, or holds off for more when that is allowed (see the module's docstring)."""
        if self._holding is not None:
            worker, timer = self._holding
            if not self._waiting or len(self._waiting) >= self._batch_goal() or self._idle:
                timer.cancel()
                self._holding = None
                if self._waiting:
                    self._start(worker)
                else:
                    self._idle.appendleft(worker)
            else:
                return
        if self._followers and len(self._waiting) < len(self._idle):
            self._take_back_all()  # a free worker with nothing to take: followers need not wait for their call
        while self._waiting and self._idle:
            worker = self._idle.popleft()
            if self.batch_timeout > 0 and not self._idle and len(self._waiting) < self._batch_goal():
                self._holding = (worker, self._reactor.callLater(self.batch_timeout, self._held_enough))
                return
            self._start(worker)
        if self._waiting and self._follow is not None and not self._retire:
            self._queue_followers()

    def _next_call_id(self):
        self._last_call_id += 1
        return self._last_call_id

    def _queue_followers(self):
        """The waiting requests go behind the busy workers' calls, in turns (each worker one
        more per turn), up to ``FOLLOWERS`` each."""
        if self._watch is None:
            self._watch = self._reactor.callLater(FOLLOW_WAIT / 2, self._watch_long_calls)
        slow = self._slow
        for depth in range(1, FOLLOWERS + 1):
            for worker, handle in self._calls.items():
                if not self._waiting or self._waiting[0].stream:
                    return
                chain = self._followers.get(worker)
                if chain is not None and len(chain) >= depth or worker in slow:
                    continue  # full at this depth, or behind a call that runs long
                job = self._waiting[0]
                call_id = job.call_id if job.call_id is not None else self._last_call_id + 1  # kept once given
                done = self._inbox.sender(functools.partial(self._ran, worker, [job], True))
                follower = self._follow(chain[-1][1] if chain else handle, done, worker.execute, job.inputs,
                                        call_id, job.request_id)
                if follower is None:  # its call ended: the worker is released when its result comes
                    continue
                self._waiting.popleft()
                if job.call_id is None:
                    job.call_id = self._next_call_id()
                job.begun = True
                job.follows = worker
                if chain is None:
                    chain = self._followers[worker] = collections.deque()
                chain.append((job, follower))
                self._following += 1
                self._running += 1
                self.batch_sizes[1] += 1

    def _take_back(self, job):
        """``job``, out of the chain behind its worker's call as if it had never left the queue
        (it is not put back); False when that call's thread has begun it."""
        worker = job.follows
        chain = self._followers[worker]
        at = next(i for i, (each, _handle) in enumerate(chain) if each is job)
        before = chain[at - 1][1] if at else self._calls[worker]
        if not self._threadpool.unfollow(before, chain[at][1]):
            return False
        del chain[at]
        if not chain:
            del self._followers[worker]
        self._following -= 1
        job.follows = None
        job.begun = False  # its call id is kept: it is this request's, whichever worker runs it
        self._running -= 1
        self.batch_sizes[1] -= 1
        if not self.batch_sizes[1]:
            del self.batch_sizes[1]
        return True

    def _watch_long_calls(self):
        """Every ``FOLLOW_WAIT / 2`` seconds while requests follow: the workers whose call has
        run ``FOLLOW_WAIT`` seconds are ``_slow`` (no request is put behind them until that call
        ends), and what waits behind them goes back to the head of the queue, for the others."""
        self._watch = None
        if not self._followers:
            return
        since = time.monotonic() - FOLLOW_WAIT
        self._slow.update(worker for worker, handle in self._calls.items()
                          if 0 < handle.began < since and not handle.ended)
        self._take_back_all([worker for worker in self._followers if worker in self._slow])
        self._dispatch()
        if self._followers and self._watch is None:
            self._watch = self._reactor.callLater(FOLLOW_WAIT / 2, self._watch_long_calls)

    def _take_back_all(self, workers=None):
        """The followers no thread has begun (behind ``workers``' calls, or every worker's), back
        at the head of the queue in their order."""
        taken = []
        for worker in list(self._followers) if workers is None else workers:
            # from the end of each chain: its thread reaches the front first
            for job, _handle in reversed(list(self._followers.get(worker, ()))):
                if not self._take_back(job):
                    break
                taken.append(job)
        for job in sorted(taken, key=lambda job: job.call_id, reverse=True):
            self._waiting.appendleft(job)

    def _held_enough(self):
        worker, _timer = self._holding
        self._holding = None
        if self._waiting:
            self._start(worker)
        else:
            self._idle.appendleft(worker)
        self._dispatch()

    def _start(self, worker):
        size = 1 if self._waiting[0].stream else min(self.max_batch_size, len(self._waiting))
        jobs = [self._waiting.popleft() for _ in range(size)]
        for job in jobs:
            job.begun = True
            if job.call_id is None:
                job.call_id = self._next_call_id()
        self._busy.add(worker)
        self._running += len(jobs)
        self.batch_sizes[len(jobs)] += 1
        if jobs[0].stream:
            self._start_stream(worker, jobs[0])
            return
        # no Deferred on this path: the thread's result goes to _ran through the inbox
        single = self.max_batch_size == 1  # batching off: the hooks take one input, as they always did
        done = self._inbox.sender(functools.partial(self._ran, worker, jobs, single))
        if single:
            job = jobs[0]
            handle = self._threadpool.callInThreadWithCallback(done, worker.execute, job.inputs, job.call_id,
                                                               job.request_id)
            if self._follow is not None and handle is not None:
                self._calls[worker] = handle
        else:
            self._threadpool.callInThreadWithCallback(done, worker.execute_batch,
                                                      [(job.inputs, job.call_id, job.request_id) for job in jobs])

    def _ran(self, worker, jobs, single, ok, result):
        """On the reactor thread: what ``execute`` (one Answer, ``single``) or
        ``execute_batch`` (a list) returned, or the Failure (or the exception, from a fake
        pool) it raised."""
        if not ok:
            result = result if isinstance(result, Failure) else Failure(result)
        elif single:
            result = [result]
        self._slow.discard(worker)  # its call ended (a follower's, if any, is a new one)
        chain = self._followers.get(worker) if self._followers else None
        if not chain:
            self._calls.pop(worker, None)
            self._finished(result, worker, jobs)
            return
        # its thread went on to the first follower: the worker stays busy, with that call now
        job, self._calls[worker] = chain.popleft()
        if not chain:
            del self._followers[worker]
        self._following -= 1
        job.follows = None
        self._running -= len(jobs)
        self._answer(result, worker, jobs)
        self._dispatch()

    def call_in_thread(self, function, *args):
        """A Deferred of ``function(*args)`` run on the worker threads, fired on the reactor."""
        return defer_in_thread(self._threadpool, self._inbox, function, *args)

    def _start_stream(self, worker, job):
        started = self.call_in_thread(worker.execute_stream, job.inputs, job.call_id, job.request_id)

        def begun(outcome):
            if isinstance(outcome, Answer):  # it did not start: nothing runs any more
                return self._finished([outcome], worker, [job])
            stream = PooledStream(self, worker, outcome)
            if job.answer.called:  # its caller gave up while _pre_process ran
                stream.close()
            else:
                job.answer.callback((worker, job.call_id, stream))
            return None

        started.addCallbacks(begun, lambda failure: self._finished(failure, worker, [job]))

    def _stream_done(self, worker):
        self._running -= 1
        self._busy.discard(worker)
        self._release(worker)

    def _finished(self, outcomes, worker, jobs):
        # the worker goes back first, so the next batch starts before these answers are written
        self._running -= len(jobs)
        self._busy.discard(worker)
        self._release(worker)
        self._answer(outcomes, worker, jobs)
        return None

    def _answer(self, outcomes, worker, jobs):
        failed = isinstance(outcomes, Failure)
        for job, outcome in zip(jobs, [outcomes] * len(jobs) if failed else outcomes):
            if job.answer.called:  # its caller gave up (client gone, deadline): the result is dropped
                continue
            if failed:
                job.answer.errback(outcome)
            else:
                job.answer.callback((worker, job.call_id,
                                     attr.evolve(outcome, batch_size=len(jobs)) if len(jobs) > 1 else outcome))

    def _release(self, worker):
        if self._retire:
            self._retire -= 1
        else:
            self._idle.append(worker)
            self._dispatch()
        self._check_idle()

    def _check_idle(self):
        if not self._busy and not self._waiting and self._idle_waiters:
            self._idle_waiters.fire(None)

    def when_idle(self):
        """Fires when no request is running or waiting (at once if none is)."""
        if not self._busy and not self._waiting:
            return defer.succeed(None)
        return self._idle_waiters.wait()


class _Gathered:
    """``WorkerPool.gathered()``'s context (it nests)."""

    def __init__(self, pool):
        self._pool = pool

    def __enter__(self):
        self._pool._gather()

    def __exit__(self, *exc_info):
        self._pool._gathered_end()
        return False


class PooledStream:
    """The chunks of a streaming call, read on the reactor: ``next()`` fires with an Answer
    (a chunk, or an error that ends the stream) or None at the end; ``close()`` stops the
    user's generator. Either way the worker goes back to the pool once the stream is over
    and no thread of its runs any more. Cancelling ``next()`` abandons the wait only: the
    chunk being made is dropped when ``close()`` follows."""

    def __init__(self, pool, worker, chunks):
        self._pool = pool
        self.worker = worker
        self._chunks = chunks
        self._running = None
        self._released = False

    @property
    def count(self):
        return self._chunks.count

    def next(self):
        running = self._pool.call_in_thread(self._chunks.next_chunk)
        self._running = running
        answer = defer.Deferred()

        def made(result):
            self._running = None
            if self._chunks.finished and not isinstance(result, Failure):
                self._release()
            if not answer.called:
                answer.callback(result) if not isinstance(result, Failure) else answer.errback(result)
            elif isinstance(result, Failure):
                self._pool._log.failure('making a chunk after its caller left', result)
            return None

        running.addBoth(made)
        return answer

    def close(self):
        """Stop the generator (after the chunk being made, if one is) and free the worker."""
        if self._released:
            return defer.succeed(None)
        after = self._running if self._running is not None else defer.succeed(None)
        done = defer.Deferred()

        def stop(_ignored):
            closing = self._pool.call_in_thread(self._chunks.close)
            closing.addErrback(lambda failure: self._pool._log.failure('closing a stream', failure))
            closing.addBoth(lambda _r: (self._release(), done.callback(None)))
            return None

        after.addBoth(stop)
        return done

    def _release(self):
        if not self._released:
            self._released = True
            self._pool._stream_done(self.worker)


@attr.s(eq=False)
class _Job:
    """One request in the pool: waiting until ``begun``, running after (or waiting behind the
    call of the worker it ``follows``, in that call's thread)."""

    inputs = attr.ib()
    request_id = attr.ib()
    stream = attr.ib(default=False)
    answer = attr.ib(default=None)
    call_id = attr.ib(default=None)
    begun = attr.ib(default=False)
    follows = attr.ib(default=None)  # the busy worker whose call it waits behind, in that call's thread
