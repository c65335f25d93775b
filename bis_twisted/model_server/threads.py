"""The workers' threads and the way their results come back to the reactor.

``WorkerThreads`` runs calls on daemon threads fed by one ``queue.SimpleQueue`` (a C queue:
one ``put`` on the reactor thread, one ``get`` in the thread). It answers the part of
Twisted's ``ThreadPool`` the worker pool uses (``start``, ``stop``, ``started``, ``max``,
``adjustPoolsize``, ``callInThreadWithCallback``), so a test may hand the pool a fake of that
shape instead. Twisted's pool coordinates its threads through a ``Team`` of ``LockWorker``s
on every call; here a thread that is about to wait leaves a token in a second
``SimpleQueue``, and a call takes a token or starts a thread: a call never waits behind a
running one, and a thread inside a ``_predict`` that never returns only costs that thread.

``follow(handle, ...)`` puts a call behind the one a thread runs: that thread goes on to it
without waiting for a task, so under load a worker's next request costs no wake-up of its
thread (a ``SimpleQueue.put`` that wakes a sleeping thread is a few microseconds of the
reactor's). ``unfollow`` takes it back while the thread has not begun it; both decide under
one lock, so a follower runs exactly when ``unfollow`` did not take it back.

``ResultInbox`` brings results back: a thread appends its result to a deque and asks the
reactor for a drain (``callFromThread``, one pipe write) only when none is pending or
running, so one wake-up carries every result that finished while the reactor was busy,
those that finish while the drain delivers too. The drain clears the flag *before* its last
look at the deque, and a thread appends *before* it reads the flag: a result appended after
that look finds the flag cleared and asks again, so none is left behind (the GIL makes each
append, pop and flag access whole, and keeps their order as each thread wrote it).

``defer_in_thread(threads, inbox, function, *args)`` ties the two: a Deferred fired on the
reactor thread with what ``function`` returned or raised in a thread.
"""

import collections
import functools
import queue
import threading
import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()


class ResultInbox:
    """Results made in threads, handed to ``deliver(ok, result)`` callables on the reactor
    thread, in the order they were put, with one ``callFromThread`` per batch of them."""

    _log = Logger()

    def __init__(self, reactor):
        self._reactor = reactor
        self._results = collections.deque()
        self._drain_asked = False
        self.drains = 0  # wake-ups asked for, for tests and benches (threads racing may lose a count)

    def put(self, deliver, ok, result):
        """From any thread: ``deliver(ok, result)`` runs on the reactor thread soon."""
        self._results.append((deliver, ok, result))
        if not self._drain_asked:
            self._drain_asked = True
            self.drains += 1
            self._reactor.callFromThread(self._drain)

    def sender(self, deliver):
        """An ``onResult(ok, result)`` for ``callInThreadWithCallback`` that puts here."""
        return functools.partial(self.put, deliver)

    def _drain(self):
        results = self._results
        while True:
            # while the flag is set, a result put lands in this loop: its thread asks nothing
            while results:
                deliver, ok, result = results.popleft()
                try:
                    deliver(ok, result)
                except Exception:  # one result's consumer failing must not strand the others
                    self._log.failure('delivering a result from a worker thread')
            self._drain_asked = False  # before the last look: a result put from now on asks again
            if not results:
                return
            # put between the last pop and the flag: delivered now (a drain its thread may
            # have asked for finds nothing left, or what came after)


def fire(deferred, ok, result):
    """``deliver`` for a Deferred: its callback with ``result``, or its errback with it (a
    Failure, or an exception a fake thread pool handed over as it was)."""
    if ok:
        deferred.callback(result)
    else:
        deferred.errback(result if isinstance(result, Failure) else Failure(result))


def defer_in_thread(threadpool, inbox, function, *args):
    """A Deferred of ``function(*args)`` run on ``threadpool`` (a ``WorkerThreads``, or
    anything with ``callInThreadWithCallback``), fired on the reactor thread by ``inbox``."""
    answer = defer.Deferred()
    threadpool.callInThreadWithCallback(inbox.sender(functools.partial(fire, answer)), function, *args)
    return answer


