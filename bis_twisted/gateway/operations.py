"""``Operations``: what the admin routes, the health monitor, the autoscaler and a config
reload do to the fleet: start and stop servers, resize their worker pools, reload them with
new processes beside the old ones (and recycle one that grew too large, the same way), scale
replicas, and apply a new config. A server has at most one replacement under way (a reload
or a recycle): ``busy(name)`` says so, and the others wait or leave it alone.
"""

import attr
from twisted.internet import defer
from twisted.logger import Logger

from ..errors import Conflict, ReloadFailed, ServiceUnavailable
from .supervisor import TrialFailed

UPDATE_WORKERS_TIMEOUT = 120.0  # growing loads models


class Operations:
    """Changes which processes serve ``topology``'s servers, through ``supervisor``; asks
    ready targets (``router``) with ``client``; drains through ``in_flight``."""

    _log = Logger()

    def __init__(self, topology, supervisor, router, in_flight, client):
        self._topology = topology
        self._supervisor = supervisor
        self._router = router
        self._in_flight = in_flight
        self._client = client
        self._replacing = set()  # servers with a reload or a recycle under way

    # -- start, stop, resize ---------------------------------------------------------------------
    def start(self, server):
        """Start the server's stopped processes; False when all were running already."""
        started = False
        for target in server.targets:
            if not target.active:
                continue
            status = self._supervisor.status(target.child_name)
            if not (status.running and status.wanted):
                self._supervisor.start_child(target.child_name)
                started = True
        return started

    def stop(self, server):
        return defer.DeferredList([self._supervisor.stop_child(name) for t in server.targets
                                   if t.child_name is not None for name in t.names])

    async def resize(self, server, size):
        """NR_WORKERS of every ready replica to ``size``, in place, kept for their restarts;
        the first failed answer (an ``Answer``), or None when all said yes. 503 when no
        replica is ready or one does not answer."""
        answers = await self._router.each_ready_target(server, lambda t: self._client.send_json(
            t.url('/update_workers'), {'NR_WORKERS': size}, UPDATE_WORKERS_TIMEOUT, self._topology.control_headers(t)))
        failed = [a for a in answers if a.status != 200]
        if failed:
            return failed[0]
        self._remember_workers(server, size)
        return None

    def _remember_workers(self, server, size):
        endpoint = attr.evolve(server.config, nr_workers=size, entry=dict(server.config.entry, NR_WORKERS=size))
        server.config = endpoint
        for target in server.targets:
            if target.child_name is not None:
                for slot in range(len(target.slots)):
                    self._topology.respec(server, target, slot)

    # -- replacing processes: new ones beside the old ones ------------------------------------------
    def busy(self, name):
        """Whether server ``name`` has its processes being replaced now (a reload or a
        recycle): the autoscaler and the memory check leave it alone until that is over."""
        return name in self._replacing

    async def reload(self, server):
        """Start new processes for ``server`` (its file read again), one replica at a time:
        each new one on its replica's other slot; once it is ready new requests go to it, the
        old one answers what it has and stops. When a new one does not start, its old one
        keeps serving and ``ReloadFailed`` says why (replicas already replaced stay so).
        Returns how many replicas were replaced."""
        name = server.name
        if name in self._replacing:
            raise Conflict('server {!r} is being reloaded already; wait for that reload to end'.format(name))
        self._replacing.add(name)
        try:
            replaced = 0
            for target in list(server.targets):
                if target.child_name is None or not target.active:
                    continue
                if not self._supervisor.status(target.child_name).wanted:
                    # stopped (killed or DISABLED): its next start reads the file again anyway
                    self._topology.respec(server, target)
                    continue
                await self._replace(server, target)
                replaced += 1
            return replaced
        finally:
            self._replacing.discard(name)

    async def recycle(self, server, target, reason):
        """Replace one replica that grew too large (``MAX_RSS_MB``) as a reload does: nothing
        in flight is dropped, nobody waits. Counted in its ``RECYCLES``; False (and logged)
        when it did not happen: the server is busy, or the new process did not start (the
        old one keeps serving and is sampled again)."""
        if server.name in self._replacing:
            return False
        self._replacing.add(server.name)
        self._log.info('recycling {child}: {reason}', child=target.child_name, reason=reason)
        try:
            await self._replace(server, target)
        except ReloadFailed as exc:
            self._log.warn('recycling {child} failed: {err}', child=target.child_name, err=exc.message)
            return False
        finally:
            self._replacing.discard(server.name)
        target.recycles += 1
        return True

    async def _replace(self, server, target):
        new_slot = target.other_slot
        if new_slot is None:
            raise ReloadFailed('server {!r} has no spare port to start a new process on'.format(server.name))
        old, new = target.child_name, target.names[new_slot]
        self._topology.respec(server, target, new_slot)
        self._log.info('reloading {child}: starting {new} beside it', child=old, new=new)
        try:
            await self._supervisor.start_trial(new)
        except TrialFailed as exc:
            raise ReloadFailed('server {!r}: the new process did not start, the old one keeps serving: {}'.format(
                server.name, exc)) from None
        target.use_slot(new_slot)
        target.suspect_until = 0.0
        self._log.info('reloaded {child}: new requests go to {new}; the old process finishes its requests',
                       child=old, new=new)
        await self.retire(old, server.config.timeout)

    async def retire(self, child, timeout, unless=None):
        """Stop process ``child`` once the requests sent to it are answered (at most
        ``timeout`` s), then TERM: it finishes what it has and exits. Not when ``unless()``
        says it is wanted again by then (scaled up again while it drained)."""
        await self._in_flight.when_child_idle(child, timeout)
        if unless is not None and unless():
            return
        await self._supervisor.stop_child(child)

    # -- autoscaling ---------------------------------------------------------------------------
    def scale_up(self, server):
        """Start the next replica's process; False when all reserved replicas run."""
        target = next((t for t in server.targets if not t.active and t.child_name is not None), None)
        if target is None:
            return False
        target.active = True
        self._topology.respec(server, target)
        self._supervisor.start_child(target.child_name)
        return True

    def scale_down(self, server):
        """Take the last running replica out of the rotation and stop it once its requests
        are answered; a Deferred, or None when one replica is left."""
        active = [t for t in server.targets if t.active]
        if len(active) <= 1:
            return None
        target = active[-1]
        target.active = False
        return defer.Deferred.fromCoroutine(self.retire(target.child_name, server.config.timeout,
                                                        unless=lambda: target.active))

    # -- servers added and removed, a new config ----------------------------------------------------
    def add_server(self, endpoint):
        """Serve ``endpoint`` (a config entry) too: its processes start when it is not
        ``DISABLED``; returns its ``Server``."""
        return self._topology.add(endpoint)

    async def remove_server(self, name):
        """Stop serving server ``name``: its processes are drained (as a reload drains the
        old one), stopped and forgotten. Fires once they have exited."""
        await self._remove(self._topology.forget(name))

    async def _remove(self, server):
        names = [name for t in server.targets if t.child_name is not None for name in t.names]
        for name in names:
            await self._in_flight.when_child_idle(name, server.config.timeout)
        await defer.DeferredList([self._supervisor.remove(name) for name in names])

    async def apply_config(self, config, resize=None):
        """Make the fleet serve ``config``: added servers start, removed ones are drained and
        stopped, changed ones reloaded (``NR_WORKERS``-only changes resized in place, or
        ``await resize(server, size)`` when given: a fleet whose servers are never resized
        refuses it there), unchanged ones are left alone. Returns ``{action: [names]}``, and
        ``FAILED``: ``{name: error}`` of changed servers whose new processes did not start (the
        old ones keep serving)."""
        done = {'ADDED': [], 'REMOVED': [], 'RELOADED': [], 'RESIZED': [], 'UNCHANGED': [], 'FAILED': {}}
        new = {e.name: e for e in config.endpoints if not e.is_support}
        for name in [n for n in self._topology.servers if n not in new]:
            await self.remove_server(name)
            done['REMOVED'].append(name)
        self._topology.use_config(config)
        for name, endpoint in new.items():
            server = self._topology.servers.get(name)
            if server is None:
                self.add_server(endpoint)
                done['ADDED'].append(name)
                continue
            old = server.config
            if old == endpoint:
                done['UNCHANGED'].append(name)
                continue
            if _without(old.entry, 'NR_WORKERS') == _without(endpoint.entry, 'NR_WORKERS') and \
                    attr.evolve(old, nr_workers=endpoint.nr_workers, entry=endpoint.entry) == endpoint:
                if resize is not None:
                    await resize(server, endpoint.nr_workers)
                    failed = None
                else:
                    failed = await self.resize(server, endpoint.nr_workers)
                if failed is not None:
                    raise ServiceUnavailable('server {!r}: NR_WORKERS {} not applied: {}'.format(
                        name, endpoint.nr_workers, failed.body.get('ERROR', failed.status)))
                server.config = endpoint
                done['RESIZED'].append(name)
                continue
            if old.ports != endpoint.ports or old.spare_ports != endpoint.spare_ports or \
                    old.is_remote or endpoint.is_remote or old.disabled != endpoint.disabled:
                # another shape (replicas, URLS, DISABLED): replaced as a whole
                await self.remove_server(name)
                self.add_server(endpoint)
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
        self._topology.keep_order(list(new))  # the file's order
        return done


def _without(entry, key):
    return {k: v for k, v in entry.items() if k != key}
