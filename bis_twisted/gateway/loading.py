"""``LoadProgress``: what the gateway says while model servers load.

A line when a child's load starts (the supervisor spawned it), one every
``progress_interval`` seconds while it goes on (elapsed time and the child's resident
memory), and one when it ends (ready, or exited before it was). ``loading()`` is what
``/health`` shows under ``LOADING``; ``waiting_for`` names the ``DEFAULT_SERVER`` the gateway
waits for before it says it serves (``/health`` answers ``"STATUS": "starting"`` meanwhile).

It hears the supervisor's events (``Supervisor.listeners``: ``started``, ``ready``,
``exited``) from its construction until it is stopped, and keeps one ``LoopingCall`` per
loading child, on the injected clock.
"""

import attr
import psutil
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from .status import hms

MB = 1024 * 1024


@attr.s
class _Load:
    started_at = attr.ib()
    pid = attr.ib()
    loop = attr.ib(default=None)


def rss_of_pid(pid):
    """Resident memory of ``pid`` in bytes, or None when it cannot be read."""
    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.Error, TypeError, ValueError):
        return None


class LoadProgress(Service):
    progress_interval = 10.0  # seconds between two "still loading" lines of one child

    _log = Logger()

    def __init__(self, supervisor, reactor=None, rss_of=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.supervisor = supervisor
        self._rss_of = rss_of or rss_of_pid
        self._loads = {}  # child name -> _Load
        self.waiting_for = None  # the DEFAULT_SERVER the gateway waits for, while it does
        # from now, not from startService: the supervisor may start (and spawn) first
        supervisor.listeners.append(self._on_event)

    def stopService(self):
        Service.stopService(self)
        if self._on_event in self.supervisor.listeners:
            self.supervisor.listeners.remove(self._on_event)
        for load in self._loads.values():
            if load.loop is not None and load.loop.running:
                load.loop.stop()
        self._loads.clear()
        return defer.succeed(None)

    def loading(self):
        """``{child name: seconds it has been loading}``, now."""
        now = self._reactor.seconds()
        return {name: now - load.started_at for name, load in self._loads.items()}

    def health(self):
        """What ``/health`` adds: ``STATUS`` ``starting`` while the gateway waits for
        ``DEFAULT_SERVER``, and ``LOADING`` (``{child: "H:MM:SS"}``) while any child loads."""
        fields = {}
        if self.waiting_for is not None:
            fields['STATUS'] = 'starting'
            fields['WAITING_FOR'] = self.waiting_for
        loading = self.loading()
        if loading or self.waiting_for is not None:
            fields['LOADING'] = {name: hms(seconds) for name, seconds in sorted(loading.items())}
        return fields

    def _on_event(self, name, event):
        try:
            if event == 'started':
                self._started(name)
            elif event in ('ready', 'exited'):
                self._ended(name, event)
        except Exception:  # the supervisor's notification must not fail because of a log line
            self._log.failure('load progress of {name}', name=name)

    def _started(self, name):
        self._stop_loop(name)
        status = self.supervisor.status(name)
        load = self._loads[name] = _Load(started_at=self._reactor.seconds(), pid=status.pid)
        self._log.info('server {name}: loading started (pid {pid})', name=name, pid=status.pid)
        load.loop = task.LoopingCall(self._progress, name)
        load.loop.clock = self._reactor
        load.loop.start(self.progress_interval, now=False).addErrback(
            lambda failure: self._log.failure('load progress of {name}', failure, name=name))

    def _progress(self, name):
        load = self._loads.get(name)
        if load is None:
            return
        elapsed = self._reactor.seconds() - load.started_at
        rss = self._rss_of(load.pid) if load.pid is not None else None
        self._log.info('server {name}: still loading after {elapsed} (RSS {rss})', name=name, elapsed=hms(elapsed),
                       elapsed_seconds=elapsed, rss='{:.0f} MB'.format(rss / MB) if rss is not None else 'unknown',
                       rss_bytes=rss)

    def _ended(self, name, event):
        load = self._loads.pop(name, None)
        if load is None:
            return
        self._stop_loop(name, load)
        elapsed = self._reactor.seconds() - load.started_at
        if event == 'ready':
            self._log.info('server {name}: loaded in {elapsed}', name=name, elapsed=hms(elapsed),
                           elapsed_seconds=elapsed)
        else:
            self._log.warn('server {name}: exited after loading for {elapsed}, before it was ready', name=name,
                           elapsed=hms(elapsed), elapsed_seconds=elapsed)

    def _stop_loop(self, name, load=None):
        load = load or self._loads.get(name)
        if load is not None and load.loop is not None and load.loop.running:
            load.loop.stop()
