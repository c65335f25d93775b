"""End-to-end: the Open Inference Protocol (KServe V2 REST) through the real gateway
(``twistd -n -y bis.tac``), real model servers and real HTTP on loopback, driven by
Triton's own client (``tritonclient.http``) and plain JSON. (KServe's REST client needs
psutil < 6, which this project's tests outgrew: bench/peers/kserve_v2_client.py drives a
gateway with it from a venv of its own.)

Batches are made certain, not likely: a gated endpoint holds its one worker inside
``_predict`` (reading a FIFO the test writes to) while the requests queue, and the test
opens the gate once the model server reports them all waiting."""

import concurrent.futures
import errno
import json
import os
import re
import shlex
import shutil
import subprocess
import textwrap

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from bis_twisted.gateway.apikeys import hash_key
from gateway_process import start_gateway
from procs import ENDPOINTS_DIR, REPO_ROOT, Processes, post, wait_until

pytestmark = pytest.mark.e2e

CONCURRENT = 32

GATED_ENDPOINT = textwrap.dedent('''
    from bis_twisted import FlaskWorker

    V2_INPUTS = [{"name": "X", "datatype": "FP32", "shape": [-1]}]


    class GatedWorker(FlaskWorker):
        """Sums X. A request with GATE (a FIFO's path) holds its batch until the FIFO is
        written to: the queue behind it fills meanwhile."""

        def _load_model(self):
            self.batches = 0

        def _pre_process(self, inputs):
            x = inputs["X"]
            kind = "numpy " + str(x.dtype) if hasattr(x, "dtype") else type(x).__name__
            return {"x": [float(v) for v in x], "kind": kind, "gate": inputs.get("GATE")}

        def _predict(self, batch):
            for item in batch:
                if item["gate"]:
                    with open(item["gate"]) as fifo:
                        fifo.read()
            self.batches += 1
            return [{"sum": sum(i["x"]), "kind": i["kind"], "batch_no": self.batches} for i in batch]

        def _post_process(self, pred):
            return pred
''')


# Dies (os._exit) in _predict the first time it sees FLAG, a path it then creates: the replica a
# request lands on first crashes, and the gateway must send that request to the other one.
CRASH_ONCE_ENDPOINT = textwrap.dedent('''
    import os

    from bis_twisted import FlaskWorker

    INPUT_SCHEMA = {"type": "object", "properties": {"FLAG": {"type": "string"}}, "required": ["FLAG"]}


    class CrashOnceWorker(FlaskWorker):
        def _pre_process(self, inputs):
            return inputs["FLAG"]

        def _predict(self, flag):
            if not os.path.exists(flag):
                open(flag, "w").close()
                os._exit(1)
            return {"pid": os.getpid()}

        def _post_process(self, pred):
            return pred
''')


@pytest.fixture(scope='module')
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp('v2')
    endpoints = root / 'endpoints'
    endpoints.mkdir()
    for name in ('iris_classifier', 'dummy_model_demo2', 'text_streamer'):
        shutil.copy(os.path.join(ENDPOINTS_DIR, name + '.py'), endpoints / (name + '.py'))
    (endpoints / 'gated.py').write_text(GATED_ENDPOINT)
    (endpoints / 'crash_once.py').write_text(CRASH_ONCE_ENDPOINT)
    config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'dummy_model_demo2', 'CONFIG_ENDPOINTS': {
        'iris_classifier': {'NR_WORKERS': 1, 'MAX_BATCH_SIZE': 32},
        'dummy_model_demo2': {'NR_WORKERS': 2, 'WEIGHT': 2, 'BIAS': 1},
        'text_streamer': {'NR_WORKERS': 1, 'WORD_DELAY': 0.0},
        'gated': {'NR_WORKERS': 1, 'MAX_BATCH_SIZE': CONCURRENT, 'TIMEOUT': 60},
        'crash_once': {'NR_WORKERS': 1, 'REPLICAS': 2}}}
    with Processes() as group:
        gw = start_gateway(group, root, config=config, endpoints=endpoints)
        wait_until(lambda: gw.get('/ready'), lambda r: r.status == 200, timeout=60, what='/ready 200')
        gw.root = root
        yield gw


@pytest.fixture
def client(gateway):
    with triton.InferenceServerClient('127.0.0.1:{}'.format(gateway.port)) as c:
        yield c


def json_input(name, array, datatype):
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=False)
    return tensor


