"""End-to-end: what an attacker on the network, another local user, or a web page in the
user's own browser can do to a real gateway (``twistd -n -y bis.tac``) and its children.

Every request here is real HTTP on loopback; the slowloris and header cases are a raw
socket client, the browser cases send what a browser sends (``Origin``, ``Sec-Fetch-Site``,
``text/plain`` and form bodies, a rebound ``Host``).
"""

import http.client as http_client
import io
import json
import os
import socket
import time

import psutil
import pytest

from gateway_process import start_gateway
from procs import http, wait_until

pytestmark = pytest.mark.timeout(60)

DEMO = 'dummy_model_demo2'
TOKEN = 'hostile-clients-admin-token-e2e'
API_KEY = 'sk-live-0123456789-never-in-ps'


def demo_config(**top):
    config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': DEMO,
              'CONFIG_ENDPOINTS': {DEMO: {'NR_WORKERS': 1, 'WEIGHT': 2, 'BIAS': 1, 'API_KEY': API_KEY}}}
    config.update(top)
    return config


def raw(port, data, timeout=10.0, read=True):
    """Send ``data`` on a fresh connection and return everything the gateway answers until
    it closes (or ``b''`` if it closes without a word)."""
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_all(sock) if read else b''


def read_all(sock):
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b''.join(chunks)


def status_of(answer):
    return int(answer.split(b' ', 2)[1]) if answer.startswith(b'HTTP/1.1 ') else None


class _Bytes:
    def __init__(self, data):
        self._file = io.BytesIO(data)

    def makefile(self, *args, **kwargs):
        return self._file


def parsed(answer):
    """The first HTTP answer in ``answer`` (chunked or not), parsed by http.client."""
    response = http_client.HTTPResponse(_Bytes(answer))
    response.begin()
    return response


def body_of(answer):
    return json.loads(parsed(answer).read())


# -- the model servers' own control route ---------------------------------------------------------
@pytest.fixture(scope='module')
def token_gateway(module_processes, tmp_path_factory):
    return start_gateway(module_processes, tmp_path_factory.mktemp('token_gw'), config=demo_config(),
                         env={'BIS_ADMIN_TOKEN': TOKEN + '\n'})  # as read from a secret file


def child_port(gateway):
    return gateway.server(DEMO)['PORT']


def test_a_childs_update_workers_needs_the_key_the_gateway_gave_it(token_gateway):
    url = 'http://127.0.0.1:{}/update_workers'.format(child_port(token_gateway))
    for headers, status in (({}, 401), ({'Authorization': 'Bearer ' + TOKEN}, 403)):
        answer = http('POST', url, {'NR_WORKERS': 7}, headers=headers)
        assert answer.status == status, answer
        assert 'ERROR' in answer.json()
    assert token_gateway.server(DEMO)['NR_WORKERS'] == 1
    # the gateway itself still resizes it (it sends the child's key), with the right token
    bearer = {'Authorization': 'Bearer ' + TOKEN}
    assert token_gateway.post('/update_workers', {'SIGNATURE': DEMO, 'NR_WORKERS': 2}, headers=bearer).status == 200
    assert token_gateway.server(DEMO)['NR_WORKERS'] == 2
    assert token_gateway.run(DEMO, INPUT_VALUE=1).status == 200


def test_the_right_token_read_with_a_newline_is_accepted(token_gateway):
    bearer = {'Authorization': 'Bearer ' + TOKEN}
    answer = token_gateway.post('/start_server', {'SIGNATURE': DEMO}, headers=bearer)
    assert answer.status == 200, answer


def test_no_secret_of_the_config_entry_is_on_a_command_line(token_gateway):
    [child] = token_gateway.children()
    command_lines = [' '.join(psutil.Process(token_gateway.proc.pid).cmdline()), ' '.join(child.cmdline())]
    assert not any(API_KEY in line for line in command_lines), command_lines
    # the key the gateway gives its child is not on it either, and the child's environment
    # (its owner's only) does not hand the gateway's own token to endpoint code
    environ = child.environ()
    assert 'BIS_ADMIN_TOKEN' not in environ
    assert not any(key in ' '.join(child.cmdline()) for key in (TOKEN,))
    # the worker still got its config entry
    assert token_gateway.run(DEMO, INPUT_VALUE=3).json()['predict_result'] == {
        'dummy_model_predict': '3*2 + 1 = 7 PREDICTED'}


def test_a_short_token_stops_the_gateway_with_one_line(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, config=demo_config(), env={'BIS_ADMIN_TOKEN': 's3cret'},
                            wait=False)
    assert gateway.proc.wait_exit(20) != 0
    lines = [line for line in gateway.proc.stderr_lines + gateway.proc.stdout_lines if 'BIS_ADMIN_TOKEN' in line]
    assert lines and 'is 6 characters long; use at least 16' in lines[0], gateway.proc.describe()


