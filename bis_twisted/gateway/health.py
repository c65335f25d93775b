"""``HealthMonitor``: the one loop that watches every model server, always on.

Every ``HEALTH_INTERVAL`` (per endpoint, default 1 s) each spawned child that said it is ready
is asked for ``/health``. A ping is never waited for by the loop: one still unanswered at the
next beat counts as a miss, as does a refused or broken one, and ``misses_allowed`` misses in
a row (a deadlocked or SIGSTOP-ed process, a C call holding the GIL) replace the child at once
(SIGKILL). So a hung child is replaced ``misses_allowed`` beats after it stopped answering
(3 s by default), and a child whose workers are all busy is not: its reactor still answers.
A child still loading is not asked: its ``LOAD_TIMEOUT`` bounds that (the supervisor's timer).
With ``MAX_RSS_MB``, the child's resident memory is sampled on the same beat; over the limit on
``rss_samples_over`` samples in a row, it is recycled (``Operations.recycle``) as a reload does
it: a new process starts on the replica's other slot (its spare port), takes the new requests
once ready, and the old one answers what it has and stops, one replica of an endpoint at a
time and never during a reload. Remote servers (``URLS``) are pinged too: out of the rotation
while they do not answer.
"""

import psutil
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger

from .config import DEFAULT_HEALTH_INTERVAL

MB = 1024 * 1024


class HealthMonitor(TimerService):
    misses_allowed = 3
    rss_samples_over = 2
    ping_timeout = 2.0

    _log = Logger()

    def __init__(self, topology, supervisor, probe, operations, reactor=None, rss_of=None):
        """Watches ``topology``'s targets: children through ``supervisor`` (their state, and
        a restart of a hung one), every one through ``probe`` (``/health``); recycles through
        ``operations``."""
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._topology = topology
        self._supervisor = supervisor
        self._probe = probe
        self._operations = operations
        intervals = [s.config.health_interval for s in topology.servers.values()] or [DEFAULT_HEALTH_INTERVAL]
        self.tick_interval = min(intervals)
        TimerService.__init__(self, self.tick_interval, self.tick)
        self.clock = reactor  # TimerService's LoopingCall uses it: a Clock in tests
        self._rss_of = rss_of or _rss_of_pid
        self.misses = {}       # child name -> consecutive failed pings
        self.over = {}         # child name -> consecutive RSS samples over MAX_RSS_MB
        self._next_due = {}    # target -> time of its next ping
        self._pinging = {}     # target -> pid (or None, remote) its ping in flight was sent to
        self.rounds = 0

    def tick(self):
        # LoopingCall stops for good on an error: nothing may escape from here
        self.rounds += 1
        try:
            self.check_all()
        except Exception:
            self._log.failure('health round failed')

    def check_all(self):
        now = self._reactor.seconds()
        for server in self._topology.servers.values():
            interval = server.config.health_interval
            for target in server.targets:
                if self._next_due.get(target, 0.0) <= now + 1e-9:
                    self._next_due[target] = now + interval
                    if target.child_name is None:
                        self._check_remote(target)
                    else:
                        self._check_child(target)

    def _check_remote(self, target):
        if target in self._pinging:
            return  # its ping has a timeout of its own
        self._pinging[target] = None
        ping = defer.Deferred.fromCoroutine(self._probe.ping(
            target, min(self.ping_timeout, target.server.config.health_interval)))

        def answered(health):
            ok = health is not None
            if ok != target.remote_ok:
                self._log.info('remote server {url} of {name} is {state}', url=target.base_url,
                               name=target.server.name, state='back online' if ok else 'offline')
            target.remote_ok = ok

        ping.addCallback(answered)
        ping.addErrback(lambda f: self._log.failure('pinging {url}', f, url=target.base_url))
        ping.addBoth(lambda _: self._pinging.pop(target, None))  # the next beat pings it again

    def _check_child(self, target):
        name = target.child_name
        status = self._supervisor.status(name)
        if not (status.running and status.ready) or status.stopping:
            self.misses.pop(name, None)
            self.over.pop(name, None)
            return
        if target in self._pinging:  # the last ping is still unanswered a beat later
            self._missed(target, status.pid)
            return
        interval = target.server.config.health_interval
        self._pinging[target] = status.pid
        # its own timeout only bounds the connection: the beats count the misses
        ping = self._probe.health(target, interval * (self.misses_allowed + 1))

        def answered(_result):
            if self._pinging.pop(target, None) == status.pid and self._same(name, status.pid):
                self.misses.pop(name, None)
                self._check_memory(target, self._supervisor.status(name))

        def failed(failure):
            if self._pinging.pop(target, None) != status.pid or not self._same(name, status.pid):
                return  # a process that is gone by now
            if not failure.check(defer.TimeoutError, defer.CancelledError):  # refused, reset, broken
                self._missed(target, status.pid)

        ping.addCallbacks(answered, failed)
        ping.addErrback(lambda f: self._log.failure('health check of {name}', f, name=name))

    def _same(self, name, pid):
        status = self._supervisor.status(name)
        return status.running and status.ready and not status.stopping and status.pid == pid

    def _missed(self, target, pid):
        name = target.child_name
        if not self._same(name, pid):
            return
        self.misses[name] = self.misses.get(name, 0) + 1
        if self.misses[name] >= self.misses_allowed:
            self.misses.pop(name)
            interval = target.server.config.health_interval
            self._supervisor.restart_child(name, 'did not answer {} health checks in a row ({:g}s apart); '
                                                 'replaced'.format(self.misses_allowed, interval))

    # -- memory recycling ------------------------------------------------------------------------
    def _check_memory(self, target, status):
        limit = target.server.config.max_rss_mb
        name = target.child_name
        if not limit or status.pid is None:
            return
        rss = self._rss_of(status.pid)
        if rss is None or rss <= limit * MB:
            self.over.pop(name, None)
            return
        self.over[name] = self.over.get(name, 0) + 1
        server = target.server
        if self.over[name] < self.rss_samples_over or self._operations.busy(server.name):
            return  # one replacement of an endpoint's processes at a time: sampled again next beat
        self.over.pop(name, None)
        reason = 'RSS {:.0f} MB over MAX_RSS_MB {:g}'.format(rss / MB, limit)
        # a new process beside it (the replica's other slot), as /reload_server starts one:
        # no request waits, lone or not; for a while both processes hold memory
        d = defer.Deferred.fromCoroutine(self._operations.recycle(server, target, reason))
        d.addErrback(lambda f: self._log.failure('recycling {name}', f, name=name))


def _rss_of_pid(pid):
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None
