"""``Probe``: asks the fleet's targets how they are, now (never cached): ``/health`` pings,
the servers that do not answer (``/ready``), each replica's notifications, and the
``/list_servers`` entry of a server, measured, with its uptimes in ``H:MM:SS``.
"""

from twisted.internet import defer

from ..protocol import SERVER_PATHS
from .status import hms

HEALTH_TIMEOUT = 2.0
NOTIFICATIONS_TIMEOUT = 5.0


class Probe:
    """Asks ``topology``'s targets with ``client``; ``supervisor`` says which children are
    ready and how they run, ``router`` which targets can be asked, ``operations`` which
    servers are being replaced; times come from ``clock``."""

    def __init__(self, topology, supervisor, client, router, operations, clock):
        self._topology = topology
        self._supervisor = supervisor
        self._client = client
        self._router = router
        self._operations = operations
        self._clock = clock

    def health(self, target, timeout):
        """The target's raw ``/health`` call: a Deferred ``Answer``, failing as the call does
        (the health monitor tells a refused connection from one that timed out)."""
        return defer.ensureDeferred(self._client.get_json(target.url('/health'), timeout))

    async def ping(self, target, timeout=HEALTH_TIMEOUT):
        """The target's /health answer (a dict), or None when it does not answer 200 in time.

        A child that has not said it is ready is not asked: it cannot answer 200 yet, and a
        connection to a port nobody listens on yet can, in the ephemeral range, connect to
        itself and keep the port from the child for a minute."""
        if target.child_name is not None and not self._supervisor.is_ready(target.child_name):
            return None
        try:
            result = await self.health(target, timeout)
        except Exception:  # any failure to answer means "not online"; the cause is not needed here
            return None
        return result.body if result.status == 200 else None

    def ping_server(self, server, timeout=HEALTH_TIMEOUT):
        """A Deferred list of the /health answers (or None) of each of the server's targets."""
        return defer.gatherResults([defer.Deferred.fromCoroutine(self.ping(t, timeout)) for t in server.targets])

    async def ping_servers(self, servers, timeout=HEALTH_TIMEOUT):
        """``{name: [answer or None per target]}`` for ``servers``, asked concurrently."""
        answers = await defer.gatherResults([self.ping_server(s, timeout) for s in servers])
        return {s.name: a for s, a in zip(servers, answers)}

    async def unready(self):
        """Names of the servers that should run and do not answer now."""
        wanted = [s for s in self._topology.servers.values() if not self._topology.is_stopped(s)]
        health = await self.ping_servers(wanted)
        return [name for name, answers in health.items() if all(a is None for a in answers)]

    async def notifications(self, server):
        """The ``/notifications`` answers of the server's ready replicas; 503 when none is."""
        return await self._router.each_ready_target(server, lambda t: self._client.get_json(
            t.url('/notifications'), NOTIFICATIONS_TIMEOUT))

    async def describe(self, server, now=None):
        """The ``AVAIL_SERVERS`` entry of one server, ONLINE measured now (``now``: the
        clock's time by default)."""
        now = self._clock.seconds() if now is None else now
        health = await self.ping_server(server)
        replicas = []
        for target, answer in zip(server.targets, health):
            if not target.active:
                continue
            entry = {'URL': target.base_url, 'ONLINE': answer is not None, 'IN_FLIGHT': target.in_flight}
            if target.child_name is not None:
                status = self._supervisor.status(target.child_name)
                entry.update({'PORT': target.port, 'PID': status.pid,
                              'UPTIME': hms(now - status.started_at) if status.running and status.started_at else None,
                              'RESTARTS': status.restarts, 'RECYCLES': target.recycles,
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
        if self._operations.busy(server.name):
            result['RELOADING'] = True
        return result


def _state(status, answer):
    state = status.state
    if answer is not None and state in ('ready', 'recycling'):
        return 'online' if state == 'ready' else state
    if state == 'ready':
        return 'not answering'
    return state
