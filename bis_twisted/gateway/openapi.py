"""The OpenAPI 3 document of the gateway's routes, served at ``/openapi.json`` (and ``/docs``).

Built once per gateway (and again after a config reload) from the endpoint names, the
``INPUT_SCHEMA`` / ``OUTPUT_SCHEMA`` their files declare and which of them stream. Every route
is here, tagged ``run``, ``status`` or ``admin``; the admin ones carry the ``adminToken``
security scheme. ``/run``'s body is a ``oneOf`` of one schema per endpoint with a
discriminator on ``SIGNATURE``; its answer is each endpoint's answer, ``predict_result``
shaped by its ``OUTPUT_SCHEMA``; a streaming endpoint's NDJSON and SSE answers are described.

The document is assembled by ``ROUTE_GROUPS``: functions ``(endpoints, paths, schemas)`` that
each add their routes to ``paths`` and their schemas to ``schemas``. A new set of routes is
one more function in that list. Kept true by tests that validate it (openapi-spec-validator)
and run schemathesis against the live gateway.
"""

import ast
import re

import attr

from .._version import __version__ as LIB_VER
from ..protocol import SIGNATURE
from .v2_openapi import openapi_parts as v2_openapi_parts

TAG_RUN, TAG_STATUS, TAG_ADMIN = 'run', 'status', 'admin'
TAGS = [
    {'name': TAG_RUN, 'description': 'run an endpoint'},
    {'name': TAG_STATUS, 'description': 'the fleet, the system, health, metrics and the pages'},
    {'name': TAG_ADMIN, 'description': 'start, stop, resize, reload (Authorization: Bearer <BIS_ADMIN_TOKEN>; '
                                       'without a token set, loopback clients only)'},
]
ADMIN_SECURITY = [{'adminToken': []}]
SECURITY_SCHEMES = {
    'apiKey': {'type': 'apiKey', 'in': 'header', 'name': 'X-API-Key',
               'description': 'an API key, when the gateway has API_KEYS (bis-gateway key add NAME)'},
    'adminToken': {'type': 'http', 'scheme': 'bearer',
                   'description': 'the admin token (BIS_ADMIN_TOKEN); when the gateway has none, only loopback '
                                  'clients are served, without it'},
}

_FIELDS = {
    'ver-app': {'type': 'string'},
    'ver-lib': {'type': 'string'},
    'hostname': {'type': 'string'},
    'worker_id': {},
    'time': {'type': 'string', 'description': 'YYYY-MM-DD HH:MM:SS'},
    'gw-uptime': {'type': 'string', 'description': 'H:MM:SS'},
    'request_id': {'type': 'string'},
    'version': {'type': 'string', 'enum': ['stable', 'candidate'],
                'description': 'the endpoint is under rollout (POST /rollout): which version answered'},
}
_VERSION_HEADER = {'name': 'X-Bis-Version', 'in': 'header', 'required': False,
                   'schema': {'type': 'string', 'enum': ['stable', 'candidate']},
                   'description': 'an endpoint under rollout: the version to answer (409 for "candidate" when '
                                  'none serves)'}


def _answer(properties=None, required=()):
    props = dict(_FIELDS)
    props.update(properties or {})
    return {'type': 'object', 'properties': props,
            'required': sorted(set(required) | {'ver-app', 'ver-lib', 'hostname', 'time', 'gw-uptime'})}


def _json(schema_ref, description):
    return {'description': description, 'content': {'application/json': {'schema': {'$ref': schema_ref}}}}


