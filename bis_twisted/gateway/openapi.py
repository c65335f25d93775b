"""The OpenAPI 3 document of the gateway's routes, served at ``/openapi.json``.

Built once per gateway from its config (the endpoint names), and kept true by a test that
runs schemathesis against the live gateway.
"""

from .._version import __version__ as LIB_VER
from .v2_openapi import openapi_parts as v2_openapi_parts

_FIELDS = {
    'ver-app': {'type': 'string'},
    'ver-lib': {'type': 'string'},
    'hostname': {'type': 'string'},
    'worker_id': {},
    'time': {'type': 'string', 'description': 'YYYY-MM-DD HH:MM:SS'},
    'gw-uptime': {'type': 'string', 'description': 'H:MM:SS'},
    'request_id': {'type': 'string'},
}


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
    '503': _json(_ERROR, 'the endpoint server is down, starting, restarting, stopped or its queue is full '
                         '(with Retry-After)'),
}


_STATS_POINT = {'type': 'object', 'properties': {
    't': {'type': 'number', 'description': 'end of the window, seconds since the epoch'},
    'rps': {'type': 'number'}, 'errors': {'type': 'integer', 'description': '5xx answers in the window'},
    'p50_ms': {'type': 'number', 'nullable': True}, 'p99_ms': {'type': 'number', 'nullable': True}}}


# /run is open unless the gateway has API_KEYS: then a key (X-API-Key or Authorization: Bearer)
_RUN_SECURITY = [{}, {'apiKey': []}]
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


def _run_body(names, schemas):
    """``/run``'s request body: one schema per endpoint (its ``INPUT_SCHEMA`` with
    ``SIGNATURE`` fixed to its name) in a ``oneOf``, and the endpoints' examples."""
    variants, examples = [], {}
    for name in names:
        declared = schemas.get(name)
        inputs = declared.input if declared is not None else None
        schema = as_openapi_schema(inputs) if isinstance(inputs, dict) else {}
        schema.setdefault('type', 'object')
        schema['title'] = name
        schema['properties'] = dict({'SIGNATURE': {'type': 'string', 'enum': [name]}},
                                    **{k: v for k, v in schema.get('properties', {}).items() if k != 'SIGNATURE'})
        schema['required'] = ['SIGNATURE'] + [k for k in schema.get('required', []) if k != 'SIGNATURE']
        if inputs is None:
            schema['description'] = ('{}: its file declares no INPUT_SCHEMA (or not as a literal); any '
                                     'other fields go to the endpoint as inputs'.format(name))
        variants.append(schema)
        found = declared.examples if declared is not None else []
        for index, example in enumerate(found or [{}]):
            label = name if index == 0 else '{} ({})'.format(name, index + 1)
            examples[label] = {'summary': label, 'value': dict({'SIGNATURE': name}, **example)}
    return {'required': True, 'content': {'application/json': {
        'schema': {'oneOf': variants} if len(variants) > 1 else variants[0], 'examples': examples}}}


