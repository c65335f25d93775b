"""API keys on a real gateway: who may call /run, how often, and that the key itself is
nowhere to be read (not in the keys file, the logs or the metrics)."""

import json
import threading

import pytest

from bis_twisted.gateway.apikeys import hash_key
from gateway_process import start_gateway
from procs import http

pytestmark = pytest.mark.timeout(60)

DEMO = 'dummy_model_demo2'
TEAM_KEY = 'bis_team-key-for-the-e2e-test-0123456789'
OPS_KEY = 'bis_ops-key-for-the-e2e-test-9876543210'
TOKEN = 'api-keys-e2e-admin-token-secret'


@pytest.fixture
def gateway(processes, tmp_path, http_front):
    (tmp_path / 'keys.json').write_text(json.dumps({
        'team': {'key_sha256': hash_key(TEAM_KEY), 'endpoints': [DEMO], 'rate': 2, 'burst': 3},
        'ops': {'key_sha256': hash_key(OPS_KEY), 'endpoints': '*'},
    }))
    config = {'API_KEYS': 'keys.json', 'DEFAULT_SERVER': DEMO, 'CONFIG_ENDPOINTS': {
        DEMO: {'WEIGHT': 2, 'BIAS': 1}, 'dummy_model_demo1': {}}}
    gateway = start_gateway(processes, tmp_path, config=config, env={'BIS_ADMIN_TOKEN': TOKEN, 'BIS_HTTP_FRONT': http_front})
    gateway.wait_online('dummy_model_demo1')
    return gateway


def run(gateway, key=None, signature=DEMO, header='X-API-Key'):
    headers = {}
    if key is not None:
        headers[header] = key if header == 'X-API-Key' else 'Bearer ' + key
    return http('POST', gateway.url('/run'), {'SIGNATURE': signature, 'INPUT_VALUE': 3}, headers=headers)


def test_run_needs_a_known_key_allowed_for_the_endpoint(gateway):
    missing = run(gateway)
    assert missing.status == 401 and 'X-API-Key' in missing.json()['ERROR']
    unknown = run(gateway, 'bis_not-a-key')
    assert unknown.status == 401 and unknown.json()['ERROR'] == 'unknown API key'
    forbidden = run(gateway, TEAM_KEY, 'dummy_model_demo1')
    assert forbidden.status == 403 and forbidden.json()['ERROR'] == "API key 'team' may not call 'dummy_model_demo1'"
    for answer in (run(gateway, TEAM_KEY), run(gateway, OPS_KEY, header='Authorization'),
                   run(gateway, OPS_KEY, 'dummy_model_demo1')):
        assert answer.status == 200, answer
    assert run(gateway, TEAM_KEY).json()['predict_result'] == {'dummy_model_predict': '3*2 + 1 = 7 PREDICTED'}
    # a key is not the admin token: it opens no admin route
    refused = http('POST', gateway.url('/kill_server'), {'SIGNATURE': DEMO},
                   headers={'Authorization': 'Bearer ' + OPS_KEY})
    assert refused.status == 403 and gateway.server(DEMO)['ONLINE']


def test_a_key_over_its_rate_gets_429_and_the_other_key_is_not_slowed(gateway):
    flood = [run(gateway, TEAM_KEY) for _ in range(30)]
    limited = [a for a in flood if a.status == 429]
    assert len(limited) >= 20 and {a.status for a in flood} == {200, 429}
    assert limited[0].headers['Retry-After'] == '1'
    assert "API key 'team' is over its rate of 2 requests/s (burst 3)" in limited[0].json()['ERROR']
    others = []
    stop = threading.Event()

    def keep_flooding():
        while not stop.is_set():
            run(gateway, TEAM_KEY)

    flooder = threading.Thread(target=keep_flooding, daemon=True)
    flooder.start()
    try:
        others = [run(gateway, OPS_KEY) for _ in range(20)]
    finally:
        stop.set()
        flooder.join(10)
    assert [a.status for a in others] == [200] * 20


def test_the_key_is_in_neither_the_file_the_logs_nor_the_metrics(gateway, tmp_path):
    run(gateway, TEAM_KEY)
    run(gateway, TEAM_KEY, 'dummy_model_demo1')  # refused: logged by name
    run(gateway, 'bis_a-wrong-key-that-must-not-be-logged')
    metrics = gateway.get('/metrics').body.decode()
    assert 'bis_api_key_requests_total{code="200",key="team"}' in metrics
    assert 'bis_api_key_requests_total{code="403",key="team"}' in metrics
    assert 'bis_api_key_requests_total{code="401",key="unknown"}' in metrics
    log = (tmp_path / '_cache' / '_logs' / 'gateway.log').read_text()
    assert 'refused (403) for API key team' in log and 'refused (401) for API key unknown' in log
    for secret in (TEAM_KEY, OPS_KEY, 'bis_a-wrong-key-that-must-not-be-logged'):
        for where, text in (('metrics', metrics), ('log', log), ('keys file', (tmp_path / 'keys.json').read_text()),
                            ('stdout', '\n'.join(gateway.proc.stdout_lines))):
            assert secret not in text, 'the key is in the {}'.format(where)
