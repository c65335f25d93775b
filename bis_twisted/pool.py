"""``WorkerPool``: a server's worker instances, the queue in front of them and their threads.

Each request goes to an idle worker and runs in a pool thread (``deferToThreadPool``), so a
blocking ``_predict`` never blocks the reactor, and an instance is used by one thread at a
time. When every worker is busy, requests wait in a FIFO queue of at most ``max_queue``;
beyond that ``QueueFull`` (503). A worker is released only when its thread has returned, even
if the caller gave up (client gone, timeout): a late result is dropped, never overlapped.
"""

import collections
import functools
import itertools
import sys
import threading

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from .errors import BadRequest, QueueFull
from .logger import describe_failure, error_info


class WorkerLoadError(Exception):
    """A worker could not be built or its ``_load_model`` failed; the message is one line."""


class _DaemonThreadPool(ThreadPool):
    # Daemon threads: a _predict that never returns must not keep the process alive once the
    # server decided to exit (parent gone, stop timeout). Twisted's default threads would.
    threadFactory = functools.partial(threading.Thread, daemon=True)


class WorkerPool:
    """``size`` workers made by ``make_worker(index)``; ``run(inputs)`` answers
    ``(worker, call_id, outcome)``."""

    _log = Logger()

    def __init__(self, make_worker, size, max_queue, reactor=None, threadpool=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._make_worker = make_worker
        self._target = size
        self.max_queue = max_queue
        self._threadpool = threadpool or _DaemonThreadPool(minthreads=0, maxthreads=max(size, 1),
                                                           name='bis-workers')
        self._idle = collections.deque()
        self._busy = set()
        self._waiting = collections.deque()
        self._retire = 0
        self._loading = 0
        self._indexes = itertools.count()
        self._call_ids = itertools.count(1)
        self._resize_lock = defer.DeferredLock()
        self._idle_waiters = []

    # -- numbers shown in status ------------------------------------------------------------
    @property
    def size(self):
        """Workers serving or about to (loading), less those marked for retirement."""
        return len(self._idle) + len(self._busy) + self._loading - self._retire

    @property
    def busy(self):
        return len(self._busy)

    @property
    def queued(self):
        return len(self._waiting)

    # -- life cycle ----------------------------------------------------------------------------
    async def start(self):
        if not self._threadpool.started:
            self._threadpool.start()
        await self._grow(self._target)

    def stop(self):
        """Drop idle workers and refuse queued requests; threads still running a hook are
        daemons and are not waited for."""
        while self._waiting:
            self._waiting.popleft().errback(QueueFull('server is stopping'))
        self._idle.clear()
        if not self._busy:
            self._threadpool.stop()

    async def resize(self, size):
        """Grow or shrink to ``size`` workers; requests in flight finish on the worker they
        have, and retired workers leave when they are released."""
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise BadRequest('NR_WORKERS must be an integer >= 1, got {!r}'.format(size))
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
            [deferToThreadPool(self._reactor, self._threadpool, self._build, next(self._indexes))
             for _ in range(count)], consumeErrors=True)
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
            raise WorkerLoadError(describe_failure('_load_model', error_info(type(exc), exc, sys.exc_info()[2]))) from None
        return worker

    def _shrink(self, count):
        while count and self._idle:
            self._idle.pop()
            count -= 1
        self._retire += count

    # -- requests --------------------------------------------------------------------------
    async def run(self, inputs, request_id=None):
        worker = await self._acquire()
        call_id = next(self._call_ids)
        outcome = await self._execute(worker, inputs, call_id, request_id)
        return worker, call_id, outcome

    def _acquire(self):
        if self._idle:
            worker = self._idle.popleft()
            self._busy.add(worker)
            return defer.succeed(worker)
        if len(self._waiting) >= self.max_queue:
            raise QueueFull('all {} workers are busy and {} requests are waiting (MAX_QUEUE); '
                            'retry later'.format(self.busy, len(self._waiting)))
        waiter = defer.Deferred(canceller=self._waiting.remove)
        self._waiting.append(waiter)
        return waiter

    def _execute(self, worker, inputs, call_id, request_id=None):
        # `answer` is what the caller awaits; cancelling it (client gone, deadline) must not
        # release the worker while its thread still runs, so the thread's own Deferred is
        # kept apart and releases the worker when the hook returns.
        answer = defer.Deferred()
        running = deferToThreadPool(self._reactor, self._threadpool, worker.execute, inputs, call_id, request_id)
        running.addBoth(self._released, worker)
        running.chainDeferred(answer)
        return answer

    def _released(self, result, worker):
        self._busy.discard(worker)
        self._release(worker)
        return result

    def _release(self, worker):
        if self._retire:
            self._retire -= 1
        elif self._waiting:
            self._busy.add(worker)
            self._waiting.popleft().callback(worker)
        else:
            self._idle.append(worker)
            if not self._busy:
                waiters, self._idle_waiters = self._idle_waiters, []
                for d in waiters:
                    d.callback(None)

    def when_idle(self):
        """Fires when no request is running or waiting (at once if none is)."""
        if not self._busy and not self._waiting:
            return defer.succeed(None)
        d = defer.Deferred(canceller=lambda d: self._idle_waiters.remove(d))
        self._idle_waiters.append(d)
        return d

