"""End-to-end: a batched endpoint through the real gateway (``twistd -n -y bis.tac``), real
model-server processes and real HTTP on loopback."""

import concurrent.futures
import textwrap

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_process import start_gateway
from procs import Processes, wait_until

CONCURRENT = 64

# What a user writes: a vectorised model with a fixed cost per call, so requests pile up while
# it runs; it prints, and refuses a negative number in _pre_process.
BATCHED_ENDPOINT = textwrap.dedent('''
    import time

    from bis_twisted import FlaskWorker

    _CONFIG = {'FACTOR': 3}


    class TriplerWorker(FlaskWorker):
        def _pre_process(self, inputs):
            value = inputs['VALUE']
            if value < 0:
                raise ValueError('VALUE must be >= 0, got {}'.format(value))
            return value

        def _predict(self, prep_inputs):
            print('predicting a batch of', len(prep_inputs), flush=True)
            time.sleep(0.05)  # one call costs the same for 1 row or 32
            return [value * self.cfg_factor for value in prep_inputs]

        def _post_process(self, pred):
            return {'tripled': pred}
''')


@pytest.fixture(scope='module')
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp('batching')
    endpoints = root / 'endpoints'
    endpoints.mkdir()
    (endpoints / 'tripler.py').write_text(BATCHED_ENDPOINT)
    config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'tripler', 'CONFIG_ENDPOINTS': {
        'tripler': {'NR_WORKERS': 2, 'MAX_BATCH_SIZE': 16, 'BATCH_TIMEOUT': 0.005}}}
    with Processes() as group:
        gw = start_gateway(group, root, config=config, endpoints=endpoints)
        wait_until(lambda: gw.get('/ready'), lambda r: r.status == 200, what='/ready 200')
        yield gw


def test_64_concurrent_requests_are_answered_in_batches_each_with_its_own_result(gateway):
    values = list(range(CONCURRENT - 1)) + [-1]  # one bad input among them
    with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(lambda v: gateway.run('tripler', VALUE=v), values))

    good, bad = answers[:-1], answers[-1]
    assert [a.status for a in good] == [200] * (CONCURRENT - 1)
    assert [a.json()['predict_result'] for a in good] == [{'tripled': 3 * v} for v in values[:-1]]
    assert bad.status == 400 and 'VALUE must be >= 0, got -1' in bad.json()['ERROR']
    sizes = [a.json()['batch_size'] for a in good]
    assert all(1 <= size <= 16 for size in sizes)
    assert max(sizes) > 1, 'no request ran in a batch: {}'.format(sizes)
    call_ids = [a.json()['call_id'] for a in good]
    assert len(set(call_ids)) == len(call_ids)

    families = {f.name: f for f in text_string_to_metric_families(gateway.get('/metrics').text)}
    batch_samples = {(s.name, s.labels.get('le')): s.value for s in families['bis_batch_size'].samples
                     if s.labels['endpoint'] == 'tripler'}
    assert batch_samples[('bis_batch_size_sum', None)] >= CONCURRENT  # every request ran in some batch
    assert batch_samples[('bis_batch_size_count', None)] < CONCURRENT  # in fewer calls than requests
    assert batch_samples[('bis_batch_size_bucket', '1')] < batch_samples[('bis_batch_size_count', None)]


def test_a_lone_request_runs_in_a_batch_of_one(gateway):
    answer = gateway.run('tripler', VALUE=7)
    assert answer.status == 200
    assert (answer.json()['predict_result'], answer.json()['batch_size']) == ({'tripled': 21}, 1)
