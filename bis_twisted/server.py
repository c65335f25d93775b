"""One model server: a Klein app on the reactor in front of a ``WorkerPool``.

Run by the gateway (one child process per endpoint) or alone, on another machine::

    BIS_ADMIN_TOKEN=<secret> python -m bis_twisted.server --endpoints endpoints \\
        --name dummy_model_demo2 --host 127.0.0.1 --port 5003 --config-json '{"NR_WORKERS": 2}'

The control route (``/update_workers``) needs ``Authorization: Bearer <token>``: the
gateway hands each child a random key of its own in ``BIS_SERVER_ADMIN_KEY``, a server run
alone takes ``BIS_ADMIN_TOKEN``, and without either the route is refused. The gateway passes
the endpoint's config entry in ``BIS_SERVER_CONFIG``, not on the command line, where ``ps``
would show its secrets to every user (a process's environment is readable by its owner only).

Routes: the execution path (``/run``), ``/notifications``, ``/update_workers``,
``/get_paths``, ``/health``. It listens at once, answers 503 while its workers load, and prints
``BIS-SERVER-READY <port>`` on stdout when they have. With ``--exit-with-parent`` it exits when
its stdin closes, i.e. when the gateway that spawned it is gone, however it died.
"""

import argparse
import json
import os
import signal
import socket
import sys

import attr
from klein import Klein
from twisted.internet import defer, endpoints, stdio
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from . import LIB_VER
from .drain import ConnectionDrain
from .errors import BadRequest, ConfigError, EndpointLoadError, ServiceUnavailable
from .gctune import freeze_startup_objects
from .limits import Limits
from .loader import load_endpoint
from .logger import Logger as CompatLogger
from .notifications import Notifications
from .pool import DEFAULT_BATCH_TIMEOUT, WorkerLoadError, WorkerPool
from .schemas import SchemaCheck, SchemaViolation
from .security import TOKEN_VARIABLE, AdminGuard
from .web import (DEFAULT_MAX_BODY_MB, LISTEN_BACKLOG, NDJSON_TYPE, dumps, error_answer, make_site, now_text,
                  request_id_of, request_inputs, write_json)

DEFAULT_MAX_QUEUE = 1024
READY_LINE = 'BIS-SERVER-READY'
STOP_DRAIN_SECONDS = 4.0   # running requests get this long to finish on TERM
ANSWER_FLUSH_SECONDS = 0.5  # then their answers this long to be written
SIGNATURE = 'SIGNATURE'
CHILD_KEY_VARIABLE = 'BIS_SERVER_ADMIN_KEY'  # the key the gateway gave this child
CONFIG_VARIABLE = 'BIS_SERVER_CONFIG'  # the config entry, JSON, when --config-json is not given


def host_id():
    return os.environ.get('AID_APP_ID') or socket.gethostname()


