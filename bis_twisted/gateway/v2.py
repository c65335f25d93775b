"""The Open Inference Protocol (KServe V2, REST) on the gateway, beside ``/run``.

Each endpoint is a model of one version ("1"). Routes: ``GET /v2`` (server metadata),
``/v2/health/live``, ``/v2/health/ready``, ``GET /v2/models/<name>`` (model metadata),
``/v2/models/<name>/ready``, ``POST /v2/models/<name>/infer``, and the generate extension's
``POST .../generate`` and ``.../generate_stream`` (server-sent events, for a streaming
endpoint), each also under ``/versions/1``. An infer takes the same way as ``/run`` (``Gateway.serve_inference``:
API keys, the fleet's replicas and failover, metrics with ``protocol="v2"``): its tensors
are checked here and sent to the model server as a ``/run`` body (see ``shared.tensors``),
whose answer comes back in V2's shape, passed through as it is. Errors answer
``{"error": "..."}`` with the protocol's status.

A model's tensor metadata comes from its file, read without importing it: ``V2_INPUTS`` /
``V2_OUTPUTS`` (lists of ``{"name", "datatype", "shape"}``, -1 for a free dimension) when
declared, and then enforced on each request; else derived from ``INPUT_SCHEMA`` /
``OUTPUT_SCHEMA`` where they describe numbers, strings and arrays, and only advisory
(``INPUT_SCHEMA`` itself is checked by the model server). An input a schema types as one
number, string or boolean is a tensor of one element (shape ``[1]``) sent on as that value.
"""

import json
from urllib.parse import unquote_to_bytes

import attr
from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from .._version import __version__ as LIB_VER
from ..errors import BadRequest, BisError, NotFound, ServiceUnavailable
from ..protocol import CHUNK_PREFIX, SIGNATURE, endpoint_file
from ..shared.schemas import INPUT_SCHEMA, OUTPUT_SCHEMA, TRANSPORT_KEYS, declared_literals
from ..shared.tensors import DATATYPES, V2_MARKER, TensorError, marker, nest, read_input, shape_fits
from ..shared.web import SSE_TYPE, dumps, forward_payload, parse_json_object, write_encoded_json, write_json
from .proxy import ChildStream

V2_INPUTS = 'V2_INPUTS'
V2_OUTPUTS = 'V2_OUTPUTS'
MODEL_VERSION = '1'
PLATFORM = 'bis_twisted'
BINARY_HEADER = b'inference-header-content-length'
EXTENSIONS = ()  # none of the protocol's optional extensions (binary tensors, generate, repository)


@attr.s(frozen=True)
class TensorSpec:
    """A tensor of a model's metadata. ``scalar``: sent to the worker as its one value."""

    name = attr.ib()
    datatype = attr.ib()
    shape = attr.ib(converter=tuple)
    scalar = attr.ib(default=False)

    def metadata(self):
        return {'name': self.name, 'datatype': self.datatype, 'shape': list(self.shape)}


@attr.s(frozen=True)
class ModelSpec:
    """What a model takes and answers. ``declared_inputs``: from ``V2_INPUTS``, so each
    request's input names, datatypes and shapes are checked against it."""

    inputs = attr.ib(default=(), converter=tuple)
    outputs = attr.ib(default=(), converter=tuple)
    declared_inputs = attr.ib(default=False)
    declared_outputs = attr.ib(default=False)

    def input(self, name):
        return next((spec for spec in self.inputs if spec.name == name), None)


class DeclarationError(ValueError):
    """A ``V2_INPUTS`` / ``V2_OUTPUTS`` that is not a list of tensor metadata."""


