"""End-to-end: API keys on a real gateway (``bis-gateway``) and its real child: the keys are
made with ``bis-gateway key add``, /run answers 401/403/429, two keys have separate limits,
the keys appear nowhere in the file, the logs or /metrics, and /reload_config rotates them."""

import json
import statistics
import subprocess
import sys
import threading
import time

import pytest

from gateway_process import start_gateway
from procs import REPO_ROOT, python_env

pytestmark = pytest.mark.timeout(90)

DEMO = 'dummy_model_demo2'
TOKEN = 'api-keys-e2e-admin-token-0123'
ADMIN = {'Authorization': 'Bearer ' + TOKEN}


def key_add(path, name, *flags):
    done = subprocess.run([sys.executable, '-m', 'bis_twisted.cli', 'key', 'add', name, '--file', str(path)]
                          + list(flags), env=python_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[1]


@pytest.fixture(scope='module')
def keyed(module_processes, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('apikeys')
    keys_path = tmp_path / 'secrets' / 'api_keys.json'
    keys_path.parent.mkdir()
    keys = {'flood': key_add(keys_path, 'flood', '--endpoints', DEMO, '--rate', '1', '--burst', '2'),
            'calm': key_add(keys_path, 'calm', '--rate', '1000', '--burst', '1000'),
            'narrow': key_add(keys_path, 'narrow', '--endpoints', 'iris_classifier')}
    config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': DEMO, 'API_KEYS': 'secrets/api_keys.json',
              'CONFIG_ENDPOINTS': {DEMO: {'NR_WORKERS': 2, 'WEIGHT': 2, 'BIAS': 1}}}
    gateway = start_gateway(module_processes, tmp_path, config=config, use_twistd=False,
                            env={'BIS_ADMIN_TOKEN': TOKEN})
    gateway.wait_online(DEMO)
    return gateway, keys, keys_path, tmp_path


def run(gateway, headers, value=3):
    return gateway.post('/run', {'SIGNATURE': DEMO, 'INPUT_VALUE': value}, headers=headers)


def test_run_refuses_missing_unknown_not_allowed_and_over_rate_keys(keyed):
    gateway, keys, _, _ = keyed
    missing = run(gateway, {})
    assert missing.status == 401 and 'needs an API key' in missing.json()['ERROR']
    unknown = run(gateway, {'X-API-Key': 'not-a-key-0123456789'})
    assert unknown.status == 401 and unknown.json()['ERROR'].startswith('unknown API key')
    narrow = run(gateway, {'X-API-Key': keys['narrow']})
    assert narrow.status == 403
    assert narrow.json()['ERROR'] == "API key 'narrow' may not run '{}'; it may run: iris_classifier".format(DEMO)
    answers = [run(gateway, {'Authorization': 'Bearer ' + keys['flood']}) for _ in range(3)]
    assert [a.status for a in answers[:2]] == [200, 200]
    assert answers[0].json()['predict_result'] == {'dummy_model_predict': '3*2 + 1 = 7 PREDICTED'}
    assert answers[2].status == 429
    assert answers[2].headers['Retry-After'] == '1'
    assert "API key 'flood' is over its rate of 1 requests/s (burst 2)" in answers[2].json()['ERROR']
    assert gateway.get('/list_servers').status == 200  # only /run asks for a key
    # a key never opens an admin route
    assert gateway.post('/kill_server', {'SIGNATURE': DEMO},
                        headers={'Authorization': 'Bearer ' + keys['calm']}).status == 403
    assert gateway.server(DEMO)['ONLINE']


def test_a_key_flooding_its_limit_does_not_slow_another_keys_answers(keyed):
    gateway, keys, _, _ = keyed

    def calm_latencies(n=30):
        seconds = []
        for _ in range(n):
            started = time.perf_counter()
            answer = run(gateway, {'X-API-Key': keys['calm']})
            seconds.append(time.perf_counter() - started)
            assert answer.status == 200, answer
        return seconds

    quiet = calm_latencies()
    stop, refused = threading.Event(), []

    def flood():
        while not stop.is_set():
            refused.append(run(gateway, {'X-API-Key': keys['flood']}).status)

    floods = [threading.Thread(target=flood) for _ in range(4)]
    for thread in floods:
        thread.start()
    try:
        busy = calm_latencies()
    finally:
        stop.set()
        for thread in floods:
            thread.join(10)
    assert refused.count(429) > 20 and refused.count(200) <= 4  # 2 of burst + 1/s at most
    print('calm key median latency: quiet {:.1f} ms, beside a flood {:.1f} ms ({} flood requests)'.format(
        statistics.median(quiet) * 1000, statistics.median(busy) * 1000, len(refused)))
    # the flood is refused at the gateway: the calm key's requests never wait behind it
    assert statistics.median(busy) < max(0.05, 5 * statistics.median(quiet))


def test_rotation_through_reload_config_without_a_restart(keyed):
    gateway, keys, keys_path, _ = keyed
    pid = gateway.proc.pid
    new = key_add(keys_path, 'calm_2026')
    assert run(gateway, {'X-API-Key': new}).status == 401  # not known until the reload
    reloaded = gateway.post('/reload_config', {}, headers=ADMIN)
    assert reloaded.status == 200, reloaded
    assert reloaded.json()['API_KEYS'] == ['calm', 'calm_2026', 'flood', 'narrow']
    assert run(gateway, {'X-API-Key': new}).status == 200
    assert gateway.post('/reload_config', {}, headers={'X-API-Key': new}).status == 401  # admin token only
    good = keys_path.read_text()
    keys_path.write_text('{"calm": {"key_sha256": "oops"}}')
    refused = gateway.post('/reload_config', {}, headers=ADMIN)
    assert refused.status == 400
    assert "field 'key_sha256' must be 64 hex digits" in refused.json()['ERROR']
    assert '\n' not in refused.json()['ERROR']
    assert run(gateway, {'X-API-Key': keys['calm']}).status == 200  # nothing changed
    data = json.loads(good)
    del data['calm']  # the old key retired
    keys_path.write_text(json.dumps(data))
    assert gateway.post('/reload_config', {}, headers=ADMIN).status == 200
    assert run(gateway, {'X-API-Key': keys['calm']}).status == 401
    assert run(gateway, {'X-API-Key': new}).status == 200
    assert gateway.proc.pid == pid
    keys['calm_2026'] = new


def test_keys_are_nowhere_in_the_file_the_logs_or_the_metrics_and_metrics_count_by_name(keyed):
    gateway, keys, keys_path, tmp_path = keyed
    metrics = gateway.get('/metrics').text
    assert 'bis_key_requests_total{code="429",key="flood"}' in metrics
    assert 'bis_key_requests_total{code="401",key="unknown"}' in metrics
    assert 'bis_key_requests_total{code="200",key="calm"}' in metrics
    log_file = (tmp_path / '_cache' / '_logs' / 'gateway.log').read_text()
    stdout = '\n'.join(gateway.proc.stdout_lines)
    assert "refused for API key flood: over its rate (429)" in log_file
    assert "refused for API key unknown: unknown API key (401)" in log_file
    for key in keys.values():
        for where, text in (('keys file', keys_path.read_text()), ('gateway.log', log_file),
                            ('stdout', stdout), ('/metrics', metrics)):
            assert key not in text, 'a key is in ' + where


def test_the_python_client_sends_its_api_key_beside_the_admin_token(keyed):
    from bis_twisted.client import Client, Forbidden, RateLimited, Unauthorized

    gateway, keys, _, _ = keyed
    with Client(gateway.url(''), token=TOKEN, api_key=keys['calm_2026']) as both:
        assert both.run(DEMO, INPUT_VALUE=4)['predict_result'] == {'dummy_model_predict': '4*2 + 1 = 9 PREDICTED'}
        assert both.start_server(DEMO)['MESSAGE'].endswith('already running')  # the admin token still works
    with Client(gateway.url('')) as anonymous, pytest.raises(Unauthorized):
        anonymous.run(DEMO, INPUT_VALUE=4)
    with Client(gateway.url(''), api_key=keys['narrow']) as narrow, pytest.raises(Forbidden):
        narrow.run(DEMO, INPUT_VALUE=4)
    with Client(gateway.url(''), api_key=keys['flood']) as flood:
        with pytest.raises(RateLimited) as refused:
            for _ in range(4):
                flood.run(DEMO, INPUT_VALUE=4)
    assert refused.value.status == 429 and refused.value.retry_after == 1.0
    document = gateway.get('/openapi.json').json()
    assert document['components']['securitySchemes']['ApiKey'] == {
        'type': 'apiKey', 'in': 'header', 'name': 'X-API-Key',
        'description': document['components']['securitySchemes']['ApiKey']['description']}
    assert document['paths']['/run']['post']['security'] == [{'ApiKey': []}]
    assert '429' in document['paths']['/run']['post']['responses']