# -- a web page in the user's browser, no token set (the quick start) -----------------------------
@pytest.fixture(scope='module')
def open_gateway(module_processes, tmp_path_factory):
    config = demo_config()
    config['CONFIG_ENDPOINTS']['support_process'] = {'HOST': 'NO_HOST', 'PING_INTERVAL': 0.5}
    return start_gateway(module_processes, tmp_path_factory.mktemp('open_gw'), config=config)


def browser_post(gateway, path, body, content_type, **headers):
    lines = ['POST {} HTTP/1.1'.format(path), 'Host: {}'.format(headers.pop('host', '127.0.0.1:%d' % gateway.port)),
             'Content-Type: ' + content_type, 'Content-Length: %d' % len(body), 'Connection: close']
    lines += ['{}: {}'.format(name.replace('_', '-'), value) for name, value in headers.items()]
    return raw(gateway.port, ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1') + body)


@pytest.mark.parametrize('path, body, content_type, headers', [
    ('/kill_server', b'{"SIGNATURE": "dummy_model_demo2"}', 'text/plain',
     {'Origin': 'http://evil.example', 'Sec_Fetch_Site': 'cross-site'}),
    ('/kill_server', b'{"SIGNATURE": "dummy_model_demo2"}', 'application/json', {'Origin': 'http://evil.example'}),
    ('/start_server', b'SIGNATURE=dummy_model_demo2', 'application/x-www-form-urlencoded',
     {'Origin': 'http://evil.example'}),
    ('/kill_server', b'{"SIGNATURE": "dummy_model_demo2"}', 'application/json',
     {'Origin': 'http://evil.example', 'host': 'evil.example'}),  # DNS rebinding: Host and Origin agree
    ('/kill_server', b'{"SIGNATURE": "dummy_model_demo2"}', 'application/json', {'host': 'evil.example:80'}),
    ('/update_workers', b'{"SIGNATURE": "dummy_model_demo2", "NR_WORKERS": 7}', 'application/json',
     {'Sec_Fetch_Site': 'same-site'}),
    ('/support_update_status', b'{"SIGNATURE": "support_process", "msg": "forged"}', 'application/json',
     {'Origin': 'http://evil.example'}),
])
def test_a_page_at_another_origin_cannot_drive_the_admin_routes(open_gateway, path, body, content_type, headers):
    answer = browser_post(open_gateway, path, body, content_type, **headers)
    assert status_of(answer) == 403, answer
    assert "origin" in body_of(answer)["ERROR"] or "loopback" in body_of(answer)["ERROR"], body_of(answer)
    server = open_gateway.server(DEMO)
    assert server['ONLINE'] and server['NR_WORKERS'] == 1


@pytest.mark.parametrize('content_type', ['text/plain', 'application/x-www-form-urlencoded'])
def test_an_admin_body_that_is_not_json_is_refused_with_415(open_gateway, content_type):
    answer = browser_post(open_gateway, '/kill_server', b'{"SIGNATURE": "dummy_model_demo2"}', content_type)
    assert status_of(answer) == 415, answer
    assert 'Content-Type: application/json' in body_of(answer)['ERROR']
    assert open_gateway.server(DEMO)['ONLINE']


def test_the_gateways_own_page_and_curl_still_work(open_gateway):
    own = 'http://127.0.0.1:{}'.format(open_gateway.port)
    answer = open_gateway.post('/start_server', {'SIGNATURE': DEMO},
                               headers={'Origin': own, 'Sec-Fetch-Site': 'same-origin'})
    assert answer.status == 200, answer
    answer = browser_post(open_gateway, '/start_server', b'{"SIGNATURE": "dummy_model_demo2"}', 'application/json',
                          host='localhost:%d' % open_gateway.port)
    assert status_of(answer) == 200, answer


def test_support_update_status_follows_the_admin_rule_and_the_own_support_still_reports(open_gateway):
    forged = open_gateway.post('/support_update_status', {'SIGNATURE': 'support_process', 'msg': 'forged'},
                               headers={'Origin': 'http://evil.example'})
    assert forged.status == 403

    def reported():
        return open_gateway.get('/system_status').json()['SYSTEM_STATUS']['system_support_services']

    services = wait_until(reported, lambda s: s.get('support_process', {}).get('msg', '').startswith('Total Mem'),
                          timeout=15, what='support_process data in system_support_services')
    assert 'SUPPORT_KEY' not in services['support_process']


def test_with_a_token_support_update_status_needs_it(token_gateway):
    answer = token_gateway.post('/support_update_status', {'SIGNATURE': 'x'})
    assert answer.status == 401
