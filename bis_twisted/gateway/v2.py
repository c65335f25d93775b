"""The Open Inference Protocol (KServe V2, REST) on the gateway, beside ``/run``.

Each endpoint is a model of one version ("1"). Routes: ``GET /v2`` (server metadata),
``/v2/health/live``, ``/v2/health/ready``, ``GET /v2/models/<name>`` (model metadata),
``/v2/models/<name>/ready``, ``POST /v2/models/<name>/infer``, and the generate extension's
``POST .../generate`` and ``.../generate_stream`` (server-sent events, for a streaming
endpoint), each also under ``/versions/1``. An infer takes the same way as ``/run``
(``Gateway.serve_inference``: API keys, the fleet's replicas and failover, metrics with
``protocol="v2"``): its tensors are checked against the model's metadata (``v2_models``) and
sent to the model server as a ``/run`` body, whose answer comes back in V2's shape, passed
through as it is. Errors answer ``{"error": "..."}`` with the protocol's status.
"""

import json
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from .._version import __version__ as LIB_VER
from ..errors import BadRequest, BisError, NotFound, ServiceUnavailable
from ..protocol import CHUNK_PREFIX, SIGNATURE, endpoint_file
from ..shared.tensors import V2_MARKER
from ..shared.web import SSE_TYPE, dumps_spaced, forward_payload, parse_json_object, write_encoded_json, write_json
from .proxy import ChildStream
from .v2_models import ModelSpec, infer_payload, model_spec

MODEL_VERSION = '1'
PLATFORM = 'bis_twisted'
BINARY_HEADER = b'inference-header-content-length'
# none of binary tensors, shared memory, the model repository or statistics is built
EXTENSIONS = ()


