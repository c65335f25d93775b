"""The candidates of a gateway's rollouts: each one a server of its own, ``<endpoint>@candidate``,
in a ``Fleet`` beside the gateway's, so that it is in no list of endpoints (``/list_servers``,
``/ready``, ``/metrics``, the 404's "available") while it shares the gateway's supervisor (its
children are started, watched and stopped with the others) and its client to the children.
A candidate's config entry is the stable's with the rollout's ``SERVER_CLASS`` and ``CONFIG``,
on ports no other server uses."""

import attr
from twisted.internet import defer

from .fleet import Fleet
from .rollout_plan import CANDIDATE_SUFFIX, candidate_entry, endpoint_of, promoted_entry

SHADOW_NICE = 19  # the lowest CPU priority: a shadow candidate runs on what the stable leaves


def candidate_fleet(fleet, reactor):
    """An empty ``Fleet`` that reaches its children as ``fleet`` does (the same client and
    supervisor, the same execution path, Unix sockets named as ``fleet`` names them: the
    ports, and so the names, are a candidate's own)."""
    probe = fleet.socket_path(0)
    names = probe[:-1] if probe is not None else None  # the prefix the port is appended to
    candidates = Fleet(attr.evolve(fleet.config, endpoints=()), fleet.supervisor, fleet.client, fleet.endpoints_dir,
                       reactor=reactor, execution_path=fleet.execution_path, socket_names=names)
    candidates.register_children()
    return candidates


class Candidates:
    """The candidates beside ``stable_fleet`` (the gateway's fleet), in ``fleet`` (built from
    it on first use unless given); ``gateway_port``: where the count of ports starts."""

    def __init__(self, stable_fleet, reactor, gateway_port=None, fleet=None):
        self._stable = stable_fleet
        self._reactor = reactor
        self._gateway_port = gateway_port
        self._fleet = fleet
        self._members = {}  # endpoint -> its candidate's EndpointConfig

    def fleet(self):
        if self._fleet is None:
            self._fleet = candidate_fleet(self._stable, self._reactor)
        return self._fleet

    def run(self, name, payload, request_id=None, answer_fields=None):
        return self.fleet().run(name, payload, request_id, answer_fields)

    def add(self, endpoint, candidate):
        """Register ``candidate`` (stopped) for ``endpoint``; the names of its children."""
        self._members[endpoint] = candidate
        server = self.fleet().add_server(candidate)
        return [t.child_name for t in server.targets if t.active]

    def start(self, children):
        """Start the children on trial: fires when all are ready, fails with the first one's
        ``TrialFailed`` (wrapped in ``FirstError``)."""
        supervisor = self.fleet().supervisor
        return defer.gatherResults([supervisor.start_trial(child) for child in children], consumeErrors=True)

    async def remove(self, endpoint):
        """Drain and stop the candidate of ``endpoint`` (its requests in flight answered first)."""
        candidate = self._members.pop(endpoint, None)
        if candidate is not None:
            await self.fleet().remove_server(candidate.name)

    def endpoint(self, stable, plan):
        """The candidate's ``EndpointConfig``: the stable's entry with ``SERVER_CLASS`` and
        ``CONFIG`` applied, on ports no server uses, registered stopped (it starts on trial)."""
        taken = self._ports_taken()
        endpoint = endpoint_of(stable.name + CANDIDATE_SUFFIX, candidate_entry(stable, plan),
                               self._stable.endpoints_dir, self._gateway_port or max(taken or [0]),
                               {'': (tuple(taken), ())})
        # a shadow's answers are thrown away: its processes take only the CPU the stable leaves
        return attr.evolve(endpoint, disabled=True, nice=SHADOW_NICE if plan.shadow else None)

    def promoted(self, stable, plan):
        """The stable's ``EndpointConfig`` with the candidate's code and config, on the
        stable's own ports and with its own replicas."""
        endpoint = endpoint_of(stable.name, promoted_entry(stable, plan), self._stable.endpoints_dir,
                               self._gateway_port or max(self._ports_taken() or [0]),
                               {stable.name: (stable.ports, stable.spare_ports)})
        return attr.evolve(endpoint, ports=stable.ports, spare_ports=stable.spare_ports, disabled=stable.disabled)

    def _ports_taken(self):
        taken = set()
        for endpoint in [s.config for s in self._stable.servers.values()] + list(self._members.values()):
            taken.update(endpoint.ports)
            taken.update(endpoint.spare_ports)
        return taken

    def ports_held(self):
        """``{candidate name: (ports, spare ports)}``: for a config reload to keep off them."""
        return {c.name: (c.ports, c.spare_ports) for c in self._members.values()}

