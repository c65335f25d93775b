"""``INPUT_SCHEMA`` / ``OUTPUT_SCHEMA`` of endpoint files: read without importing by the
gateway (for ``/openapi.json``), checked at load by the model server, and enforced on each
request by a real model server (400 naming the field and the rule; 500 for an answer that
breaks ``OUTPUT_SCHEMA``), through the real gateway too."""

import sys

import pytest

from gateway_process import start_gateway
from procs import ENDPOINTS_DIR, start_model_server

from bis_twisted.errors import EndpointLoadError
from bis_twisted.model_server.loader import load_endpoint
from bis_twisted.gateway.openapi import as_openapi_schema, openapi_document
from bis_twisted.shared.schemas import EndpointSchemas, SchemaCheck, SchemaViolation, declared_schemas

SHOUTER = '''
    from bis_twisted import FlaskWorker

    INPUT_SCHEMA = {
        'type': 'object',
        'properties': {
            'TEXT': {'type': 'string', 'minLength': 1, 'description': 'the text to shout'},
            'TIMES': {'type': 'integer', 'minimum': 1, 'maximum': 5},
            'LIE': {'type': 'boolean'},
        },
        'required': ['TEXT'],
        'examples': [{'TEXT': 'hello', 'TIMES': 2}],
    }

    OUTPUT_SCHEMA = {
        'type': 'object',
        'properties': {'shouted': {'type': 'string'}},
        'required': ['shouted'],
        'additionalProperties': False,
    }


    class ShouterWorker(FlaskWorker):
        def _pre_process(self, inputs):
            print('pre_process got', sorted(inputs), flush=True)
            return inputs

        def _predict(self, inputs):
            return (inputs['TEXT'].upper() + '!') * inputs.get('TIMES', 1), inputs.get('LIE', False)

        def _post_process(self, pred):
            shouted, lie = pred
            if lie:  # a bug in the endpoint: an answer its own OUTPUT_SCHEMA refuses
                return {'shouted': 42, 'extra': 'oops'}
            return {'shouted': shouted}
'''

NOT_A_LITERAL = '''
    from bis_twisted import FlaskWorker

    def _schema():
        return {'type': 'object', 'required': ['X']}

    INPUT_SCHEMA = _schema()


    class ComputedWorker(FlaskWorker):
        def _pre_process(self, inputs):
            return inputs

        def _predict(self, x):
            return x

        def _post_process(self, x):
            return x
'''

BAD_SCHEMA = '''
    from bis_twisted import FlaskWorker

    INPUT_SCHEMA = {'type': 'object', 'properties': {'X': {'type': 'strnig'}}}


    class BadSchemaWorker(FlaskWorker):
        pass
'''

NOT_A_DICT = '''
    from bis_twisted import FlaskWorker

    OUTPUT_SCHEMA = ['type', 'object']


    class NotADictWorker(FlaskWorker):
        pass
'''


def test_gateway_reads_literal_schemas_without_importing_the_file(endpoint_folder):
    path = endpoint_folder.write('shouter', SHOUTER + '\n    raise SystemExit("importing this file is a bug")\n')
    schemas = declared_schemas(str(path))
    assert schemas.input['required'] == ['TEXT']
    assert schemas.output['additionalProperties'] is False
    assert schemas.examples == [{'TEXT': 'hello', 'TIMES': 2}]
    computed = declared_schemas(str(endpoint_folder.write('computed', NOT_A_LITERAL)))
    assert computed.input is None and computed.output is None
    assert declared_schemas(str(endpoint_folder.path / 'missing.py')).input is None


def test_invalid_schemas_stop_the_load_naming_the_file_and_the_key(endpoint_folder):
    endpoint_folder.write('bad_schema', BAD_SCHEMA)
    endpoint_folder.write('not_a_dict', NOT_A_DICT)
    with pytest.raises(EndpointLoadError) as bad:
        load_endpoint(str(endpoint_folder.path), 'bad_schema')
    message = str(bad.value)
    assert message.startswith(str(endpoint_folder.path / 'bad_schema.py'))
    assert 'INPUT_SCHEMA is not a valid JSON Schema' in message and 'strnig' in message
    with pytest.raises(EndpointLoadError) as not_dict:
        load_endpoint(str(endpoint_folder.path), 'not_a_dict')
    assert 'OUTPUT_SCHEMA must be a dict (a JSON Schema), not list' in str(not_dict.value)