def model_spec(path, log=None):
    """The ``ModelSpec`` of the endpoint file at ``path`` (an empty one when it has none); a
    malformed ``V2_INPUTS``/``V2_OUTPUTS`` is logged (naming the file and the key) and the
    schemas are used instead."""
    found = declared_literals(path, (V2_INPUTS, V2_OUTPUTS, INPUT_SCHEMA, OUTPUT_SCHEMA))
    sides = {}
    for key, schema_key, objects in ((V2_INPUTS, INPUT_SCHEMA, False), (V2_OUTPUTS, OUTPUT_SCHEMA, True)):
        if key in found:
            try:
                sides[key] = (declared_tensors(found[key]), True)
                continue
            except DeclarationError as exc:
                if log is not None:
                    log.warn('{path}: {key} {error}; the metadata comes from {schema} instead', path=path, key=key,
                             error=exc, schema=schema_key)
        sides[key] = (derived_tensors(found.get(schema_key), objects), False)
    (inputs, declared_in), (outputs, declared_out) = sides[V2_INPUTS], sides[V2_OUTPUTS]
    return ModelSpec(inputs, outputs, declared_in, declared_out)


def declared_tensors(value):
    """``V2_INPUTS``/``V2_OUTPUTS`` as ``TensorSpec``s; ``DeclarationError`` says what is wrong."""
    if not isinstance(value, (list, tuple)):
        raise DeclarationError('must be a list of {"name", "datatype", "shape"}, as a literal')
    specs = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get('name'), str) or not item['name']:
            raise DeclarationError('item {} must be a dict with a "name" (a string)'.format(index))
        if item.get('datatype') not in DATATYPES:
            raise DeclarationError('{!r}: datatype {!r} is not one of {}'.format(
                item['name'], item.get('datatype'), ', '.join(DATATYPES)))
        shape = item.get('shape')
        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1
                                                           for d in shape):
            raise DeclarationError('{!r}: shape must be a list of integers (-1: any size), got {!r}'.format(
                item['name'], shape))
        specs.append(TensorSpec(item['name'], item['datatype'], shape, scalar=not shape))
    return specs


_SCALAR_TYPES = (('number', 'FP64'), ('integer', 'INT64'), ('boolean', 'BOOL'), ('string', 'BYTES'))


def derived_tensors(schema, objects_as_bytes=False):
    """One ``TensorSpec`` per property of an object schema that describes numbers, strings,
    booleans or arrays of them (an object, too, as BYTES when ``objects_as_bytes``: an
    output's JSON text)."""
    if not isinstance(schema, dict) or not isinstance(schema.get('properties'), dict):
        return []
    specs = []
    for name, sub in schema['properties'].items():
        if name in TRANSPORT_KEYS:
            continue
        found = _spec_of(sub, objects_as_bytes)
        if found is not None:
            datatype, shape = found
            specs.append(TensorSpec(name, datatype, shape or (1,), scalar=not shape))
    return specs


def _spec_of(schema, objects_as_bytes, depth=0):
    """``(datatype, shape)`` of a JSON Schema (shape ``()`` for one value), or None."""
    if not isinstance(schema, dict) or depth > 16:
        return None
    for key in ('anyOf', 'oneOf'):
        branches = schema.get(key)
        if isinstance(branches, list):
            found = [s for s in (_spec_of(b, objects_as_bytes, depth + 1) for b in branches) if s is not None]
            if found:  # the branch of the highest rank: the others are its special cases
                return max(found, key=lambda s: len(s[1]))
    types = schema.get('type')
    types = [types] if isinstance(types, str) else [t for t in types or () if t != 'null']
    if types[:1] == ['array']:
        item = _spec_of(schema.get('items'), objects_as_bytes, depth + 1)
        if item is None:
            return None
        low, high = schema.get('minItems'), schema.get('maxItems')
        size = low if isinstance(low, int) and low == high else -1
        return item[0], (size,) + tuple(item[1])
    for json_type, datatype in _SCALAR_TYPES:
        if json_type in types:
            return datatype, ()
    if objects_as_bytes and 'object' in types:
        return 'BYTES', ()
    return None


