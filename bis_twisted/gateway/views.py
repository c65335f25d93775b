"""The fleet's measured state: ``/health`` pings of the targets (never cached) and the
``/list_servers`` entry of a server, with its uptimes in ``H:MM:SS``.
"""

from twisted.internet import defer

from ..protocol import SERVER_PATHS
from .status import hms

HEALTH_TIMEOUT = 2.0


class Views:
    """The part of ``Fleet`` that asks the targets how they are and describes them."""

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


def _state(status, answer):
    state = status.state
    if answer is not None and state in ('ready', 'recycling'):
        return 'online' if state == 'ready' else state
    if state == 'ready':
        return 'not answering'
    return state
