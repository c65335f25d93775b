"""The gateway's own readiness (``/ready?SCOPE=gateway``: it can route) and one endpoint's
(``/ready?SIGNATURE=``), against the real gateway with one healthy and one broken endpoint."""

import textwrap
from pathlib import Path

import pytest

from gateway_process import start_gateway
from procs import ENDPOINTS_DIR, wait_until

pytestmark = pytest.mark.e2e

BROKEN_ENDPOINT = '''
    from bis_twisted import FlaskWorker


    class BrokenWorker(FlaskWorker):
        def _load_model(self):
            raise RuntimeError('the weights are missing')
'''


def test_one_broken_endpoint_leaves_the_gateway_ready_to_route(processes, tmp_path):
    endpoints = tmp_path / 'endpoints'
    endpoints.mkdir()
    (endpoints / 'broken.py').write_text(textwrap.dedent(BROKEN_ENDPOINT), encoding='utf-8')
    (endpoints / 'dummy_model_demo2.py').write_text((Path(ENDPOINTS_DIR) / 'dummy_model_demo2.py').read_text())
    config = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {
        'broken': {'NR_WORKERS': 1, 'HOST': '127.0.0.1'},
        'dummy_model_demo2': {'NR_WORKERS': 1, 'HOST': '127.0.0.1', 'WEIGHT': 2, 'BIAS': 1}}}
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoints)

    gateway_ready = wait_until(lambda: gateway.get('/ready?SCOPE=gateway'), lambda r: r.status == 200,
                               what='the gateway ready to route')
    assert gateway_ready.json()['ROUTABLE'] == ['dummy_model_demo2']
    everything = gateway.get('/ready')
    assert everything.status == 503 and everything.json()['NOT_READY'] == ['broken']
    assert gateway.get('/ready?SIGNATURE=dummy_model_demo2').json()['READY'] is True
    broken = gateway.get('/ready?SIGNATURE=broken')
    assert broken.status == 503 and 'broken' in broken.json()['ERROR']
    unknown = gateway.get('/ready?SIGNATURE=nope')
    assert unknown.status == 404 and 'dummy_model_demo2' in unknown.json()['ERROR']
    odd = gateway.get('/ready?SCOPE=everything')
    assert odd.status == 400 and 'SCOPE' in odd.json()['ERROR']
    assert gateway.run('dummy_model_demo2', INPUT_VALUE=3).status == 200


def test_a_gateway_with_no_endpoint_ready_is_not_ready_to_route(processes, tmp_path):
    endpoints = tmp_path / 'endpoints'
    endpoints.mkdir()
    (endpoints / 'broken.py').write_text(textwrap.dedent(BROKEN_ENDPOINT), encoding='utf-8')
    config = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {'broken': {'NR_WORKERS': 1, 'HOST': '127.0.0.1'}}}
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoints)
    answer = gateway.get('/ready?SCOPE=gateway')
    assert answer.status == 503 and answer.json()['ROUTABLE'] == []
    assert answer.headers['Retry-After'] == '1'
    assert gateway.get('/health').status == 200  # alive, only not routable
