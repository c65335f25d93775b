"""``GatewayService``: the gateway's service tree, the same for ``bis.tac`` and ``bis-gateway``.

Start: the supervisor spawns the children; the web port opens at once with
``NO_STARTUP_WAIT``, otherwise when ``DEFAULT_SERVER`` is ready (no fixed sleeps). Stop, in
order (``MultiService`` would stop children concurrently): close the port, let requests in
flight finish (bounded by ``drain_timeout``), stop the children (TERM, then KILL), close the
client pool, and
save the start/stop history.
"""

import os
import resource
import secrets
import signal
import sys

import attr
from twisted.application.service import MultiService
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from ..errors import BadRequest, ConfigError, ServiceUnavailable
from ..shared.drain import ConnectionDrain
from ..shared.gctune import freeze_startup_objects
from ..shared.limits import MIB, Limits
from ..shared.security import AdminGuard, admin_token
from ..shared.stalls import StallWatch
from ..shared.web import LISTEN_BACKLOG, make_site
from .apikeys import KeyStore, read_keys_file
from .autoscale import Autoscaler
from .config import load_config
from .fleet import Fleet
from .health import HealthMonitor
from .metrics import GatewayMetrics
from .proxy import ChildClient
from .routes import SUPPORT_KEY_ARG, Gateway
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


