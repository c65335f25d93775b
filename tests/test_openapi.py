"""``/openapi.json`` complete: every route of the gateway, tagged, the admin ones with their
security scheme, each endpoint's input and answer from its ``INPUT_SCHEMA`` / ``OUTPUT_SCHEMA``,
a discriminator on ``SIGNATURE``, the NDJSON and SSE of streaming endpoints; valid per
openapi-spec-validator, offline and from the live gateway."""

import re

import pytest
from openapi_spec_validator import validate

from bis_twisted.gateway.openapi import ADMIN_SECURITY, TAGS, as_openapi_schema, openapi_document
from bis_twisted.gateway.routes import Gateway
from bis_twisted.gateway.v2 import V2Routes
from bis_twisted.shared.schemas import declared_schemas
from gateway_process import start_gateway
from procs import ENDPOINTS_DIR

NAMES = ['iris_classifier', 'dummy_model_demo1', 'dummy_model_demo2', 'text_streamer']
ADMIN = {'/start_server', '/kill_server', '/update_workers', '/reload_server', '/reload_config', '/rollout', '/shutdown',
         '/support_update_status'}


def example_document(streaming=('text_streamer',)):
    schemas = {name: declared_schemas('{}/{}.py'.format(ENDPOINTS_DIR, name)) for name in NAMES}
    return openapi_document(NAMES + ['no-file here'], 'demo', schemas=schemas, streaming=streaming)


def component(document, ref):
    return document['components']['schemas'][ref['$ref'].rsplit('/', 1)[1]]


def klein_routes():
    """``{(path, method)}`` of every route the gateway serves (``/docs/{}``: parameter names aside)."""
    found = set()
    rules = list(Gateway.app.url_map.iter_rules()) + list(V2Routes.app.url_map.iter_rules())
    for rule in rules:
        path = re.sub(r'<(?:[a-z]+:)?([a-z_]+)>', '{}', rule.rule)
        found |= {(path, m.lower()) for m in rule.methods if m not in ('HEAD', 'OPTIONS')}
    return found


def test_the_document_is_valid_openapi_and_names_every_route_the_gateway_serves():
    document = example_document()
    validate(document)
    documented = {(re.sub(r'{[a-z_]+}', '{}', path), method) for path, item in document['paths'].items()
                  for method in item if method != 'parameters'}
    routes = klein_routes()
    assert ('/reload_config', 'post') in routes and ('/notifications', 'get') in routes
    assert routes - documented == set()
    assert documented - routes == set()


def test_every_operation_has_one_of_the_three_tags_and_admin_routes_carry_the_security_scheme():
    document = example_document()
    assert [t['name'] for t in TAGS] == ['run', 'status', 'admin']
    for path, item in document['paths'].items():
        for method, operation in item.items():
            if method == 'parameters':  # the path's, shared by its operations
                continue
            assert operation['tags'] in (['run'], ['status'], ['admin']), (path, method)
            if path in ADMIN:
                assert operation['tags'] == ['admin'] and operation['security'] == ADMIN_SECURITY, path
                assert '401' in operation['responses'] and '403' in operation['responses']
            else:
                assert operation['tags'] != ['admin'], path
    assert document['components']['securitySchemes']['adminToken'] == {
        'type': 'http', 'scheme': 'bearer', 'description': document['components']['securitySchemes']['adminToken'][
            'description']}


def test_run_body_is_discriminated_by_signature_and_each_answer_has_its_output_schema():
    document = example_document()
    body = document['paths']['/run']['post']['requestBody']['content']['application/json']['schema']
    assert body['discriminator']['propertyName'] == 'SIGNATURE'
    mapping = body['discriminator']['mapping']
    assert sorted(mapping) == sorted(NAMES + ['no-file here'])
    assert [ref['$ref'] for ref in body['oneOf']] == [mapping[name] for name in NAMES + ['no-file here']]
    iris_input = component(document, {'$ref': mapping['iris_classifier']})
    assert iris_input['properties']['SIGNATURE'] == {'type': 'string', 'enum': ['iris_classifier']}
    assert mapping['no-file here'] == '#/components/schemas/RunInput.no-file_here'

    answers = document['paths']['/run']['post']['responses']['200']['content']['application/json']['schema']
    by_title = {a['title']: a for a in (component(document, ref) for ref in
                                        component(document, answers)['anyOf'])}
    iris_output = declared_schemas('{}/iris_classifier.py'.format(ENDPOINTS_DIR)).output
    assert by_title['iris_classifier']['properties']['predict_result'] == as_openapi_schema(iris_output)
    assert 'predict_result' in by_title['iris_classifier']['required']
    assert 'no OUTPUT_SCHEMA' in by_title['dummy_model_demo1']['properties']['predict_result']['description']


def test_streaming_endpoints_add_ndjson_and_sse_answers_and_others_do_not():
    streaming = example_document()['paths']['/run']['post']['responses']['200']
    assert set(streaming['content']) == {'application/json', 'application/x-ndjson', 'text/event-stream'}
    assert 'text_streamer' in streaming['description']
    plain = example_document(streaming=())['paths']['/run']['post']['responses']['200']
    assert set(plain['content']) == {'application/json'}


@pytest.mark.e2e
def test_the_live_gateway_serves_a_valid_document_with_the_iris_answer_and_the_streamer(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, use_twistd=False)  # the repo's example config
    document = gateway.get('/openapi.json').json()
    validate(document)
    schemas = document['components']['schemas']
    iris = schemas['RunAnswer.iris_classifier']['properties']['predict_result']
    assert iris['properties']['predictions']['items']['properties']['label']['enum'] == [
        'setosa', 'versicolor', 'virginica']
    assert 'application/x-ndjson' in document['paths']['/run']['post']['responses']['200']['content']
    assert 'text_streamer' in document['paths']['/run']['post']['responses']['200']['description']
    docs = gateway.get('/docs')
    assert docs.status == 200 and b'openapi.json' in docs.body