# -- tritonclient.http -----------------------------------------------------------------------
def test_triton_client_sees_a_live_ready_server_and_ready_models(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready('iris_classifier')
    assert client.is_model_ready('dummy_model_demo2', model_version='1')
    assert not client.is_model_ready('no_such_model')
    metadata = client.get_server_metadata()
    assert metadata['name'] == 'bis_twisted' and isinstance(metadata['extensions'], list)


def test_triton_client_reads_model_metadata_declared_and_derived(client):
    iris = client.get_model_metadata('iris_classifier')
    assert iris['name'] == 'iris_classifier' and iris['versions'] == ['1'] and iris['platform'] == 'bis_twisted'
    assert iris['inputs'] == [{'name': 'FEATURES', 'datatype': 'FP32', 'shape': [-1, 4]}]  # its V2_INPUTS
    assert {'name': 'train_accuracy', 'datatype': 'FP64', 'shape': [1]} in iris['outputs']  # from OUTPUT_SCHEMA
    demo2 = client.get_model_metadata('dummy_model_demo2')
    assert demo2['inputs'] == [{'name': 'INPUT_VALUE', 'datatype': 'FP64', 'shape': [1]}]
    assert demo2['outputs'] == [{'name': 'dummy_model_predict', 'datatype': 'BYTES', 'shape': [1]}]


def test_triton_client_infers_fp32_1x4_on_iris(client):
    flowers = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    result = client.infer('iris_classifier', [json_input('FEATURES', flowers, 'FP32')], request_id='flower-1')
    predictions = result.as_numpy('predictions')
    assert predictions.shape == (1,)
    assert json.loads(predictions[0])['label'] == 'setosa'
    accuracy = result.as_numpy('train_accuracy')
    assert accuracy.dtype == np.float64 and accuracy.shape == (1,) and 0.9 < accuracy[0] <= 1.0
    assert result.as_numpy('model')[0] in ('LogisticRegression', b'LogisticRegression')
    answer = result.get_response()
    assert answer['model_name'] == 'iris_classifier' and answer['id'] == 'flower-1'
    assert answer['parameters']['batch_size'] == 1


def test_triton_client_infers_int64_1_on_demo2_with_the_requested_output(client):
    value = np.array([3], dtype=np.int64)
    result = client.infer('dummy_model_demo2', [json_input('INPUT_VALUE', value, 'INT64')],
                          outputs=[triton.InferRequestedOutput('dummy_model_predict', binary_data=False)])
    predicted = result.as_numpy('dummy_model_predict')
    assert predicted.shape == (1,)
    assert predicted[0] in ('3*2 + 1 = 7 PREDICTED', b'3*2 + 1 = 7 PREDICTED')  # WEIGHT 2, BIAS 1, as /run


def test_triton_client_errors_unknown_model_bad_datatype_bad_shape_binary(client):
    value = json_input('INPUT_VALUE', np.array([3], dtype=np.int64), 'INT64')
    with pytest.raises(InferenceServerException) as raised:
        client.infer('no_such_model', [value])
    assert raised.value.status() == '404' and "unknown model 'no_such_model'" in raised.value.message()

    with pytest.raises(InferenceServerException) as raised:
        client.infer('iris_classifier', [json_input('FEATURES', np.zeros((1, 4), dtype=np.float64), 'FP64')])
    assert raised.value.status() == '400' and 'datatype FP64' in raised.value.message()

    with pytest.raises(InferenceServerException) as raised:
        client.infer('iris_classifier', [json_input('FEATURES', np.zeros((1, 5), dtype=np.float32), 'FP32')])
    assert raised.value.status() == '400' and 'shape [1, 5]' in raised.value.message()

    binary = triton.InferInput('INPUT_VALUE', [1], 'INT64')
    binary.set_data_from_numpy(np.array([3], dtype=np.int64))  # binary_data=True: the default
    with pytest.raises(InferenceServerException) as raised:
        client.infer('dummy_model_demo2', [binary])
    assert raised.value.status() == '400' and 'Inference-Header-Content-Length' in raised.value.message()


def test_a_streaming_endpoint_refuses_v2_infer_with_a_clear_400(client):
    prompt = json_input('PROMPT', np.array(['hello'], dtype=object), 'BYTES')
    with pytest.raises(InferenceServerException) as raised:
        client.infer('text_streamer', [prompt])
    assert raised.value.status() == '400' and 'streams its answer' in raised.value.message()
    assert 'generate_stream' in raised.value.message()


def test_generate_stream_sends_each_chunk_of_a_streaming_endpoint_as_an_event(gateway):
    url = gateway.url('/v2/models/text_streamer/generate_stream')
    with httpx.Client(timeout=30) as http_client:
        with connect_sse(http_client, 'POST', url, json={'id': 'g1', 'PROMPT': 'hi', 'NR_WORDS': 3}) as source:
            assert source.response.status_code == 200
            events = [json.loads(event.data) for event in source.iter_sse()]
    assert [e['index'] for e in events] == [0, 1, 2]
    assert all(e['model_name'] == 'text_streamer' and e['id'] == 'g1' and isinstance(e['word'], str)
               for e in events)
    # the same words /run streams for the same prompt
    run = gateway.post('/run', {'SIGNATURE': 'text_streamer', 'PROMPT': 'hi', 'NR_WORDS': 3})
    words = [json.loads(line)['predict_result']['word'] for line in run.text.splitlines()[:-1]]
    assert [e['word'] for e in events] == words

    refused = gateway.post('/v2/models/text_streamer/generate_stream', {'PROMPT': 'hi', 'NR_WORDS': 0})
    assert refused.status == 400 and 'NR_WORDS' in refused.json()['error']


def test_generate_answers_the_fields_of_an_endpoint_that_answers_once(gateway):
    answer = gateway.post('/v2/models/dummy_model_demo2/generate', {'INPUT_VALUE': 3})
    assert answer.status == 200
    assert answer.json() == {'model_name': 'dummy_model_demo2', 'model_version': '1',
                             'dummy_model_predict': '3*2 + 1 = 7 PREDICTED'}
    streamed = gateway.post('/v2/models/dummy_model_demo2/generate_stream', {'INPUT_VALUE': 3})
    assert streamed.status == 200 and streamed.headers['Content-Type'] == 'text/event-stream'
    assert streamed.text == 'data: ' + json.dumps(answer.json()) + '\n\n'
    refused = gateway.post('/v2/models/text_streamer/generate', {'PROMPT': 'hi'})
    assert refused.status == 400 and 'generate_stream' in refused.json()['error']


def test_errors_have_the_protocol_shape(gateway):
    url = '/v2/models/dummy_model_demo2/infer'
    for body, status, said in (
            (b'{"inputs": [', 400, 'not valid JSON'),
            ({'inputs': [{'name': 'INPUT_VALUE', 'shape': [1], 'datatype': 'INT64', 'data': [1.5]}]}, 400,
             'is not an integer'),
            ({'inputs': [{'name': 'INPUT_VALUE', 'shape': [1] * 40, 'datatype': 'INT64', 'data': [1]}]}, 400,
             'at most 32'),
            ({'inputs': [{'name': 'INPUT_VALUE', 'shape': [2 ** 40, 0], 'datatype': 'INT64', 'data': []}]}, 400,
             'INPUT_SCHEMA: INPUT_VALUE'),  # no elements: the endpoint's schema wants one value
            ({'inputs': [{'name': 'OTHER', 'shape': [1], 'datatype': 'INT64', 'data': [1]}]}, 400,
             'INPUT_VALUE should be defined in inputs'),  # _pre_process's own error, as /run answers it
            ({'inputs': [{'name': 'INPUT_VALUE', 'shape': [1], 'datatype': 'BYTES', 'data': ['x']}]}, 500,
             "invalid literal for int() with base 10: 'x'")):  # _predict's
        answer = gateway.post(url, body)
        assert answer.status == status, answer
        assert set(answer.json()) == {'error'} and said in answer.json()['error']
    assert gateway.get('/v2/models/dummy_model_demo2/versions/7').status == 404
    one = {'inputs': [{'name': 'INPUT_VALUE', 'shape': [1], 'datatype': 'INT64', 'data': [4]}]}
    versioned = gateway.post('/v2/models/dummy_model_demo2/versions/1/infer', one)
    assert versioned.status == 200 and versioned.json()['outputs'][0]['data'] == ['4*2 + 1 = 9 PREDICTED']
    unknown = gateway.post('/v2/models/dummy_model_demo2/versions/7/infer', one)
    assert unknown.status == 404 and "has no version '7'" in unknown.json()['error']
    wrong_method = gateway.get('/v2/models/dummy_model_demo2/infer')
    assert wrong_method.status == 405 and set(wrong_method.json()) == {'error'}
    assert gateway.get('/v2/nothing/here').json() == {'error': '404 Not Found: /v2/nothing/here'}


# -- batching --------------------------------------------------------------------------------
def queue_depth(gateway, name):
    families = {f.name: f for f in text_string_to_metric_families(gateway.get('/metrics').text)}
    return next(s.value for s in families['bis_server_queue_depth'].samples if s.labels['endpoint'] == name)


class Gate:
    """A FIFO the gated endpoint's ``_predict`` reads: ``hold()`` sends a request that holds
    the worker until ``open()``."""

    def __init__(self, gateway, name):
        self.gateway = gateway
        self.path = str(gateway.root / name)
        os.mkfifo(self.path)
        self.fd = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1)
        self.held = None

    def hold(self):
        self.held = self._pool.submit(self.gateway.post, '/run', {'SIGNATURE': 'gated', 'X': [0.0], 'GATE': self.path},
                                      timeout=60)
        # the writer's end opens once _predict opened the reader's: the worker is held from here
        self.fd = wait_until(self._open_writer, lambda fd: fd is not None, timeout=30,
                             what='the gated _predict to open its FIFO')

    def _open_writer(self):
        try:
            return os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader yet
                return None
            raise

    def open(self):
        os.write(self.fd, b'go')
        os.close(self.fd)
        answer = self.held.result(timeout=30)
        self._pool.shutdown()
        assert answer.status == 200, answer
        return answer