class V2Routes:
    """The V2 routes of ``gateway`` (a ``routes.Gateway``: its fleet, and its
    ``serve_inference``, the way every inference request takes)."""

    app = Klein()
    _log = Logger()

    def __init__(self, gateway):
        self._gateway = gateway
        self.fleet = gateway.fleet
        self.specs = {}
        self.refresh()

    def refresh(self):
        """Read each endpoint's tensor metadata (again: after a config reload)."""
        specs = {}
        for name, server in self.fleet.servers.items():
            config = server.config
            specs[name] = model_spec(endpoint_file(self.fleet.endpoints_dir, config.server_class), self._log) \
                if config.has_file and not config.is_remote else ModelSpec()
        self.specs = specs

    def resource(self):
        return self.app.resource()

    def model(self, name, version=None):
        """The fleet's server behind model ``name`` (404 for an unknown model or version)."""
        server = self.fleet.servers.get(name)
        if server is None:
            raise NotFound('unknown model {!r}; available: {}'.format(name, ', '.join(sorted(self.fleet.servers))
                                                                      or 'none'))
        if version is not None and version != MODEL_VERSION:
            raise NotFound('model {!r} has no version {!r}; its version: {}'.format(name, version, MODEL_VERSION))
        return server

    def _model_ready(self, server):
        return any(t.active and self.fleet.target_ready(t) for t in server.targets)

    @app.route('/v2', methods=['GET'])
    def server_metadata(self, request):
        return write_json(request, 200, {'name': PLATFORM, 'version': LIB_VER, 'extensions': list(EXTENSIONS)})

    @app.route('/v2/health/live', methods=['GET'])
    def live(self, request):
        return write_json(request, 200, {'live': True})

    @app.route('/v2/health/ready', methods=['GET'])
    async def ready(self, request):
        unready = await self.fleet.unready()
        if unready:
            raise ServiceUnavailable('not ready: {}'.format(', '.join(unready)))
        return write_json(request, 200, {'ready': True})

    @app.route('/v2/models/<string:name>', methods=['GET'])
    @app.route('/v2/models/<string:name>/versions/<string:version>', methods=['GET'])
    def model_metadata(self, request, name, version=None):
        self.model(name, version)
        spec = self.specs.get(name, ModelSpec())
        return write_json(request, 200, {
            'name': name, 'versions': [MODEL_VERSION], 'platform': PLATFORM,
            'inputs': [s.metadata() for s in spec.inputs], 'outputs': [s.metadata() for s in spec.outputs]})

    @app.route('/v2/models/<string:name>/ready', methods=['GET'])
    @app.route('/v2/models/<string:name>/versions/<string:version>/ready', methods=['GET'])
    def model_ready(self, request, name, version=None):
        server = self.model(name, version)
        if not self._model_ready(server):
            raise ServiceUnavailable(self.fleet.unavailable(server).message)
        return write_json(request, 200, {'name': name, 'ready': True})

    @app.route('/v2/models/<string:name>/infer', methods=['POST'])
    @app.route('/v2/models/<string:name>/versions/<string:version>/infer', methods=['POST'])
    async def infer(self, request, name, version=None):
        return await self._gateway.serve_inference(request, 'v2', lambda: self._read_infer(request, name, version),
                                                   self._write_infer)

    def infer_of(self, request):
        """``infer``'s coroutine for ``POST /v2/models/<name>[/versions/<v>]/infer``, None for
        any other request: the gateway's resource sends infer past Klein's routing, as ``/run``."""
        if request.method != b'POST' or not request.path.endswith(b'/infer'):
            return None
        parts = request.path.split(b'/')  # b'', b'v2', b'models', name, [b'versions', version,] b'infer'
        if len(parts) == 5 and parts[2] == b'models' and parts[3]:
            return self.infer(request, _segment(parts[3]))
        if len(parts) == 7 and parts[2] == b'models' and parts[4] == b'versions' and parts[3] and parts[5]:
            return self.infer(request, _segment(parts[3]), _segment(parts[5]))
        return None

    def error(self, request, failure):
        """The protocol's error answer of a failed V2 route."""
        return v2_error(request, failure, self._log)

    def _read_infer(self, request, name, version):
        """``(endpoint, payload)`` of an infer request."""
        self.model(name, version)
        if request.getHeader(BINARY_HEADER) is not None:
            raise BadRequest('binary tensor data (Inference-Header-Content-Length) is not supported here: send '
                             'the tensors as JSON "data" (tritonclient: set_data_from_numpy(array, '
                             'binary_data=False))')
        encoding = (request.getHeader(b'content-encoding') or b'identity').strip().lower()
        if encoding != b'identity':
            raise BadRequest('Content-Encoding {!r} is not supported here; send the body uncompressed'.format(
                encoding.decode('latin-1')))
        request.content.seek(0)
        body = parse_json_object(request.content.read())
        return name, infer_payload(name, body, self.specs.get(name, ModelSpec()))

    async def _write_infer(self, request, name, result, started):
        if isinstance(result, ChildStream):  # the model server refuses V2 on a stream; this is a safety net
            result.stopProducing()
            raise BadRequest('model {!r} streams its answer, which V2 infer cannot carry; POST /run'.format(name))
        headers = {b'Retry-After': b'1'} if result.status == 503 else None
        if result.raw is not None:  # the model server's complete V2 answer: passed on as it is
            return write_encoded_json(request, result.status, result.raw, headers)
        body = dict(result.body)
        if 'error' not in body and 'ERROR' in body:
            body = {'error': str(body['ERROR'])}
        return write_json(request, result.status, body, headers)

    # -- the generate extension: JSON inputs by name in, the answer's fields out ---------------
    @app.route('/v2/models/<string:name>/generate', methods=['POST'])
    @app.route('/v2/models/<string:name>/versions/<string:version>/generate', methods=['POST'])
    async def generate(self, request, name, version=None):
        call = GenerateCall(self, request, name, version)
        return await self._gateway.serve_inference(request, 'v2', call.read, call.write)

    @app.route('/v2/models/<string:name>/generate_stream', methods=['POST'])
    @app.route('/v2/models/<string:name>/versions/<string:version>/generate_stream', methods=['POST'])
    async def generate_stream(self, request, name, version=None):
        call = GenerateCall(self, request, name, version)
        return await self._gateway.serve_inference(request, 'v2', call.read, call.write_stream)

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        return self.error(request, failure)


