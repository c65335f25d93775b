"""The fleet's shape: a configured endpoint is a ``Server`` with one ``Target`` per child
process (``REPLICAS``) or per remote URL (``URLS``); ``Topology`` builds them from the
config, registers the children with the supervisor and writes each child's command line
(from ``bis_twisted.protocol``) and environment.
"""

import os
import secrets
from urllib.parse import urlsplit

import attr

from ..protocol import child_argv, child_environment, unix_address
from ..shared import logformat
from ..shared.limits import DEFAULT_BODIES_IN_FLIGHT_MB
from .childspec import ChildSpec


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
    turns = attr.ib(default=0)  # picks so far: where a remote server's tie-break starts (spread.py)

    @property
    def name(self):
        return self.config.name


class Topology:
    """The part of ``Fleet`` that builds servers and targets and the children's specs."""

    def _build_server(self, endpoint):
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
            child = endpoint.name if endpoint.slots == 1 else '{}#{}'.format(endpoint.name, i)
            spare = None
            if i < len(endpoint.spare_ports):
                spare = (child + '+', 'http://{}:{}'.format(host, endpoint.spare_ports[i]))
            target = Target(server, i, 'http://{}:{}'.format(host, port), child, self.execution_path, spare)
            target.active = i < endpoint.replicas
            server.targets.append(target)
            for side_port in [port] + list(endpoint.spare_ports[i:i + 1]):
                path = self.socket_path(side_port)
                if path is not None:
                    self.client.use_unix_socket(host, side_port, unix_address(path))

    def socket_path(self, port):
        """The Unix socket the child on ``port`` also listens on, as the child's flag writes
        it (``@name``: the abstract namespace), or None (TCP only)."""
        if self._socket_names is None:
            return None
        return '{}{}'.format(self._socket_names, port)

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
                          max_bodies_mb=self._child_max_bodies_mb(), unix_socket=self.socket_path(port),
                          log_format=logformat.child_flag(), exit_with_parent=True)
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
