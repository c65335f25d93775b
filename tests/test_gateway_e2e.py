"""End-to-end: the real gateway (twistd -n -y bis.tac) with the example endpoints, real
children, real HTTP on loopback, real signals."""

import json
import signal

import psutil
import pytest

from gateway_process import start_gateway
from procs import Processes, http, process_gone, wait_until

GATEWAY_FIELDS = {'ver-app', 'ver-lib', 'hostname', 'worker_id', 'time', 'gw-uptime'}


def wait_ready(gateway):
    return wait_until(lambda: gateway.get('/ready'), lambda r: r.status == 200, what='/ready 200')


@pytest.fixture(scope='module')
def gateway(tmp_path_factory, http_front):
    with Processes() as group:
        gw = start_gateway(group, tmp_path_factory.mktemp('gw'), env={'BIS_HTTP_FRONT': http_front})
        wait_ready(gw)  # every endpoint loaded: a test may run first and call any of them
        yield gw


def test_run_each_example_endpoint_through_the_gateway(gateway):
    wait_ready(gateway)
    demo2 = gateway.run('dummy_model_demo2', INPUT_VALUE=4)
    assert demo2.status == 200
    body = demo2.json()
    assert body['predict_result'] == {'dummy_model_predict': '4*2 + 1 = 9 PREDICTED'}
    assert GATEWAY_FIELDS <= set(body)
    assert body['worker_id'] in (0, 1)
    assert body['signature'].endswith('.dummy_model_demo2.DummyModelDemo2Worker.{}'.format(body['worker_id']))

    demo1 = gateway.run('dummy_model_demo1', INPUT_VALUE='hello', LANGUAGE='en').json()
    assert demo1['predict_result'] == {'dummy_model_a_predict': 'same-word-always',
                                       'inputs': {'INPUT_VALUE': 'hello', 'LANGUAGE': 'en'},
                                       'worker_ver': '1.2.1'}

    iris = gateway.run('iris_classifier', FEATURES=[[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]).json()
    assert [p['label'] for p in iris['predict_result']['predictions']] == ['setosa', 'virginica']


def test_the_gateway_reaches_its_children_over_their_unix_socket_and_their_tcp_port_stays_open(gateway):
    wait_ready(gateway)
    for value in range(3):
        assert gateway.run('dummy_model_demo2', INPUT_VALUE=value).status == 200
    child = gateway.server('dummy_model_demo2')
    gateway_process = psutil.Process(gateway.proc.pid)
    over_tcp = [c for c in gateway_process.net_connections('tcp') if c.raddr and c.raddr.port == child['PORT']]
    assert over_tcp == []
    assert gateway_process.net_connections('unix'), 'kept-alive connections to the children'
    children = {c for c in psutil.Process(child['PID']).net_connections('unix')}
    assert children, 'the child listens on a Unix socket too'
    direct = http('POST', 'http://127.0.0.1:{}/run'.format(child['PORT']), {'INPUT_VALUE': 2})
    assert direct.status == 200 and direct.json()['predict_result'] == {
        'dummy_model_predict': '2*2 + 1 = 5 PREDICTED'}


def test_the_model_server_writes_the_gateway_fields_in_and_the_gateway_passes_its_bytes_through(gateway):
    wait_ready(gateway)
    answer = gateway.run('dummy_model_demo2', INPUT_VALUE=6)
    assert answer.status == 200
    body = answer.json()
    # the order a client sees: the model server's keys, then the gateway's
    assert list(body) == ['predict_result', 'worker_id', 'call_id', 'batch_size', 'time', 'signature', 'request_id',
                          'ver-app', 'ver-lib', 'hostname', 'gw-uptime']
    # one plain JSON encoding (compact, as answers are written), no duplicate keys
    assert answer.body == json.dumps(body, separators=(',', ':'), ensure_ascii=False).encode('utf-8')
    assert body['request_id'] == answer.headers['X-Request-Id']
    assert not any(name.lower().startswith('x-bis-') for name in answer.headers)

    port = gateway.server('dummy_model_demo2')['PORT']
    fields = {'ver-app': 'a', 'ver-lib': 'b', 'hostname': 'h\u00e9', 'gw-uptime': '0:00:01'}
    told = http('POST', 'http://127.0.0.1:{}/run'.format(port), {'INPUT_VALUE': 6},
                headers={'X-Bis-Answer-Fields': json.dumps(fields)})
    assert told.status == 200 and told.headers.get('X-Bis-Answer-Complete') == '1'
    assert {k: told.json()[k] for k in fields} == fields
    alone = http('POST', 'http://127.0.0.1:{}/run'.format(port), {'INPUT_VALUE': 6})
    assert 'X-Bis-Answer-Complete' not in alone.headers and 'ver-lib' not in alone.json()
    for bad in ('not json', '["a"]', '{"ver-lib": 1}', '{"x": "' + 'y' * 5000 + '"}'):
        refused = http('POST', 'http://127.0.0.1:{}/run'.format(port), {'INPUT_VALUE': 6},
                       headers={'X-Bis-Answer-Fields': bad})
        assert refused.status == 200 and 'X-Bis-Answer-Complete' not in refused.headers, bad
        assert 'ver-lib' not in refused.json() and 'x' not in refused.json()


def test_an_error_of_the_endpoint_is_passed_through_with_the_gateway_fields(gateway):
    answer = gateway.run('dummy_model_demo2')  # no INPUT_VALUE: _pre_process raises
    assert answer.status == 400
    body = answer.json()
    assert GATEWAY_FIELDS <= set(body) and 'INPUT_VALUE should be defined in inputs' in body['ERROR']
    assert answer.body == json.dumps(body, separators=(',', ':'), ensure_ascii=False).encode('utf-8')


def test_get_with_query_args_and_form_post_are_served(gateway):
    wait_ready(gateway)
    by_get = gateway.get('/run?SIGNATURE=dummy_model_demo2&INPUT_VALUE=5')
    assert by_get.status == 200 and by_get.json()['predict_result']['dummy_model_predict'] == '5*2 + 1 = 11 PREDICTED'
    by_form = http('POST', gateway.url('/run'), body=b'SIGNATURE=dummy_model_demo2&INPUT_VALUE=6',
                   headers={'Content-Type': 'application/x-www-form-urlencoded'})
    assert by_form.status == 200 and by_form.json()['predict_result']['dummy_model_predict'] == '6*2 + 1 = 13 PREDICTED'


@pytest.mark.parametrize('body,status,fragment', [
    (b'{not json', 400, 'request body is not valid JSON'),
    (b'[1, 2]', 400, 'request body must be a JSON object, not list'),
    (b'{"INPUT_VALUE": 1}', 400, 'SIGNATURE is missing'),
    (b'{"SIGNATURE": 5}', 400, 'SIGNATURE must be a string, not int'),
    # the DISABLED ones (dummy_model_demo1-bis, ...) are not offered
    (b'{"SIGNATURE": "nope"}', 404, "unknown SIGNATURE 'nope'; available: dummy_model_demo1, dummy_model_demo2, "
                                    "iris_classifier, text_streamer"),
    (b'{"signature": "dummy_model_demo1"}', 400, "SIGNATURE is missing; the body has 'signature': the key is "
                                                 "SIGNATURE, in capitals"),
    (b'{"SIGNATURE": "dummy_model_demo1-bis"}', 503, 'stopped (disabled or killed); POST /start_server'),
    (b'\xff\xfe', 400, 'request body is not UTF-8 text'),
])
def test_bad_requests_get_json_error_and_status(gateway, body, status, fragment):
    answer = http('POST', gateway.url('/run'), body=body, headers={'Content-Type': 'application/json'})
    assert answer.status == status
    payload = answer.json()
    assert fragment in payload['ERROR']
    assert GATEWAY_FIELDS <= set(payload)
    if status == 503:  # a DISABLED server: down until /start_server, so no Retry-After
        assert 'Retry-After' not in answer.headers
    assert gateway.get('/health').status == 200


def test_hook_error_passes_through_with_worker_error_details(gateway):
    wait_ready(gateway)
    answer = gateway.run('dummy_model_demo2', WRONG=1)
    assert answer.status == 400
    body = answer.json()
    assert body['DummyModelDemo2Worker_ERROR']['ERR_TYPE'] == 'ValueError'
    assert body['DummyModelDemo2Worker_ERROR']['ERR_FUNC'] == '_pre_process'
    assert 'INPUT_VALUE should be defined in inputs' in body['ERROR']
    # the worker keeps serving
    assert gateway.run('dummy_model_demo2', INPUT_VALUE=1).status == 200


def test_list_servers_shows_measured_fleet(gateway):
    wait_ready(gateway)
    listed = gateway.get('/list_servers').json()
    # the started servers, as the original's AVAIL_SERVERS; the DISABLED ones apart, same fields
    assert list(listed['AVAIL_SERVERS']) == ['dummy_model_demo1', 'dummy_model_demo2', 'iris_classifier',
                                             'text_streamer']
    assert list(listed['STOPPED_SERVERS']) == ['dummy_model_demo1-bis', 'dummy_model_demo2-bis']
    servers = dict(listed['AVAIL_SERVERS'], **listed['STOPPED_SERVERS'])
    demo2 = servers['dummy_model_demo2']
    for key in ('ONLINE', 'ERROR', 'URLS', 'PATHS', 'PORT', 'UPTIME', 'PID', 'RESTARTS', 'NR_WORKERS', 'DESCRIPTION'):
        assert key in demo2 and key in servers['dummy_model_demo1-bis']
    assert demo2['ONLINE'] is True and demo2['NR_WORKERS'] == 2 and demo2['PORT'] == gateway.port + 3
    assert psutil.Process(demo2['PID']).is_running()
    assert servers['dummy_model_demo1-bis']['ONLINE'] is False
    assert servers['dummy_model_demo1-bis']['STATE'] == 'stopped'


def test_child_killed_with_sigkill_is_restarted_and_serves(gateway):
    wait_ready(gateway)
    before = gateway.server('dummy_model_demo2')
    psutil.Process(before['PID']).send_signal(signal.SIGKILL)
    # meanwhile: an answer, never a hang (200 if it is back already, else 502/503)
    during = gateway.run('dummy_model_demo2', INPUT_VALUE=2)
    assert during.status in (200, 502, 503), during
    after = wait_until(lambda: gateway.run('dummy_model_demo2', INPUT_VALUE=2), lambda r: r.status == 200,
                       what='demo2 serving again after kill -9')
    assert after.json()['predict_result']['dummy_model_predict'] == '2*2 + 1 = 5 PREDICTED'
    now = gateway.server('dummy_model_demo2')
    assert now['PID'] != before['PID'] and now['ONLINE'] is True
    assert now['RESTARTS'] == before['RESTARTS'] + 1
    assert now['ERROR'] == 'killed by signal 9'


def test_sigterm_stops_gateway_and_leaves_no_child(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path)
    wait_ready(gateway)
    children = [c.pid for c in gateway.children()]
    assert len(children) == 4  # the example config spawns four endpoints
    gateway.proc.send_signal(signal.SIGTERM)
    gateway.proc.wait_exit(timeout=20)
    for pid in children:
        wait_until(lambda: process_gone(pid), what='child {} gone'.format(pid), timeout=10)


def test_kill_9_of_gateway_leaves_no_child(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, use_twistd=False)
    wait_ready(gateway)
    children = [c.pid for c in gateway.children()]
    assert len(children) == 4  # the example config spawns four endpoints
    gateway.proc.send_signal(signal.SIGKILL)
    for pid in children:
        wait_until(lambda: process_gone(pid), what='child {} gone after kill -9 of the gateway'.format(pid),
                   timeout=10)


def test_startup_waits_for_default_server_when_no_startup_wait_is_false(processes, tmp_path):
    config = {'DEFAULT_SERVER': 'dummy_model_demo2', 'NO_STARTUP_WAIT': False,
              'CONFIG_ENDPOINTS': {'dummy_model_demo2': {'NR_WORKERS': 1, 'WEIGHT': 1, 'BIAS': 0}}}
    gateway = start_gateway(processes, tmp_path, config=config)
    # the port opened only once the default server was ready: the first request is served
    answer = gateway.run('dummy_model_demo2', INPUT_VALUE=3)
    assert answer.status == 200, answer
    logs = (tmp_path / '_cache' / '_logs')
    assert (logs / 'gateway.log').exists() and (logs / 'dummy_model_demo2.log').exists()
    assert 'BIS-SERVER-READY' in (logs / 'dummy_model_demo2.log').read_text()
