"""``GatewayService``: the gateway's service tree, the same for ``bis.tac`` and ``bis-gateway``.

Before anything starts, the cache folder is locked (``cachelock``: one gateway per folder) and
the port is checked to be free, so a gateway that cannot serve exits at once (code 2, one
line) having started no child. Its parts are services of one ``OrderedServices`` tree: they
start in the order they were added (the supervisor spawns the children; the port opens at
once, and the gateway says it serves at once with ``NO_STARTUP_WAIT``, otherwise when
``DEFAULT_SERVER`` is ready: ``/health`` says "starting" meanwhile) and stop one after
another in reverse: the loops, the port, the drain of requests in flight (bounded by
``drain_timeout``), the children (TERM, then KILL), the client pool, and last the start/stop
history. A part added later is stopped with the rest without anyone listing it.
"""

import os
import resource
import secrets
import signal
import sys

import attr
from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints
from twisted.logger import Logger, LogLevel

from ..shared.drain import ConnectionDrain
from ..shared.front import front_channel
from ..shared.gctune import freeze_startup_objects
from ..shared.limits import MIB, Limits
from ..shared.security import AdminGuard, admin_token
from ..shared.stalls import StallWatch
from ..shared.twisted_private import lean_dispatch
from ..shared.web import LISTEN_BACKLOG, make_site
from .accesslog import AccessLog, Stamped
from .apikeys import KeyStore
from .autoscale import Autoscaler
from .cachelock import lock_cache
from .candidates import Candidates
from .check import port_in_use
from .config import load_config
from .config_reload import ConfigReloader
from .fleet import Fleet
from .health import HealthMonitor
from .loading import LoadProgress
from .metrics import GatewayMetrics
from .proxy import ChildClient
from .rollout import Rollouts
from .rollout_metrics import RolloutCollector
from .routes import RUN_PATH, SUPPORT_KEY_ARG, Gateway
from .spread import AddressSpreader
from .status import StateHistory, get_packages
from .supervisor import Supervisor
from .support import SUPPORT_STATUS_PATH, SupportProcess
from .watch import ReloadWatcher


@attr.s(frozen=True)
class Options:
    """What the command line and the environment decide."""

    config = attr.ib(default='config_gateway.txt')
    host = attr.ib(default='0.0.0.0')
    port = attr.ib(default=5002)
    endpoints = attr.ib(default='endpoints')
    cache = attr.ib(default='_cache')
    admin_token = attr.ib(default=None, repr=False)
    execution_path = attr.ib(default='/run')
    reload = attr.ib(default=False)  # development: reload what changes on disk (ReloadWatcher)

    @property
    def logs_dir(self):
        return os.path.join(self.cache, '_logs')

    @property
    def pids_dir(self):
        return os.path.join(self.cache, '_pids')


def raise_open_files_limit(log=None):
    """Raise this process's soft limit on open files to its hard limit (what nginx's
    ``worker_rlimit_nofile`` is for): every client connection and every child's pipes take
    descriptors. Returns ``(soft before, soft now, hard)``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = soft
    if hard == resource.RLIM_INFINITY or hard > soft:
        # an unlimited hard limit is not a number a select/epoll table wants: cap it
        new = hard if hard != resource.RLIM_INFINITY else max(soft, 1048576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            new = soft
    if log is not None:
        log.info('open files limit: soft {soft} -> {new}, hard {hard}', soft=soft, new=new,
                 hard='unlimited' if hard == resource.RLIM_INFINITY else hard)
    return soft, new, hard


def unix_socket_names():
    """The prefix of the children's Unix socket names: Linux's abstract namespace (no file
    to go stale, or for a /tmp cleaner to remove under a long-running gateway), unique to
    this gateway's start; None elsewhere: the children are reached over TCP."""
    if not sys.platform.startswith('linux'):
        return None
    return '@bis-{}-{}-'.format(os.getpid(), secrets.token_hex(4))


class PortInUse(Exception):
    """The gateway's port cannot be listened on; the message is the one line to print."""