_ERROR = '#/components/schemas/Error'
_ERRORS = {
    '400': _json(_ERROR, 'bad input: not a JSON object, SIGNATURE missing or not a string, a field against the '
                         "endpoint's INPUT_SCHEMA, or refused by its _pre_process"),
    '401': _json(_ERROR, 'admin route without credentials (BIS_ADMIN_TOKEN is set)'),
    '403': _json(_ERROR, 'admin route: wrong token, a request from another origin, or (no token set) a remote '
                         'client or a Host that is not a loopback name'),
    '404': _json(_ERROR, 'unknown SIGNATURE'),
    '405': _json(_ERROR, 'method not allowed on this route'),
    '413': _json(_ERROR, 'request body over MAX_BODY_MB'),
    '415': _json(_ERROR, 'admin route: the body is not sent as Content-Type: application/json'),
    '409': _json(_ERROR, 'a rollout of the endpoint is under way already (or none is, to PROMOTE / ABORT)'),
    '503': _json(_ERROR, 'the endpoint server is down, starting, restarting, stopped or its queue is full '
                         '(with Retry-After)'),
}


_STATS_POINT = {'type': 'object', 'properties': {
    't': {'type': 'number', 'description': 'end of the window, seconds since the epoch'},
    'rps': {'type': 'number'}, 'errors': {'type': 'integer', 'description': '5xx answers in the window'},
    'client_errors': {'type': 'integer', 'description': '4xx answers in the window'},
    'p50_ms': {'type': 'number', 'nullable': True}, 'p99_ms': {'type': 'number', 'nullable': True}}}


_VERSION_FIGURES = {'type': 'object', 'properties': {
    'REQUESTS': {'type': 'integer', 'description': 'since the rollout started'}, 'ERRORS': {'type': 'integer'},
    'WINDOW_REQUESTS': {'type': 'integer'}, 'ERROR_RATE': {'type': 'number', 'nullable': True},
    'P50_MS': {'type': 'number', 'nullable': True}, 'P99_MS': {'type': 'number', 'nullable': True}}}
_ROLLOUT = {'type': 'object', 'description': 'the endpoint\'s latest rollout (POST /rollout); figures over a '
            'sliding window', 'properties': {
                'STATE': {'type': 'string', 'enum': ['starting', 'canary', 'shadow', 'promoting', 'rolled_back',
                                                     'promoted', 'aborted']},
                'CANDIDATE': {'type': 'string'}, 'SERVER_CLASS': {'type': 'string'}, 'PERCENT': {'type': 'number'},
                'SHADOW': {'type': 'boolean'}, 'REASON': {'type': 'string', 'description': 'why it ended'},
                'VERSIONS': {'type': 'object', 'properties': {'stable': _VERSION_FIGURES,
                                                              'candidate': _VERSION_FIGURES}},
                'AGREEMENT': {'type': 'number', 'nullable': True, 'minimum': 0, 'maximum': 1,
                              'description': 'a shadow: the share of its answers equal to the stable ones'}}}


# /run is open unless the gateway has API_KEYS: then a key (X-API-Key or Authorization: Bearer)
_RUN_SECURITY = [{}, {'apiKey': []}]
# /metrics is open unless the config says METRICS_REQUIRE_TOKEN
_METRICS_SECURITY = [{}, {'adminToken': []}]
_RUN_KEY_ERRORS = {
    '401': _json(_ERROR, 'API_KEYS is set and no key, or an unknown one, was sent'),
    '403': _json(_ERROR, 'the API key may not call this endpoint'),
    '429': _json(_ERROR, 'the API key is over its rate (with Retry-After)'),
}


def _errors(*codes):
    return {code: _ERRORS[code] for code in codes}


def _signature_body(names, extra=None, required=('SIGNATURE',)):
    props = {'SIGNATURE': {'type': 'string', 'description': 'the endpoint: one of ' + ', '.join(names)}}
    props.update(extra or {})
    return {'required': True, 'content': {'application/json': {'schema': {
        'type': 'object', 'properties': props, 'required': list(required)}}}}


# JSON Schema keywords OpenAPI 3.0's schema object does not have (Swagger UI 4 and schemathesis
# read 3.0): dropped from the copy shown here, never from what the model server checks
_NOT_IN_OPENAPI_30 = ('$schema', '$id', '$comment', 'examples', 'contentEncoding', 'contentMediaType')


