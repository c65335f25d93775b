"""``Gateway``: the Klein routes of the gateway (``/run``, ``/list_servers``, ``/health``,
``/ready``, status and admin routes). Routes raise our errors; ``error`` answers them.
``GatewayRoot``, the resource the site serves, sends ``/run`` past Klein's routing.

Fields, by name: the *gateway fields* (``gateway_fields``) are what every answer of the
gateway carries (versions, host, worker, time, uptime, request id); the *answer fields*
(``answer_fields``) are the part of them a model server writes into its own answer, sent to
it encoded in a header (``protocol.encode_answer_fields``)."""

import hmac
import importlib.resources
import json
import os
import socket

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .._version import __version__ as LIB_VER
from ..errors import BadGateway, BadRequest, BisError, GatewayTimeout, NotFound, UnknownSignature
from ..protocol import (CHUNK_PREFIX, NDJSON_TYPE, NR_WORKERS_RULE, SIGNATURE, encode_answer_fields, endpoint_file,
                        valid_nr_workers)
from ..shared.lograte import RepeatLimiter
from ..shared.schemas import declared_schemas
from ..shared.security import AdminGuard
from ..shared import tracing
from ..shared.web import (SSE_TYPE, dumps_spaced, error_answer, forget_body, forward_body, now_text, request_id_of,
                          request_inputs, write_encoded_json, write_json)
from . import readiness
from .accesslog import remember_signature
from .assets import Assets
from .devices import gpu_memory
from .openapi import openapi_document, streams_declared
from .proxy import ChildStream
from .rollout import Rollouts, version_of
from .status import hms, memory_gb, system_alerts, system_status
from .v2 import V2Routes

SUPPORT_KEY_ARG = 'SUPPORT_KEY'
STATUS_PAGE = importlib.resources.files(__package__).joinpath('static/status.html').read_bytes()
SHUTDOWN_SIGNATURE = 'SAFE_KILL_SERVER_CMD'
METRICS_PING_TIMEOUT = 1.0


def endpoint_schemas(fleet):
    """Each spawned endpoint's INPUT_SCHEMA / OUTPUT_SCHEMA, read from its file's syntax tree
    (the gateway never imports endpoint code)."""
    return {name: declared_schemas(endpoint_file(fleet.endpoints_dir, server.config.server_class))
            for name, server in fleet.servers.items()
            if server.config.has_file and not server.config.is_remote}


def endpoint_streams(fleet):
    """The endpoints that stream their answers: ``STREAM`` in the entry, else a ``_predict``
    that yields in the file (read from its syntax tree)."""
    return {name for name, server in fleet.servers.items()
            if server.config.entry.get('STREAM', server.config.has_file and not server.config.is_remote
                                        and streams_declared(endpoint_file(fleet.endpoints_dir,
                                                                           server.config.server_class)))}


def gateway_document(fleet, server_name):
    """The gateway's ``/openapi.json`` for ``fleet`` as it is configured now."""
    return openapi_document(fleet.servers, server_name, schemas=endpoint_schemas(fleet),
                            streaming=endpoint_streams(fleet))