def check_port_free(host, port):
    """Raise ``PortInUse`` when ``host:port`` cannot be listened on now (``check``'s own probe:
    another process holds it), as the listening socket would find later."""
    reason = port_in_use(host, port) if port else None
    if reason is not None:
        raise PortInUse('cannot listen on {}:{}: {}; stop it or give another --port / BIS_PORT'.format(
            host, port, reason))


class OrderedServices(MultiService):
    """A ``MultiService`` whose children stop one after another, in reverse order, each once
    the one before it has stopped (``MultiService`` stops them all at once); a child that
    fails to stop is logged and the others stop anyway."""

    _log = Logger()

    def stopService(self):
        Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop_in_reverse())

    async def _stop_in_reverse(self):
        for service in reversed(list(self)):
            try:
                await defer.maybeDeferred(service.stopService)
            except Exception:
                self._log.failure('stopping the gateway: {service} failed; going on',
                                  service=getattr(service, 'name', None) or type(service).__name__,
                                  level=LogLevel.error)


class _Steps(Service):
    """A step of the gateway's start or stop that is not a service of its own."""

    def __init__(self, name, start=None, stop=None):
        self.setName(name)
        self._start = start
        self._stop = stop

    def startService(self):
        Service.startService(self)
        if self._start is not None:
            self._start()

    def stopService(self):
        Service.stopService(self)
        return defer.maybeDeferred(self._stop) if self._stop is not None else None


class GatedPort(Service):
    """The gateway's port: listens at once (``/health`` answers from the first second) and
    says it serves when ``opened`` fires (at once, or when DEFAULT_SERVER is ready); closes
    first at stop. A port that cannot be listened on calls ``on_error`` with the one-line
    reason."""

    name = 'port'
    _log = Logger()

    def __init__(self, endpoint, site, opened, on_error, reactor):
        self._endpoint = endpoint
        self._site = site
        self.opened = opened
        self._on_error = on_error
        self._reactor = reactor
        self.port = None
        self._said_serving = False

    def startService(self):
        Service.startService(self)
        self._listen()
        self.opened.addCallback(lambda _: self._serving())
        self.opened.addErrback(lambda failure: failure.trap(defer.CancelledError))  # stopped first

    def _listen(self):
        if not self.running:
            return None
        d = self._endpoint.listen(self._site)
        d.addCallbacks(self._listening, lambda failure: self._on_error(
            'cannot listen: {}'.format(failure.getErrorMessage())))
        return d

    def _listening(self, port):
        if not self.running:  # stopped while the listen was under way
            return port.stopListening()
        self.port = port
        if self.opened.called:  # opened before the listen was done
            self._serving()
        return None

    def _serving(self):
        if self.port is None or self._said_serving:
            return
        self._said_serving = True
        frozen = freeze_startup_objects()  # start-up is done: spare it the full collections
        lean_dispatch(self._reactor)
        address = self.port.getHost()
        self._log.info('gateway serving on http://{host}:{port}', host=address.host, port=address.port)
        self._log.debug('{n} start-up objects exempt from garbage collection', n=frozen)

    def stopService(self):
        Service.stopService(self)
        self.opened.cancel()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()