class ModelServer:
    """The routes of one model server; ``pool`` is built from the endpoint's worker class."""

    _log = Logger()

    def __init__(self, name, worker_class, default_config, config, reactor=None,
                 execution_path='/run', notifications=None, schemas=None, guard=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.name = name
        self.worker_class = worker_class
        self.config = config
        self.execution_path = execution_path
        self.notifications = notifications or Notifications()
        self.ready = False
        self.load_error = None
        # INPUT_SCHEMA / OUTPUT_SCHEMA of the endpoint file, when it declares them
        check = SchemaCheck(schemas) if schemas is not None else None
        self.schema_check = check if check is not None and check.active else None
        # no token, no control: a model server may listen beyond loopback
        self.guard = guard or AdminGuard(require_token=True)
        self._signature_prefix = '{}.{}.{}'.format(host_id(), name, worker_class.__name__)
        # a _predict that yields (or STREAM: true) answers NDJSON, a chunk per line
        self.streaming = worker_class.streams(config) if hasattr(worker_class, 'streams') else False
        compat_log = CompatLogger(lib_name=name)

        def make_worker(index):
            return worker_class(log=compat_log, default_config=default_config, verbosity_level=1,
                                worker_id=index, upstream_config=config, server_name=name,
                                notifications=self.notifications)

        self.pool = WorkerPool(make_worker, size=int(config.get('NR_WORKERS', 1)),
                               max_queue=int(config.get('MAX_QUEUE', DEFAULT_MAX_QUEUE)),
                               reactor=reactor, max_batch_size=int(config.get('MAX_BATCH_SIZE', 1)),
                               batch_timeout=float(config.get('BATCH_TIMEOUT', DEFAULT_BATCH_TIMEOUT)))
        # One Klein app per instance (not the class-attribute idiom): the execution path is a
        # constructor argument, and a class-level route table would be shared by all instances.
        self.app = Klein()
        self.app.route(execution_path, methods=['POST', 'GET'])(self._run)
        self.app.route('/notifications', methods=['GET', 'POST'])(self._notifications)
        self.app.route('/update_workers', methods=['POST'])(self._update_workers)
        self.app.route('/get_paths', methods=['GET', 'POST'])(self._get_paths)
        self.app.route('/health', methods=['GET'])(self._health)
        self.app.handle_errors(Exception)(self._error)

    async def start(self):
        """Load every worker; raises WorkerLoadError (one line) if one cannot load."""
        if self.streaming and self.pool.max_batch_size > 1:
            self.load_error = ('MAX_BATCH_SIZE is {} but _predict streams (it yields, or STREAM is true): a '
                               'streaming endpoint is not batched; set MAX_BATCH_SIZE to 1'.format(self.pool.max_batch_size))
            raise WorkerLoadError(self.load_error)
        try:
            await self.pool.start()
        except WorkerLoadError as exc:
            self.load_error = str(exc)
            raise
        self.ready = True
        self.notifications.add(None, 'LOG', self.name, 'server ready with {} workers'.format(self.pool.size))

    def resource(self):
        return self.app.resource()

    # -- routes --------------------------------------------------------------------------------
    async def _run(self, request):
        inputs = request_inputs(request)
        if not self.ready:
            raise ServiceUnavailable('server {!r} is still loading its workers; retry shortly'.format(self.name))
        inputs.pop(SIGNATURE, None)
        if self.schema_check is not None:
            try:
                self.schema_check.check_input(inputs)
            except SchemaViolation as exc:
                raise BadRequest('INPUT_SCHEMA: ' + exc.message, INPUT_ERROR=exc.details()) from None
        rid = request_id_of(request)
        if self.streaming:
            worker, call_id, outcome = await self.pool.run_stream(inputs, rid)
            if hasattr(outcome, 'next'):
                return await self._stream(request, worker, call_id, outcome, rid)
        else:
            worker, call_id, outcome = await self.pool.run(inputs, rid)
        body = dict(outcome.body)
        status = outcome.status
        if status == 200 and self.schema_check is not None:
            try:
                self.schema_check.check_output(body.get('predict_result'))
            except SchemaViolation as exc:
                self._log.warn('request {rid}: the answer breaks OUTPUT_SCHEMA: {error}', rid=rid, error=exc.message)
                status = 500
                body = {'ERROR': 'OUTPUT_SCHEMA: the endpoint answered {}'.format(exc.message),
                        'OUTPUT_ERROR': exc.details()}
        body.update({
            'worker_id': worker.worker_id,
            'call_id': call_id,
            'batch_size': outcome.batch_size,
            'time': now_text(),
            'signature': '{}.{}'.format(self._signature_prefix, worker.worker_id),
            'request_id': rid,
        })
        return write_json(request, status, body)

    def _answer_fields(self, worker, call_id, rid):
        return {'worker_id': worker.worker_id, 'call_id': call_id, 'time': now_text(),
                'signature': '{}.{}'.format(self._signature_prefix, worker.worker_id), 'request_id': rid}

    async def _stream(self, request, worker, call_id, stream, rid):
        """Write each chunk as a line as soon as it is made, paced by the connection (a
        client that reads slowly pauses the generator); the last line is the summary, or
        the error that ended the stream. A client that goes away closes the generator."""
        flow = _WriteFlow()
        request.registerProducer(flow, True)
        ended = None
        sent = 0
        try:
            while True:
                await flow.writable()
                outcome = await stream.next()
                if outcome is None:
                    break
                try:
                    line = dumps(outcome.body) + b'\n' if outcome.status == 200 else None
                except (TypeError, ValueError) as exc:
                    outcome = attr.evolve(outcome, status=500, body={
                        'ERROR': 'chunk {} of the stream could not be encoded as JSON: {}'.format(sent + 1, exc)})
                    line = None
                if line is None:
                    ended = outcome
                    break
                if not sent:
                    request.setResponseCode(200)
                    request.setHeader(b'Content-Type', NDJSON_TYPE)
                    request.setHeader(b'Cache-Control', b'no-cache')
                request.write(line)
                sent += 1
        finally:
            # at the end, after an error, or cancelled (the client went away): the generator
            # stops at its next yield and the worker goes back to the pool
            stream.close().addErrback(lambda failure: self._log.failure('closing a stream', failure))
            if request.channel is not None:  # None: the connection is gone, and its producer with it
                request.unregisterProducer()
        summary = self._answer_fields(worker, call_id, rid)
        summary['chunks'] = sent
        if ended is not None:
            self._log.warn('request {rid}: the stream ended with an error after {n} chunks: {error}', rid=rid,
                           n=summary['chunks'], error=ended.body.get('ERROR'))
            body = dict(ended.body, **summary)
            if not summary['chunks']:  # nothing sent yet: an ordinary error answer
                return write_json(request, ended.status, body)
            body['status'] = ended.status  # what the HTTP status would have said
            return dumps(body) + b'\n'
        if not summary['chunks']:
            request.setResponseCode(200)
            request.setHeader(b'Content-Type', NDJSON_TYPE)
        return dumps(summary) + b'\n'

    def _notifications(self, request):
        return write_json(request, 200, self.notifications.snapshot())

    async def _update_workers(self, request):
        self.guard.check(request)
        inputs = request_inputs(request)
        if 'NR_WORKERS' not in inputs:
            raise BadRequest('send {"NR_WORKERS": <integer >= 1>}')
        size = inputs['NR_WORKERS']
        if isinstance(size, str) and size.isdigit():
            size = int(size)
        try:
            size = await self.pool.resize(size)
        except WorkerLoadError as exc:
            raise ServiceUnavailable('could not add workers: {}'.format(exc)) from None
        return write_json(request, 200, {'MESSAGE': 'OK', 'NR_WORKERS': size})

    def _get_paths(self, request):
        return write_json(request, 200, {'PATHS': [self.execution_path, '/notifications',
                                                   '/update_workers', '/get_paths', '/health']})

    def _health(self, request):
        body = {'STATUS': 'OK' if self.ready else ('FAILED' if self.load_error else 'LOADING'),
                'SERVER': self.name, 'NR_WORKERS': self.pool.size, 'BUSY': self.pool.busy,
                'QUEUED': self.pool.queued, 'PID': os.getpid(), 'ver-lib': LIB_VER,
                'BATCHES': {str(size): count for size, count in sorted(self.pool.batch_sizes.items())}}
        if self.load_error:
            body['ERROR'] = self.load_error
        return write_json(request, 200 if self.ready else 503, body)

    def _error(self, request, failure):
        return error_answer(request, failure)


@implementer(IPushProducer)
class _WriteFlow:
    """The connection's pace for a stream: ``writable()`` fires at once unless the transport
    asked us to pause (its buffer is full), then when it asks us to resume."""

    def __init__(self):
        self._waiting = None
        self.paused = False

    def writable(self):
        if not self.paused:
            return defer.succeed(None)
        if self._waiting is None:
            self._waiting = defer.Deferred()
        return self._waiting

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:  # called: cancelled, the client is gone
            waiting.callback(None)

    def stopProducing(self):
        # the connection is gone: Klein cancels the route, which closes the stream
        self.resumeProducing()


class _ParentWatch(Protocol):
    """Exits the process when stdin closes: the gateway holds the other end of that pipe,
    so it closes however the gateway ends, ``kill -9`` included."""

    def __init__(self, on_lost):
        self._on_lost = on_lost

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        self._on_lost()


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m bis_twisted.server',
                                     description='Run one bis_twisted model server.')
    parser.add_argument('--endpoints', default='endpoints', help='folder of endpoint files')
    parser.add_argument('--name', required=True, help='the server name (its SIGNATURE)')
    parser.add_argument('--server-class', help='endpoint file to use (default: --name)')
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, required=True, help='0 picks a free port')
    parser.add_argument('--config-json', help="the endpoint's config entry, JSON (default: ${} or {{}})".format(
        CONFIG_VARIABLE))
    parser.add_argument('--path', default='/run', help='execution path')
    parser.add_argument('--max-body-mb', type=float,
                        help='request bodies over this many MiB get 413 (default: MAX_BODY_MB of '
                             '--config-json, else {})'.format(DEFAULT_MAX_BODY_MB))
    parser.add_argument('--max-bodies-mb', type=float,
                        help='MiB of request bodies held at once, past which 503 (default: MAX_BODIES_MB of '
                             'the config entry, else the built-in default)')
    parser.add_argument('--exit-with-parent', action='store_true',
                        help='exit when stdin closes (the gateway sets this)')
    return parser.parse_args(argv)


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


