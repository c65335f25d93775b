"""``Fleet``: the model servers the gateway knows and how to reach them.

A configured endpoint is a ``Server`` with one ``Target`` per child process (``REPLICAS``) or
per remote URL (``URLS``). The fleet registers the children with the supervisor, picks the
ready target with the fewest requests in flight, and measures (never caches) whether a
target answers.
"""

import os
import secrets
import sys
from urllib.parse import urlsplit

import attr
from twisted.internet import defer
from twisted.logger import Logger

from ..errors import (BadRequest, Conflict, ReloadFailed, ServerFailed, ServerStopped, ServiceUnavailable,
                      UnknownSignature)
from ..protocol import SERVER_PATHS, child_argv, child_environment
from ..shared.limits import DEFAULT_BODIES_IN_FLIGHT_MB
from ..shared.waiters import Waiters
from .proxy import ChildConnectionLost, ChildStream, NotConnected
from .supervisor import ChildSpec, TrialFailed

HEALTH_TIMEOUT = 2.0
SUSPECT_SECONDS = 2.0  # how long a target that dropped a request is skipped, at most


def hms(seconds):
    """``H:MM:SS``, hours past 24 included (``25:00:05``, not ``1 day, 1:00:05``)."""
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    hours, minutes = divmod(minutes, 60)
    return '{}:{:02d}:{:02d}'.format(hours, minutes, secs)


