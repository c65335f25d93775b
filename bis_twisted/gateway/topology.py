"""The fleet's shape: a configured endpoint is a ``Server`` with one ``Target`` per child
process (``REPLICAS``) or per remote URL (``URLS``). ``Topology`` holds the servers of the
config in the file's order, builds them and their targets, registers the children with the
supervisor, and writes each child's command line (from ``bis_twisted.protocol``) and
environment. It says which server a name is and whether a server is stopped; it does not
route, count or change which processes serve (``routing``, ``inflight``, ``operations``).
"""

import difflib
import os
import secrets
from urllib.parse import urlsplit

import attr

from ..errors import BadRequest, UnknownSignature
from ..protocol import child_argv, child_environment, unix_address
from ..shared import logformat
from ..shared.limits import DEFAULT_BODIES_IN_FLIGHT_MB
from .childspec import ChildSpec

BLUE, GREEN = 0, 1  # a target's two slots: the config's own port, and its spare port


class Target:
    """One replica of a server: a child of ours, or a remote model server.

    A replica of ours has two slots (blue/green), each a child name and a port: the config's
    port and the spare port a reload or a recycle starts the new process on. ``slot`` says
    which of the two is in service now."""

    def __init__(self, server, index, base_url, child_name, execution_path, spare=None):
        self.server = server
        self.index = index
        self.base_url = base_url
        self.child_name = child_name  # None for a remote URL
        self.execution_path = execution_path
        self.run_url = (base_url + execution_path).encode('ascii')  # built once: the hot path
        # [(child name, base url)] of the two slots; BLUE is the live port of the config
        self.slots = [(child_name, base_url)] + ([spare] if spare else [])
        self.slot = BLUE
        self.active = True  # an autoscaled replica past the current count is not
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
        """The child names of both slots."""
        return [name for name, _ in self.slots]

    @property
    def port(self):
        return int(self.base_url.rsplit(':', 1)[1]) if self.child_name is not None else None

    @property
    def other_slot(self):
        """The slot not in service (where a reload starts), or None without a spare port."""
        return 1 - self.slot if len(self.slots) > 1 else None

    def use_slot(self, slot):
        self.slot = slot
        self.child_name, self.base_url = self.slots[slot]
        self.run_url = (self.base_url + self.execution_path).encode('ascii')


@attr.s
class Server:
    config = attr.ib()
    targets = attr.ib(factory=list)
    turns = attr.ib(default=0)  # picks so far: where a remote server's tie-break starts (spread.py)

    @property
    def name(self):
        return self.config.name


