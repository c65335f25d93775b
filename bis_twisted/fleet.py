"""``Fleet``: the model servers the gateway knows and how to reach them.

A configured endpoint is a ``Server`` with one ``Target`` per child process (``REPLICAS``) or
per remote URL (``URLS``). The fleet registers the children with the supervisor, picks the
ready target with the fewest requests in flight, and measures (never caches) whether a
target answers.
"""

import json
import os
import secrets
import sys
from urllib.parse import urlsplit

import attr
from twisted.internet import defer
from twisted.logger import Logger

from .errors import BadRequest, ServerFailed, ServerStopped, ServiceUnavailable, UnknownSignature
from .limits import DEFAULT_BODIES_IN_FLIGHT_MB
from .proxy import ChildConnectionLost, ChildStream, NotConnected
from .supervisor import ChildSpec

# what the model server reads (bis_twisted.server); the gateway never imports that module
CONFIG_VARIABLE = 'BIS_SERVER_CONFIG'
CHILD_KEY_VARIABLE = 'BIS_SERVER_ADMIN_KEY'

HEALTH_TIMEOUT = 2.0
SUSPECT_SECONDS = 2.0  # how long a target that dropped a request is skipped, at most
SERVER_PATHS = ('/notifications', '/update_workers', '/get_paths', '/health')


