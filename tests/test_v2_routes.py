"""The gateway's V2 routes in memory: ``StubTreq`` against ``Gateway.resource()`` with a fake
fleet that records what would go to a model server and answers what the test says. No
process, no socket."""

import json

import pytest
import treq
from treq.testing import StubTreq
from twisted.internet.task import Clock

from bis_twisted.errors import ServiceUnavailable
from bis_twisted.gateway.routes import Gateway
from bis_twisted.shared.tensors import V2_MARKER
from bis_twisted.shared.web import Answer
from fakes import FakeFleet, result_of

MODEL_FILE = '''
V2_INPUTS = [{"name": "X", "datatype": "FP32", "shape": [-1, 2]}]
OUTPUT_SCHEMA = {"type": "object", "properties": {"y": {"type": "array", "items": {"type": "number"}}}}
'''
INFER = {'id': 'r1', 'inputs': [{'name': 'X', 'datatype': 'FP32', 'shape': [2, 2], 'data': [1, 2, 3, 4]}]}
COMPLETE = b'{"model_name": "m", "model_version": "1", "outputs": [], "parameters": {"batch_size": 3}}'


@pytest.fixture
def fleet(tmp_path):
    (tmp_path / 'm.py').write_text(MODEL_FILE)
    return FakeFleet(['m'], endpoints_dir=str(tmp_path))


@pytest.fixture
def stub(fleet):
    return StubTreq(Gateway(fleet, reactor=Clock()).resource())



def call(stub, method, path, body=None, headers=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    response = result_of(stub.request(method, 'http://gateway' + path, data=data, headers=headers or {}))
    return response, result_of(treq.json_content(response))


def test_infer_sends_the_run_body_with_its_marker_and_passes_the_complete_answer_on(stub, fleet):
    fleet.answers.append(Answer(200, {}, raw=COMPLETE))
    response, body = call(stub, 'POST', '/v2/models/m/infer', INFER)
    assert response.code == 200 and body == json.loads(COMPLETE)
    [(name, sent)] = fleet.sent
    assert name == 'm'
    assert sent == {'SIGNATURE': 'm', 'X': [[1, 2], [3, 4]], V2_MARKER: {
        'inputs': {'X': ['FP32', [2, 2]]}, 'id': 'r1', 'model': 'm'}}


def test_the_same_under_versions_1(stub, fleet):
    fleet.answers.append(Answer(200, {}, raw=COMPLETE))
    response, _ = call(stub, 'POST', '/v2/models/m/versions/1/infer', INFER)
    assert response.code == 200 and len(fleet.sent) == 1


def test_a_model_server_error_not_completed_answers_in_the_protocols_shape(stub, fleet):
    fleet.answers.append(Answer(400, {'ERROR': 'INPUT_SCHEMA: X: too short', 'INPUT_ERROR': {}}))
    response, body = call(stub, 'POST', '/v2/models/m/infer', INFER)
    assert response.code == 400 and body == {'error': 'INPUT_SCHEMA: X: too short'}


def test_no_replica_able_to_take_it_is_a_503_with_retry_after(stub, fleet):
    fleet.answers.append(ServiceUnavailable("server 'm' is restarting; retry shortly"))
    response, body = call(stub, 'POST', '/v2/models/m/infer', INFER)
    assert response.code == 503 and body == {'error': "server 'm' is restarting; retry shortly"}
    assert response.headers.getRawHeaders(b'Retry-After') == [b'1']


@pytest.mark.parametrize('path, body, headers, status, said', [
    ('/v2/models/nope/infer', INFER, None, 404, "unknown model 'nope'; available: m"),
    ('/v2/models/m/versions/2/infer', INFER, None, 404, "model 'm' has no version '2'"),
    ('/v2/models/m/infer', INFER, {'Inference-Header-Content-Length': '40'}, 400, 'binary tensor data'),
    ('/v2/models/m/infer', INFER, {'Content-Encoding': 'gzip'}, 400, "Content-Encoding 'gzip' is not supported"),
    ('/v2/models/m/infer', b'[1, 2]', None, 400, 'must be a JSON object'),
    ('/v2/models/m/infer', {'inputs': [dict(INFER['inputs'][0], datatype='INT32')]}, None, 400,
     "datatype INT32, model 'm' takes FP32"),
    ('/v2/models/m/infer', {'inputs': [dict(INFER['inputs'][0], shape=[1, 4])]}, None, 400,
     "shape [1, 4], model 'm' takes [-1, 2]"),
])
def test_a_refused_infer_never_reaches_a_model_server(stub, fleet, path, body, headers, status, said):
    response, answer = call(stub, 'POST', path, body, headers)
    assert response.code == status and set(answer) == {'error'} and said in answer['error']
    assert fleet.sent == []


def test_metadata_shows_the_declared_inputs_and_the_outputs_of_the_schema(stub):
    response, body = call(stub, 'GET', '/v2/models/m')
    assert response.code == 200
    assert body == {'name': 'm', 'versions': ['1'], 'platform': 'bis_twisted',
                    'inputs': [{'name': 'X', 'datatype': 'FP32', 'shape': [-1, 2]}],
                    'outputs': [{'name': 'y', 'datatype': 'FP64', 'shape': [-1]}]}
    assert call(stub, 'GET', '/v2')[1]['name'] == 'bis_twisted'


def test_health_and_readiness_follow_the_fleet(stub, fleet):
    response, body = call(stub, 'GET', '/v2/health/live')
    assert response.code == 200 and body == {'live': True}
    assert call(stub, 'GET', '/v2/health/ready')[1] == {'ready': True}
    assert call(stub, 'GET', '/v2/models/m/ready')[1] == {'name': 'm', 'ready': True}
    fleet.ready = False
    response, body = call(stub, 'GET', '/v2/models/m/ready')
    assert response.code == 503 and body == {'error': "server 'm' is starting (loading its workers); retry shortly"}
    response, body = call(stub, 'GET', '/v2/health/ready')
    assert response.code == 503 and body == {'error': 'not ready: m'}
    assert call(stub, 'GET', '/v2/health/live')[1] == {'live': True}  # live while nothing is ready


def test_generate_sends_the_fields_as_inputs_and_answers_the_results_fields(stub, fleet):
    fleet.answers.append(Answer(200, {'predict_result': {'text': 'hi there'}, 'worker_id': 0}))
    response, body = call(stub, 'POST', '/v2/models/m/generate', {'id': 'g', 'PROMPT': 'hi', 'parameters': {}})
    assert response.code == 200 and body == {'model_name': 'm', 'model_version': '1', 'id': 'g', 'text': 'hi there'}
    assert fleet.sent == [('m', {'PROMPT': 'hi', 'SIGNATURE': 'm'})]