class GenerateCall:
    """One request of the generate extension: its fields (less ``id`` and ``parameters``)
    are the endpoint's inputs, as in a ``/run`` body; the answer is the model's name and the
    fields of ``predict_result`` (``id`` echoed): once (``write``), or as server-sent events
    (``write_stream``), a chunk each for a streaming endpoint."""

    _log = Logger()

    def __init__(self, routes, request, name, version):
        self._routes = routes
        self._request = request
        self._name = name
        self._version = version
        self._id = None

    def read(self):
        self._routes.model(self._name, self._version)
        self._request.content.seek(0)
        body = parse_json_object(self._request.content.read())
        self._id = body.pop('id', None)
        body.pop('parameters', None)
        for reserved in (SIGNATURE, V2_MARKER):
            if reserved in body:
                raise BadRequest('an input may not be named {!r}'.format(reserved))
        return self._name, forward_payload(dict(body, **{SIGNATURE: self._name}))

    def _answer(self, body):
        answer = {'model_name': self._name, 'model_version': MODEL_VERSION}
        if self._id is not None:
            answer['id'] = self._id
        result = body.get('predict_result')
        answer.update(result if isinstance(result, dict) else {'predict_result': result})
        return answer

    async def write(self, request, name, result, started):
        if isinstance(result, ChildStream):
            result.stopProducing()
            raise BadRequest('model {!r} streams its answer: POST .../generate_stream'.format(name))
        body = json.loads(result.raw) if result.raw is not None else dict(result.body)
        if result.status != 200:
            message = body.get('ERROR') or body.get('error') or 'HTTP {}'.format(result.status)
            return write_json(request, result.status, {'error': str(message)},
                              {b'Retry-After': b'1'} if result.status == 503 else None)
        return write_json(request, 200, self._answer(body))

    async def write_stream(self, request, name, result, started):
        if not isinstance(result, ChildStream):
            if result.status != 200:  # an error answers as itself
                return await self.write(request, name, result, started)
            body = json.loads(result.raw) if result.raw is not None else dict(result.body)
            request.setHeader(b'Content-Type', SSE_TYPE)
            return _event(self._answer(body))
        request.setResponseCode(result.status)
        request.setHeader(b'Content-Type', SSE_TYPE)
        request.setHeader(b'Cache-Control', b'no-cache')
        request.setHeader(b'X-Accel-Buffering', b'no')
        ended = []

        def on_line(line):
            try:
                body = json.loads(line)
            except ValueError:
                body = None
            if not isinstance(body, dict):
                body = {'ERROR': 'model {!r} sent a line that is not a JSON object'.format(name)}
            elif line.startswith(CHUNK_PREFIX):
                request.write(_event(self._answer(body)))
                return
            ended.append(True)  # the summary, or the error that ended the stream
            if 'ERROR' in body:
                request.write(_event({'error': str(body['ERROR'])}))

        request.registerProducer(result, True)
        try:
            await result.relay(on_line)
            if not ended:
                request.write(_event({'error': 'model {!r} ended its stream without its summary'.format(name)}))
        except BisError as exc:  # the status line went out with the first event
            self._log.warn('generate_stream to {name}: cut: {error}', name=name, error=exc.message)
            request.write(_event({'error': exc.message}))
        except defer.CancelledError:
            result.stopProducing()  # the client went away: so does the child's connection
            raise
        finally:
            if request.channel is not None:
                request.unregisterProducer()
        return b''


def _event(body):
    return b'data: ' + dumps_spaced(body) + b'\n\n'


def _segment(raw):
    # a URL path segment as the route sees it (the site has refused a path that is not UTF-8)
    return unquote_to_bytes(raw).decode('utf-8', 'replace')


def v2_error(request, failure, log):
    """The protocol's error answer ``{"error": ...}`` for a failed V2 route."""
    exc = failure.value
    headers = {}
    if isinstance(exc, BisError):
        status, message = exc.status, exc.message
        if exc.retry_after is not None:
            headers[b'Retry-After'] = str(exc.retry_after).encode('ascii')
    elif isinstance(exc, HTTPException):
        status = exc.code or 500
        message = '{} {}: {}'.format(status, exc.name, request.path.decode('utf-8', 'replace'))
    else:
        log.failure('unexpected error answering {method} {path}', failure, method=request.method, path=request.path)
        status, message = 500, 'internal error: {}'.format(type(exc).__name__)
    return write_json(request, status, {'error': message}, headers)
