"""``StallWatch``: evidence of what holds a process's reactor up, measured as it serves.

Two measures, both cheap enough to run always:

- **reactor lag**: a timer asks to run every ``interval`` seconds and records how late it
  ran (a callback or a collection that kept the reactor busy delays every timer and every
  read behind it);
- **garbage-collector pauses**: ``gc.callbacks`` times each collection, by generation (a full
  collection over a large heap is the classic cause of a tail-latency stall).

Both keep cumulative bucket counts, a sum and the largest value since start: the gateway
exports them on ``/metrics``, a model server in its ``/health``.
"""

import gc
import time
from typing import Any, Dict, Optional, Sequence

from twisted.application.service import Service

STALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Spread:
    """Cumulative counts of observed values per upper bound, their sum, count and maximum."""

    def __init__(self, bounds: Sequence[float] = STALL_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)  # values <= bound, per bound (cumulative)
        self.count = 0
        self.total = 0.0
        self.largest = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value > self.largest:
            self.largest = value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1

    def summary(self) -> Dict[str, Any]:
        over = {'>{:g}ms'.format(b * 1000): self.count - n for b, n in zip(self.bounds, self.counts)
                if b in (0.005, 0.05)}
        return dict({'COUNT': self.count, 'MAX_MS': round(self.largest * 1000, 2),
                     'TOTAL_MS': round(self.total * 1000, 1)}, **over)


class StallWatch(Service):
    """Reactor lag and collection pauses of this process (see the module's docstring)."""

    def __init__(self, reactor: Any = None, interval: float = 0.1, timer: Any = time.perf_counter) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.interval = interval
        self._timer = timer
        self.lag = Spread()
        self.gc_pauses: Dict[int, Spread] = {}
        self._call: Any = None
        self._due = 0.0
        self._gc_started: Optional[float] = None

    def startService(self) -> None:
        Service.startService(self)
        self._schedule()
        gc.callbacks.append(self._collection)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._collection in gc.callbacks:
            gc.callbacks.remove(self._collection)

    def _schedule(self) -> None:
        self._due = self._reactor.seconds() + self.interval
        self._call = self._reactor.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self.lag.observe(max(0.0, self._reactor.seconds() - self._due))
        self._schedule()

    def _collection(self, phase: str, info: Dict[str, Any]) -> None:
        # called by the interpreter around each collection, in the thread that triggered it
        if phase == 'start':
            self._gc_started = self._timer()
        elif self._gc_started is not None:
            spread = self.gc_pauses.get(info.get('generation', -1))
            if spread is None:
                spread = self.gc_pauses[info.get('generation', -1)] = Spread()
            spread.observe(self._timer() - self._gc_started)
            self._gc_started = None

    def summary(self) -> Dict[str, Any]:
        """What a model server's ``/health`` carries: ``REACTOR_LAG`` and ``GC_PAUSES`` by
        generation, each with ``COUNT``, ``MAX_MS``, ``TOTAL_MS`` and how many were over 5 and
        50 ms."""
        return {'REACTOR_LAG': self.lag.summary(),
                'GC_PAUSES': {str(g): s.summary() for g, s in sorted(self.gc_pauses.items())}}