def test_schema_violations_name_the_field_and_the_rule():
    check = SchemaCheck(load_endpoint(ENDPOINTS_DIR, 'iris_classifier').schemas)
    check.check_input({'FEATURES': [5.1, 3.5, 1.4, 0.2]})
    check.check_input({'FEATURES': [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], 'SIGNATURE': 'x'})
    with pytest.raises(SchemaViolation) as short:
        check.check_input({'FEATURES': [1, 2]})
    assert short.value.field == 'FEATURES' and short.value.rule == 'anyOf'
    assert short.value.message.startswith('FEATURES: expected an array of 4 numbers')
    with pytest.raises(SchemaViolation) as missing:
        check.check_input({'FEATURE': [1, 2, 3, 4]})
    assert missing.value.field == 'FEATURES' and missing.value.rule == 'required'
    assert "'FEATURES' is a required property" in missing.value.message


def resolved(document, refs):
    """The component schemas ``refs`` (``{"$ref": "#/components/schemas/..."}``) point to."""
    schemas = document['components']['schemas']
    return [schemas[ref['$ref'].rsplit('/', 1)[1]] for ref in refs]


def test_openapi_run_body_is_one_of_the_endpoints_with_their_examples():
    names = ['iris_classifier', 'dummy_model_demo2', 'plain']
    schemas = {name: declared_schemas('{}/{}.py'.format(ENDPOINTS_DIR, name)) for name in names[:2]}
    document = openapi_document(names, schemas=schemas)
    media = document['paths']['/run']['post']['requestBody']['content']['application/json']
    variants = {v['title']: v for v in resolved(document, media['schema']['oneOf'])}
    assert sorted(variants) == sorted(names)
    iris = variants['iris_classifier']
    assert iris['properties']['SIGNATURE'] == {'type': 'string', 'enum': ['iris_classifier']}
    assert iris['required'] == ['SIGNATURE', 'FEATURES']
    assert 'examples' not in iris  # a JSON Schema keyword OpenAPI 3.0 lacks: moved to the media type
    # type lists are not OpenAPI 3.0: shown as anyOf
    assert variants['dummy_model_demo2']['properties']['INPUT_VALUE']['anyOf'] == [
        {'type': 'number'}, {'type': 'string'}, {'type': 'boolean'}]
    assert variants['plain']['required'] == ['SIGNATURE'] and 'no INPUT_SCHEMA' in variants['plain']['description']
    assert media['examples']['iris_classifier']['value'] == {'SIGNATURE': 'iris_classifier',
                                                             'FEATURES': [5.1, 3.5, 1.4, 0.2]}
    assert media['examples']['iris_classifier (2)']['value']['FEATURES'][1] == [6.7, 3.0, 5.2, 2.3]
    assert media['examples']['plain']['value'] == {'SIGNATURE': 'plain'}


def test_openapi_conversion_of_json_schema_keywords():
    assert as_openapi_schema({'type': ['string', 'null'], 'const': 'x', '$schema': 'y'}) == {
        'type': 'string', 'nullable': True, 'enum': ['x']}
    assert as_openapi_schema({'properties': {'a': {'type': ['integer', 'string']}}, 'required': ['a']}) == {
        'properties': {'a': {'anyOf': [{'type': 'integer'}, {'type': 'string'}]}}, 'required': ['a']}


def test_model_server_refuses_bad_inputs_before_pre_process_with_400(processes, endpoint_folder):
    endpoint_folder.write('shouter', SHOUTER)
    server = start_model_server(processes, 'shouter', endpoints=endpoint_folder.path)
    answer = server.post('/run', {'TEXT': 'hi', 'TIMES': 3})
    assert answer.status == 200, answer
    assert answer.json()['predict_result'] == {'shouted': 'HI!HI!HI!'}

    # the accepted call's own line may reach us after its answer: read up to it first
    server.proc.wait_for_line('pre_process got')
    lines_before = len(server.proc.stdout_lines)
    refused = server.post('/run', {'TEXT': 'hi', 'TIMES': 9})
    assert refused.status == 400, refused
    body = refused.json()
    assert body['ERROR'] == 'INPUT_SCHEMA: TIMES: 9 is greater than the maximum of 5 (rule maximum: 5)'
    assert body['INPUT_ERROR'] == {'FIELD': 'TIMES', 'RULE': 'maximum: 5', 'MESSAGE': body['ERROR'][14:]}
    missing = server.post('/run', {'TIMES': 1}).json()['ERROR']
    assert missing == "INPUT_SCHEMA: TEXT: expected the text to shout; 'TEXT' is a required property (rule required)"
    wrong_type = server.post('/run', {'TEXT': ['a']}).json()['ERROR']
    assert wrong_type.startswith('INPUT_SCHEMA: TEXT: expected the text to shout; ')
    assert 'type: string' in wrong_type
    # _pre_process never saw the refused inputs (it prints what it gets)
    assert not any('pre_process got' in line for line in server.proc.stdout_lines[lines_before:])

    lied = server.post('/run', {'TEXT': 'hi', 'LIE': True})
    assert lied.status == 500, lied
    assert lied.json()['ERROR'].startswith('OUTPUT_SCHEMA: the endpoint answered predict_result')
    assert lied.json()['OUTPUT_ERROR']['FIELD'] in ('shouted', 'predict_result')
    assert server.post('/run', {'TEXT': 'still serving'}).status == 200