# -- an infer request ------------------------------------------------------------------------
def infer_payload(name, body, spec):
    """The ``/run`` body (bytes) that carries V2 infer request ``body`` to model ``name``;
    ``BadRequest`` for anything the protocol or the model's declared metadata refuses."""
    inputs = body.get('inputs')
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest('"inputs" must be a non-empty list of tensors {"name", "shape", "datatype", "data"}')
    try:
        tensors = [read_input(tensor) for tensor in inputs]
    except TensorError as exc:
        raise BadRequest(str(exc)) from None
    names = [t.name for t in tensors]
    for reserved in (SIGNATURE, V2_MARKER):
        if reserved in names:
            raise BadRequest('an input may not be named {!r}'.format(reserved))
    if len(set(names)) != len(names):
        raise BadRequest('an input is sent twice: {}'.format(', '.join(sorted({n for n in names if names.count(n) > 1}))))
    if spec.declared_inputs:
        _check_declared(name, tensors, spec)
    payload, types = {SIGNATURE: name}, []
    for tensor in tensors:
        declared = spec.input(tensor.name)
        one_value = not tensor.shape or (declared is not None and declared.scalar and len(tensor.data) == 1)
        payload[tensor.name] = tensor.data[0] if one_value else nest(tensor.data, tensor.shape)
        types.append((tensor.name, tensor.datatype.name, [] if one_value else tensor.shape))
    request_id = body.get('id')
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest('"id" must be a string')
    if body.get('parameters') is not None and not isinstance(body['parameters'], dict):
        raise BadRequest('"parameters" must be an object')
    outputs = _requested_outputs(name, body.get('outputs'), spec)
    payload[V2_MARKER] = dict(marker(types, outputs, request_id, {
        s.name: s.datatype for s in spec.outputs} if spec.declared_outputs else {}), model=name)
    return forward_payload(payload)


def _check_declared(model, tensors, spec):
    known = {s.name for s in spec.inputs}
    for tensor in tensors:
        declared = spec.input(tensor.name)
        if declared is None:
            raise BadRequest('model {!r} has no input {!r}; its inputs: {}'.format(
                model, tensor.name, ', '.join(sorted(known)) or 'none'))
        if tensor.datatype.name != declared.datatype:
            raise BadRequest('input {!r}: datatype {}, model {!r} takes {}'.format(
                tensor.name, tensor.datatype.name, model, declared.datatype))
        if not (shape_fits(tensor.shape, declared.shape) or declared.scalar and len(tensor.data) == 1):
            raise BadRequest('input {!r}: shape {}, model {!r} takes {} (-1: any size)'.format(
                tensor.name, tensor.shape, model, list(declared.shape)))
    missing = known - {t.name for t in tensors}
    if missing:
        raise BadRequest('model {!r} needs input {} too'.format(model, ', '.join(repr(m) for m in sorted(missing))))


def _requested_outputs(model, outputs, spec):
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get('name'), str)
                                                for o in outputs):
        raise BadRequest('"outputs" must be a list of {"name": ...}')
    names = [o['name'] for o in outputs]
    if spec.declared_outputs:
        known = [s.name for s in spec.outputs]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadRequest('model {!r} has no output {}; its outputs: {}'.format(
                model, ', '.join(repr(u) for u in unknown), ', '.join(known) or 'none'))
    return names