class GatewayService(OrderedServices):
    drain_timeout = 10.0      # seconds requests in flight get to finish at stop
    startup_wait_max = 120.0  # seconds the port waits for DEFAULT_SERVER at most

    _log = Logger()

    def __init__(self, options, reactor=None, port_check=check_port_free):
        MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.options = options
        self._port_check = port_check
        self._stopping = False
        # first of all: no other gateway writes into this cache folder (ConfigError if one does)
        self.cache_lock = lock_cache(options.cache)
        endpoints_dir = os.path.abspath(options.endpoints)
        # validated before anything starts: ConfigError names file, endpoint and key
        config = load_config(options.config, endpoints_dir, options.port)
        token = admin_token(options.admin_token)  # stripped; ConfigError when too short
        os.makedirs(options.logs_dir, exist_ok=True)
        self.history = StateHistory.in_cache(options.cache, clock=reactor)
        self.supervisor = Supervisor(reactor=reactor, log_dir=options.logs_dir, pid_dir=options.pids_dir,
                                     endpoints_dir=endpoints_dir)
        # what /health and the log say while children load (it hears the supervisor's spawns)
        self.progress = LoadProgress(self.supervisor, reactor=reactor)
        self.client = ChildClient(reactor=reactor, max_answer=int(config.max_answer_mb * MIB))
        self.fleet = Fleet(config, self.supervisor, self.client, endpoints_dir, reactor=reactor,
                           execution_path=options.execution_path, remote_token=token,
                           socket_names=unix_socket_names())
        self.fleet.register_children()
        supports = [e for e in config.endpoints if e.is_support and not e.disabled]
        # every spawned child and remote server is watched, with or without support entries
        self.health = HealthMonitor(self.fleet.topology, self.supervisor, self.fleet.probe, self.fleet.operations,
                                    reactor=reactor)
        self.autoscaler = Autoscaler(self.fleet.topology, self.fleet.router, self.fleet.operations, reactor=reactor)
        self.spreader = AddressSpreader(self.fleet, reactor=reactor)  # a URLS host -> all its addresses
        self.stalls = StallWatch(reactor)  # reactor lag and collection pauses, on /metrics
        # a per-start key lets the gateway's own support processes post their status
        support_key = secrets.token_urlsafe(24)
        status_path = '{}?{}={}'.format(SUPPORT_STATUS_PATH, SUPPORT_KEY_ARG, support_key)
        self.supports = [SupportProcess(e, self.fleet, options.port, endpoints_dir, reactor=reactor,
                                        status_path=status_path, secret=support_key)
                         for e in supports]
        # a rollout's candidates: a fleet of their own (in no list of endpoints), watched as the others
        self.candidates = Candidates(self.fleet, reactor, gateway_port=options.port)
        candidates = self.candidates.fleet()
        self.candidate_health = HealthMonitor(candidates.topology, self.supervisor, candidates.probe,
                                              candidates.operations, reactor=reactor)
        self.candidate_health.setName('candidate health')
        self.rollouts = Rollouts(self.fleet, reactor=reactor, history=self.history, candidates=self.candidates)
        self.gateway = Gateway(self.fleet, reactor=reactor, guard=AdminGuard(token),
                               history=self.history, shutdown=self.stop_reactor, cache_dir=options.cache,
                               server_name=config.server_name,
                               support_names=[e.name for e in config.endpoints if e.is_support],
                               metrics=(GatewayMetrics(self.fleet, self.supervisor, reactor,
                                                       scaling=self.autoscaler.decisions, stalls=self.stalls)
                                        if config.metrics else None),
                               metrics_guarded=config.metrics_require_token, support_key=support_key,
                               keys=KeyStore(config.api_keys, reactor) if config.api_keys else None,
                               reload_config=self.reload_config, progress=self.progress, rollouts=self.rollouts)
        if self.gateway.metrics is not None:
            self.gateway.metrics.registry.register(RolloutCollector(self.rollouts))
        self.site = make_site(Stamped(self.gateway.resource(), reactor),
                              limits=Limits.from_config(config.http_limits, config.max_body_mb),
                              gateway_fields=self.gateway.gateway_fields, channel=front_channel(config.http_front))
        self.site.log = self.access_log = AccessLog(reactor, enabled=config.access_log)
        self.site.lean_paths = frozenset({RUN_PATH})  # on the httptools front: without twisted.web's Request
        self.connections = ConnectionDrain(self.site, reactor=reactor)
        self.endpoints_dir = endpoints_dir
        self.reloader = ConfigReloader(options.config, endpoints_dir, options.port, config, self.fleet, self.gateway,
                                       self.access_log, reactor, after=[self.rollouts.after_config_reload],
                                       held=self.rollouts.ports_held)
        self.watcher = ReloadWatcher(self, reactor=reactor) if options.reload else None
        endpoint = endpoints.TCP4ServerEndpoint(reactor, options.port, backlog=LISTEN_BACKLOG,
                                                interface=options.host)
        self.listening = GatedPort(endpoint, self.site, defer.Deferred(), self._cannot_serve, reactor)
        # start order; each stops after those added after it
        parts = [_Steps('history', self.history.startup, self._last_step), _Steps('client', stop=self.client.close),
                 self.supervisor, self.rollouts, _Steps('drain', stop=self._drain), self.listening, self.progress,
                 self.health, self.candidate_health, self.autoscaler, self.spreader, self.stalls] + self.supports + (
                     [self.watcher] if self.watcher else [])
        for part in parts:
            part.setServiceParent(self)

    def startService(self):
        try:
            self._port_check(self.options.host, self.options.port)
        except PortInUse as exc:
            self._exit_at_once(str(exc))
        raise_open_files_limit(self._log)
        for warning in self.config.warnings:  # here, not at load: the log files are open now
            self._log.warn('{warning}', warning=warning)
        if os.environ.get('AID_APP_SHOW_PACKS', os.environ.get('SHOW_PACKS', '')).lower() == 'yes':
            # the original image's switch: the installed packages at start, for the record
            self._log.info('installed packages:\n{packages}', packages='\n'.join(get_packages()))
        MultiService.startService(self)
        self.reloader.listen_for_sighup()
        self._reactor.callWhenRunning(self._install_stop_signals)
        self._open_port_when_ready()

    def _install_stop_signals(self):
        # replaces the reactor's own handlers, which call reactor.stop() on every TERM: a
        # second TERM (docker stop after a process manager's, say) would log a CRITICAL
        # ReactorNotRunning while the first stop runs
        def on_signal(signum, frame):
            self._reactor.callFromThread(self.stop_reactor)

        try:
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        except ValueError:  # not the main thread
            pass

    def stop_reactor(self):
        """Stop the reactor (and so this tree: the "before shutdown" trigger), once."""
        if not self._stopping:
            self._stopping = True
            self._reactor.stop()

    def _open_port_when_ready(self):
        default = self.config.default_server
        endpoint = self.config.endpoint(default) if default else None
        opened = self.listening.opened
        if self.config.no_startup_wait or endpoint is None or not endpoint.is_spawned or endpoint.disabled:
            opened.callback(None)
            return
        children = [t.child_name for t in self.fleet.servers[default].targets]
        self.progress.waiting_for = default  # /health: "starting" until then
        self._log.info('waiting for DEFAULT_SERVER {name} before serving; /health says "starting" meanwhile',
                       name=default)
        d = defer.DeferredList([self.supervisor.when_ready(c) for c in children], fireOnOneCallback=True)
        # a DEFAULT_SERVER that never loads must not keep /list_servers from saying why
        d.addTimeout(self.startup_wait_max, self._reactor)
        d.addErrback(lambda _: self._log.warn('DEFAULT_SERVER {name} not ready after {t}s; serving anyway',
                                              name=default, t=self.startup_wait_max))
        d.addCallback(lambda _: setattr(self.progress, 'waiting_for', None))
        d.addCallback(lambda _: None if opened.called else opened.callback(None))

    def _exit_at_once(self, message):
        """Nothing started yet: one line, the lock let go, exit 2."""
        self.cache_lock.release()
        sys.stderr.write('bis-gateway: {}\n'.format(message))
        sys.stderr.flush()
        raise SystemExit(2)

    def _cannot_serve(self, message):
        """The port failed after the children started: one line, stop them all, exit 2."""
        self._log.error('{message}; stopping', message=message)
        sys.stderr.write('bis-gateway: {}\n'.format(message))
        sys.stderr.flush()
        self._reactor.addSystemEventTrigger('after', 'shutdown', _exit_now, 2)
        self.stop_reactor()

    @property
    def config(self):
        """The config in force (the reloader's, since a reload replaces it)."""
        return self.reloader.config

    def reload_config(self):
        """``ConfigReloader.reload``: read the config file again and put it in force."""
        return self.reloader.reload()

    @property
    def port(self):
        """The listening port, or None before it opened and after it closed."""
        return self.listening.port

    async def _drain(self):
        idle = self.fleet.when_idle()
        idle.addTimeout(self.drain_timeout, self._reactor)
        try:
            await idle
        except defer.TimeoutError:
            self._log.warn('{n} requests still in flight after {t}s; stopping anyway',
                           n=self.fleet.in_flight, t=self.drain_timeout)
        # the answers of the last requests are written before the process goes
        await self.connections.close_when_answered(self.drain_timeout)

    def _last_step(self):
        self.history.shutdown()
        self.cache_lock.release()


def _exit_now(code):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