class Topology:
    """The servers of ``config`` (support entries aside) in the file's order, their children
    registered with ``supervisor``. Children also listen on Unix sockets named
    ``socket_names`` + port when given: ``client`` is told to reach them there."""

    def __init__(self, config, supervisor, client, endpoints_dir, python, execution_path, cwd=None,
                 remote_token=None, socket_names=None):
        self.config = config
        self.supervisor = supervisor
        self._client = client
        self.endpoints_dir = endpoints_dir
        self.execution_path = execution_path
        self._python = python
        self._cwd = cwd
        self._remote_token = remote_token
        self._socket_names = socket_names
        self.servers = {}
        for endpoint in config.endpoints:
            if not endpoint.is_support:
                self.servers[endpoint.name] = self.build_server(endpoint)

    # -- which server ----------------------------------------------------------------------------
    def server(self, name):
        """The server called ``name``; ``UnknownSignature`` (404) naming those one can call."""
        server = self.servers.get(name)
        if server is None:
            raise UnknownSignature(self._unknown(name))
        return server

    def spawned_server(self, name):
        """A server whose processes this gateway runs (admin routes act on these)."""
        server = self.server(name)
        if server.config.is_remote:
            raise BadRequest('server {!r} runs elsewhere (URLS); it cannot be started or stopped from here'.format(name))
        return server

    def _unknown(self, name):
        """The 404's message: the endpoints one can call now (not the DISABLED or killed ones),
        and the closest name when the asked one looks like a typo of it."""
        available = sorted(n for n, s in self.servers.items() if not self.is_stopped(s))
        close = difflib.get_close_matches(name, list(self.servers), n=1, cutoff=0.75) if isinstance(name, str) else []
        return 'unknown SIGNATURE {!r}{}; available: {}'.format(
            name, "; did you mean {!r}?".format(close[0]) if close else '', ', '.join(available) or 'none')

    def is_stopped(self, server):
        """True for a server of ours none of whose processes should run: ``DISABLED``, or
        stopped with ``/kill_server``. A remote server (``URLS``) is never stopped from here."""
        return not server.config.is_remote and not any(
            self.supervisor.status(t.child_name).wanted for t in server.targets)

    def pids(self, name):
        return [self.supervisor.status(t.child_name).pid for t in self.servers[name].targets
                if t.child_name is not None]

    # -- building ----------------------------------------------------------------------------------
    def build_server(self, endpoint):
        """The ``Server`` of a config entry, with its targets (not registered yet)."""
        server = Server(endpoint)
        if endpoint.is_remote:
            for i, url in enumerate(endpoint.urls):
                # "http://host:port/run": the path, when given, is that server's execution path
                parts = urlsplit(url)
                base = '{}://{}'.format(parts.scheme, parts.netloc)
                server.targets.append(Target(server, i, base, None, parts.path or self.execution_path))
        else:
            self._add_targets(server)
        return server

    def _add_targets(self, server):
        endpoint = server.config
        host = '127.0.0.1' if endpoint.host in ('0.0.0.0', '::') else endpoint.host
        for i, port in enumerate(endpoint.ports):
            child = endpoint.name if endpoint.reserved_replicas == 1 else '{}#{}'.format(endpoint.name, i)
            spare = None
            if i < len(endpoint.spare_ports):
                spare = (child + '+', 'http://{}:{}'.format(host, endpoint.spare_ports[i]))
            target = Target(server, i, 'http://{}:{}'.format(host, port), child, self.execution_path, spare)
            target.active = i < endpoint.replicas
            server.targets.append(target)
            for slot_port in [port] + list(endpoint.spare_ports[i:i + 1]):
                path = self.socket_path(slot_port)
                if path is not None:
                    self._client.use_unix_socket(host, slot_port, unix_address(path))

    def socket_path(self, port):
        """The Unix socket the child on ``port`` also listens on, as the child's flag writes
        it (``@name``: the abstract namespace), or None (TCP only)."""
        if self._socket_names is None:
            return None
        return '{}{}'.format(self._socket_names, port)

    def register_all(self):
        for server in self.servers.values():
            self.register(server)

    def register(self, server):
        """Give the supervisor the specs of both slots of each of the server's children; the
        live slot of an active replica of a server not ``DISABLED`` starts with it."""
        for target in server.targets:
            if target.child_name is None:
                continue
            for slot in range(len(target.slots)):
                start = slot == target.slot and target.active and not server.config.disabled
                self.supervisor.add(self.child_spec(server.config, target, slot), start=start)

    def respec(self, server, target, slot=None):
        """The supervisor starts ``slot`` (the live one by default) of ``target`` from the
        server's current entry from its next start on."""
        self.supervisor.replace_spec(self.child_spec(server.config, target, slot))

    def child_spec(self, endpoint, target, slot=None):
        slot = target.slot if slot is None else slot
        port = endpoint.ports[target.index] if slot == BLUE else endpoint.spare_ports[target.index]
        argv = child_argv(self._python, endpoints=self.endpoints_dir, name=endpoint.name,
                          server_class=endpoint.server_class, host=endpoint.host, port=port,
                          path=self.execution_path, max_body_mb=self._child_max_body_mb(endpoint),
                          max_bodies_mb=self._child_max_bodies_mb(), unix_socket=self.socket_path(port),
                          log_format=logformat.child_flag(), exit_with_parent=True, nice=endpoint.nice)
        # the entry may hold secrets (API keys): in the environment, which only the owner can
        # read (/proc/<pid>/environ is 0400), not on the command line, which `ps` shows to all
        env = child_environment(os.environ, endpoint.entry, target.admin_key, endpoint.device_of(target.index))
        return ChildSpec(name=target.names[slot], argv=argv, cwd=self._cwd, env=env,
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

    # -- a new config --------------------------------------------------------------------------------
    def add(self, endpoint):
        """Build, register (a spawned one) and keep a server for ``endpoint``; returns it."""
        server = self.build_server(endpoint)
        if not endpoint.is_remote:
            self.register(server)
        self.servers[endpoint.name] = server
        return server

    def forget(self, name):
        """Drop server ``name`` (its children are the caller's to remove); returns it."""
        return self.servers.pop(name)

    def use_config(self, config):
        """``config`` is the one in force: its limits for the children started from now on."""
        self.config = config

    def keep_order(self, names):
        """The servers in the order of ``names`` (the file's), as ``/list_servers`` shows them."""
        self.servers = {name: self.servers[name] for name in names}