def v2_infer(gateway, values, request_id):
    return gateway.post('/v2/models/gated/infer', {'id': request_id, 'inputs': [
        {'name': 'X', 'shape': [len(values)], 'datatype': 'FP32', 'data': values}]}, timeout=60)


def test_32_concurrent_v2_infers_run_in_one_batch_each_with_its_own_answer(gateway):
    gate = Gate(gateway, 'gate-32')
    gate.hold()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
        futures = [pool.submit(v2_infer, gateway, [float(i), 1.0], 'r{}'.format(i)) for i in range(CONCURRENT)]
        wait_until(lambda: queue_depth(gateway, 'gated'), lambda depth: depth == CONCURRENT, timeout=30,
                   what='{} V2 requests waiting for the held worker'.format(CONCURRENT))
        gate.open()
        answers = [f.result(timeout=60) for f in futures]

    assert [a.status for a in answers] == [200] * CONCURRENT
    bodies = [a.json() for a in answers]
    assert [b['id'] for b in bodies] == ['r{}'.format(i) for i in range(CONCURRENT)]
    assert [b['parameters']['batch_size'] for b in bodies] == [CONCURRENT] * CONCURRENT
    results = [{o['name']: o['data'][0] for o in b['outputs']} for b in bodies]
    assert [r['sum'] for r in results] == [float(i) + 1.0 for i in range(CONCURRENT)]
    assert {r['kind'] for r in results} == {'numpy float32'}  # _pre_process got a typed array
    assert len({r['batch_no'] for r in results}) == 1