class WorkerThreads:
    """Daemon threads running calls from one queue; see the module's docstring.

    Daemon threads, because a ``_predict`` that never returns must not keep the process
    alive once the server decided to exit. ``stop`` lets each thread leave after its call;
    calls made after it are dropped, as Twisted's ``ThreadPool`` drops them once stopped."""

    def __init__(self, name='bis-workers'):
        self.name = name
        self.started = False
        self.max = 0  # kept for the pool's adjustPoolsize; a call never waits for a thread
        self._tasks = queue.SimpleQueue()
        self._idle = queue.SimpleQueue()  # a token per thread about to wait for a task
        self._threads = []
        self._count = 0
        self._chain = threading.Lock()  # a call's follower: set by the reactor, taken by its thread

    @property
    def threads(self):
        """Threads started and not told to stop."""
        return len(self._threads)

    def start(self):
        self.started = True

    def adjustPoolsize(self, minthreads=None, maxthreads=None):
        # Threads start when a call finds none idle; a pool's calls are at most one per
        # worker (plus builds while it grows), so they never outnumber what runs at once.
        if maxthreads is not None:
            self.max = maxthreads

    def stop(self):
        """Each thread leaves once its call (if any) returned; nothing waits for them."""
        self.started = False
        tasks, threads = self._tasks, self._threads
        self._tasks, self._idle, self._threads = queue.SimpleQueue(), queue.SimpleQueue(), []
        for _thread in threads:
            tasks.put(None)

    def callInThreadWithCallback(self, on_result, function, *args, **kwargs):
        """Run ``function(*args, **kwargs)`` in a thread, then ``on_result(ok, result)`` in
        that thread (``result`` a Failure when it raised). Returns the call's handle, for
        ``follow``."""
        if not self.started:
            return None
        try:
            self._idle.get_nowait()
        except queue.Empty:
            self._start_thread()
        task = _Task(on_result, function, args, kwargs)
        self._tasks.put(task)
        return task

    def follow(self, handle, on_result, function, *args, **kwargs):
        """Run ``function`` in the thread that runs the call ``handle``, right after it, as
        ``callInThreadWithCallback`` would: that thread goes on to it without waiting for a
        task, so nothing wakes it. Returns the new call's handle, or None when the call has
        ended already or has a follower (then call ``callInThreadWithCallback``)."""
        task = _Task(on_result, function, args, kwargs)
        with self._chain:
            if handle is None or handle.ended or handle.next is not None:
                return None
            handle.next = task
        return task

    def unfollow(self, handle, follower):
        """Take ``follower`` back from behind ``handle`` if its thread has not gone on to it
        (what followed it follows ``handle`` now): True when it will not run."""
        with self._chain:
            if handle.next is follower and not handle.ended:
                handle.next, follower.next = follower.next, None
                return True
        return False

    def _start_thread(self):
        self._count += 1
        thread = threading.Thread(target=_serve, args=(self._tasks, self._idle, self._chain),
                                  name='{}-{}'.format(self.name, self._count), daemon=True)
        self._threads.append(thread)
        thread.start()


class _Task:
    """A call for a thread, and the call ``follow`` put behind it."""

    __slots__ = ('on_result', 'function', 'args', 'kwargs', 'next', 'ended', 'began')

    def __init__(self, on_result, function, args, kwargs):
        self.on_result, self.function, self.args, self.kwargs = on_result, function, args, kwargs
        self.next = None
        self.ended = False
        self.began = 0.0  # time.monotonic() when its thread began it (0: not yet)


def _serve(tasks, idle, chain):
    """A thread's loop: run the next task, say it is idle unless a follower waits, hand the
    result over, go on to the follower or wait for the next task. Its first task is the one it
    was started for, so its first wait leaves no token; every later token is followed by a
    wait with no hook in between."""
    while True:
        task = tasks.get()
        if task is None:
            return
        while task is not None:
            task.began = time.monotonic()
            try:
                result = task.function(*task.args, **task.kwargs)
            except BaseException:
                result = Failure()
                ok = False
            else:
                ok = True
            with chain:  # from here on no follower is taken, nor taken back
                task.ended = True
                follower = task.next
            on_result = task.on_result
            # drop the call's objects before waiting: they are not kept alive while the thread idles
            task.function = task.args = task.kwargs = task.on_result = task.next = None
            task = follower
            if follower is None:
                # idle before the result is handed over: the call the result lets the reactor
                # make next finds this thread's token instead of starting another thread
                idle.put(None)
            try:
                on_result(ok, result)
            except BaseException:  # the thread must live on: its token says it is about to wait
                _log.failure('handing a result over to the reactor')
            on_result = result = follower = None