class GatewayService(MultiService):
    drain_timeout = 10.0      # seconds requests in flight get to finish at stop
    startup_wait_max = 120.0  # seconds the port waits for DEFAULT_SERVER at most

    _log = Logger()

    def __init__(self, options, reactor=None):
        MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.options = options
        endpoints_dir = os.path.abspath(options.endpoints)
        # validated before anything starts: ConfigError names file, endpoint and key
        self.config = load_config(options.config, endpoints_dir, options.port)
        token = admin_token(options.admin_token)  # stripped; ConfigError when too short
        os.makedirs(options.logs_dir, exist_ok=True)
        self.supervisor = Supervisor(reactor=reactor, log_dir=options.logs_dir, pid_dir=options.pids_dir)
        self.supervisor.setServiceParent(self)
        self.client = ChildClient(reactor=reactor, max_answer=int(self.config.max_answer_mb * MIB))
        self.fleet = Fleet(self.config, self.supervisor, self.client, endpoints_dir, reactor=reactor,
                           execution_path=options.execution_path, remote_token=token,
                           socket_names=unix_socket_names())
        self.fleet.register_children()
        self.history = StateHistory.in_cache(options.cache, clock=reactor)
        supports = [e for e in self.config.endpoints if e.is_support and not e.disabled]
        # every spawned child and remote server is watched, with or without support entries
        self.health = HealthMonitor(self.fleet, reactor=reactor)
        self.health.setServiceParent(self)
        self.autoscaler = Autoscaler(self.fleet, reactor=reactor)
        self.autoscaler.setServiceParent(self)
        self.stalls = StallWatch(reactor)  # reactor lag and collection pauses, on /metrics
        self.stalls.setServiceParent(self)
        # a per-start key lets the gateway's own support processes post their status
        support_key = secrets.token_urlsafe(24)
        status_path = '{}?{}={}'.format(SUPPORT_STATUS_PATH, SUPPORT_KEY_ARG, support_key)
        self.supports = [SupportProcess(e, self.fleet, options.port, endpoints_dir, reactor=reactor,
                                        status_path=status_path)
                         for e in supports]
        for support in self.supports:
            support.setServiceParent(self)
        self.gateway = Gateway(self.fleet, reactor=reactor, guard=AdminGuard(token),
                               history=self.history, shutdown=self._reactor.stop, cache_dir=options.cache,
                               server_name=self.config.server_name,
                               support_names=[e.name for e in self.config.endpoints if e.is_support],
                               metrics=(GatewayMetrics(self.fleet, self.supervisor, reactor,
                                                       scaling=self.autoscaler.decisions, stalls=self.stalls)
                                        if self.config.metrics else None),
                               metrics_guarded=self.config.metrics_require_token, support_key=support_key,
                               keys=KeyStore(self.config.api_keys, reactor) if self.config.api_keys else None,
                               reload_config=self.reload_config)
        self.site = make_site(self.gateway.resource(),
                              limits=Limits.from_config(self.config.http_limits, self.config.max_body_mb),
                              answer_fields=self.gateway.fields)
        self.connections = ConnectionDrain(self.site, reactor=reactor)
        self.port = None
        self.endpoints_dir = endpoints_dir
        # callables(new GatewayConfig), called after each config reload that was applied
        self.config_listeners = []
        self._config_reload = None  # the reload under way: a second one waits for it
        self.watcher = None
        if options.reload:
            self.watcher = ReloadWatcher(self, reactor=reactor)
            self.watcher.setServiceParent(self)

    def startService(self):
        raise_open_files_limit(self._log)
        for warning in self.config.warnings:  # here, not at load: the log files are open now
            self._log.warn('{warning}', warning=warning)
        self.history.startup()
        if os.environ.get('AID_APP_SHOW_PACKS', os.environ.get('SHOW_PACKS', '')).lower() == 'yes':
            # the original image's switch: the installed packages at start, for the record
            self._log.info('installed packages:\n{packages}', packages='\n'.join(get_packages()))
        MultiService.startService(self)
        try:
            signal.signal(signal.SIGHUP, self._on_sighup)
        except ValueError:  # not the main thread (a test's reactor in a thread)
            pass
        default = self.config.default_server
        endpoint = self.config.endpoint(default) if default else None
        if self.config.no_startup_wait or endpoint is None or not endpoint.is_spawned or endpoint.disabled:
            self._listen()
        else:
            children = [t.child_name for t in self.fleet.servers[default].targets]
            self._log.info('waiting for DEFAULT_SERVER {name} before serving', name=default)
            d = defer.DeferredList([self.supervisor.when_ready(c) for c in children], fireOnOneCallback=True)
            # a DEFAULT_SERVER that never loads must not keep /list_servers from saying why
            d.addTimeout(self.startup_wait_max, self._reactor)
            d.addErrback(lambda _: self._log.warn('DEFAULT_SERVER {name} not ready after {t}s; serving anyway',
                                                  name=default, t=self.startup_wait_max))
            d.addCallback(lambda _: self._listen())

    def reload_config(self):
        """Read and validate the config file again and apply it (``Fleet.apply_config``);
        fires with ``{action: [names]}``, or fails with ``BadRequest`` (the one-line error)
        when the file cannot be used, and then nothing changes. One reload at a time."""
        previous = self._config_reload or defer.succeed(None)
        d = defer.Deferred()
        previous.addBoth(lambda _: defer.Deferred.fromCoroutine(self._reload_config()).chainDeferred(d))
        self._config_reload = d
        return d

    async def _reload_config(self):
        keep = {e.name: (e.ports, e.spare_ports) for e in self.config.endpoints if e.is_spawned}
        try:
            config = load_config(self.options.config, self.endpoints_dir, self.options.port, keep_ports=keep)
        except ConfigError as exc:
            self._log.warn('config reload refused, nothing changed: {err}', err=exc)
            raise BadRequest(str(exc)) from None
        try:  # the API_KEYS file too: an invalid one refuses the whole reload
            keys = read_keys_file(config.api_keys) if config.api_keys else None
        except ConfigError as exc:
            self._log.warn('config reload refused, nothing changed: {err}', err=exc)
            raise BadRequest(str(exc)) from None
        for warning in config.warnings:
            self._log.warn('{warning}', warning=warning)
        done = await self.fleet.apply_config(config, self._resize)
        if keys is None:
            self.gateway.keys = None
        elif self.gateway.keys is None:
            self.gateway.keys = KeyStore(config.api_keys, self._reactor)
        else:
            self.gateway.keys.reload(config.api_keys)  # the buckets of unchanged keys are kept
        self.config = config
        self.gateway.refresh()
        self._log.info('config reloaded from {path}: {summary}', path=self.options.config, summary='; '.join(
            '{} {}'.format(k.lower(), ', '.join(v)) for k, v in done.items() if v and k != 'UNCHANGED') or 'no change')
        for name, error in done['FAILED'].items():
            self._log.warn('config reload: {error}', error=error)
        for listener in list(self.config_listeners):
            try:
                listener(config)
            except Exception:
                self._log.failure('a config listener failed')
        return done

    async def _resize(self, server, size):
        failed = await self.gateway.resize(server, size)
        if failed is not None:
            raise ServiceUnavailable('server {!r}: NR_WORKERS {} not applied: {}'.format(
                server.name, size, failed.body.get('ERROR', failed.status)))

    def _on_sighup(self, signum, frame):
        self._reactor.callFromThread(self._reload_from_signal)

    def _reload_from_signal(self):
        self._log.info('SIGHUP: reloading the config')
        d = self.reload_config()
        d.addErrback(lambda f: self._log.warn('config reload on SIGHUP failed: {err}', err=f.getErrorMessage()))

    def _listen(self):
        if not self.running:
            return
        endpoint = endpoints.TCP4ServerEndpoint(self._reactor, self.options.port, backlog=LISTEN_BACKLOG,
                                                interface=self.options.host)
        d = endpoint.listen(self.site)

        def listening(port):
            self.port = port
            frozen = freeze_startup_objects()  # start-up is done: spare it the full collections
            self._log.info('gateway serving on http://{host}:{port}', host=self.options.host,
                           port=port.getHost().port)
            self._log.debug('{n} start-up objects exempt from garbage collection', n=frozen)

        def failed(failure):
            self._log.critical('cannot listen on {host}:{port}: {err}', host=self.options.host,
                               port=self.options.port, err=failure.getErrorMessage())
            self._reactor.stop()

        d.addCallbacks(listening, failed)

    async def _stop(self):
        # every step runs whatever the one before did: the history is saved in any case
        steps = [self._stop_loops, self._stop_listening, self._drain, self.supervisor.stopService,
                 self.client.close]
        for step in steps:
            try:
                await step()
            except Exception:
                self._log.failure('stopping the gateway: {step} failed; going on', step=step.__name__)
        self.history.shutdown()

    async def _stop_loops(self):
        for service in [self.health, self.autoscaler, self.stalls] + ([self.watcher] if self.watcher else []) + \
                self.supports:
            await service.stopService()

    async def _stop_listening(self):
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()

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

    def stopService(self):
        self.running = False  # MultiService's own stop would stop the supervisor too early
        return defer.Deferred.fromCoroutine(self._stop())