def hms(seconds):
    """``H:MM:SS``, hours past 24 included (``25:00:05``, not ``1 day, 1:00:05``)."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return '{}:{:02d}:{:02d}'.format(hours, minutes, secs)


class Target:
    """One process serving a server: a child of ours, or a remote model server."""

    def __init__(self, server, index, base_url, child_name, execution_path):
        self.server = server
        self.index = index
        self.base_url = base_url
        self.child_name = child_name  # None for a remote URL
        self.execution_path = execution_path
        self.run_url = (base_url + execution_path).encode('ascii')  # built once: the hot path
        self.in_flight = 0
        self.remote_ok = True  # remote targets: last ping's verdict
        self.suspect_until = 0.0  # dropped a request: kept out of the rotation until then
        # the bearer token of the server's control route: a random key per child, made at
        # the gateway's start; a remote server's is the gateway's own BIS_ADMIN_TOKEN
        self.admin_key = secrets.token_urlsafe(32) if child_name is not None else None

    def url(self, path):
        return (self.base_url + path).encode('ascii')


@attr.s
class Server:
    config = attr.ib()
    targets = attr.ib(factory=list)

    @property
    def name(self):
        return self.config.name


class Fleet:
    _log = Logger()

    def __init__(self, config, supervisor, client, endpoints_dir, reactor=None, python=None,
                 execution_path='/run', cwd=None, remote_token=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.config = config
        self.supervisor = supervisor
        self.client = client
        self.endpoints_dir = endpoints_dir
        self.execution_path = execution_path
        self._python = python or sys.executable
        self._cwd = cwd
        self._remote_token = remote_token
        self.servers = {}
        self.in_flight = 0
        self._idle_waiters = []
        for endpoint in config.endpoints:
            if endpoint.is_support:
                continue
            server = Server(endpoint)
            if endpoint.is_remote:
                for i, url in enumerate(endpoint.urls):
                    # "http://host:port/run": the path, when given, is that server's execution path
                    parts = urlsplit(url)
                    base = '{}://{}'.format(parts.scheme, parts.netloc)
                    server.targets.append(Target(server, i, base, None, parts.path or execution_path))
            else:
                for i, port in enumerate(endpoint.ports):
                    child = endpoint.name if endpoint.replicas == 1 else '{}#{}'.format(endpoint.name, i)
                    host = '127.0.0.1' if endpoint.host in ('0.0.0.0', '::') else endpoint.host
                    server.targets.append(Target(server, i, 'http://{}:{}'.format(host, port), child,
                                                 execution_path))
            self.servers[endpoint.name] = server

    def register_children(self):
        self.supervisor.listeners.append(self._child_event)
        for server in self.servers.values():
            for target in server.targets:
                if target.child_name is not None:
                    self.supervisor.add(self.child_spec(server.config, target), start=not server.config.disabled)

    def child_spec(self, endpoint, target):
        port = endpoint.ports[target.index]
        argv = [self._python, '-m', 'bis_twisted.server', '--endpoints', self.endpoints_dir,
                '--name', endpoint.name, '--server-class', endpoint.server_class,
                '--host', endpoint.host, '--port', str(port), '--path', self.execution_path,
                '--max-body-mb', str(self._child_max_body_mb(endpoint)),
                '--max-bodies-mb', str(self._child_max_bodies_mb()), '--exit-with-parent']
        # the entry may hold secrets (API keys): in the environment, which only the owner can
        # read (/proc/<pid>/environ is 0400), not on the command line, which `ps` shows to all
        env = dict(os.environ)
        env[CONFIG_VARIABLE] = json.dumps(endpoint.entry)
        env[CHILD_KEY_VARIABLE] = target.admin_key
        return ChildSpec(name=target.child_name, argv=argv, cwd=self._cwd, env=env,
                         load_timeout=endpoint.load_timeout)

    def control_headers(self, target):
        """The headers of a call to a target's control route (``/update_workers``)."""
        key = target.admin_key if target.child_name is not None else self._remote_token
        return {'Authorization': 'Bearer {}'.format(key)} if key else {}

    def _child_max_body_mb(self, endpoint):
        # a form field re-encoded as JSON can grow (a control character becomes \\u0001):
        # the child, behind the gateway's own limit, takes what the gateway let through.
        # A flag, not a config key: the worker's config_data holds only what the user wrote.
        return endpoint.entry.get('MAX_BODY_MB', self.config.max_body_mb * 6)

    def _child_max_bodies_mb(self):
        # bodies in flight: the child holds what the gateway let through, re-encoded
        return self.config.http_limits.get('MAX_BODIES_MB', DEFAULT_BODIES_IN_FLIGHT_MB) * 6

    # -- lookup and routing ----------------------------------------------------------------
    def server(self, name):
        server = self.servers.get(name)
        if server is None:
            raise UnknownSignature('unknown SIGNATURE {!r}; available: {}'.format(
                name, ', '.join(sorted(self.servers)) or 'none'))
        return server

    def target_ready(self, target):
        if target.suspect_until and target.suspect_until > self._reactor.seconds():
            return False
        if target.child_name is None:
            return target.remote_ok
        return self.supervisor.is_ready(target.child_name)

    def _child_event(self, name, event):
        # a replica that dropped a request and was then restarted is trusted again
        if event == 'ready':
            for server in self.servers.values():
                for target in server.targets:
                    if target.child_name == name:
                        target.suspect_until = 0.0

    def pick(self, server, exclude=()):
        """The ready target with the fewest requests in flight, or 503 saying why none is."""
        best = None
        for target in server.targets:
            if target in exclude or not self.target_ready(target):
                continue
            if best is None or target.in_flight < best.in_flight:
                best = target
        if best is None:
            raise self.unavailable(server)
        return best

    def unavailable(self, server):
        """The 503 that says why no target of ``server`` can take a request now."""
        name = server.name
        if server.config.is_remote:
            return ServiceUnavailable('server {!r} is not answering at {}; retry shortly'.format(
                name, ', '.join(server.config.urls)))
        states = [self.supervisor.status(t.child_name) for t in server.targets]
        wanted = [s for s in states if s.wanted]
        if not wanted:
            return ServerStopped('server {!r} is stopped (disabled or killed); POST /start_server to start it'.format(
                name))
        if all(s.failed for s in wanted):
            return ServerFailed('server {!r} failed {} times in a row before it was ready: {}; it is still retried, '
                                'but needs a fix (see its log)'.format(name, self.supervisor.crash_loop_after,
                                                                       wanted[0].last_error))
        if any(s.running and s.ready and not s.stopping for s in wanted):
            return ServiceUnavailable('server {!r} is not answering; retry shortly'.format(name))
        if any(s.running and s.stopping for s in wanted):
            return ServiceUnavailable('server {!r} is being replaced; retry shortly'.format(name))
        if any(s.running for s in wanted):
            return ServiceUnavailable('server {!r} is starting (loading its workers); retry shortly'.format(name))
        last = next((s.last_error for s in wanted if s.last_error), None)
        return ServiceUnavailable('server {!r} is restarting{}; retry shortly'.format(
            name, ' after: {}'.format(last) if last else ''))

    async def run(self, name, payload, request_id=None):
        """Send ``payload`` to the least busy ready target of server ``name``.

        A target the request never reached (refused: it just died) is skipped for the next
        one. A target that dropped the connection before answering (it crashed) has the
        request sent once more, to another ready target, unless the endpoint says
        ``RETRY_ON_CRASH: false`` (a ``_predict`` not safe to run twice)."""
        server = self.server(name)
        tried = []
        crashed = None
        while True:
            try:
                target = self.pick(server, exclude=tried)
            except ServiceUnavailable:
                if crashed is not None:
                    raise crashed from None  # no other replica to take it: the 502 stands
                raise
            try:
                return await self._send(server, target, payload, request_id)
            except NotConnected as exc:
                tried.append(target)
                if target.child_name is None:
                    target.remote_ok = False
                if len(tried) >= len(server.targets):
                    if crashed is not None:
                        raise crashed from None
                    raise ServiceUnavailable('server {!r} is not accepting connections ({}); it may be '
                                             'restarting, retry shortly'.format(name, exc.reason)) from None
            except ChildConnectionLost as exc:
                if crashed is not None or not server.config.retry_on_crash or len(server.targets) < 2:
                    raise
                crashed = exc
                tried.append(target)
                self._log.info('server {name}: a replica dropped a request; sending it to another',
                               name=name)

    async def _send(self, server, target, payload, request_id):
        target.in_flight += 1
        self.in_flight += 1
        streaming = False
        try:
            result = await self.client.post_json(target.run_url, payload, server.config.timeout, repr(server.name),
                                                 request_id=request_id)
            if isinstance(result, ChildStream):
                # in flight until its last line: its first bytes are on their way, so a
                # failure from here on is never sent to another target
                streaming = True
                result.ended.addBoth(lambda _r: self._done(target))
            return result
        except ChildConnectionLost:
            # Its connections close a few ms before its exit is seen, and its port may still
            # accept: without this the next request would go to the dying process too.
            target.suspect_until = self._reactor.seconds() + SUSPECT_SECONDS
            raise
        finally:
            if not streaming:
                self._done(target)

    def _done(self, target):
        target.in_flight -= 1
        self.in_flight -= 1
        if not self.in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def when_idle(self):
        """Fires when no request is in flight to any server (at once if none is)."""
        if not self.in_flight:
            return defer.succeed(None)
        d = defer.Deferred(canceller=lambda d: self._idle_waiters.remove(d))
        self._idle_waiters.append(d)
        return d

    def spawned_server(self, name):
        """A server whose processes this gateway runs (admin routes act on these)."""
        server = self.server(name)
        if server.config.is_remote:
            raise BadRequest('server {!r} runs elsewhere (URLS); it cannot be started or stopped from here'.format(name))
        return server

    def is_stopped(self, server):
        """True for a server of ours none of whose processes should run: ``DISABLED``, or
        stopped with ``/kill_server``. A remote server (``URLS``) is never stopped from here."""
        return not server.config.is_remote and not any(
            self.supervisor.status(t.child_name).wanted for t in server.targets)

    def pids(self, name):
        return [self.supervisor.status(t.child_name).pid for t in self.servers[name].targets
                if t.child_name is not None]

    def start(self, server):
        """Start the server's stopped processes; False when all were running already."""
        started = False
        for target in server.targets:
            status = self.supervisor.status(target.child_name)
            if not (status.running and status.wanted):
                self.supervisor.start_child(target.child_name)
                started = True
        return started

    def stop(self, server):
        return defer.DeferredList([self.supervisor.stop_child(t.child_name) for t in server.targets
                                   if t.child_name is not None])

    async def each_ready_target(self, server, call):
        """``await call(target)`` on every ready target; 503 when none is ready."""
        targets = [t for t in server.targets if self.target_ready(t)]
        if not targets:
            raise self.unavailable(server)
        try:
            return await defer.gatherResults([defer.Deferred.fromCoroutine(call(t)) for t in targets])
        except defer.FirstError as exc:
            raise ServiceUnavailable('server {!r} did not answer: {}'.format(
                server.name, exc.subFailure.getErrorMessage())) from None

    def remember_workers(self, server, size):
        """Keep a new NR_WORKERS for the server's restarts."""
        endpoint = attr.evolve(server.config, nr_workers=size, entry=dict(server.config.entry, NR_WORKERS=size))
        server.config = endpoint
        for target in server.targets:
            if target.child_name is not None:
                self.supervisor.replace_spec(self.child_spec(endpoint, target))

    # -- measured state ------------------------------------------------------------------------
    async def ping(self, target, timeout=HEALTH_TIMEOUT):
        """The target's /health answer (a dict), or None when it does not answer 200 in time.

        A child that has not said it is ready is not asked: it cannot answer 200 yet, and a
        connection to a port nobody listens on yet can, in the ephemeral range, connect to
        itself and keep the port from the child for a minute."""
        if target.child_name is not None and not self.supervisor.is_ready(target.child_name):
            return None
        try:
            result = await self.client.get_json(target.url('/health'), timeout)
        except Exception:  # any failure to answer means "not online"; the cause is not needed here
            return None
        return result.body if result.status == 200 else None

    async def describe(self, server, now):
        """The ``AVAIL_SERVERS`` entry of one server, ONLINE measured now."""
        health = await self.ping_server(server)
        replicas = []
        for target, answer in zip(server.targets, health):
            entry = {'URL': target.base_url, 'ONLINE': answer is not None, 'IN_FLIGHT': target.in_flight}
            if target.child_name is not None:
                status = self.supervisor.status(target.child_name)
                entry.update({'PORT': server.config.ports[target.index], 'PID': status.pid,
                              'UPTIME': hms(now - status.started_at) if status.running and status.started_at else None,
                              'RESTARTS': status.restarts, 'RECYCLES': status.recycles,
                              'ERROR': status.last_error, 'STATE': _state(status, answer)})
            else:
                entry['STATE'] = 'online' if answer is not None else 'offline'
            entry['NR_WORKERS'] = answer.get('NR_WORKERS') if answer else None
            replicas.append(entry)
        first = replicas[0] if replicas else {}
        result = {
            'ONLINE': any(r['ONLINE'] for r in replicas),
            'ERROR': next((r.get('ERROR') for r in replicas if r.get('ERROR')), None),
            'URLS': [t.run_url.decode('ascii') for t in server.targets],
            'PATHS': sorted({t.execution_path for t in server.targets}) + list(SERVER_PATHS),
            'PORT': first.get('PORT'),
            'UPTIME': first.get('UPTIME'),
            'PID': first.get('PID'),
            'RESTARTS': sum(r.get('RESTARTS') or 0 for r in replicas),
            'RECYCLES': sum(r.get('RECYCLES') or 0 for r in replicas),
            'NR_WORKERS': next((r['NR_WORKERS'] for r in replicas if r['NR_WORKERS']), server.config.nr_workers),
            'DESCRIPTION': server.config.description,
            'STATE': first.get('STATE'),
            'DISABLED': server.config.disabled,
        }
        if len(replicas) > 1 or server.config.is_remote:
            result['REPLICAS'] = replicas
        return result

    def ping_server(self, server, timeout=HEALTH_TIMEOUT):
        """A Deferred list of the /health answers (or None) of each of the server's targets."""
        return defer.gatherResults([defer.Deferred.fromCoroutine(self.ping(t, timeout)) for t in server.targets])

    async def ping_servers(self, servers, timeout=HEALTH_TIMEOUT):
        """``{name: [answer or None per target]}`` for ``servers``, asked concurrently."""
        answers = await defer.gatherResults([self.ping_server(s, timeout) for s in servers])
        return {s.name: a for s, a in zip(servers, answers)}

    async def unready(self):
        """Names of the servers that should run and do not answer now."""
        wanted = [s for s in self.servers.values()
                  if s.config.is_remote or any(self.supervisor.status(t.child_name).wanted for t in s.targets)]
        health = await self.ping_servers(wanted)
        return [name for name, answers in health.items() if all(a is None for a in answers)]


def _state(status, answer):
    state = status.state
    if answer is not None and state in ('ready', 'recycling'):
        return 'online' if state == 'ready' else state
    if state == 'ready':
        return 'not answering'
    return state