def _fail(message, code):
    sys.stderr.write(message.replace('\n', ' ') + '\n')
    sys.stderr.flush()
    os._exit(code)


class ServerProcess:
    """The life of one model-server process: listen at once, load the workers, print the
    ready line; on SIGTERM/SIGINT stop listening and let running requests finish (bounded),
    then exit; with ``exit_with_parent``, exit as soon as stdin closes."""

    _log = Logger()

    def __init__(self, args, server, reactor, max_body_mb):
        self.args = args
        self.server = server
        self._reactor = reactor
        limit_config = server.config
        if getattr(args, 'max_bodies_mb', None):  # the gateway's plumbing, kept out of config_data
            limit_config = dict(server.config, MAX_BODIES_MB=args.max_bodies_mb)
        self._site = make_site(server.resource(), limits=Limits.from_config(limit_config, max_body_mb))
        self._connections = ConnectionDrain(self._site, reactor=reactor)
        self._ports = []
        self.exit_code = 0
        self.stopping = False
        self._prefix = 'bis-server {}: '.format(args.name)

    def run(self):
        """Serve until stopped; returns the exit code."""
        if self.args.exit_with_parent:
            stdio.StandardIO(_ParentWatch(self._parent_gone), stdin=0,
                             stdout=os.open(os.devnull, os.O_WRONLY), reactor=self._reactor)
        self._reactor.callWhenRunning(self._install_signals)
        self._reactor.callWhenRunning(
            lambda: defer.Deferred.fromCoroutine(self._start()).addErrback(self._failed))
        self._reactor.run()
        return self.exit_code

    async def _start(self):
        endpoint = endpoints.TCP4ServerEndpoint(self._reactor, self.args.port, backlog=LISTEN_BACKLOG,
                                                interface=self.args.host)
        port = await endpoint.listen(self._site)
        self._ports.append(port)
        await self.server.start()
        freeze_startup_objects()  # the model is loaded: full collections need not walk it again
        address = port.getHost()
        print('{} {}'.format(READY_LINE, address.port), flush=True)
        self._log.info('server {name} serving {n} workers of {cls} on {host}:{port}{path}',
                       name=self.args.name, n=self.server.pool.size, cls=self.server.worker_class.__name__,
                       host=address.host, port=address.port, path=self.args.path)

    def _failed(self, failure):
        self.exit_code = 3
        self.stopping = True
        if failure.check(WorkerLoadError):  # names the file: the worker's own code failed
            where = os.path.join(self.args.endpoints, (self.args.server_class or self.args.name) + '.py')
        else:  # e.g. the port is taken
            where = 'cannot start'
        sys.stderr.write('{}{}: {}\n'.format(self._prefix, where, failure.getErrorMessage().replace('\n', ' ')))
        sys.stderr.flush()
        self._reactor.stop()

    def _parent_gone(self):
        if self.stopping:  # stdin also closes while we stop on our own: main() exits then
            return
        self._log.warn('stdin closed: the parent is gone; exiting')
        sys.stdout.flush()
        end_own_group()
        os._exit(0)

    def _install_signals(self):
        # replaces Twisted's handlers: a second TERM must not call reactor.stop() again
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)

    def _on_term(self, signum, frame):
        if not self.stopping:
            self.stopping = True
            self._reactor.callFromThread(lambda: defer.Deferred.fromCoroutine(self._graceful_stop()))

    async def _graceful_stop(self):
        # bounded: the gateway sends SIGKILL after its own killTime
        for port in self._ports:
            await port.stopListening()
        idle = self.server.pool.when_idle()
        idle.addTimeout(STOP_DRAIN_SECONDS, self._reactor)
        try:
            await idle
        except defer.TimeoutError:
            self._log.warn('requests still running after {t}s; exiting anyway', t=STOP_DRAIN_SECONDS)
        # the answers of the requests that finished are written before the process goes
        await self._connections.close_when_answered(ANSWER_FLUSH_SECONDS)
        if self._reactor.running:
            self._reactor.stop()


def main(argv=None):
    from twisted.internet import reactor
    from twisted.logger import FileLogObserver, formatEvent, globalLogBeginner, textFileLogObserver

    args = parse_args(sys.argv[1:] if argv is None else argv)
    prefix = 'bis-server {}: '.format(args.name)
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

    if args.exit_with_parent:
        # the gateway reads these lines and stamps them itself
        observer = FileLogObserver(sys.stdout, lambda event: '[{}] {}\n'.format(
            event.get('log_namespace', '-'), formatEvent(event)))
    else:
        observer = textFileLogObserver(sys.stdout)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    server = ModelServer(args.name, endpoint.worker_class, endpoint.default_config, config, reactor=reactor,
                         execution_path=args.path, schemas=endpoint.schemas, guard=guard)
    max_body_mb = args.max_body_mb or config.get('MAX_BODY_MB', DEFAULT_MAX_BODY_MB)
    exit_code = ServerProcess(args, server, reactor, max_body_mb).run()
    sys.stdout.flush()
    sys.stderr.flush()
    # daemon pool threads may still be inside a hook that never returns: do not wait for them
    os._exit(exit_code)


if __name__ == '__main__':
    main()