def test_a_v2_request_and_a_run_request_share_a_batch(gateway):
    gate = Gate(gateway, 'gate-mixed')
    gate.hold()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        v2 = pool.submit(v2_infer, gateway, [1.0, 2.0], 'mixed')
        run = pool.submit(gateway.post, '/run', {'SIGNATURE': 'gated', 'X': [3.0, 4.0]}, timeout=60)
        wait_until(lambda: queue_depth(gateway, 'gated'), lambda depth: depth == 2, timeout=30,
                   what='a V2 and a /run request waiting for the held worker')
        gate.open()
        v2_answer, run_answer = v2.result(timeout=60), run.result(timeout=60)

    assert v2_answer.status == 200 and run_answer.status == 200
    v2_result = {o['name']: o['data'][0] for o in v2_answer.json()['outputs']}
    run_result = run_answer.json()['predict_result']
    assert v2_result['sum'] == 3.0 and run_result['sum'] == 7.0
    assert (v2_result['kind'], run_result['kind']) == ('numpy float32', 'list')
    assert v2_result['batch_no'] == run_result['batch_no']
    assert v2_answer.json()['parameters']['batch_size'] == run_answer.json()['batch_size'] == 2


def test_a_v2_request_whose_replica_crashes_is_answered_by_the_other_replica(gateway):
    before = {r['PID'] for r in gateway.server('crash_once')['REPLICAS']}
    flag = str(gateway.root / 'crashed-once')
    answer = gateway.post('/v2/models/crash_once/infer', {'inputs': [
        {'name': 'FLAG', 'shape': [1], 'datatype': 'BYTES', 'data': [flag]}]}, timeout=30)
    assert answer.status == 200, answer
    assert os.path.exists(flag)  # a replica took it first, and died of it
    [pid] = [o['data'][0] for o in answer.json()['outputs'] if o['name'] == 'pid']
    assert pid in before
    listed = wait_until(lambda: gateway.server('crash_once')['REPLICAS'],
                        lambda rs: sum(r['RESTARTS'] for r in rs) == 1 and all(r['ONLINE'] for r in rs), timeout=30,
                        what='the crashed replica restarted')
    assert {r['PID'] for r in listed} - before, 'the crashed replica has a new process'


