"""The life of one model-server process, as a Twisted service tree (as the gateway's is).

Run by the gateway (one child process per endpoint and replica) or alone, on another machine::

    BIS_ADMIN_TOKEN=<secret> python -m bis_twisted.model_server --endpoints endpoints \\
        --name dummy_model_demo2 --host 127.0.0.1 --port 5003 --config-json '{"NR_WORKERS": 2}'

The control route (``/update_workers``) needs ``Authorization: Bearer <token>``: the
gateway hands each child a random key of its own in ``BIS_SERVER_ADMIN_KEY``, a server run
alone takes ``BIS_ADMIN_TOKEN``, and without either the route is refused. The gateway passes
the endpoint's config entry in ``BIS_SERVER_CONFIG``, not on the command line, where ``ps``
would show its secrets to every user (a process's environment is readable by its owner only).

``ModelServerService`` holds, in start order: the workers (``WorkersService``: loads them,
then prints ``BIS-SERVER-READY <port>`` on stdout), the listening port (a
``StreamServerEndpointService``: it listens at once and answers 503 while the workers load)
and, with ``--exit-with-parent``, ``ParentWatchService``: the process exits when its stdin
closes, i.e. when the gateway that spawned it is gone, however it died. Services stop in the
reverse order: the port closes first, then running requests finish (bounded) and their
answers are written. ``run`` stops the tree on SIGTERM/SIGINT, as twistd would.
"""

import json
import os
import signal
import stat
import sys
from typing import List, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints, stdio
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from ..errors import ConfigError, EndpointLoadError
from ..protocol import (CHILD_KEY_VARIABLE, CONFIG_VARIABLE, DEFAULT_MAX_BODY_MB, READY_LINE, TOKEN_VARIABLE,
                        parse_child_args, unix_address)
from ..shared import logformat, tracing
from ..shared.drain import ConnectionDrain
from ..shared.gctune import freeze_startup_objects
from ..shared.limits import Limits
from ..shared.security import AdminGuard
from ..shared.stalls import StallWatch
from ..shared.twisted_private import lean_dispatch
from ..shared.web import LISTEN_BACKLOG, make_site
from .app import ModelServer
from .frames import InnerOrHTTP
from .loader import load_endpoint
from .pool import WorkerLoadError

STOP_DRAIN_SECONDS = 4.0   # running requests get this long to finish on TERM
ANSWER_FLUSH_SECONDS = 0.5  # then their answers this long to be written


class _PortEndpoint:
    """A server endpoint that remembers the port it listened on: ``port`` fires with it
    (or with the failure to listen), for the ready line, which names the port."""

    def __init__(self, wrapped):
        self._wrapped = wrapped
        self.port = defer.Deferred()

    def listen(self, factory):
        d = self._wrapped.listen(factory)
        d.addBoth(self._listened)
        return d

    def _listened(self, result):
        if not self.port.called:
            self.port.callback(result)  # a Failure errbacks it
        return result