# -- the routes ------------------------------------------------------------------------------
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

    def _server(self, name, version=None):
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
        self._server(name, version)
        spec = self.specs.get(name, ModelSpec())
        return write_json(request, 200, {
            'name': name, 'versions': [MODEL_VERSION], 'platform': PLATFORM,
            'inputs': [s.metadata() for s in spec.inputs], 'outputs': [s.metadata() for s in spec.outputs]})

    @app.route('/v2/models/<string:name>/ready', methods=['GET'])
    @app.route('/v2/models/<string:name>/versions/<string:version>/ready', methods=['GET'])
    def model_ready(self, request, name, version=None):
        server = self._server(name, version)
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
        if request.getHeader(BINARY_HEADER) is not None:
            raise BadRequest('binary tensor data (Inference-Header-Content-Length) is not supported here: send '
                             'the tensors as JSON "data" (tritonclient: set_data_from_numpy(array, '
                             'binary_data=False))')
        encoding = (request.getHeader(b'content-encoding') or b'identity').strip().lower()
        if encoding != b'identity':
            raise BadRequest('Content-Encoding {!r} is not supported here; send the body uncompressed'.format(
                encoding.decode('latin-1')))
        self._server(name, version)
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
        return await self._gateway.serve_inference(request, 'v2', lambda: self._read_generate(request, name, version),
                                                   self._write_generate)

    @app.route('/v2/models/<string:name>/generate_stream', methods=['POST'])
    @app.route('/v2/models/<string:name>/versions/<string:version>/generate_stream', methods=['POST'])
    async def generate_stream(self, request, name, version=None):
        return await self._gateway.serve_inference(request, 'v2', lambda: self._read_generate(request, name, version),
                                                   self._write_generate_stream)

    def _read_generate(self, request, name, version):
        """``(endpoint, payload)`` of a generate request: its fields (less ``id`` and
        ``parameters``) are the endpoint's inputs, as in a ``/run`` body."""
        self._server(name, version)
        request.content.seek(0)
        body = parse_json_object(request.content.read())
        request.v2_generate_id = body.pop('id', None)
        body.pop('parameters', None)
        for reserved in (SIGNATURE, V2_MARKER):
            if reserved in body:
                raise BadRequest('an input may not be named {!r}'.format(reserved))
        return name, forward_payload(dict(body, **{SIGNATURE: name}))

    def _generated(self, request, name, body):
        """A generate answer: the model, and the fields of ``predict_result``."""
        answer = {'model_name': name, 'model_version': MODEL_VERSION}
        if getattr(request, 'v2_generate_id', None) is not None:
            answer['id'] = request.v2_generate_id
        result = body.get('predict_result')
        answer.update(result if isinstance(result, dict) else {'predict_result': result})
        return answer

    async def _write_generate(self, request, name, result, started):
        if isinstance(result, ChildStream):
            result.stopProducing()
            raise BadRequest('model {!r} streams its answer: POST .../generate_stream'.format(name))
        body = json.loads(result.raw) if result.raw is not None else dict(result.body)
        if result.status != 200:
            return write_json(request, result.status, {'error': str(body.get('ERROR') or body.get('error'))},
                              {b'Retry-After': b'1'} if result.status == 503 else None)
        return write_json(request, 200, self._generated(request, name, body))

    async def _write_generate_stream(self, request, name, result, started):
        """Server-sent events: ``data: {...}`` per chunk of a streaming endpoint (one for an
        endpoint that answers once); an error ends the stream as ``data: {"error": ...}``."""
        if not isinstance(result, ChildStream):
            if result.status != 200:  # an error answers as itself
                return await self._write_generate(request, name, result, started)
            body = json.loads(result.raw) if result.raw is not None else dict(result.body)
            request.setHeader(b'Content-Type', SSE_TYPE)
            return _event(self._generated(request, name, body))
        request.setResponseCode(result.status)
        request.setHeader(b'Content-Type', SSE_TYPE)
        request.setHeader(b'Cache-Control', b'no-cache')
        request.setHeader(b'X-Accel-Buffering', b'no')
        ended = []

        def on_line(line):
            body = json.loads(line) if line[:1] == b'{' else None
            if not isinstance(body, dict):
                body = {'ERROR': 'model {!r} sent a line that is not a JSON object'.format(name)}
            if line.startswith(CHUNK_PREFIX):
                request.write(_event(self._generated(request, name, body)))
            elif 'ERROR' in body:
                ended.append(True)
                request.write(_event({'error': str(body['ERROR'])}))
            else:
                ended.append(True)  # the summary: the stream is complete

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

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        return self.error(request, failure)


