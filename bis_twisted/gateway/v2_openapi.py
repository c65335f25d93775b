"""The V2 routes' part of the gateway's ``/openapi.json``."""

from ..shared.tensors import DATATYPES


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
