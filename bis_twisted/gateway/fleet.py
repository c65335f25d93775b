"""``Fleet``: the model servers the gateway knows and how to reach them, as one face for the
routes over parts that each own their state and take the parts they use:

- ``topology`` (``Topology``): the servers and targets built from the config, the
  children's specs, which server a name is;
- ``in_flight`` (``InFlight``): requests in flight per target and process, idle waiters;
- ``router`` (``Router``): each request's way to a target (``pick``, ``run``), the 503 that
  says why none can take it (``unavailable``);
- ``operations`` (``Operations``): start, stop, resize, reload, recycle, scale, add and
  remove servers, a new config; ``busy(name)`` while a server's processes are replaced;
- ``probe`` (``Probe``): ``/health`` pings, notifications, the ``/list_servers`` entries.

The health monitor and the autoscaler are given the parts they use, not this face.
"""

import sys

from ..protocol import DEFAULT_EXECUTION_PATH
from .inflight import InFlight
from .operations import Operations
from .probe import HEALTH_TIMEOUT, Probe
from .routing import Router
from .topology import Topology


class Fleet:
    """The servers of ``config`` (support entries aside), their children registered with
    ``supervisor``, reached through ``client``: over Unix sockets named ``socket_names`` +
    port when given (the kernel's TCP work per request skipped), else over TCP on loopback."""

    def __init__(self, config, supervisor, client, endpoints_dir, reactor=None, python=None,
                 execution_path=DEFAULT_EXECUTION_PATH, cwd=None, remote_token=None, socket_names=None):
        if reactor is None:
            from twisted.internet import reactor
        self.supervisor = supervisor
        self.client = client
        self.topology = Topology(config, supervisor, client, endpoints_dir, python or sys.executable,
                                 execution_path, cwd=cwd, remote_token=remote_token, socket_names=socket_names)
        self.in_flight_counts = InFlight(reactor)
        self.router = Router(self.topology, supervisor, client, self.in_flight_counts, reactor)
        self.operations = Operations(self.topology, supervisor, self.router, self.in_flight_counts, client)
        self.probe = Probe(self.topology, supervisor, client, self.router, self.operations, reactor)

    def register_children(self):
        """Hand the children to the supervisor (they start with it)."""
        self.supervisor.listeners.append(self.router.child_event)
        self.topology.register_all()

    # -- the topology ------------------------------------------------------------------------------
    @property
    def servers(self):
        return self.topology.servers

    @property
    def config(self):
        return self.topology.config

    @property
    def endpoints_dir(self):
        return self.topology.endpoints_dir

    @property
    def execution_path(self):
        return self.topology.execution_path

    def server(self, name):
        return self.topology.server(name)

    def spawned_server(self, name):
        return self.topology.spawned_server(name)

    def is_stopped(self, server):
        return self.topology.is_stopped(server)

    def pids(self, name):
        return self.topology.pids(name)

    def socket_path(self, port):
        return self.topology.socket_path(port)

    # -- in flight -----------------------------------------------------------------------------------
    @property
    def in_flight(self):
        """Requests sent to any server and not answered yet."""
        return self.in_flight_counts.total

    def when_idle(self):
        return self.in_flight_counts.when_idle()

    def when_child_idle(self, child, timeout):
        return self.in_flight_counts.when_child_idle(child, timeout)

    # -- routing -------------------------------------------------------------------------------------
    def run(self, name, payload, request_id=None, answer_fields=None):
        return self.router.run(name, payload, request_id, answer_fields)

    def pick(self, server, exclude=()):
        return self.router.pick(server, exclude)

    def unavailable(self, server):
        return self.router.unavailable(server)

    def target_ready(self, target):
        return self.router.target_ready(target)

    # -- operations ----------------------------------------------------------------------------------
    def start(self, server):
        return self.operations.start(server)

    def stop(self, server):
        return self.operations.stop(server)

    def resize(self, server, size):
        return self.operations.resize(server, size)

    def busy(self, name):
        return self.operations.busy(name)

    def reload(self, server):
        return self.operations.reload(server)

    def recycle(self, server, target, reason):
        return self.operations.recycle(server, target, reason)

    def retire(self, child, timeout, unless=None):
        return self.operations.retire(child, timeout, unless)

    def scale_up(self, server):
        return self.operations.scale_up(server)

    def scale_down(self, server):
        return self.operations.scale_down(server)

    def add_server(self, endpoint):
        return self.operations.add_server(endpoint)

    def remove_server(self, name):
        return self.operations.remove_server(name)

    def apply_config(self, config, resize=None):
        return self.operations.apply_config(config, resize)

    # -- the probe -----------------------------------------------------------------------------------
    def ping(self, target, timeout=HEALTH_TIMEOUT):
        return self.probe.ping(target, timeout)

    def ping_server(self, server, timeout=HEALTH_TIMEOUT):
        return self.probe.ping_server(server, timeout)

    def ping_servers(self, servers, timeout=HEALTH_TIMEOUT):
        return self.probe.ping_servers(servers, timeout)

    def unready(self):
        return self.probe.unready()

    def notifications(self, server):
        return self.probe.notifications(server)

    def describe(self, server, now=None):
        return self.probe.describe(server, now)
