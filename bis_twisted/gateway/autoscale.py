"""``Autoscaler``: the replica count of endpoints with ``MAX_REPLICAS`` and ``TARGET_IN_FLIGHT``.

Once a second (a ``TimerService`` on the injected clock) it takes, per such endpoint, the
requests in flight per ready replica. Above ``TARGET_IN_FLIGHT`` on every sample for
``UPSCALE_DELAY`` seconds: one replica more (the next reserved replica's process starts; no
second one while one is loading), up to ``MAX_REPLICAS``. Below half of it for ``DOWNSCALE_DELAY``: one
fewer (the last one leaves the rotation, answers what it has, stops), never below
``MIN_REPLICAS`` or 1. Each decision is logged and counted (``decisions``, in ``/metrics``).
"""

import collections

from twisted.application.internet import TimerService
from twisted.logger import Logger


class Autoscaler(TimerService):
    interval = 1.0

    _log = Logger()

    def __init__(self, topology, router, operations, reactor=None):
        """Scales ``topology``'s autoscaled servers through ``operations``, by the load of
        the targets ``router`` says are ready."""
        if reactor is None:
            from twisted.internet import reactor
        TimerService.__init__(self, self.interval, self.tick)
        self.clock = reactor  # TimerService's LoopingCall uses it: a Clock in tests
        self._topology = topology
        self._router = router
        self._operations = operations
        self._above = {}  # server name -> since when it has been over the target
        self._below = {}  # server name -> since when it has been under half the target
        self.decisions = collections.Counter()  # (server name, 'up' | 'down') -> how many

    def tick(self):
        # LoopingCall stops for good on an error: nothing may escape from here
        try:
            self.check_all()
        except Exception:
            self._log.failure('autoscaling round failed')

    def check_all(self):
        now = self.clock.seconds()
        for server in list(self._topology.servers.values()):
            if server.config.autoscaled:
                self.check(server, now)

    def check(self, server, now):
        name, config = server.name, server.config
        active = [t for t in server.targets if t.active]
        ready = [t for t in active if self._router.target_ready(t)]
        if not ready or self._topology.is_stopped(server) or self._operations.busy(name):
            self._above.pop(name, None)
            self._below.pop(name, None)
            return
        load = sum(t.in_flight for t in ready) / len(ready)
        low = max(1, config.min_replicas or 1)
        if load > config.target_in_flight and len(active) < config.max_replicas and len(ready) == len(active):
            self._below.pop(name, None)
            since = self._above.setdefault(name, now)
            if now - since >= config.upscale_delay:
                self._above.pop(name)
                if self._operations.scale_up(server):
                    self._decided(server, 'up', load, len(active) + 1)
        elif load < config.target_in_flight / 2 and len(active) > low:
            self._above.pop(name, None)
            since = self._below.setdefault(name, now)
            if now - since >= config.downscale_delay:
                self._below.pop(name)
                if self._operations.scale_down(server) is not None:
                    self._decided(server, 'down', load, len(active) - 1)
        else:
            self._above.pop(name, None)
            self._below.pop(name, None)

    def _decided(self, server, direction, load, count):
        self.decisions[(server.name, direction)] += 1
        self._log.info('autoscaling {name}: {direction} to {count} replicas ({load:.2f} requests in flight per '
                       'ready replica, TARGET_IN_FLIGHT {target:g})', name=server.name, direction=direction,
                       count=count, load=load, target=server.config.target_in_flight)