class _FreshUNIXEndpoint:
    """A Unix socket endpoint that first removes the socket file a killed server left at its
    path (a file that is not a socket is left alone, and the listen fails naming it). Only
    this user may connect to a socket file; an abstract name has no file."""

    def __init__(self, reactor, path, **options):
        self._path = path
        self._wrapped = endpoints.UNIXServerEndpoint(reactor, path, **options)

    def listen(self, factory):
        try:
            if not self._path.startswith('\0') and stat.S_ISSOCK(os.lstat(self._path).st_mode):
                os.unlink(self._path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            return defer.fail(exc)
        return self._wrapped.listen(factory)


class WorkersService(Service):
    """Loads the workers once the port listens, then prints the ready line; on stop, lets
    the running requests finish (at most ``STOP_DRAIN_SECONDS``) and writes their answers
    (at most ``ANSWER_FLUSH_SECONDS``). ``failed`` fires with a one-line message, or never."""

    _log = Logger()

    def __init__(self, args, server, listening, connections, reactor):
        self.args = args
        self.server = server
        self._listening = listening  # _PortEndpoints: the TCP port first (the ready line names it)
        self._connections = connections
        self._reactor = reactor
        self.failed = defer.Deferred()
        self._starting = None

    def startService(self):
        Service.startService(self)
        self._starting = defer.Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._load_failed)

    async def _start(self):
        port = await self._listening[0].port
        for other in self._listening[1:]:
            await other.port
        await self.server.start()
        freeze_startup_objects()  # the model is loaded: full collections need not walk it again
        lean_dispatch(self._reactor)
        address = port.getHost()
        print('{} {}'.format(READY_LINE, address.port), flush=True)
        self._log.info('server {name} serving {n} workers of {cls} on {host}:{port}{path}',
                       name=self.args.name, n=self.server.pool.size, cls=self.server.worker_class.__name__,
                       host=address.host, port=address.port, path=self.args.path)

    def _load_failed(self, failure):
        if failure.check(WorkerLoadError):  # names the file: the worker's own code failed
            where = os.path.join(self.args.endpoints, (self.args.server_class or self.args.name) + '.py')
        else:  # e.g. the port is taken
            where = 'cannot start'
        self.failed.callback('{}: {}'.format(where, failure.getErrorMessage().replace('\n', ' ')))

    async def _drain(self):
        idle = self.server.pool.when_idle()
        idle.addTimeout(STOP_DRAIN_SECONDS, self._reactor)
        try:
            await idle
        except defer.TimeoutError:
            self._log.warn('requests still running after {t}s; exiting anyway', t=STOP_DRAIN_SECONDS)
        # the answers of the requests that finished are written before the process goes
        await self._connections.close_when_answered(ANSWER_FLUSH_SECONDS)

    def stopService(self):
        Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._drain())


class _ParentWatch(Protocol):
    def __init__(self, on_lost):
        self._on_lost = on_lost

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        self._on_lost()


class ParentWatchService(Service):
    """Exits the process when stdin closes: the gateway holds the other end of that pipe,
    so it closes however the gateway ends, ``kill -9`` included. Not once the process is
    stopping on its own (stdin closes then too)."""

    _log = Logger()

    def __init__(self, reactor, is_stopping):
        self._reactor = reactor
        self._is_stopping = is_stopping

    def startService(self):
        Service.startService(self)
        stdio.StandardIO(_ParentWatch(self._parent_gone), stdin=0,
                         stdout=os.open(os.devnull, os.O_WRONLY), reactor=self._reactor)

    def _parent_gone(self):
        if self._is_stopping():
            return
        self._log.warn('stdin closed: the parent is gone; exiting')
        sys.stdout.flush()
        end_own_group()
        os._exit(0)


class ModelServerService(MultiService):
    """One model server: its workers, its listening port, its watch on the parent."""

    def __init__(self, args, server, reactor, max_body_mb, stalls=None):
        MultiService.__init__(self)
        self.args = args
        self.server = server
        self._reactor = reactor
        self.stopping = False
        limit_config = server.config
        if getattr(args, 'max_bodies_mb', None):  # the gateway's plumbing, kept out of config_data
            limit_config = dict(server.config, MAX_BODIES_MB=args.max_bodies_mb)
        site = make_site(server.resource(), limits=Limits.from_config(limit_config, max_body_mb))
        connections = ConnectionDrain(site, reactor=reactor)
        listening = [_PortEndpoint(endpoints.TCP4ServerEndpoint(reactor, args.port, backlog=LISTEN_BACKLOG,
                                                                interface=args.host))]
        if args.unix_socket:
            listening.append(_PortEndpoint(_FreshUNIXEndpoint(reactor, unix_address(args.unix_socket),
                                                              backlog=LISTEN_BACKLOG, mode=0o600)))
        self.workers = WorkersService(args, server, listening, connections, reactor)
        self.workers.setServiceParent(self)
        for endpoint in listening:
            # the Unix socket is the gateway's: it also takes the inner leg's frames there
            factory = site if endpoint is not listening[-1] or not args.unix_socket else InnerOrHTTP(
                site, server, connections, reactor)
            StreamServerEndpointService(endpoint, factory).setServiceParent(self)
        if args.exit_with_parent:
            ParentWatchService(reactor, lambda: self.stopping).setServiceParent(self)
        if stalls is not None:
            stalls.setServiceParent(self)

    def stopService(self):
        self.stopping = True
        return MultiService.stopService(self)


def end_own_group():
    """Kill the helper processes this server started (a tokenizer pool, a sidecar), when it
    leads a process group of its own, as the gateway starts it (setsid)."""
    if os.getpgrp() != os.getpid():
        return  # started from a shell or a test: the group is not ours alone
    handler = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(os.getpgrp(), signal.SIGTERM)
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTERM, handler)


