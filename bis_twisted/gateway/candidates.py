"""The fleet a gateway's rollout candidates run in: a ``Fleet`` of its own beside the
gateway's, so that a candidate is in no list of endpoints (``/list_servers``, ``/ready``,
``/metrics``, the 404's "available") while it shares the gateway's supervisor (its children
are started, watched and stopped with the others) and its client to the children."""

import attr

from .fleet import Fleet


def candidate_fleet(fleet, reactor):
    """An empty ``Fleet`` that reaches its children as ``fleet`` does (the same client and
    supervisor, the same execution path, Unix sockets named as ``fleet`` names them: the
    ports, and so the names, are a candidate's own). Candidates are added and removed with
    its ``apply_config``."""
    probe = fleet.socket_path(0)
    names = probe[:-1] if probe is not None else None  # the prefix the port is appended to
    candidates = Fleet(attr.evolve(fleet.config, endpoints=()), fleet.supervisor, fleet.client, fleet.endpoints_dir,
                       reactor=reactor, execution_path=fleet.execution_path, socket_names=names)
    candidates.register_children()
    return candidates