def openapi_document(names, server_name='', schemas=None):
    """The document for the endpoints ``names``; ``schemas`` maps a name to the
    ``EndpointSchemas`` its file declares (read without importing it)."""
    names = list(names)
    run_body = _run_body(names, schemas or {}) if names else _signature_body(['<none configured>'])
    names = names or ['<none configured>']
    any_object = {'type': 'object'}
    servers = {'type': 'object', 'additionalProperties': {  # AVAIL_SERVERS, STOPPED_SERVERS
        'type': 'object', 'required': ['ONLINE', 'ERROR', 'URLS', 'PATHS', 'PORT', 'UPTIME', 'PID', 'RESTARTS',
                                       'NR_WORKERS', 'DESCRIPTION'],
        'properties': {'ONLINE': {'type': 'boolean'}, 'RESTARTS': {'type': 'integer'},
                       'URLS': {'type': 'array', 'items': {'type': 'string'}},
                       'PATHS': {'type': 'array', 'items': {'type': 'string'}}}}}
    ok = lambda ref, text: {'200': _json(ref, text)}  # noqa: E731
    admin = ('400', '401', '403', '404', '405', '413', '415')
    paths = {
        '/run': {
            'post': {
                'summary': 'Run the endpoint named by SIGNATURE on the other fields',
                'description': 'The body is one of the endpoints\' inputs (each endpoint\'s INPUT_SCHEMA, '
                               'checked by its model server: 400 names the field and the rule).',
                'requestBody': run_body,
                'security': _RUN_SECURITY,
                'responses': dict(ok('#/components/schemas/RunAnswer', "the endpoint's answer"), **_errors(
                    '400', '404', '405', '413', '503'), **_RUN_KEY_ERRORS, **{
                    '500': _json('#/components/schemas/HookError', "the endpoint's _predict or _post_process raised"),
                    '502': _json(_ERROR, 'the endpoint server closed the connection or answered garbage'),
                    '504': _json(_ERROR, 'the endpoint server did not answer within its TIMEOUT')}),
            },
            'get': {
                'summary': 'Run with the inputs as query arguments',
                'parameters': [{'name': 'SIGNATURE', 'in': 'query', 'required': True, 'schema': {'type': 'string'}}],
                'security': _RUN_SECURITY,
                'responses': dict(ok('#/components/schemas/RunAnswer', "the endpoint's answer"),
                                  **_errors('400', '404', '503'), **_RUN_KEY_ERRORS, **{
                                      '500': _json('#/components/schemas/HookError', 'the endpoint raised'),
                                      '502': _json(_ERROR, 'bad answer from the endpoint server'),
                                      '504': _json(_ERROR, 'endpoint server timeout')}),
            },
        },
        '/list_servers': {method: {'summary': 'The servers, measured now',
                                   'responses': ok('#/components/schemas/ListServers', 'the fleet')}
                          for method in ('get', 'post')},
        '/system_status': {method: {'summary': 'Memory, disk, versions, alerts, start/stop history',
                                    'responses': ok('#/components/schemas/SystemStatus', 'the status')}
                           for method in ('get', 'post')},
        '/notifications': {'post': {'summary': "A server's notifications", 'requestBody': _signature_body(names),
                                    'responses': dict(ok('#/components/schemas/Notifications', 'notifications'),
                                                      **_errors('400', '404', '413', '503'))}},
        '/support_update_status': {'post': {
            'summary': 'A support process reports its data', 'requestBody': _signature_body(names),
            'responses': dict(ok('#/components/schemas/Message', 'stored'), **_errors(*admin))}},
        '/start_server': {'post': {'summary': 'Start a stopped or DISABLED server (admin)',
                                   'requestBody': _signature_body(names),
                                   'responses': dict(ok('#/components/schemas/Message', 'starting'), **_errors(*admin))}},
        '/kill_server': {'post': {'summary': 'Stop a server, or all with "*" (admin)',
                                  'requestBody': _signature_body(names),
                                  'responses': dict(ok('#/components/schemas/Message', 'stopped'), **_errors(*admin))}},
        '/update_workers': {'post': {
            'summary': "Resize a server's worker pool (admin)",
            'requestBody': _signature_body(names, {'NR_WORKERS': {'type': 'integer', 'minimum': 1}},
                                           required=('SIGNATURE', 'NR_WORKERS')),
            'responses': dict(ok('#/components/schemas/Message', 'resized'), **_errors(*admin), **{
                '503': _ERRORS['503']})}},
        '/shutdown': {'post': {
            'summary': 'Stop the servers, save state, exit (admin)',
            'requestBody': _signature_body(['SAFE_KILL_SERVER_CMD']),
            'responses': dict(ok('#/components/schemas/Message', 'shutting down'), **_errors('400', '401', '403',
                                                                                             '405', '413', '415'))}},
        '/health': {'get': {'summary': 'Liveness', 'responses': ok('#/components/schemas/Message', 'serving')}},
        '/ready': {'get': {'summary': 'Readiness: every enabled server answers', 'responses': {
            '200': _json('#/components/schemas/Ready', 'all answer'),
            '503': _json('#/components/schemas/Ready', 'some do not (NOT_READY lists them)')}}},
        '/metrics': {'get': {'summary': 'Prometheus text format', 'responses': {
            '200': {'description': 'metrics', 'content': {'text/plain': {'schema': {'type': 'string'}}}},
            '401': _ERRORS['401'], '403': _ERRORS['403']}}},
        '/stats': {'get': {'summary': 'Requests/s, 5xx, p50 and p99 per window over the last minutes, for the gateway '
                                      'and per endpoint (the status page charts)',
                           'responses': ok('#/components/schemas/Stats', 'recent windows')}},
        '/openapi.json': {'get': {'summary': 'This document', 'responses': {
            '200': {'description': 'OpenAPI 3', 'content': {'application/json': {'schema': any_object}}}}}},
        '/docs': {'get': {'summary': 'Swagger UI for this document, served offline', 'responses': {
            '200': {'description': 'HTML', 'content': {'text/html': {'schema': {'type': 'string'}}}},
            '404': _ERRORS['404']}}},
        '/': {'get': {'summary': 'The status page', 'responses': {
            '200': {'description': 'HTML', 'content': {'text/html': {'schema': {'type': 'string'}}}}}}},
    }
    schemas = {
        'Error': _answer({'ERROR': {'type': 'string'}}, required=['ERROR']),
        'HookError': _answer({'ERROR': {'type': 'string'}, 'call_id': {'type': 'integer'},
                              'batch_size': {'type': 'integer'}}, required=['ERROR']),
        'RunAnswer': _answer({'predict_result': {}, 'call_id': {'type': 'integer'}, 'batch_size': {'type': 'integer'},
                              'signature': {'type': 'string'}},
                             required=['predict_result']),
        'Message': _answer({'MESSAGE': {'type': 'string'}, 'STATUS': {'type': 'string'}}),
        'ListServers': _answer({'AVAIL_SERVERS': servers, 'STOPPED_SERVERS': servers},
                               required=['AVAIL_SERVERS', 'STOPPED_SERVERS']),
        'SystemStatus': _answer({'SYSTEM_STATUS': any_object, 'SYSTEM_ALERTS': any_object,
                                 'SYSTEM_HISTORY': any_object},
                                required=['SYSTEM_STATUS', 'SYSTEM_ALERTS', 'SYSTEM_HISTORY']),
        'Notifications': _answer({'GENERAL': {'type': 'array'}}),
        'Stats': _answer({'WINDOW_SECONDS': {'type': 'number', 'nullable': True},
                          'POINTS': {'type': 'array', 'items': _STATS_POINT},
                          'ENDPOINTS': {'type': 'object', 'additionalProperties': {
                              'type': 'array', 'items': _STATS_POINT}}},
                         required=['POINTS', 'ENDPOINTS']),
        'Ready': _answer({'READY': {'type': 'boolean'}, 'NOT_READY': {'type': 'array', 'items': {'type': 'string'}}},
                         required=['READY', 'NOT_READY']),
    }
    v2_paths, v2_schemas = v2_openapi_parts([n for n in names if n != '<none configured>'])  # the V2 routes
    paths.update(v2_paths)
    schemas.update(v2_schemas)
    return {
        'openapi': '3.0.3',
        'info': {'title': 'bis_twisted gateway' + (' ({})'.format(server_name) if server_name else ''),
                 'version': LIB_VER,
                 'description': 'Every answer is a JSON object with the gateway fields; errors carry ERROR.'},
        'paths': paths,
        'components': {'schemas': schemas, 'securitySchemes': {
            'apiKey': {'type': 'apiKey', 'in': 'header', 'name': 'X-API-Key',
                       'description': 'an API key, when the gateway has API_KEYS (bis-gateway key add NAME)'}}},
    }