class Gateway:
    """The HTTP face of the gateway. ``fleet`` routes to the model servers; ``guard`` decides
    who may use the admin routes; ``history`` is the start/stop history; ``shutdown`` is
    called (after the answer went out) by ``/shutdown``."""

    app = Klein()
    _log = Logger()

    def __init__(self, fleet, reactor=None, app_version=None, guard=None, history=None,
                 shutdown=None, cache_dir='.', server_name='', support_names=(), metrics=None,
                 metrics_guarded=False, support_key=None, keys=None, reload_config=None, progress=None,
                 rollouts=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.keys = keys  # an apikeys.KeyStore when the config has API_KEYS: /run needs a key
        self._repeats = RepeatLimiter(self._log, clock=reactor)
        self.fleet = fleet
        self.rollouts = rollouts if rollouts is not None else Rollouts(fleet, reactor=reactor)  # POST /rollout
        self.guard = guard or AdminGuard()
        self.history = history
        self._shutdown = shutdown
        self.cache_dir = cache_dir
        self.server_name = server_name
        self.support_names = tuple(support_names)
        self.support_data = {}
        # the gateway's own support processes post with this key in the query (their code is
        # the original's ServerMonitor, which sends no Authorization header)
        self._support_key = support_key.encode('ascii') if support_key else None
        self.metrics = metrics
        self.metrics_guarded = metrics_guarded
        self._reload_config = reload_config  # async callable: the summary of what changed
        self.progress = progress  # a loading.LoadProgress: what /health says while servers load
        self._openapi = gateway_document(fleet, server_name)
        self.v2 = V2Routes(self)  # the Open Inference Protocol's routes, under /v2
        self.assets = Assets()
        self.started_at = reactor.seconds()
        self._static_fields = {
            'ver-app': app_version or os.environ.get('BIS_APP_VER') or LIB_VER,
            'ver-lib': LIB_VER,
            'hostname': socket.gethostname(),
        }
        self._encoded_answer_fields = (None, b'')  # (uptime second, header value)

    def resource(self):
        return GatewayRoot(self, self.app.resource(), self.v2)

    def gateway_fields(self, request, worker_id='unknown'):
        """What every answer of the gateway carries."""
        fields = dict(self._static_fields)
        fields['worker_id'] = worker_id
        fields['time'] = now_text()
        fields['gw-uptime'] = hms(self._reactor.seconds() - self.started_at)
        fields['request_id'] = request_id_of(request)
        version = version_of(request)
        if version is not None:  # the endpoint is under rollout: which version answered
            fields['version'] = version
        return fields

    def answer_fields(self):
        """The gateway's fields a model server adds to its answer itself (the rest, ``time``,
        ``worker_id`` and ``request_id``, it has), encoded once per second of uptime."""
        uptime = int(self._reactor.seconds() - self.started_at)
        if self._encoded_answer_fields[0] != uptime:
            fields = dict(self._static_fields, **{'gw-uptime': hms(uptime)})
            self._encoded_answer_fields = (uptime, encode_answer_fields(fields))
        return self._encoded_answer_fields[1]

    def answer(self, request, status, body, headers=None):
        body.update(self.gateway_fields(request, body.get('worker_id', 'unknown')))
        return write_json(request, status, body, headers)

    @staticmethod
    def signature_of(inputs):
        if SIGNATURE not in inputs:
            near = [k for k in inputs if isinstance(k, str) and k.upper() == SIGNATURE]
            hint = ('; the body has {!r}: the key is SIGNATURE, in capitals'.format(near[0]) if near else '')
            raise BadRequest('SIGNATURE is missing{}; send {{"SIGNATURE": "<endpoint>", ...}} '
                             '(GET /list_servers lists the endpoints)'.format(hint))
        signature = inputs[SIGNATURE]
        if not isinstance(signature, str):
            raise BadRequest('SIGNATURE must be a string, not {}'.format(type(signature).__name__))
        return signature

    # -- /run ------------------------------------------------------------------------------------
    @app.route('/run', methods=['POST', 'GET'])
    def run(self, request):
        # serve_inference's coroutine itself, not one more that awaits it: each level of
        # awaiting is walked again when the child's answer resumes the route
        return self.serve_inference(request, 'run', lambda: self._read_run(request), self._write_run)

    def _read_run(self, request):
        inputs = request_inputs(request)
        return self.signature_of(inputs), forward_body(request, inputs)

    async def _write_run(self, request, signature, result, started):
        if isinstance(result, ChildStream):
            return await self._relay(request, signature, result, started)
        headers = {b'Retry-After': b'1'} if result.status == 503 else None
        if result.raw is not None:  # the model server wrote our fields in: its bytes go as they are
            return write_encoded_json(request, result.status, result.raw, headers)
        return self.answer(request, result.status, dict(result.body), headers)

    async def serve_inference(self, request, protocol, read, write):
        """The way every inference request takes (``/run``, V2's infer): its API key (401
        before the body is read), ``read()`` -> ``(endpoint, payload)``, the key's admission
        (403 / 429), the fleet, ``write(request, endpoint, result, started)`` -> the answer's
        bytes, and the metrics under ``protocol``. Errors raise, for the route's error
        answer; refusals and 5xx are logged (rate-limited)."""
        started = self._reactor.seconds()
        rid = request_id_of(request)
        signature, status, key = None, 500, None
        run_span = tracing.start_run(request)  # OpenTelemetry, when on: continues the client's traceparent
        try:
            if self.keys is not None:
                key = self.keys.identify(request)  # 401 before the body is even parsed
            signature, payload = read()
            remember_signature(request, signature)  # for the access log
            if key is not None:
                self.keys.admit(key, signature)  # 403 / 429
            # the fleet's run, or the rollout's choice of stable or candidate
            result = await self.rollouts.run(request, signature, payload, rid, self.answer_fields())
            del payload  # the answer is all that needs to live from here on
            status = result.status
            return await write(request, signature, result, started)
        except BisError as exc:
            status = exc.status
            key_name = getattr(exc, 'key_name', None)
            if key_name is not None:  # a refused key: its name (or "unknown"), never the key
                self._repeats.emit('warn', ('key', key_name, status), 'request {rid} refused ({status}) for API key '
                                   '{key}: {error}', rid=rid, status=status, key=key_name, error=exc.message,
                                   described='requests refused for API key {}: {}'.format(key_name, status))
            if status >= 500:  # one line a second per server and status: a restart refuses many
                self._repeats.emit('warn', (signature, status), 'request {rid} to {name}: {status} {error}',
                                   rid=rid, name=signature, status=status, error=exc.message,
                                   described='requests to {}: {} {}'.format(signature, status, exc.message))
            raise
        except defer.CancelledError:
            status = 499  # the client went away (nginx's code for it)
            raise
        finally:
            # the request object lives on in reference cycles until the garbage collector's
            # next full pass: without this its body would too
            payload = None  # noqa: F841
            forget_body(request)
            tracing.end_run(run_span, status, signature, key.name if key is not None else None)
            if self.metrics is not None:
                self.metrics.observe(signature, status, self._reactor.seconds() - started, protocol)
                if self.keys is not None:
                    self.metrics.observe_key(key.name if key is not None else 'unknown', status)

    async def _relay(self, request, signature, stream, started):
        """Pass a child's stream through as it comes: NDJSON, or SSE when the client's
        ``Accept`` asks for ``text/event-stream``. Chunks are not parsed; the last line (the
        summary, or the error that ended the stream) gets the gateway's fields. The client's
        connection paces the child's (``stream`` is its push producer)."""
        sse = SSE_TYPE in (request.getHeader(b'accept') or b'')
        request.setResponseCode(stream.status)
        request.setHeader(b'Content-Type', SSE_TYPE if sse else NDJSON_TYPE)
        request.setHeader(b'Cache-Control', b'no-cache')
        request.setHeader(b'X-Accel-Buffering', b'no')  # a proxy in front must not buffer it either
        counts = {'chunks': 0, 'first': None, 'ended': False}

        def write_last(body, event):
            body.update(self.gateway_fields(request, body.get('worker_id', 'unknown')))
            body.setdefault('chunks', counts['chunks'])
            counts['ended'] = True
            line = dumps_spaced(body)
            request.write(b'event: ' + event + b'\ndata: ' + line + b'\n\n' if sse else line + b'\n')

        def on_line(line):
            if line.startswith(CHUNK_PREFIX):
                if counts['first'] is None:
                    counts['first'] = self._reactor.seconds() - started
                counts['chunks'] += 1
                request.write(b'data: ' + line + b'\n\n' if sse else line + b'\n')
                return
            try:
                body = json.loads(line)
            except ValueError:
                body = None
            if not isinstance(body, dict):
                body = {'ERROR': 'server {!r} ended its stream with a line that is not a JSON object'.format(signature)}
            write_last(body, b'error' if 'ERROR' in body else b'end')

        request.registerProducer(stream, True)
        try:
            await stream.relay(on_line)
            if not counts['ended']:
                raise BadGateway('server {!r} ended its stream without its summary line'.format(signature))
        except (GatewayTimeout, BadGateway) as exc:
            # the status line went out with the first chunk: the error is the stream's last line
            self._log.warn('request {rid} to {name}: stream cut after {n} chunks: {error}', rid=request_id_of(request),
                           name=signature, n=counts['chunks'], error=exc.message)
            if not counts['ended']:
                write_last({'ERROR': exc.message, 'status': exc.status}, b'error')
        except defer.CancelledError:
            stream.stopProducing()  # the client went away: so does the child's connection
            raise
        finally:
            if request.channel is not None:  # None: the client's connection is gone
                request.unregisterProducer()
            if self.metrics is not None:
                self.metrics.observe_stream(signature, counts['first'], counts['chunks'])
        return b''

    @app.route('/', methods=['GET'])
    def status_page(self, request):
        request.setHeader(b'Content-Type', b'text/html; charset=utf-8')
        request.setHeader(b'Cache-Control', b'no-cache')
        return STATUS_PAGE

    @app.route('/docs', methods=['GET'])
    def docs(self, request):
        """Swagger UI for /openapi.json, from files this gateway holds ("try it out" works)."""
        if self.assets.swagger_error:
            raise NotFound(self.assets.swagger_error)
        return self._asset(request, 'page', 'docs.html', cache=False)

    @app.route('/docs/', methods=['GET'])
    def docs_slash(self, request):
        # the page's URLs are relative to /docs: under /docs/ they would miss
        request.redirect(b'../docs')
        return b''

    @app.route('/docs/<string:name>', methods=['GET'])
    def docs_file(self, request, name):
        return self._asset(request, 'docs', name)

    @app.route('/static/uplot/<string:name>', methods=['GET'])
    def static_file(self, request, name):
        return self._asset(request, 'static', 'uplot/' + name)

    def _asset(self, request, group, name, cache=True):
        found = self.assets.get(group, name)
        if found is None:
            raise NotFound('no file {!r} here'.format(name))
        kind, data = found
        request.setHeader(b'Content-Type', kind)
        request.setHeader(b'Cache-Control', b'public, max-age=3600' if cache else b'no-cache')
        return data

    @app.route('/stats', methods=['GET'])
    def stats(self, request):
        if self.metrics is None:
            return self.answer(request, 200, {'WINDOW_SECONDS': None, 'POINTS': [], 'ENDPOINTS': {}})
        return self.answer(request, 200, dict(self.metrics.stats(), ROLLOUTS=self.rollouts.points()))

    @app.route('/openapi.json', methods=['GET'])
    def openapi(self, request):
        return write_json(request, 200, self._openapi)

    @app.route('/metrics', methods=['GET'])
    async def metrics_route(self, request):
        if self.metrics is None:
            raise NotFound('metrics are off in this gateway\'s config ("METRICS": false)')
        if self.metrics_guarded:
            self.guard.check(request)
        # queue depth and busy workers come from each server's /health, asked now
        self.metrics.health = await self.fleet.ping_servers(list(self.fleet.servers.values()), METRICS_PING_TIMEOUT)
        text = await deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self.metrics.render)
        request.setHeader(b'Content-Type', CONTENT_TYPE_LATEST.encode('ascii'))
        return text

    # -- fleet views -----------------------------------------------------------------------------
    @app.route('/list_servers', methods=['GET', 'POST'])
    async def list_servers(self, request):
        now = self._reactor.seconds()
        names = list(self.fleet.servers)
        described = await defer.gatherResults([
            defer.Deferred.fromCoroutine(self.fleet.describe(self.fleet.servers[name], now)) for name in names])
        # the original's AVAIL_SERVERS are the servers it started; DISABLED and killed ones
        # are listed apart, with the same fields, for the status page and operators
        active, stopped = {}, {}
        for name, entry in zip(names, described):
            rollout = self.rollouts.describe(name)
            if rollout is not None:
                entry['ROLLOUT'] = rollout
            (stopped if self.fleet.is_stopped(self.fleet.servers[name]) else active)[name] = entry
        return self.answer(request, 200, {'AVAIL_SERVERS': active, 'STOPPED_SERVERS': stopped})

    @app.route('/health', methods=['GET'])
    def health(self, request):
        body = {'STATUS': 'OK'}
        if self.progress is not None:  # "starting" while DEFAULT_SERVER loads; LOADING while any does
            body.update(self.progress.health())
        return self.answer(request, 200, body)

    @app.route('/ready', methods=['GET'])
    async def ready(self, request):
        scoped = await readiness.answer(self.fleet, request)  # ?SCOPE=gateway, ?SIGNATURE=<endpoint>
        if scoped is not None:
            return self.answer(request, *scoped)
        unready = await self.fleet.unready()
        if unready:
            reasons = [self.fleet.unavailable(self.fleet.servers[name]).message for name in unready]
            return self.answer(request, 503, {'READY': False, 'NOT_READY': unready,
                                              'ERROR': 'not answering: {}'.format('; '.join(reasons))},
                               {b'Retry-After': b'1'})
        return self.answer(request, 200, {'READY': True, 'NOT_READY': []})

    # -- status ----------------------------------------------------------------------------------
    @app.route('/system_status', methods=['GET', 'POST'])
    async def system_status(self, request):
        server_pids = {name: self.fleet.pids(name) for name in self.fleet.servers}
        # psutil walks /proc: a few ms, kept off the reactor thread
        status = await deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._measure, server_pids)
        return self.answer(request, 200, {
            'SYSTEM_STATUS': status,
            'SYSTEM_ALERTS': system_alerts(status),
            'SYSTEM_HISTORY': self.history.snapshot() if self.history is not None else {},
        })

    def _measure(self, server_pids):
        status = system_status(gateway_pid=os.getpid(), server_pids=server_pids, server_name=self.server_name,
                               support_services=self.support_data, cache_dir=self.cache_dir)
        replicas = {name: [memory_gb(pid) for pid in pids] for name, pids in server_pids.items() if len(pids) > 1}
        if replicas:  # each replica's share, beside the per-endpoint sum in mem_servers
            status['mem_replicas'] = replicas
        gpus = gpu_memory()
        if gpus is not None:  # nvidia-ml-py installed and a driver found
            status['gpus'] = gpus
        return status

    @app.route('/support_update_status', methods=['POST'])
    def support_update_status(self, request):
        keys = request.args.get(SUPPORT_KEY_ARG.encode('ascii'), [])
        if not (self._support_key and keys and hmac.compare_digest(keys[0], self._support_key)):
            self.guard.check(request)
        inputs = request_inputs(request)
        inputs.pop(SUPPORT_KEY_ARG, None)
        name = self.signature_of(inputs)
        if name not in self.support_names:
            raise UnknownSignature('unknown support process {!r}; configured: {}'.format(
                name, ', '.join(self.support_names) or 'none'))
        data = {k: v for k, v in inputs.items() if k != SIGNATURE}
        data['time'] = now_text()
        self.support_data[name] = data
        return self.answer(request, 200, {'MESSAGE': 'OK', 'SIGNATURE': name})

    @app.route('/notifications', methods=['GET', 'POST'])
    async def notifications(self, request):
        server = self.fleet.server(self.signature_of(request_inputs(request)))
        answers = await self.fleet.notifications(server)
        if len(server.targets) == 1:
            return self.answer(request, 200, dict(answers[0].body))
        return self.answer(request, 200, {'REPLICAS': [a.body for a in answers]})

    # -- admin -----------------------------------------------------------------------------------
    @app.route('/start_server', methods=['POST'])
    def start_server(self, request):
        self.guard.check(request)
        server = self.fleet.spawned_server(self.signature_of(request_inputs(request)))
        started = self.fleet.start(server)
        message = 'starting' if started else 'already running'
        return self.answer(request, 200, {'MESSAGE': '{} {}'.format(server.name, message),
                                          'SIGNATURE': server.name})

    @app.route('/kill_server', methods=['POST'])
    async def kill_server(self, request):
        self.guard.check(request)
        signature = self.signature_of(request_inputs(request))
        if signature == '*':
            servers = [s for s in self.fleet.servers.values() if not s.config.is_remote]
        else:
            servers = [self.fleet.spawned_server(signature)]
        await defer.gatherResults([self.fleet.stop(s) for s in servers])
        names = [s.name for s in servers]
        return self.answer(request, 200, {'MESSAGE': 'stopped: {}; POST /start_server to start again'.format(
            ', '.join(names)), 'KILLED': names})

    @app.route('/update_workers', methods=['POST'])
    async def update_workers(self, request):
        self.guard.check(request)
        inputs = request_inputs(request)
        server = self.fleet.server(self.signature_of(inputs))
        size = inputs.get('NR_WORKERS')
        if not valid_nr_workers(size):
            raise BadRequest('NR_WORKERS must be {}, got {!r}'.format(NR_WORKERS_RULE, size))
        failed = await self.fleet.resize(server, size)
        if failed is not None:
            return self.answer(request, failed.status, dict(failed.body))
        return self.answer(request, 200, {'MESSAGE': 'OK', 'NR_WORKERS': size, 'SIGNATURE': server.name})

    def refresh(self):
        """Re-read what is built from the config (after a config reload)."""
        self._openapi = gateway_document(self.fleet, self.server_name)
        self.v2.refresh()

    @app.route('/reload_server', methods=['POST'])
    async def reload_server(self, request):
        self.guard.check(request)
        server = self.fleet.spawned_server(self.signature_of(request_inputs(request)))
        replaced = await self.fleet.reload(server)
        return self.answer(request, 200, {'MESSAGE': '{}: {} replica(s) replaced by new processes'.format(
            server.name, replaced), 'SIGNATURE': server.name, 'REPLACED': replaced})

    @app.route('/rollout', methods=['POST'])
    async def rollout(self, request):
        """Start a canary or shadow candidate of an endpoint, promote it, or abort it."""
        self.guard.check(request)
        inputs = request_inputs(request)
        self.signature_of(inputs)
        return self.answer(request, 200, await self.rollouts.command(inputs))

    @app.route('/reload_config', methods=['POST'])
    async def reload_config(self, request):
        self.guard.check(request)
        request_inputs(request)  # the admin rule's body checks; the body carries nothing else
        if self._reload_config is None:
            raise NotFound('this gateway cannot reload its config')
        done = await self._reload_config()
        return self.answer(request, 200, dict(done, MESSAGE='config reloaded'))

    @app.route('/shutdown', methods=['POST'])
    def shutdown(self, request):
        self.guard.check(request)
        inputs = request_inputs(request)
        signature = self.signature_of(inputs) if SIGNATURE in inputs else None
        if signature != SHUTDOWN_SIGNATURE:
            # not signature_of's "missing" message: this body names no endpoint
            raise BadRequest('to shut the gateway down the body must be {{"SIGNATURE": "{}"}}, got {}'.format(
                SHUTDOWN_SIGNATURE, 'no SIGNATURE' if signature is None else 'SIGNATURE {!r}'.format(signature[:80])))
        self._log.warn('shutdown requested by {client}', client=request.getClientAddress())
        if self._shutdown is not None:
            # after the answer has gone out: the stop closes the port and the children
            request.notifyFinish().addBoth(lambda _: self._reactor.callLater(0, self._shutdown))
        return self.answer(request, 200, {'MESSAGE': 'shutting down: the servers stop, the state is saved, '
                                                     'then the gateway exits (run.sh starts it again)'})

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        return self.error(request, failure)

    def error(self, request, failure):
        """The JSON answer of a failed route: its status, ``ERROR`` and the gateway's fields."""
        return error_answer(request, failure, extra_fields=lambda: self.gateway_fields(request))