class Target:
    """One process serving a server: a child of ours, or a remote model server.

    A child's slot has two names and two ports (the live one and the spare one a reload
    starts the new process on): ``side`` says which pair is in service now."""

    def __init__(self, server, index, base_url, child_name, execution_path, spare=None):
        self.server = server
        self.index = index
        self.base_url = base_url
        self.child_name = child_name  # None for a remote URL
        self.execution_path = execution_path
        self.run_url = (base_url + execution_path).encode('ascii')  # built once: the hot path
        # [(child name, base url)] of the two sides; side 0 is the live port of the config
        self.sides = [(child_name, base_url)] + ([spare] if spare else [])
        self.side = 0
        self.active = True  # an autoscaled slot past the current count is not
        self.recycles = 0  # replaced by a new process beside it for MAX_RSS_MB
        self.in_flight = 0
        self.remote_ok = True  # remote targets: last ping's verdict
        self.suspect_until = 0.0  # dropped a request: kept out of the rotation until then
        # the bearer token of the server's control route: a random key per child, made at
        # the gateway's start; a remote server's is the gateway's own BIS_ADMIN_TOKEN
        self.admin_key = secrets.token_urlsafe(32) if child_name is not None else None

    def url(self, path):
        return (self.base_url + path).encode('ascii')

    @property
    def names(self):
        return [name for name, _ in self.sides]

    @property
    def port(self):
        return int(self.base_url.rsplit(':', 1)[1]) if self.child_name is not None else None

    def use_side(self, side):
        self.side = side
        self.child_name, self.base_url = self.sides[side]
        self.run_url = (self.base_url + self.execution_path).encode('ascii')


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
        self._idle_waiters = Waiters()
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
                self._add_targets(server)
            self.servers[endpoint.name] = server
        self._child_in_flight = {}  # child name -> requests sent to it and not answered
        self._child_idle = {}       # child name -> Waiters fired when that count is 0
        self._reloading = set()     # servers with a reload under way

    def _add_targets(self, server):
        endpoint = server.config
        host = '127.0.0.1' if endpoint.host in ('0.0.0.0', '::') else endpoint.host
        for i, port in enumerate(endpoint.ports):
            child = endpoint.name if endpoint.slots == 1 else '{}#{}'.format(endpoint.name, i)
            spare = None
            if i < len(endpoint.spare_ports):
                spare = (child + '+', 'http://{}:{}'.format(host, endpoint.spare_ports[i]))
            target = Target(server, i, 'http://{}:{}'.format(host, port), child, self.execution_path, spare)
            target.active = i < endpoint.replicas
            server.targets.append(target)

    def register_children(self):
        self.supervisor.listeners.append(self._child_event)
        for server in self.servers.values():
            self._register(server)

    def _register(self, server):
        for target in server.targets:
            if target.child_name is None:
                continue
            for side, name in enumerate(target.names):
                start = side == target.side and target.active and not server.config.disabled
                self.supervisor.add(self.child_spec(server.config, target, side), start=start)

    def child_spec(self, endpoint, target, side=None):
        side = target.side if side is None else side
        port = endpoint.ports[target.index] if side == 0 else endpoint.spare_ports[target.index]
        argv = child_argv(self._python, endpoints=self.endpoints_dir, name=endpoint.name,
                          server_class=endpoint.server_class, host=endpoint.host, port=port,
                          path=self.execution_path, max_body_mb=self._child_max_body_mb(endpoint),
                          max_bodies_mb=self._child_max_bodies_mb(), exit_with_parent=True)
        # the entry may hold secrets (API keys): in the environment, which only the owner can
        # read (/proc/<pid>/environ is 0400), not on the command line, which `ps` shows to all
        env = child_environment(os.environ, endpoint.entry, target.admin_key, endpoint.device_of(target.index))
        return ChildSpec(name=target.names[side], argv=argv, cwd=self._cwd, env=env,
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
            if target in exclude or not target.active or not self.target_ready(target):
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
        states = [self.supervisor.status(t.child_name) for t in server.targets if t.active]
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
        child = target.child_name
        self._child_in_flight[child] = self._child_in_flight.get(child, 0) + 1
        streaming = False
        try:
            result = await self.client.post_json(target.run_url, payload, server.config.timeout, repr(server.name),
                                                 request_id=request_id)
            if isinstance(result, ChildStream):
                # in flight until its last line: its first bytes are on their way, so a
                # failure from here on is never sent to another target
                streaming = True
                result.ended.addBoth(lambda _r: self._done(target, child))
            return result
        except ChildConnectionLost:
            # Its connections close a few ms before its exit is seen, and its port may still
            # accept: without this the next request would go to the dying process too.
            target.suspect_until = self._reactor.seconds() + SUSPECT_SECONDS
            raise
        finally:
            if not streaming:
                self._done(target, child)

    def _done(self, target, child):
        target.in_flight -= 1
        self.in_flight -= 1
        left = self._child_in_flight[child] = self._child_in_flight[child] - 1
        if not left:
            del self._child_in_flight[child]
            waiters = self._child_idle.pop(child, None)
            if waiters is not None:
                waiters.fire(None)
        if not self.in_flight:
            self._idle_waiters.fire(None)

    def when_idle(self):
        """Fires when no request is in flight to any server (at once if none is)."""
        if not self.in_flight:
            return defer.succeed(None)
        return self._idle_waiters.wait()

    def when_child_idle(self, child, timeout):
        """Fires when no request sent to process ``child`` is waiting for its answer (at
        once if none is), or after ``timeout`` seconds anyway."""
        if not self._child_in_flight.get(child):
            return defer.succeed(None)
        d = self._child_idle.setdefault(child, Waiters()).wait()
        d.addTimeout(timeout, self._reactor)
        d.addErrback(lambda f: f.trap(defer.TimeoutError) and None)
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
            if not target.active:
                continue
            status = self.supervisor.status(target.child_name)
            if not (status.running and status.wanted):
                self.supervisor.start_child(target.child_name)
                started = True
        return started

    def stop(self, server):
        return defer.DeferredList([self.supervisor.stop_child(name) for t in server.targets
                                   if t.child_name is not None for name in t.names])

    async def each_ready_target(self, server, call):
        """``await call(target)`` on every ready target; 503 when none is ready."""
        targets = [t for t in server.targets if t.active and self.target_ready(t)]
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
                for side in range(len(target.sides)):
                    self.supervisor.replace_spec(self.child_spec(endpoint, target, side))

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
            if not target.active:
                continue
            entry = {'URL': target.base_url, 'ONLINE': answer is not None, 'IN_FLIGHT': target.in_flight}
            if target.child_name is not None:
                status = self.supervisor.status(target.child_name)
                entry.update({'PORT': target.port, 'PID': status.pid,
                              'UPTIME': hms(now - status.started_at) if status.running and status.started_at else None,
                              'RESTARTS': status.restarts, 'RECYCLES': status.recycles + target.recycles,
                              'ERROR': status.last_error, 'STATE': _state(status, answer)})
            else:
                entry['STATE'] = 'online' if answer is not None else 'offline'
            entry['NR_WORKERS'] = answer.get('NR_WORKERS') if answer else None
            replicas.append(entry)
        first = replicas[0] if replicas else {}
        result = {
            'ONLINE': any(r['ONLINE'] for r in replicas),
            'ERROR': next((r.get('ERROR') for r in replicas if r.get('ERROR')), None),
            'URLS': [t.run_url.decode('ascii') for t in server.targets if t.active],
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
        if len(replicas) > 1 or server.config.is_remote or server.config.autoscaled:
            result['REPLICAS'] = replicas
        if server.config.autoscaled:
            result['REPLICAS_CURRENT'] = sum(1 for r in replicas if r['ONLINE'])
            result['REPLICAS_TARGET'] = len(replicas)
            result['MIN_REPLICAS'] = server.config.min_replicas or 1
            result['MAX_REPLICAS'] = server.config.max_replicas
        if server.name in self._reloading:
            result['RELOADING'] = True
        return result

    # -- reloads: new processes beside the old ones --------------------------------------------
    async def reload(self, server):
        """Start new processes for ``server`` (its file read again), one replica at a time:
        each new one on its slot's other port; once it is ready new requests go to it, the
        old one answers what it has and stops. When a new one does not start, its old one
        keeps serving and ``ReloadFailed`` says why (replicas already replaced stay so).
        Returns how many replicas were replaced."""
        name = server.name
        if name in self._reloading:
            raise Conflict('server {!r} is being reloaded already; wait for that reload to end'.format(name))
        self._reloading.add(name)
        try:
            replaced = 0
            for target in list(server.targets):
                if target.child_name is None or not target.active:
                    continue
                if not self.supervisor.status(target.child_name).wanted:
                    # stopped (killed or DISABLED): its next start reads the file again anyway
                    self.supervisor.replace_spec(self.child_spec(server.config, target))
                    continue
                await self._reload_target(server, target)
                replaced += 1
            return replaced
        finally:
            self._reloading.discard(name)

    async def _reload_target(self, server, target):
        if len(target.sides) < 2:
            raise ReloadFailed('server {!r} has no spare port to start a new process on'.format(server.name))
        old, new_side = target.child_name, 1 - target.side
        new = target.names[new_side]
        self.supervisor.replace_spec(self.child_spec(server.config, target, new_side))
        self._log.info('reloading {child}: starting {new} beside it', child=old, new=new)
        try:
            await self.supervisor.start_trial(new)
        except TrialFailed as exc:
            raise ReloadFailed('server {!r}: the new process did not start, the old one keeps serving: {}'.format(
                server.name, exc)) from None
        target.use_side(new_side)
        target.suspect_until = 0.0
        self._log.info('reloaded {child}: new requests go to {new}; the old process finishes its requests',
                       child=old, new=new)
        await self.retire(old, server.config.timeout)

    async def recycle(self, server, target, reason):
        """Replace one replica that grew too large (``MAX_RSS_MB``) as a reload does;
        counted in its ``RECYCLES``. A new process that does not start is logged; the old
        one keeps serving (and is sampled again)."""
        if server.name in self._reloading:
            return
        self._reloading.add(server.name)
        self._log.info('recycling {child}: {reason}', child=target.child_name, reason=reason)
        try:
            await self._reload_target(server, target)
            target.recycles += 1
        except ReloadFailed as exc:
            self._log.warn('recycling {child} failed: {err}', child=target.child_name, err=exc.message)
        finally:
            self._reloading.discard(server.name)

    async def retire(self, child, timeout, unless=None):
        """Stop process ``child`` once the requests sent to it are answered (at most
        ``timeout`` s), then TERM: it finishes what it has and exits. Not when ``unless()``
        says it is wanted again by then (scaled up again while it drained)."""
        await self.when_child_idle(child, timeout)
        if unless is not None and unless():
            return
        await self.supervisor.stop_child(child)

    # -- autoscaling ---------------------------------------------------------------------------
    def active_count(self, server):
        return sum(1 for t in server.targets if t.active)

    def scale_up(self, server):
        """Start the next slot's process; False when all slots run."""
        target = next((t for t in server.targets if not t.active and t.child_name is not None), None)
        if target is None:
            return False
        target.active = True
        self.supervisor.replace_spec(self.child_spec(server.config, target))
        self.supervisor.start_child(target.child_name)
        return True

    def scale_down(self, server):
        """Take the last running slot out of the rotation and stop it once its requests are
        answered; a Deferred, or None when one slot is left."""
        active = [t for t in server.targets if t.active]
        if len(active) <= 1:
            return None
        target = active[-1]
        target.active = False
        return defer.Deferred.fromCoroutine(self.retire(target.child_name, server.config.timeout,
                                                        unless=lambda: target.active))

    # -- config reloads ------------------------------------------------------------------------
    async def apply_config(self, config, resize):
        """Make the fleet serve ``config``: added servers start, removed ones are drained and
        stopped, changed ones reloaded (``NR_WORKERS``-only changes: ``await resize(server,
        size)``), unchanged ones are left alone. Returns ``{action: [names]}``, and ``FAILED``:
        ``{name: error}`` of changed servers whose new processes did not start (the old ones
        keep serving)."""
        done = {'ADDED': [], 'REMOVED': [], 'RELOADED': [], 'RESIZED': [], 'UNCHANGED': [], 'FAILED': {}}
        new = {e.name: e for e in config.endpoints if not e.is_support}
        for name in [n for n in self.servers if n not in new]:
            server = self.servers.pop(name)
            await self._remove(server)
            done['REMOVED'].append(name)
        self.config = config
        for name, endpoint in new.items():
            server = self.servers.get(name)
            if server is None:
                self._add_server(endpoint)
                done['ADDED'].append(name)
                continue
            old = server.config
            if old == endpoint:
                done['UNCHANGED'].append(name)
                continue
            if _without(old.entry, 'NR_WORKERS') == _without(endpoint.entry, 'NR_WORKERS') and \
                    attr.evolve(old, nr_workers=endpoint.nr_workers, entry=endpoint.entry) == endpoint:
                await resize(server, endpoint.nr_workers)
                server.config = endpoint
                done['RESIZED'].append(name)
                continue
            if old.ports != endpoint.ports or old.spare_ports != endpoint.spare_ports or \
                    old.is_remote or endpoint.is_remote or old.disabled != endpoint.disabled:
                # another shape (replica slots, URLS, DISABLED): replaced as a whole
                self.servers.pop(name)
                await self._remove(server)
                self._add_server(endpoint)
                done['RELOADED'].append(name)
                continue
            server.config = endpoint
            try:
                await self.reload(server)
            except (ReloadFailed, Conflict) as exc:
                # its old processes keep serving; the new entry is used from their next start
                done['FAILED'][name] = exc.message
                continue
            done['RELOADED'].append(name)
        self.servers = {name: self.servers[name] for name in new}  # the file's order
        return done

    def _add_server(self, endpoint):
        server = Server(endpoint)
        if endpoint.is_remote:
            for i, url in enumerate(endpoint.urls):
                parts = urlsplit(url)
                base = '{}://{}'.format(parts.scheme, parts.netloc)
                server.targets.append(Target(server, i, base, None, parts.path or self.execution_path))
        else:
            self._add_targets(server)
            self._register(server)
        self.servers[endpoint.name] = server
        return server

    async def _remove(self, server):
        names = [name for t in server.targets if t.child_name is not None for name in t.names]
        for name in names:
            await self.when_child_idle(name, server.config.timeout)
        await defer.DeferredList([self.supervisor.remove(name) for name in names])

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


def _without(entry, key):
    return {k: v for k, v in entry.items() if k != key}


def _state(status, answer):
    state = status.state
    if answer is not None and state in ('ready', 'recycling'):
        return 'online' if state == 'ready' else state
    if state == 'ready':
        return 'not answering'
    return state