def run(root: ModelServerService, reactor, prefix: str) -> int:
    """Start ``root``, serve until SIGTERM/SIGINT or a failed start, stop ``root`` (as
    twistd does: before the reactor shuts down); returns the exit code."""
    exit_code: List[int] = [0]

    def stop():
        if not root.stopping:
            root.stopping = True  # from now on a closed stdin is ours, not the parent's death
            reactor.stop()  # runs root.stopService first: the "before shutdown" trigger

    def failed(message):
        exit_code[0] = 3
        sys.stderr.write(prefix + message + '\n')
        sys.stderr.flush()
        stop()

    def on_term(signum, frame):
        reactor.callFromThread(stop)

    def install_signals():
        # replaces Twisted's handlers: a second TERM must not call reactor.stop() again
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)

    root.workers.failed.addCallback(failed)
    reactor.callWhenRunning(install_signals)
    reactor.callWhenRunning(root.startService)
    reactor.addSystemEventTrigger('before', 'shutdown', root.stopService)
    reactor.run()
    return exit_code[0]


def _fail(message: str, code: int) -> None:
    sys.stderr.write(message.replace('\n', ' ') + '\n')
    sys.stderr.flush()
    os._exit(code)


def main(argv: Optional[List[str]] = None) -> None:
    from twisted.internet import reactor
    from twisted.logger import FileLogObserver, globalLogBeginner

    from ..shared.logfilter import child_line, quiet

    args = parse_child_args(sys.argv[1:] if argv is None else argv)
    prefix = 'bis-server {}: '.format(args.name)
    if args.nice:
        os.nice(args.nice)  # before the endpoint loads: its imports and threads run at it too
    # popped: the endpoint's code (and what it spawns) has no use for them
    config_env = os.environ.pop(CONFIG_VARIABLE, None)
    token_env = os.environ.pop(CHILD_KEY_VARIABLE, None)
    token_variable = CHILD_KEY_VARIABLE
    if not token_env:
        token_env, token_variable = os.environ.pop(TOKEN_VARIABLE, None), TOKEN_VARIABLE
    try:
        guard = AdminGuard(token_env, require_token=True)
    except ConfigError as exc:
        _fail('{}{}'.format(prefix, exc).replace(TOKEN_VARIABLE, token_variable), 2)
    config_text = args.config_json if args.config_json is not None else (config_env or '{}')
    try:
        config = json.loads(config_text)
        if not isinstance(config, dict):
            raise ValueError('not a JSON object')
    except ValueError as exc:
        source = '--config-json' if args.config_json is not None else CONFIG_VARIABLE
        _fail('{}{} is not a JSON object: {}'.format(prefix, source, exc), 2)
    try:
        endpoint = load_endpoint(args.endpoints, args.server_class or args.name)
    except EndpointLoadError as exc:
        _fail(prefix + str(exc), 2)

    try:
        logformat.configure(args.log_format or logformat.resolve(), endpoint=args.name)
    except logformat.LogFormatError as exc:
        _fail(prefix + str(exc), 2)
    if tracing.setup('bis-model-server', reactor, process='model-server', endpoint=args.name):
        logformat.set_trace_fields(tracing.current_ids)
    if args.exit_with_parent and not logformat.is_json():
        # the gateway reads these lines and stamps them itself
        observer = FileLogObserver(sys.stdout, child_line(args.name))
    else:
        observer = logformat.file_observer(sys.stdout)
    globalLogBeginner.beginLoggingTo([quiet(observer)], redirectStandardIO=False)
    stalls = StallWatch(reactor)
    server = ModelServer(args.name, endpoint.worker_class, endpoint.default_config, config, reactor=reactor,
                         execution_path=args.path, schemas=endpoint.schemas, guard=guard, stalls=stalls)
    max_body_mb = args.max_body_mb or config.get('MAX_BODY_MB', DEFAULT_MAX_BODY_MB)
    exit_code = run(ModelServerService(args, server, reactor, max_body_mb, stalls), reactor, prefix)
    sys.stdout.flush()
    sys.stderr.flush()
    # daemon pool threads may still be inside a hook that never returns: do not wait for them
    os._exit(exit_code)