def test_v2_requests_are_counted_under_their_protocol(gateway, client):
    def count(protocol):
        families = {f.name: f for f in text_string_to_metric_families(gateway.get('/metrics').text)}
        return sum(s.value for s in families['bis_requests'].samples if s.name == 'bis_requests_total'
                   and s.labels == {'endpoint': 'dummy_model_demo2', 'code': '200', 'protocol': protocol})

    before_v2, before_run = count('v2'), count('run')
    for value in range(3):
        client.infer('dummy_model_demo2', [json_input('INPUT_VALUE', np.array([value], dtype=np.int64), 'INT64')])
    assert gateway.run('dummy_model_demo2', INPUT_VALUE=1).status == 200
    assert (count('v2') - before_v2, count('run') - before_run) == (3, 1)


# -- the README ------------------------------------------------------------------------------
def readme_v2_curl():
    """The README's JSON-only V2 example: the ``curl`` command of its V2 section."""
    with open(os.path.join(REPO_ROOT, 'README.md'), encoding='utf-8') as fh:
        readme = fh.read()
    section = readme.split('## The Open Inference Protocol (V2)', 1)[1].split('\n## ', 1)[0]
    block = re.search(r'```(?:sh|bash)\n(curl [^`]*?/v2/models/[^`]*?)```', section, re.S).group(1)
    return block.replace('\\\n', ' ')


def test_the_readme_curl_example_answers_as_the_readme_shows(gateway):
    command = readme_v2_curl().replace('localhost:5002', '127.0.0.1:{}'.format(gateway.port))
    argv = shlex.split(command)
    assert argv[0] == 'curl'
    done = subprocess.run(argv + ['--silent', '--show-error', '--fail-with-body'], capture_output=True, timeout=60)
    assert done.returncode == 0, done
    answer = json.loads(done.stdout)
    assert answer['model_name'] == 'iris_classifier'
    outputs = {o['name']: o for o in answer['outputs']}
    assert [json.loads(p)['label'] for p in outputs['predictions']['data']] == ['setosa', 'virginica']


def test_the_v2_routes_are_in_openapi(gateway):
    paths = gateway.get('/openapi.json').json()['paths']
    for path in ('/v2', '/v2/health/live', '/v2/health/ready', '/v2/models/{model_name}',
                 '/v2/models/{model_name}/ready', '/v2/models/{model_name}/infer',
                 '/v2/models/{model_name}/generate', '/v2/models/{model_name}/generate_stream'):
        assert path in paths, path


def test_api_keys_guard_v2_infer_as_they_guard_run(tmp_path):
    (tmp_path / 'keys.json').write_text(json.dumps({
        'team-a': {'key_sha256': hash_key('secret-a'), 'endpoints': ['dummy_model_demo2']}}))
    config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'dummy_model_demo2', 'API_KEYS': 'keys.json',
              'CONFIG_ENDPOINTS': {'dummy_model_demo2': {'NR_WORKERS': 1, 'WEIGHT': 2, 'BIAS': 1}}}
    body = {'inputs': [{'name': 'INPUT_VALUE', 'shape': [1], 'datatype': 'INT64', 'data': [2]}]}
    with Processes() as group:
        gw = start_gateway(group, tmp_path, config=config)
        wait_until(lambda: gw.get('/ready'), lambda r: r.status == 200, timeout=60, what='/ready 200')
        url = gw.url('/v2/models/dummy_model_demo2/infer')
        refused = post(url, body)
        assert refused.status == 401 and set(refused.json()) == {'error'}
        answer = post(url, body, headers={'X-API-Key': 'secret-a'})
        assert answer.status == 200 and answer.json()['outputs'][0]['data'] == ['2*2 + 1 = 5 PREDICTED']
