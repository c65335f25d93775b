"""``Fleet``: the model servers the gateway knows and how to reach them.

Its parts, by concern: ``topology`` (servers, targets, the children's command lines),
``routing`` (each request's way to a target, and the in-flight counts drains wait on),
``operations`` (start, stop, reload, recycle, scale, a new config), ``views`` (health
pings and the ``/list_servers`` entries).
"""

import sys

from twisted.logger import Logger

from ..protocol import DEFAULT_EXECUTION_PATH
from ..shared.waiters import Waiters
from .operations import Operations
from .routing import Routing
from .topology import Topology
from .views import Views


class Fleet(Topology, Routing, Operations, Views):
    """The servers of ``config`` (support entries aside), their children registered with
    ``supervisor``, reached through ``client``: over Unix sockets named ``socket_names`` +
    port when given (the kernel's TCP work per request skipped), else over TCP on loopback."""

    _log = Logger()

    def __init__(self, config, supervisor, client, endpoints_dir, reactor=None, python=None,
                 execution_path=DEFAULT_EXECUTION_PATH, cwd=None, remote_token=None, socket_names=None):
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
        self._socket_names = socket_names  # children also listen on Unix sockets so named: the way to them
        self.servers = {}
        self.in_flight = 0
        self._idle_waiters = Waiters()
        for endpoint in config.endpoints:
            if endpoint.is_support:
                continue
            self.servers[endpoint.name] = self._build_server(endpoint)
        self._child_in_flight = {}  # child name -> requests sent to it and not answered
        self._child_idle = {}       # child name -> Waiters fired when that count is 0
        self._reloading = set()     # servers with a reload under way