def _event(body):
    return b'data: ' + dumps(body) + b'\n\n'


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



# -- /openapi.json ---------------------------------------------------------------------------
def _v2_json(ref, description):
    return {'description': description, 'content': {'application/json': {'schema': {'$ref': ref}}}}


_V2_ERROR = '#/components/schemas/V2Error'
_TENSOR_METADATA = {'type': 'object', 'required': ['name', 'datatype', 'shape'], 'properties': {
    'name': {'type': 'string'}, 'datatype': {'type': 'string', 'enum': list(DATATYPES)},
    'shape': {'type': 'array', 'items': {'type': 'integer'}}}}
_TENSOR = {'type': 'object', 'required': ['name', 'datatype', 'shape', 'data'], 'properties': {
    'name': {'type': 'string'}, 'datatype': {'type': 'string', 'enum': list(DATATYPES)},
    'shape': {'type': 'array', 'items': {'type': 'integer', 'minimum': 0}},
    'parameters': {'type': 'object'},
    'data': {'type': 'array', 'description': 'the elements in row-major order, flat or nested as the shape'}}}


def openapi_parts(names):
    """``(paths, schemas)`` of the V2 routes for ``/openapi.json``."""
    model = {'name': 'model_name', 'in': 'path', 'required': True, 'schema': {'type': 'string'},
             'description': 'an endpoint: one of ' + (', '.join(names) or 'none')}
    version = {'name': 'model_version', 'in': 'path', 'required': True, 'schema': {'type': 'string', 'enum': ['1']}}
    errors = {code: _v2_json(_V2_ERROR, text) for code, text in (
        ('400', 'a tensor that does not hold what it says, or the model refused its inputs'),
        ('401', 'API_KEYS is set and no key, or an unknown one, was sent'),
        ('403', 'the API key may not call this model'),
        ('404', 'no such model or version'), ('405', 'method not allowed'),
        ('429', 'the API key is over its rate'), ('500', "the model's hooks failed"),
        ('502', 'the model server closed the connection or answered garbage'),
        ('503', 'the model is not ready, or its queue is full'), ('504', 'the model did not answer within TIMEOUT'))}
    errors['413'] = _v2_json('#/components/schemas/Error', 'request body over MAX_BODY_MB')
    not_ready = {'503': _v2_json(_V2_ERROR, 'not ready: which and why')}
    metadata = {'get': {'summary': 'V2 model metadata', 'responses': dict(
        {'200': _v2_json('#/components/schemas/V2ModelMetadata', 'its tensors')}, **{'404': errors['404']})}}
    ready = {'get': {'summary': 'V2 model ready', 'responses': dict(
        {'200': _v2_json('#/components/schemas/V2ModelReady', 'ready')}, **not_ready, **{'404': errors['404']})}}
    infer = {'post': {
        'summary': 'V2 inference: typed tensors in, typed tensors out (JSON only)',
        'requestBody': {'required': True, 'content': {'application/json': {'schema': {
            '$ref': '#/components/schemas/V2InferRequest'}}}},
        'security': [{}, {'apiKey': []}],
        'responses': dict({'200': _v2_json('#/components/schemas/V2InferResponse', 'the output tensors')},
                          **errors)}}
    paths = {
        '/v2': {'get': {'summary': 'V2 server metadata', 'responses': {
            '200': _v2_json('#/components/schemas/V2ServerMetadata', 'name, version, extensions')}}},
        '/v2/health/live': {'get': {'summary': 'V2 liveness', 'responses': {
            '200': {'description': 'live', 'content': {'application/json': {'schema': {'type': 'object'}}}}}}},
        '/v2/health/ready': {'get': {'summary': 'V2 readiness: every enabled model ready', 'responses': dict({
            '200': {'description': 'ready', 'content': {'application/json': {'schema': {'type': 'object'}}}}},
            **not_ready)}},
        '/v2/models/{model_name}': dict(metadata, parameters=[model]),
        '/v2/models/{model_name}/versions/{model_version}': dict(metadata, parameters=[model, version]),
        '/v2/models/{model_name}/ready': dict(ready, parameters=[model]),
        '/v2/models/{model_name}/versions/{model_version}/ready': dict(ready, parameters=[model, version]),
        '/v2/models/{model_name}/infer': dict(infer, parameters=[model]),
        '/v2/models/{model_name}/versions/{model_version}/infer': dict(infer, parameters=[model, version]),
    }
    generate_body = {'required': True, 'content': {'application/json': {'schema': {
        'type': 'object', 'description': "the endpoint's inputs by name, as in a /run body (without SIGNATURE)",
        'properties': {'id': {'type': 'string'}, 'parameters': {'type': 'object'}}}}}}
    generate_errors = {code: errors[code] for code in ('400', '401', '403', '404', '405', '413', '429', '500', '502',
                                                       '503', '504')}
    generated = {'type': 'object', 'required': ['model_name'], 'properties': {
        'model_name': {'type': 'string'}, 'model_version': {'type': 'string'}},
        'description': "the model, and the fields of the endpoint's predict_result"}
    for tail, answer in (('generate', {'description': 'the fields of the answer', 'content': {
            'application/json': {'schema': generated}}}),
                         ('generate_stream', {'description': 'server-sent events: data: {...} per chunk; an error '
                                                             'ends the stream as data: {"error": ...}',
                                              'content': {'text/event-stream': {'schema': {'type': 'string'}}}})):
        route = {'post': {'summary': 'V2 generate extension' + (' (streamed)' if tail.endswith('stream') else ''),
                          'requestBody': generate_body, 'security': [{}, {'apiKey': []}],
                          'responses': dict({'200': answer}, **generate_errors)}}
        paths['/v2/models/{model_name}/' + tail] = dict(route, parameters=[model])
        paths['/v2/models/{model_name}/versions/{model_version}/' + tail] = dict(route, parameters=[model, version])
    schemas = {
        'V2Error': {'type': 'object', 'required': ['error'], 'properties': {'error': {'type': 'string'}}},
        'V2ServerMetadata': {'type': 'object', 'required': ['name', 'version', 'extensions'], 'properties': {
            'name': {'type': 'string'}, 'version': {'type': 'string'},
            'extensions': {'type': 'array', 'items': {'type': 'string'}}}},
        'V2ModelMetadata': {'type': 'object', 'required': ['name', 'versions', 'platform', 'inputs', 'outputs'],
                            'properties': {'name': {'type': 'string'}, 'platform': {'type': 'string'},
                                           'versions': {'type': 'array', 'items': {'type': 'string'}},
                                           'inputs': {'type': 'array', 'items': _TENSOR_METADATA},
                                           'outputs': {'type': 'array', 'items': _TENSOR_METADATA}}},
        'V2ModelReady': {'type': 'object', 'required': ['name', 'ready'], 'properties': {
            'name': {'type': 'string'}, 'ready': {'type': 'boolean'}}},
        'V2InferRequest': {'type': 'object', 'required': ['inputs'], 'properties': {
            'id': {'type': 'string'}, 'parameters': {'type': 'object'},
            'inputs': {'type': 'array', 'minItems': 1, 'items': _TENSOR},
            'outputs': {'type': 'array', 'items': {'type': 'object', 'required': ['name'], 'properties': {
                'name': {'type': 'string'}, 'parameters': {'type': 'object'}}}}}},
        'V2InferResponse': {'type': 'object', 'required': ['model_name', 'outputs'], 'properties': {
            'model_name': {'type': 'string'}, 'model_version': {'type': 'string'}, 'id': {'type': 'string'},
            'parameters': {'type': 'object', 'description': "the answer's fields: batch_size, worker_id, ..."},
            'outputs': {'type': 'array', 'items': _TENSOR}}},
    }
    return paths, schemas