class GatewayRoot(Resource):
    """The gateway's resource: ``POST`` / ``GET /run``, the hot path, goes straight to
    ``Gateway.run``, and V2's infer (``v2``, a ``V2Routes``) straight to its route; the
    other ``/v2`` routes through V2's own Klein app (the protocol's error answers), every
    other request through Klein's routing. Klein binds its URL map and rebuilds the URL's
    parts for every request: about a tenth of the gateway's own work per ``/run`` in a
    profile. What Klein does around a route is kept: the route is cancelled when the client
    goes away, and a failure is answered by the route's error answer."""

    isLeaf = True
    _log = Logger()

    def __init__(self, gateway, routed, v2=None):
        Resource.__init__(self)
        self._gateway = gateway
        self._routed = routed
        self._v2 = v2
        self._v2_routed = v2.resource() if v2 is not None else None

    def render(self, request):
        if request.path == RUN_PATH and request.method in _RUN_METHODS:
            return self._serve(request, self._gateway.run(request), self._gateway.error)
        if self._v2 is not None and (request.path == V2_PATH or request.path.startswith(V2_PREFIX)):
            infer = self._v2.infer_of(request)
            if infer is not None:
                return self._serve(request, infer, self._v2.error)
            return self._v2_routed.render(request)
        return self._routed.render(request)

    def _serve(self, request, route, error):
        finished = []  # the request's end: None (answered), or the Failure of its client gone
        running = []

        def ended(result):
            finished.append(result)
            if running and isinstance(result, Failure):
                running[0].cancel()  # the client went away: so does the route

        when_finished = getattr(request, 'when_finished', None)  # FrontRequest's: no Deferred
        if when_finished is not None:
            when_finished(ended)
        else:
            request.notifyFinish().addBoth(ended)
        d = defer.Deferred.fromCoroutine(route)
        running.append(d)
        d.addCallbacks(self._write, self._failed, (request, finished), None, (request, finished, error))
        d.addErrback(lambda failure: self._log.failure('writing the answer of {path}', failure, path=request.path))
        return NOT_DONE_YET

    def _failed(self, failure, request, finished, error):
        body = self._failed_answer(failure, request, finished, error)
        self._write(body, request, finished)

    def _failed_answer(self, failure, request, finished, error):
        if finished:  # the client is gone: nobody to answer
            if not failure.check(defer.CancelledError):
                self._log.failure('{path} failed after its client went away', failure, path=request.path)
            return None
        return error(request, failure)

    @staticmethod
    def _write(body, request, finished):
        if body:
            request.write(body)
        if not finished:
            request.finish()


RUN_PATH = b'/run'
V2_PATH = b'/v2'
V2_PREFIX = b'/v2/'
_RUN_METHODS = (b'POST', b'GET')