def test_model_server_with_an_invalid_schema_exits_with_one_line(processes, endpoint_folder):
    endpoint_folder.write('bad_schema', BAD_SCHEMA)
    proc = processes.python('-m', 'bis_twisted.model_server', '--endpoints', str(endpoint_folder.path),
                            '--name', 'bad_schema', '--port', '0')
    assert proc.wait_exit(20) == 2
    [line] = proc.stderr_lines
    assert 'bad_schema.py: INPUT_SCHEMA is not a valid JSON Schema' in line


def test_iris_through_the_gateway_answers_400_naming_features_and_shows_its_schema(processes, tmp_path):
    config = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {
        'iris_classifier': {'NR_WORKERS': 1}, 'dummy_model_demo2': {'NR_WORKERS': 1, 'WEIGHT': 2, 'BIAS': 1}}}
    gateway = start_gateway(processes, tmp_path, config=config, use_twistd=False)
    gateway.wait_online('iris_classifier', timeout=40)
    good = gateway.run('iris_classifier', FEATURES=[5.1, 3.5, 1.4, 0.2])
    assert good.status == 200 and good.json()['predict_result']['predictions'][0]['label'] == 'setosa'
    bad = gateway.run('iris_classifier', FEATURES=[5.1, 3.5])
    assert bad.status == 400, bad
    assert bad.json()['ERROR'].startswith('INPUT_SCHEMA: FEATURES: expected an array of 4 numbers')
    assert bad.json()['INPUT_ERROR']['FIELD'] == 'FEATURES'
    assert 'hostname' in bad.json()  # the gateway's fields are there too

    document = gateway.get('/openapi.json').json()
    variants = document['paths']['/run']['post']['requestBody']['content']['application/json']['schema']['oneOf']
    iris = [v for v in resolved(document, variants) if v['title'] == 'iris_classifier'][0]
    assert iris['properties']['FEATURES']['description'].startswith('an array of 4 numbers')


def test_openapi_document_with_the_example_endpoints_is_valid_openapi_30():
    from jsonschema import Draft4Validator
    from schemathesis.specs.openapi.definitions import OPENAPI_30  # the OpenAPI 3.0 meta-schema, offline

    names = ['iris_classifier', 'dummy_model_demo1', 'dummy_model_demo2']
    schemas = {name: declared_schemas('{}/{}.py'.format(ENDPOINTS_DIR, name)) for name in names}
    document = openapi_document(names + ['no_schema'], 'demo', schemas=schemas)
    errors = sorted(Draft4Validator(OPENAPI_30).iter_errors(document), key=lambda e: list(e.path))
    assert errors == [], [(list(e.path), e.message) for e in errors[:5]]


def test_without_jsonschema_an_endpoint_declaring_a_schema_refuses_to_load(endpoint_folder, monkeypatch):
    endpoint_folder.write('shouter', SHOUTER)
    endpoint_folder.write('computed', NOT_A_LITERAL.replace("INPUT_SCHEMA = _schema()", "X = _schema()"))
    monkeypatch.setitem(sys.modules, 'jsonschema', None)  # import jsonschema -> ImportError
    with pytest.raises(EndpointLoadError) as missing:
        load_endpoint(str(endpoint_folder.path), 'shouter')
    assert str(missing.value) == ('{}: INPUT_SCHEMA needs the jsonschema package, which is not installed: '
                                  'pip install jsonschema'.format(endpoint_folder.path / 'shouter.py'))
    # a file that declares none loads without it
    assert load_endpoint(str(endpoint_folder.path), 'computed').schemas.input is None


def test_the_servers_own_keys_are_not_checked_against_the_schema():
    strict = SchemaCheck(EndpointSchemas(input={
        'type': 'object', 'properties': {'IMAGE': {'type': 'string'}}, 'additionalProperties': False}))
    strict.check_input({'SIGNATURE': 'ocr', 'IMAGE': 'aGk=', 'BASE64_KEYS': ['IMAGE'], 'ENCODING': 'binary',
                        'BASE64_OUTPUTS': []})
    with pytest.raises(SchemaViolation) as extra:
        strict.check_input({'IMAGE': 'aGk=', 'COLOUR': 'red'})
    assert extra.value.rule == 'additionalProperties: false'
    assert "'COLOUR' was unexpected" in extra.value.message
