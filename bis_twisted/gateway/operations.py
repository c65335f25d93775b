"""What the admin routes, the health monitor and the autoscaler do to the fleet: start and
stop servers, resize them, reload them with new processes beside the old ones (and recycle
one that grew too large), scale replicas, and apply a new config file.
"""

import attr
from twisted.internet import defer
from twisted.logger import Logger

from ..errors import BadRequest, Conflict, ReloadFailed, ServiceUnavailable
from .supervisor import TrialFailed


class Operations:
    """The part of ``Fleet`` that changes which processes serve."""

    _log = Logger()

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

    # -- reloads: new processes beside the old ones --------------------------------------------
    def busy(self, name):
        """Whether server ``name`` has its processes being replaced now (a reload or a
        recycle): the autoscaler and the memory check leave it alone until that is over."""
        return name in self._reloading

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
        server = self._build_server(endpoint)
        if not endpoint.is_remote:
            self._register(server)
        self.servers[endpoint.name] = server
        return server

    async def _remove(self, server):
        names = [name for t in server.targets if t.child_name is not None for name in t.names]
        for name in names:
            await self.when_child_idle(name, server.config.timeout)
        await defer.DeferredList([self.supervisor.remove(name) for name in names])


def _without(entry, key):
    return {k: v for k, v in entry.items() if k != key}
