"""End-to-end: one bad input answers its own request, and only it, in every mode (one request,
a batch, a stream), through the real gateway and real model-server processes.

Each endpoint takes ``X`` as base64 text (``BASE64_KEYS``) and declares an INPUT_SCHEMA, so a
request can be bad in two ways: ``X`` is not base64 (found by the worker, inside the batch),
or the request breaks the schema (found by the model server before the request is queued).
"""

import concurrent.futures
import base64
import json
import textwrap

import pytest

from gateway_process import start_gateway
from procs import Processes, get, wait_until

SCHEMA = '''
INPUT_SCHEMA = {'type': 'object', 'required': ['X'],
                'properties': {'X': {'type': 'string'}, 'GATE': {'type': 'string'}}}
'''

# A batched model whose _predict blocks (as a slow model does) while a request names a GATE
# file that does not exist yet: the test holds the only worker busy, queues eight requests
# behind it, then opens the gate, so the eight run as one batch.
BATCHED = textwrap.dedent('''
    import os
    import time

    from bis_twisted import FlaskWorker
''') + SCHEMA + textwrap.dedent('''

    class UpperBatchedWorker(FlaskWorker):
        def _pre_process(self, inputs):
            return inputs

        def _predict(self, batch):
            for inputs in batch:
                while inputs.get('GATE') and not os.path.exists(inputs['GATE']):
                    time.sleep(0.01)
            print('a batch of', len(batch), flush=True)
            return [inputs['X'].upper() for inputs in batch]

        def _post_process(self, pred):
            return {'UPPER': pred}
''')

SINGLE = BATCHED.replace('UpperBatchedWorker', 'UpperSingleWorker').replace(
    "return [inputs['X'].upper() for inputs in batch]", "return batch['X'].upper()").replace(
    'for inputs in batch:', 'for inputs in [batch]:').replace('len(batch)', '1')

STREAMED = textwrap.dedent('''
    from bis_twisted import FlaskWorker
''') + SCHEMA + textwrap.dedent('''

    class UpperStreamWorker(FlaskWorker):
        def _pre_process(self, inputs):
            return inputs['X']

        def _predict(self, text):
            for word in text.split():
                yield word.upper()

        def _post_process(self, word):
            return {'WORD': word}
''')


def b64(text):
    return base64.b64encode(text.encode('utf-8')).decode('ascii')


@pytest.fixture(scope='module')
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp('bad_input')
    endpoints = root / 'endpoints'
    endpoints.mkdir()
    (endpoints / 'upper_batched.py').write_text(BATCHED)
    (endpoints / 'upper_single.py').write_text(SINGLE)
    (endpoints / 'upper_stream.py').write_text(STREAMED)
    config = {'DEFAULT_SERVER': 'upper_batched', 'CONFIG_ENDPOINTS': {
        'upper_batched': {'NR_WORKERS': 1, 'MAX_BATCH_SIZE': 8, 'BATCH_TIMEOUT': 0.01},
        'upper_single': {'NR_WORKERS': 2},
        'upper_stream': {'NR_WORKERS': 2}}}
    with Processes() as group:
        gw = start_gateway(group, root, config=config, endpoints=endpoints)
        for name in ('upper_batched', 'upper_single', 'upper_stream'):
            gw.wait_online(name)
        yield gw


def bodies(bad):
    """Eight request bodies, the one at index 3 ``bad``; the good ones say which they are."""
    good = [{'X': b64('call {}'.format(n)), 'BASE64_KEYS': ['X']} for n in range(7)]
    return good[:3] + [bad] + good[3:]


BAD_BASE64 = {'X': 'not base64!', 'BASE64_KEYS': ['X']}
BAD_SCHEMA = {'X': 42, 'BASE64_KEYS': ['X']}
EXPECTED_ERRORS = {'base64': "input 'X' (in BASE64_KEYS) is not valid base64",
                   'schema': 'INPUT_SCHEMA: '}


def health_of(gateway, name):
    """The model server of ``name`` as its own /health says (on its TCP port)."""
    port = gateway.server(name)['PORT']
    return get('http://127.0.0.1:{}/health'.format(port)).json()


@pytest.mark.parametrize('kind, bad', [('base64', BAD_BASE64), ('schema', BAD_SCHEMA)])
def test_one_bad_input_in_a_batch_of_eight_answers_400_alone_and_the_seven_others_200(gateway, tmp_path,
                                                                                      kind, bad):
    gate = tmp_path / 'gate'
    requests = bodies(bad)
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        # the only worker is held in _predict until the gate opens
        holder = pool.submit(gateway.run, 'upper_batched', X=b64('holder'), BASE64_KEYS=['X'], GATE=str(gate))
        wait_until(lambda: health_of(gateway, 'upper_batched')['BUSY'], lambda busy: busy == 1,
                   what='the holder running')
        answers = [pool.submit(gateway.run, 'upper_batched', **body) for body in requests]
        # a schema violation is answered before it is queued: seven wait, else all eight
        queued = 7 if kind == 'schema' else 8
        wait_until(lambda: health_of(gateway, 'upper_batched')['QUEUED'], lambda n: n == queued,
                   what='{} requests queued behind the holder'.format(queued))
        gate.write_text('open')
        assert holder.result().status == 200
        answers = [a.result() for a in answers]

    bad_answer = answers[3]
    assert bad_answer.status == 400, bad_answer.text
    assert bad_answer.json()['ERROR'].startswith(EXPECTED_ERRORS[kind]), bad_answer.json()
    if kind == 'schema':
        assert bad_answer.json()['INPUT_ERROR']['FIELD'] == 'X', bad_answer.json()
    good = answers[:3] + answers[4:]
    assert [a.status for a in good] == [200] * 7, [a.text for a in good]
    assert [a.json()['predict_result'] for a in good] == [{'UPPER': 'CALL {}'.format(n)} for n in range(7)]
    assert all(a.json()['batch_size'] >= 2 for a in good), [a.json()['batch_size'] for a in good]


@pytest.mark.parametrize('kind, bad', [('base64', BAD_BASE64), ('schema', BAD_SCHEMA)])
def test_one_bad_input_among_single_requests_answers_400_alone(gateway, kind, bad):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: gateway.run('upper_single', **body), bodies(bad)))

    assert answers[3].status == 400, answers[3].text
    assert answers[3].json()['ERROR'].startswith(EXPECTED_ERRORS[kind])
    good = answers[:3] + answers[4:]
    assert [a.status for a in good] == [200] * 7, [a.text for a in good]
    assert [a.json()['predict_result'] for a in good] == [{'UPPER': 'CALL {}'.format(n)} for n in range(7)]


@pytest.mark.parametrize('kind, bad', [('base64', BAD_BASE64), ('schema', BAD_SCHEMA)])
def test_one_bad_input_among_streams_answers_400_before_any_chunk_and_the_others_stream(gateway, kind, bad):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: gateway.run('upper_stream', **body), bodies(bad)))

    refused = answers[3]
    assert refused.status == 400, refused.text
    assert refused.headers['Content-Type'].startswith('application/json')  # an answer, not a stream
    assert refused.json()['ERROR'].startswith(EXPECTED_ERRORS[kind])
    for n, answer in enumerate(answers[:3] + answers[4:]):
        assert answer.status == 200, answer.text
        assert answer.headers['Content-Type'].startswith('application/x-ndjson')
        lines = [json.loads(line) for line in answer.text.splitlines()]
        assert [line['predict_result'] for line in lines[:-1]] == [{'WORD': 'CALL'}, {'WORD': str(n)}]
        assert lines[-1]['chunks'] == 2
