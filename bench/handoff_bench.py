#!/usr/bin/env python3
"""The cost of handing a call to a worker thread and its result back, under a real reactor:

    python bench/handoff_bench.py                  # 20000 round trips, 2 and 16 in flight
    python bench/handoff_bench.py --calls 50000 --depth 2

Five ways, each keeping ``depth`` calls of a trivial function in flight (a finished call
starts the next, as a freed worker takes the next request), run one after the other in an
order that turns each round; each cell is the median of the rounds:

- ``twisted``: ``deferToThreadPool`` on Twisted's ``ThreadPool`` (what the pool used before);
- ``twisted + inbox``: Twisted's ``ThreadPool``, results back through ``ResultInbox``;
- ``concurrent.futures + inbox``: the standard library's ``ThreadPoolExecutor`` (a
  ``SimpleQueue`` too, a ``Future`` per call), results back through ``ResultInbox``;
- ``simplequeue``: ``WorkerThreads``, results back by one ``callFromThread`` each;
- ``simplequeue + inbox``: ``WorkerThreads`` and ``ResultInbox`` (what the pool uses now).

Columns: microseconds of CPU per round trip on the reactor thread (``time.thread_time``
there) and in the whole process (``time.process_time``: the threads too), wall time per
round trip, and wake-ups asked per round trip. A calibration line (a fixed pure-Python
loop's time) comes first, to tell a slow machine from a slow change, then the wall time of
one ``SimpleQueue.put`` that wakes a waiting thread (what no hand-off avoids).
"""

import argparse
import concurrent.futures
import os
import queue
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.threads import deferToThreadPool  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402

from bis_twisted.model_server.threads import ResultInbox, WorkerThreads, defer_in_thread, fire  # noqa: E402
from peer_bench import calibration  # noqa: E402  (the one calibration loop of the bench scripts)




def put_wake_cost(count=20000):
    """Microseconds of wall time of one ``SimpleQueue.put`` that wakes a thread waiting in
    ``get``: the floor of any hand-off to a sleeping thread (a futex wake, with the GIL held)."""
    tasks, back = queue.SimpleQueue(), queue.SimpleQueue()

    def echo():
        for item in iter(tasks.get, None):
            back.put(item)

    threading.Thread(target=echo, daemon=True).start()
    spent = 0.0
    for n in range(count):
        time.sleep(0)  # lets the thread go back to waiting
        started = time.perf_counter()
        tasks.put(n)
        spent += time.perf_counter() - started
        back.get()
    tasks.put(None)
    return spent / count * 1e6


def work(value):
    return value


class Counted:
    """Counts ``callFromThread`` calls a way makes, beside the reactor's own."""

    def __init__(self):
        self.wakeups = 0

    def callFromThread(self, f, *args):
        self.wakeups += 1
        reactor.callFromThread(f, *args)


def ways(depth):
    """``{name: (start, call, stop, wakeups)}``: each way's thread pool and how a call goes."""
    built = {}

    def twisted_way(inboxed):
        pool = ThreadPool(minthreads=0, maxthreads=depth, name='bench')
        counted = Counted()
        inbox = ResultInbox(counted)

        def call(function, *args):
            if not inboxed:
                return deferToThreadPool(counted, pool, function, *args)
            answer = defer.Deferred()
            pool.callInThreadWithCallback(inbox.sender(lambda ok, result: fire(answer, ok, result)), function, *args)
            return answer

        return pool.start, call, pool.stop, lambda: counted.wakeups

    def simplequeue_way(inboxed):
        threads = WorkerThreads(name='bench')
        counted = Counted()
        inbox = ResultInbox(counted)

        def call(function, *args):
            if inboxed:
                return defer_in_thread(threads, inbox, function, *args)
            answer = defer.Deferred()

            def on_result(ok, result):
                counted.callFromThread(fire, answer, ok, result)

            threads.callInThreadWithCallback(on_result, function, *args)
            return answer

        return threads.start, call, threads.stop, lambda: counted.wakeups

    def futures_way():
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=depth, thread_name_prefix='bench')
        counted = Counted()
        inbox = ResultInbox(counted)

        def call(function, *args):
            answer = defer.Deferred()

            def done(future):
                error = future.exception()
                inbox.put(lambda ok, result: fire(answer, ok, result), error is None,
                          future.result() if error is None else error)

            executor.submit(function, *args).add_done_callback(done)
            return answer

        return lambda: None, call, lambda: executor.shutdown(wait=False), lambda: counted.wakeups

    built['twisted'] = twisted_way(False)
    built['twisted + inbox'] = twisted_way(True)
    built['concurrent.futures + inbox'] = futures_way()
    built['simplequeue'] = simplequeue_way(False)
    built['simplequeue + inbox'] = simplequeue_way(True)
    return built


def run_one(way, calls, depth):
    """``(reactor-thread CPU us, process CPU us, wall us, wake-ups)`` per round trip."""
    start, call, stop, wakeups = way
    start()
    done = defer.Deferred()
    state = {'started': 0, 'finished': 0}

    def launch():
        state['started'] += 1
        call(work, state['started']).addCallback(finished)

    def finished(_result):
        state['finished'] += 1
        if state['started'] < calls:
            launch()
        elif state['finished'] == calls:
            done.callback(None)

    woken = wakeups()
    thread0, process0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
    for _ in range(depth):
        launch()

    def measured(_):
        thread1, process1, wall1 = time.thread_time(), time.process_time(), time.perf_counter()
        stop()
        return ((thread1 - thread0) / calls * 1e6, (process1 - process0) / calls * 1e6,
                (wall1 - wall0) / calls * 1e6, (wakeups() - woken) / calls)

    return done.addCallback(measured)


async def main(args):
    print('calibration: {:.0f} ms for a fixed pure-Python loop (lower is a faster machine now)'.format(calibration()))
    print('a put that wakes a waiting thread: {:.1f} us'.format(put_wake_cost()))
    for depth in args.depth:
        rows = {}
        for round_ in range(args.rounds):
            built = ways(depth)
            names = list(built)
            names = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in names:
                rows.setdefault(name, []).append(await run_one(built[name], args.calls, depth))
        print('\n{} calls, {} in flight, median of {} rounds'.format(args.calls, depth, args.rounds))
        print('{:<28}{:>14}{:>14}{:>12}{:>14}'.format('way', 'reactor us', 'process us', 'wall us',
                                                     'wake-ups/call'))
        for name, cells in rows.items():
            medians = [statistics.median(cell[i] for cell in cells) for i in range(4)]
            print('{:<28}{:>14.1f}{:>14.1f}{:>12.1f}{:>14.2f}'.format(name, *medians))


def run():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--calls', type=int, default=20000)
    parser.add_argument('--depth', type=int, nargs='+', default=[2, 16])
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args()
    failures = []

    def go():
        finished = defer.ensureDeferred(main(args))
        finished.addErrback(failures.append)
        finished.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if failures:
        failures[0].raiseException()


if __name__ == '__main__':
    run()