def as_openapi_schema(schema):
    """A JSON Schema (an endpoint's ``INPUT_SCHEMA``) as an OpenAPI 3.0 schema object:
    ``type`` lists become ``anyOf`` (``"null"`` becomes ``nullable``), ``const`` an ``enum``."""
    if isinstance(schema, list):
        return [as_openapi_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _NOT_IN_OPENAPI_30:
            continue
        if key == 'const':
            out['enum'] = [value]
        elif key in ('properties', 'patternProperties', 'definitions', '$defs'):
            out[key] = {name: as_openapi_schema(sub) for name, sub in value.items()} if isinstance(value, dict) \
                else value
        elif key == 'type' and isinstance(value, list):
            types = [t for t in value if t != 'null']
            if len(types) != len(value):
                out['nullable'] = True
            if len(types) == 1:
                out['type'] = types[0]
            else:
                out['anyOf'] = [{'type': t} for t in types]
        else:
            out[key] = as_openapi_schema(value) if isinstance(value, (dict, list)) and key not in (
                'enum', 'required', 'example', 'default') else value
    return out


@attr.s(frozen=True)
class Endpoints:
    """What the document says about the endpoints: their ``names`` (in config order), the
    ``EndpointSchemas`` their files declare (``schemas``, by name) and the names of those
    that stream (``streaming``)."""

    names = attr.ib(converter=tuple)
    schemas = attr.ib(factory=dict)
    streaming = attr.ib(default=frozenset(), converter=frozenset)

    def component(self, prefix, name):
        """The component name of endpoint ``name``'s schema (``RunInput.iris_classifier``)."""
        return '{}.{}'.format(prefix, re.sub(r'[^A-Za-z0-9._-]', '_', name))


def streams_declared(path):
    """True when the endpoint file at ``path`` has a ``_predict`` that yields (read from its
    syntax tree: the gateway never imports endpoint code)."""
    try:
        with open(path, encoding='utf-8') as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == '_predict':
            if any(isinstance(inner, (ast.Yield, ast.YieldFrom)) for inner in ast.walk(node)):
                return True
    return False


def _ref(name):
    return {'$ref': '#/components/schemas/' + name}


def _op(tag, summary, responses, **more):
    operation = {'tags': [tag], 'summary': summary, 'responses': responses}
    operation.update(more)
    return operation


def _input_schema(endpoints, name):
    declared = endpoints.schemas.get(name)
    inputs = declared.input if declared is not None else None
    schema = as_openapi_schema(inputs) if isinstance(inputs, dict) else {}
    schema.setdefault('type', 'object')
    schema['title'] = name
    schema['properties'] = dict({SIGNATURE: {'type': 'string', 'enum': [name]}},
                                **{k: v for k, v in schema.get('properties', {}).items() if k != SIGNATURE})
    schema['required'] = [SIGNATURE] + [k for k in schema.get('required', []) if k != SIGNATURE]
    if inputs is None:
        schema['description'] = ('{}: its file declares no INPUT_SCHEMA (or not as a literal); any '
                                 'other fields go to the endpoint as inputs'.format(name))
    return schema


def _answer_schema(endpoints, name):
    declared = endpoints.schemas.get(name)
    output = declared.output if declared is not None else None
    result = as_openapi_schema(output) if isinstance(output, dict) else {}
    if output is None:
        result = dict(result, description="what the endpoint's _post_process returned (its file declares no "
                                          'OUTPUT_SCHEMA)')
    answer = _answer({'predict_result': result, 'call_id': {'type': 'integer'}, 'batch_size': {'type': 'integer'},
                      'signature': {'type': 'string'}}, required=['predict_result'])
    answer['title'] = name
    return answer


def _run_body(endpoints, schemas):
    """``/run``'s request body: one schema per endpoint (its ``INPUT_SCHEMA`` with
    ``SIGNATURE`` fixed to its name) in a ``oneOf`` with a discriminator on ``SIGNATURE``, and
    the endpoints' examples."""
    refs, mapping, examples = [], {}, {}
    for name in endpoints.names:
        component = endpoints.component('RunInput', name)
        schemas[component] = _input_schema(endpoints, name)
        refs.append(_ref(component))
        mapping[name] = '#/components/schemas/' + component
        declared = endpoints.schemas.get(name)
        found = declared.examples if declared is not None else []
        for index, example in enumerate(found or [{}]):
            label = name if index == 0 else '{} ({})'.format(name, index + 1)
            examples[label] = {'summary': label, 'value': dict({SIGNATURE: name}, **example)}
    schema = {'oneOf': refs, 'discriminator': {'propertyName': SIGNATURE, 'mapping': mapping}}
    return {'required': True, 'content': {'application/json': {'schema': schema, 'examples': examples}}}


_STREAM_HELP = ('a streaming endpoint ({}) answers one JSON object per line: a chunk '
                '{{"predict_result": ...}} as each is made, then the summary (call_id, chunks and the gateway '
                'fields), or an object with ERROR (and the status a plain answer would have had) when the stream '
                'broke after it began')


def _run_answers(endpoints, schemas):
    """``/run``'s 200: each endpoint's answer (``anyOf``: several may look alike), and the
    NDJSON / SSE of the streaming ones."""
    refs = []
    for name in endpoints.names:
        component = endpoints.component('RunAnswer', name)
        schemas[component] = _answer_schema(endpoints, name)
        refs.append(_ref(component))
    schemas['RunAnswer'] = {'anyOf': refs} if refs else _answer({'predict_result': {}}, required=['predict_result'])
    content = {'application/json': {'schema': _ref('RunAnswer')}}
    streaming = [n for n in endpoints.names if n in endpoints.streaming]
    if streaming:
        help_text = _STREAM_HELP.format(', '.join(streaming))
        schemas['StreamChunk'] = {'type': 'object', 'properties': {'predict_result': {}},
                                  'required': ['predict_result']}
        schemas['StreamEnd'] = _answer({'chunks': {'type': 'integer'}, 'call_id': {'type': 'integer'},
                                        'ERROR': {'type': 'string'}, 'status': {'type': 'integer'}})
        line = {'oneOf': [_ref('StreamChunk'), _ref('StreamEnd')], 'description': help_text}
        content['application/x-ndjson'] = {'schema': line}
        content['text/event-stream'] = {'schema': {'type': 'string', 'description': (
            'with Accept: text/event-stream: each chunk as "data: <chunk JSON>", then "event: end" (or "event: '
            'error") with the summary as its data')}}
    description = "the endpoint's answer" + ('; ' + _STREAM_HELP.format(', '.join(streaming)) if streaming else '')
    return {'200': {'description': description, 'content': content}}


def run_routes(endpoints, paths, schemas):
    names = list(endpoints.names) or ['<none configured>']
    run_body = _run_body(endpoints, schemas) if endpoints.names else _signature_body(names)
    answers = _run_answers(endpoints, schemas)
    failures = dict(_errors('400', '404', '405', '409', '413', '503'), **_RUN_KEY_ERRORS, **{
        '500': _json('#/components/schemas/HookError', "the endpoint's _predict or _post_process raised"),
        '502': _json(_ERROR, 'the endpoint server closed the connection or answered garbage'),
        '504': _json(_ERROR, 'the endpoint server did not answer within its TIMEOUT')})
    paths['/run'] = {
        'post': _op(TAG_RUN, 'Run the endpoint named by SIGNATURE on the other fields', dict(answers, **failures),
                    description="The body is one of the endpoints' inputs (each endpoint's INPUT_SCHEMA, checked by "
                                'its model server: 400 names the field and the rule).',
                    requestBody=run_body, security=_RUN_SECURITY, parameters=[_VERSION_HEADER]),
        'get': _op(TAG_RUN, 'Run with the inputs as query arguments', dict(answers, **failures),
                   parameters=[{'name': SIGNATURE, 'in': 'query', 'required': True,
                                'schema': {'type': 'string', 'enum': names}}, _VERSION_HEADER],
                   security=_RUN_SECURITY),
    }


_SIGNATURE_QUERY = {'name': SIGNATURE, 'in': 'query', 'required': True, 'schema': {'type': 'string'}}


def status_routes(endpoints, paths, schemas):
    names = list(endpoints.names) or ['<none configured>']
    ok = lambda ref, text: {'200': _json(ref, text)}  # noqa: E731
    any_object = {'type': 'object'}
    paths.update({
        '/list_servers': {method: _op(TAG_STATUS, 'The servers, measured now',
                                      ok('#/components/schemas/ListServers', 'the fleet'))
                          for method in ('get', 'post')},
        '/system_status': {method: _op(TAG_STATUS, 'Memory, disk, versions, alerts, start/stop history',
                                       ok('#/components/schemas/SystemStatus', 'the status'))
                           for method in ('get', 'post')},
        '/notifications': {
            'post': _op(TAG_STATUS, "A server's notifications", dict(
                ok('#/components/schemas/Notifications', 'notifications'), **_errors('400', '404', '413', '503')),
                requestBody=_signature_body(names)),
            'get': _op(TAG_STATUS, "A server's notifications (SIGNATURE in the query)", dict(
                ok('#/components/schemas/Notifications', 'notifications'), **_errors('400', '404', '503')),
                parameters=[_SIGNATURE_QUERY])},
        '/health': {'get': _op(TAG_STATUS, 'Liveness: answers from the first second; STATUS "starting" with '
                                           'LOADING while DEFAULT_SERVER loads', ok('#/components/schemas/Health',
                                                                                   'serving'))},
        '/ready': {'get': _op(TAG_STATUS, 'Readiness: every enabled server answers', {
            '200': _json('#/components/schemas/Ready', 'all answer'),
            '503': _json('#/components/schemas/Ready', 'some do not (NOT_READY lists them)')})},
        '/metrics': {'get': _op(TAG_STATUS, 'Prometheus text format (admin token when METRICS_REQUIRE_TOKEN)', {
            '200': {'description': 'metrics', 'content': {'text/plain': {'schema': {'type': 'string'}}}},
            '401': _ERRORS['401'], '403': _ERRORS['403'], '404': _json(_ERROR, 'METRICS is false in the config')},
            security=_METRICS_SECURITY)},
        '/stats': {'get': _op(TAG_STATUS, 'Requests/s, 4xx, 5xx, p50 and p99 per window over the last minutes, for '
                                          'the gateway and per endpoint (the status page charts)',
                              ok('#/components/schemas/Stats', 'recent windows'))},
        '/openapi.json': {'get': _op(TAG_STATUS, 'This document', {
            '200': {'description': 'OpenAPI 3', 'content': {'application/json': {'schema': any_object}}}})},
        '/docs': {'get': _op(TAG_STATUS, 'Swagger UI for this document, served offline', {
            '200': {'description': 'HTML', 'content': {'text/html': {'schema': {'type': 'string'}}}},
            '404': _ERRORS['404']})},
        '/docs/': {'get': _op(TAG_STATUS, 'Redirects to /docs', {'302': {'description': 'to /docs'}})},
        '/docs/{name}': {'get': _op(TAG_STATUS, "Swagger UI's files", _asset_answers(),
                                    parameters=[_name_parameter()])},
        '/static/uplot/{name}': {'get': _op(TAG_STATUS, "The status page's chart library", _asset_answers(),
                                            parameters=[_name_parameter()])},
        '/': {'get': _op(TAG_STATUS, 'The status page', {
            '200': {'description': 'HTML', 'content': {'text/html': {'schema': {'type': 'string'}}}}})},
    })


def _name_parameter():
    return {'name': 'name', 'in': 'path', 'required': True, 'schema': {'type': 'string'}}


def _asset_answers():
    return {'200': {'description': 'the file', 'content': {'*/*': {'schema': {'type': 'string', 'format': 'binary'}}}},
            '404': _json(_ERROR, 'no such file')}


def admin_routes(endpoints, paths, schemas):
    names = list(endpoints.names) or ['<none configured>']
    ok = lambda ref, text: {'200': _json(ref, text)}  # noqa: E731
    admin = ('400', '401', '403', '404', '405', '413', '415')

    def post(summary, body, answer, codes=admin, **more):
        return {'post': _op(TAG_ADMIN, summary, dict(ok('#/components/schemas/Message', answer), **_errors(*codes),
                                                     **more), requestBody=body, security=ADMIN_SECURITY)}

    paths.update({
        '/support_update_status': post('A support process reports its data (its start key, or admin)',
                                       _signature_body(names), 'stored'),
        '/start_server': post('Start a stopped or DISABLED server', _signature_body(names), 'starting'),
        '/kill_server': post('Stop a server, or all with "*"', _signature_body(names + ['*']), 'stopped'),
        '/update_workers': post("Resize a server's worker pool", _signature_body(
            names, {'NR_WORKERS': {'type': 'integer', 'minimum': 1}}, required=(SIGNATURE, 'NR_WORKERS')),
            'resized', **{'503': _ERRORS['503']}),
        '/reload_server': post("Replace a server's processes by new ones that read its file again (nothing "
                               'dropped)', _signature_body(names), 'replaced', **{'503': _ERRORS['503']}),
        '/rollout': post('Canary or shadow rollout of a new version of an endpoint: start a candidate beside the '
                         'serving version, or PROMOTE / ABORT it (409 while one runs; 500 names the load error '
                         'of a candidate that does not start)', _signature_body(names, {
                             'SERVER_CLASS': {'type': 'string', 'description': 'the endpoint file of the '
                                              'candidate (default: the endpoint\'s own, read again)'},
                             'PERCENT': {'type': 'number', 'minimum': 0, 'maximum': 100,
                                         'description': 'share of the requests the candidate serves (a shadow: '
                                                        'gets a copy of); default 10, a shadow 100'},
                             'SHADOW': {'type': 'boolean', 'description': 'copies only: clients get the stable answer'},
                             'TOLERANCE': {'type': 'number', 'minimum': 0,
                                           'description': 'a shadow: how far apart two numbers may be and agree'},
                             'CONFIG': {'type': 'object', 'description': 'config keys of the candidate (REPLICAS '
                                                                         'default 1)'},
                             'ROLLBACK_ON': {'description': 'false, or {ERROR_RATE, P99_RATIO, MIN_REQUESTS} '
                                                            '(default 0.05, 2.0, 50)'},
                             'PROMOTE': {'type': 'boolean'}, 'ABORT': {'type': 'boolean'}}),
                         'the rollout (ROLLOUT: its state and figures)', codes=admin + ('409',),
                         **{'500': _json(_ERROR, 'the candidate did not start; the stable keeps serving')}),
        '/reload_config': post('Read the config file again and apply what changed (as SIGHUP)', {
            'required': False, 'content': {'application/json': {'schema': {'type': 'object'}}}},
            'what changed, by action', codes=('400', '401', '403', '404', '405', '413', '415')),
        '/shutdown': post('Stop the servers, save state, exit', _signature_body(['SAFE_KILL_SERVER_CMD']),
                          'shutting down', codes=('400', '401', '403', '405', '413', '415')),
    })


def v2_routes(endpoints, paths, schemas):
    """The Open Inference Protocol's routes (``v2_openapi.py``): infer and generate tagged
    ``run``, the health and metadata routes ``status``."""
    v2_paths, v2_schemas = v2_openapi_parts(list(endpoints.names))
    for path, item in v2_paths.items():
        tag = TAG_RUN if path.endswith(('/infer', '/generate', '/generate_stream')) else TAG_STATUS
        for method, operation in item.items():
            if method != 'parameters':
                operation.setdefault('tags', [tag])
    paths.update(v2_paths)
    schemas.update(v2_schemas)


# each adds its routes and schemas; see the module's docstring
ROUTE_GROUPS = [run_routes, status_routes, admin_routes, v2_routes]


def _base_schemas():
    servers = {'type': 'object', 'additionalProperties': {  # AVAIL_SERVERS, STOPPED_SERVERS
        'type': 'object', 'required': ['ONLINE', 'ERROR', 'URLS', 'PATHS', 'PORT', 'UPTIME', 'PID', 'RESTARTS',
                                       'NR_WORKERS', 'DESCRIPTION'],
        'properties': {'ONLINE': {'type': 'boolean'}, 'RESTARTS': {'type': 'integer'},
                       'URLS': {'type': 'array', 'items': {'type': 'string'}},
                       'PATHS': {'type': 'array', 'items': {'type': 'string'}},
                       'ROLLOUT': _ROLLOUT}}}
    any_object = {'type': 'object'}
    return {
        'Error': _answer({'ERROR': {'type': 'string'}}, required=['ERROR']),
        'HookError': _answer({'ERROR': {'type': 'string'}, 'call_id': {'type': 'integer'},
                              'batch_size': {'type': 'integer'}}, required=['ERROR']),
        'Message': _answer({'MESSAGE': {'type': 'string'}, 'STATUS': {'type': 'string'}}),
        'Health': _answer({'STATUS': {'type': 'string', 'enum': ['OK', 'starting']},
                           'LOADING': {'type': 'object', 'description': 'while DEFAULT_SERVER loads: each loading '
                                       'endpoint and for how long (H:MM:SS)',
                                       'additionalProperties': {'type': 'string'}}},
                          required=['STATUS']),
        'ListServers': _answer({'AVAIL_SERVERS': servers, 'STOPPED_SERVERS': servers},
                               required=['AVAIL_SERVERS', 'STOPPED_SERVERS']),
        'SystemStatus': _answer({'SYSTEM_STATUS': any_object, 'SYSTEM_ALERTS': any_object,
                                 'SYSTEM_HISTORY': any_object},
                                required=['SYSTEM_STATUS', 'SYSTEM_ALERTS', 'SYSTEM_HISTORY']),
        'Notifications': _answer({'GENERAL': {'type': 'array'}}),
        'Stats': _answer({'WINDOW_SECONDS': {'type': 'number', 'nullable': True},
                          'POINTS': {'type': 'array', 'items': _STATS_POINT},
                          'ENDPOINTS': {'type': 'object', 'additionalProperties': {
                              'type': 'array', 'items': _STATS_POINT}},
                          'ROLLOUTS': {'type': 'object', 'description': 'per endpoint, its latest rollout: STATE '
                                       'and VERSIONS {stable, candidate: [points]}', 'additionalProperties': {
                                           'type': 'object', 'properties': {'STATE': {'type': 'string'},
                                                                            'VERSIONS': {'type': 'object'}}}}},
                         required=['POINTS', 'ENDPOINTS']),
        'Ready': _answer({'READY': {'type': 'boolean'}, 'NOT_READY': {'type': 'array', 'items': {'type': 'string'}}},
                         required=['READY', 'NOT_READY']),
    }


def openapi_document(names, server_name='', schemas=None, streaming=()):
    """The document for the endpoints ``names``; ``schemas`` maps a name to the
    ``EndpointSchemas`` its file declares (read without importing it); ``streaming`` names
    the endpoints that stream their answers."""
    endpoints = Endpoints(names=list(names), schemas=dict(schemas or {}), streaming=streaming)
    paths, components = {}, _base_schemas()
    for add_routes in ROUTE_GROUPS:
        add_routes(endpoints, paths, components)
    return {
        'openapi': '3.0.3',
        'info': {'title': 'bis_twisted gateway' + (' ({})'.format(server_name) if server_name else ''),
                 'version': LIB_VER,
                 'description': 'Every answer is a JSON object with the gateway fields; errors carry ERROR.'},
        'tags': list(TAGS),
        'paths': paths,
        'components': {'schemas': components, 'securitySchemes': dict(SECURITY_SCHEMES)},
    }
