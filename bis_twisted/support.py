"""Support processes: config entries with ``"HOST": "NO_HOST"``, run inside the gateway.

Each is a ``LoopingCall`` every ``PING_INTERVAL`` seconds (a ``TimerService``, so it starts
and stops with the gateway) that
1. pings every running model server and restarts one that failed to answer
   ``misses_allowed`` pings in a row (a hung process: deadlocked, or stopped with SIGSTOP);
   a server still loading answers 503, which counts as alive;
2. runs the ``execute()`` of the class found in ``endpoints/<name>.py`` (the original's
   ``ServerMonitor``) in a thread, never two at once, so a slow monitor skips ticks.
"""

import inspect

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from .errors import EndpointLoadError
from .loader import endpoint_file, load_module
from .logger import Logger as CompatLogger

SUPPORT_STATUS_PATH = '/support_update_status'
REMOTE_HEALTH = '_remote_health'  # the implicit support loop for URLS servers


def find_monitor_class(module, path):
    """The first class defined in the file that has an ``execute`` method."""
    for value in vars(module).values():
        if inspect.isclass(value) and value.__module__ == module.__name__ and callable(getattr(value, 'execute', None)):
            return value
    raise EndpointLoadError('{}: no class with an execute() method'.format(path))


class SupportProcess(TimerService):
    """One support entry: the ping loop and, when its file has one, the monitor."""

    misses_allowed = 3
    startup_grace = 60.0

    _log = Logger()

    def __init__(self, endpoint, fleet, gateway_port, endpoints_dir, reactor=None, threadpool=None,
                 status_path=SUPPORT_STATUS_PATH):
        if reactor is None:
            from twisted.internet import reactor
        TimerService.__init__(self, endpoint.ping_interval, self.tick)
        self.clock = reactor  # TimerService's LoopingCall uses it: a Clock in tests
        self._reactor = reactor
        self._threadpool = threadpool
        self.name = endpoint.name
        self.endpoint = endpoint
        self.fleet = fleet
        self.ping_timeout = min(2.0, endpoint.ping_interval)
        self.misses = {}  # child name -> consecutive failed pings
        self.ticks = 0
        self.monitor = None
        self._monitor_running = False
        if endpoint.has_file and endpoint.server_class != REMOTE_HEALTH:
            path = endpoint_file(endpoints_dir, endpoint.server_class)
            config = dict(endpoint.entry, SERVER='127.0.0.1', SERVER_PORT=gateway_port,
                          SERVER_PATH=status_path, SUPPORT_NAME=endpoint.name)
            log = CompatLogger(lib_name=endpoint.name, config_data=config)
            cls = find_monitor_class(load_module(path), path)
            try:
                self.monitor = cls(name=endpoint.name, log=log)
            except Exception as exc:  # the user's constructor; reported as a config error
                raise EndpointLoadError('{}: {}(name=..., log=...) failed: {}: {}'.format(
                    path, cls.__name__, type(exc).__name__, exc)) from None

    async def tick(self):
        # LoopingCall stops for good on an error: nothing may escape from here
        self.ticks += 1
        try:
            await self.ping_all()
        except Exception:
            self._log.failure('support {name}: ping round failed', name=self.name)
        if self.monitor is not None and not self._monitor_running:
            self._monitor_running = True
            d = deferToThreadPool(self._reactor, self._threadpool or self._reactor.getThreadPool(),
                                  self.monitor.execute)
            d.addErrback(lambda f: self._log.failure('support {name}: execute() failed', f, name=self.name))
            d.addBoth(self._monitor_done)

    def _monitor_done(self, _):
        self._monitor_running = False

    async def ping_all(self):
        await defer.gatherResults([defer.Deferred.fromCoroutine(self._check_children()),
                                   defer.Deferred.fromCoroutine(self._check_remotes())])

    async def _check_remotes(self):
        """Remote servers (URLS): offline while they do not answer /health with 200, back
        in the rotation as soon as they do."""
        targets = [t for server in self.fleet.servers.values() for t in server.targets if t.child_name is None]
        answers = await defer.gatherResults([defer.Deferred.fromCoroutine(self.fleet.ping(t, self.ping_timeout))
                                             for t in targets])
        for target, answer in zip(targets, answers):
            ok = answer is not None
            if ok != target.remote_ok:
                self._log.info('remote server {url} of {name} is {state}', url=target.base_url,
                               name=target.server.name, state='back online' if ok else 'offline')
            target.remote_ok = ok

    async def _check_children(self):
        supervisor = self.fleet.supervisor
        now = self._reactor.seconds()

        def pingable(status):
            # between spawn and listen (imports) a child cannot answer yet: judged once it
            # said it is ready, or after startup_grace
            return status.running and (status.ready or now - status.started_at > self.startup_grace)

        targets = [t for server in self.fleet.servers.values() for t in server.targets
                   if t.child_name is not None and pingable(supervisor.status(t.child_name))]
        answers = await defer.gatherResults([defer.Deferred.fromCoroutine(self._answers(t)) for t in targets])
        for target, alive in zip(targets, answers):
            name = target.child_name
            if alive:
                self.misses.pop(name, None)
                continue
            self.misses[name] = self.misses.get(name, 0) + 1
            if self.misses[name] >= self.misses_allowed:
                self.misses.pop(name)
                supervisor.restart_child(name, 'did not answer {} pings in a row ({}s apart); replaced'.format(
                    self.misses_allowed, self.endpoint.ping_interval))

    async def _answers(self, target):
        try:
            await self.fleet.client.get_json(target.url('/health'), self.ping_timeout)
        except Exception:  # any failure to answer, the timeout included, is a missed ping
            return False
        return True
