"""End-to-end: what an attacker on the network, another local user, or a web page in the
user's own browser can do to a real gateway (``twistd -n -y bis.tac``) and its children.

Every request here is real HTTP on loopback; the slowloris and header cases are a raw
socket client, the browser cases send what a browser sends (``Origin``, ``Sec-Fetch-Site``,
``text/plain`` and form bodies, a rebound ``Host``).
"""

import http.client as http_client
import io
import json
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
def token_gateway(module_processes, tmp_path_factory, http_front):
    return start_gateway(module_processes, tmp_path_factory.mktemp('token_gw'), config=demo_config(),
                         env={'BIS_ADMIN_TOKEN': TOKEN + '\n',  # as read from a secret file
                              'BIS_HTTP_FRONT': http_front})


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
def open_gateway(module_processes, tmp_path_factory, http_front):
    config = demo_config()
    config['CONFIG_ENDPOINTS']['support_process'] = {'HOST': 'NO_HOST', 'PING_INTERVAL': 0.5}
    return start_gateway(module_processes, tmp_path_factory.mktemp('open_gw'), config=config,
                         env={'BIS_HTTP_FRONT': http_front})


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


# -- deadlines, caps and statuses (raw sockets) -----------------------------------------------------
ODD = 'odd_answers'
ODD_SOURCE = '''
    import sys

    from bis_twisted import FlaskWorker


    class OddAnswersWorker(FlaskWorker):
        def _load_model(self):
            print('odd answers: loaded')

        def _pre_process(self, inputs):
            return inputs

        def _predict(self, inputs):
            what = inputs.get('WHAT')
            print('odd answers: predicting', what)
            if what == 'exit':
                sys.exit('the model gave up')
            if what == 'deep':
                value = 1
                for _ in range(5000):
                    value = [value]
                return value
            if what == 'big':
                return 'x' * int(inputs['MB'] * 1024 * 1024)
            return what

        def _post_process(self, pred):
            return pred
'''


@pytest.fixture(scope='module')
def odd_folder(tmp_path_factory):
    import textwrap
    folder = tmp_path_factory.mktemp('odd_endpoints')
    (folder / (ODD + '.py')).write_text(textwrap.dedent(ODD_SOURCE), encoding='utf-8')
    return folder


def odd_config(**top):
    config = {'DEFAULT_SERVER': ODD, 'CONFIG_ENDPOINTS': {ODD: {'NR_WORKERS': 2}}}
    config.update(top)
    return config


@pytest.fixture(scope='module')
def strict_gateway(module_processes, tmp_path_factory, odd_folder, http_front):
    """Deadlines of 1 s, bodies of 1 MiB, 2 MiB of bodies at once, answers of 1 MiB."""
    return start_gateway(module_processes, tmp_path_factory.mktemp('strict_gw'), endpoints=odd_folder,
                         config=odd_config(HEAD_TIMEOUT=1, BODY_TIMEOUT=1, MAX_BODY_MB=1, MAX_BODIES_MB=2,
                                           MAX_ANSWER_MB=1), env={'BIS_HTTP_FRONT': http_front})


def run_request(body, close=True):
    extra = b'Connection: close\r\n' if close else b''
    return (b'POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n' + extra +
            b'Content-Length: %d\r\n\r\n' % len(body) + body)


def still_serves(gateway):
    answer = gateway.run(ODD, WHAT='fine')
    assert (answer.status, answer.json()['predict_result']) == (200, 'fine'), answer


def test_slowloris_head_is_cut_at_the_head_deadline_with_408(strict_gateway):
    # when the deadline fires (however often bytes come) is test_limits' Clock test
    with socket.create_connection(('127.0.0.1', strict_gateway.port), timeout=10) as sock:
        sock.sendall(b'POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\n')
        answer = b''
        try:
            for _ in range(40):  # a header byte every 0.1 s: each resets twisted.web's idle timer
                sock.sendall(b'X')
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
    assert status_of(answer) == 408, answer
    assert 'HEAD_TIMEOUT' in body_of(answer)['ERROR']
    still_serves(strict_gateway)


def test_a_connection_that_sends_nothing_is_closed_at_the_head_deadline(strict_gateway):
    with socket.create_connection(('127.0.0.1', strict_gateway.port), timeout=10) as sock:
        assert read_all(sock) == b''  # closed, not left open: the socket's timeout would raise


def test_a_body_shorter_than_its_content_length_gets_408_at_the_body_deadline(strict_gateway):
    with socket.create_connection(('127.0.0.1', strict_gateway.port), timeout=10) as sock:
        sock.sendall(b'POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
                     b'Content-Length: 100\r\n\r\n{"SIGNATURE": "odd_answers"')
        answer = read_all(sock)
    assert status_of(answer) == 408, answer
    assert 'BODY_TIMEOUT' in body_of(answer)['ERROR']


def test_kept_alive_connections_serve_several_requests_and_pipelining(strict_gateway):
    body = b'{"SIGNATURE": "odd_answers", "WHAT": "again"}'
    keep = run_request(body, close=False)
    with socket.create_connection(('127.0.0.1', strict_gateway.port), timeout=10) as sock:
        sock.sendall(keep + keep)  # pipelined
        time.sleep(1.5)  # idle past the head deadline between requests: governed by the idle timeout
        sock.sendall(keep.replace(b'HTTP/1.1\r\n', b'HTTP/1.1\r\nConnection: close\r\n', 1))
        answers = read_all(sock)
    assert answers.count(b'HTTP/1.1 200 OK') == 3, answers


def test_a_64_kib_header_line_answers_431(strict_gateway):
    answer = raw(strict_gateway.port, b'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ' + b'a' * 65536 +
                 b'\r\n\r\n')
    assert status_of(answer) == 431, answer[:300]
    assert 'header' in body_of(answer)['ERROR']


def test_many_headers_answer_431(strict_gateway):
    headers = b''.join(b'X-H%d: v\r\n' % i for i in range(600))
    answer = raw(strict_gateway.port, b'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n' + headers + b'\r\n')
    assert status_of(answer) == 431, answer[:300]


def test_a_100_kib_url_answers_414(strict_gateway):
    answer = raw(strict_gateway.port, b'GET /run?X=' + b'a' * 102400 + b' HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
    assert status_of(answer) == 414, answer[:300]
    assert 'URL' in body_of(answer)['ERROR']
    still_serves(strict_gateway)


def test_expect_100_continue_with_a_body_over_the_limit_gets_413_and_no_100(strict_gateway):
    answer = raw(strict_gateway.port, b'POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
                 b'Expect: 100-continue\r\nContent-Length: 20000000\r\n\r\n')
    assert status_of(answer) == 413, answer
    assert b'100 Continue' not in answer
    assert parsed(answer).getheader('Connection') == 'close'


def test_expect_100_continue_within_the_limit_still_gets_100(strict_gateway):
    body = b'{"SIGNATURE": "odd_answers", "WHAT": "continued"}'
    with socket.create_connection(('127.0.0.1', strict_gateway.port), timeout=10) as sock:
        sock.sendall(b'POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close'
                     b'\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n' % len(body))
        assert sock.recv(100).startswith(b'HTTP/1.1 100 Continue')
        sock.sendall(body)
        answer = read_all(sock)
    assert b'"continued"' in answer


@pytest.mark.parametrize('framing', [
    b'Content-Length: 5\r\nTransfer-Encoding: chunked',
    b'Transfer-Encoding: chunked\r\nContent-Length: 5',
    b'Content-Length: 5\r\nContent-Length: 40',
])
def test_smuggling_framing_is_refused_with_400_and_the_hidden_request_never_runs(strict_gateway, framing):
    hidden = run_request(b'{"SIGNATURE": "odd_answers", "WHAT": "smuggled"}')
    answer = raw(strict_gateway.port, b'POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n' +
                 framing + b'\r\n\r\n0\r\n\r\n' + hidden)
    assert status_of(answer) == 400, answer
    assert b'HTTP/1.1 200' not in answer and b'smuggled' not in answer
    assert parsed(answer).getheader('Connection') == 'close' and body_of(answer)['ERROR']
    still_serves(strict_gateway)


def test_http_1_0_gets_an_http_1_0_answer_and_the_connection_closes(strict_gateway):
    body = b'{"SIGNATURE": "odd_answers", "WHAT": "old"}'
    answer = raw(strict_gateway.port, b'POST /run HTTP/1.0\r\nContent-Type: application/json\r\n'
                 b'Content-Length: %d\r\n\r\n' % len(body) + body)  # raw() reads until the gateway closes
    assert answer.startswith(b'HTTP/1.0 200 '), answer
    assert json.loads(answer.split(b'\r\n\r\n', 1)[1])['predict_result'] == 'old'


def test_system_exit_in_predict_answers_500_with_the_workers_error(strict_gateway):
    answer = strict_gateway.run(ODD, WHAT='exit')
    assert answer.status == 500, answer
    details = answer.json()['OddAnswersWorker_ERROR']
    assert (details['ERR_TYPE'], details['ERR_MSG'], details['ERR_FUNC']) == (
        'SystemExit', 'the model gave up', '_predict')
    for _ in range(3):  # both workers still serve
        still_serves(strict_gateway)


def test_an_answer_nested_5000_levels_answers_500_naming_the_depth(strict_gateway):
    answer = strict_gateway.run(ODD, WHAT='deep')
    assert answer.status == 500, answer
    assert 'nested 5001 levels deep' in answer.json()['ERROR']
    still_serves(strict_gateway)


def test_an_answer_over_max_answer_mb_answers_502_naming_the_limit(strict_gateway):
    answer = strict_gateway.run(ODD, WHAT='big', MB=3)
    assert answer.status == 502, answer
    assert 'MAX_ANSWER_MB (1 MiB)' in answer.json()['ERROR']
    assert strict_gateway.run(ODD, WHAT='big', MB=0.5).status == 200
    still_serves(strict_gateway)


def test_bodies_past_max_bodies_mb_get_503_before_they_are_read(strict_gateway):
    size = 1048000  # two of them: 1152 bytes short of MAX_BODIES_MB
    third = b'{"SIGNATURE": "odd_answers", "PAD": "%s"}' % (b'p' * 2000)
    holders = []
    try:
        for _ in range(2):  # two bodies of ~1 MiB on their way: the 2 MiB in flight are taken
            sock = socket.create_connection(('127.0.0.1', strict_gateway.port), timeout=10)
            sock.sendall(b'POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
                         b'Connection: close\r\nContent-Length: %d\r\n\r\n{"SIGNATURE": "odd_answers", "PAD": "' % size)
            holders.append(sock)
        refused = wait_until(lambda: raw(strict_gateway.port, run_request(third)),
                             lambda answer: status_of(answer) == 503, timeout=5, what='503 while 2 MiB are in flight')
        assert status_of(raw(strict_gateway.port, run_request(b'{"SIGNATURE": "odd_answers"}'))) == 200  # fits
        assert parsed(refused).getheader('Retry-After') == '1'
        assert 'MAX_BODIES_MB' in body_of(refused)['ERROR']
        for sock in holders:  # the bodies arrive whole: answered, and the budget is free again
            prefix = len(b'{"SIGNATURE": "odd_answers", "PAD": "')
            sock.sendall(b'p' * (size - prefix - 2) + b'"}')
            assert status_of(read_all(sock)) == 200
    finally:
        for sock in holders:
            sock.close()
    still_serves(strict_gateway)


@pytest.fixture(scope='module')
def capped_gateway(module_processes, tmp_path_factory, odd_folder, http_front):
    return start_gateway(module_processes, tmp_path_factory.mktemp('capped_gw'), endpoints=odd_folder,
                         config=odd_config(MAX_CONNECTIONS=8), env={'BIS_HTTP_FRONT': http_front})


def test_past_max_connections_new_ones_get_503_at_once_and_health_still_answers(capped_gateway):
    idle = [socket.create_connection(('127.0.0.1', capped_gateway.port), timeout=10) for _ in range(8)]
    try:
        for sock in idle:
            sock.sendall(b'G')  # a head begun, never finished
        refused = wait_until(lambda: raw(capped_gateway.port, run_request(b'{"SIGNATURE": "odd_answers"}')),
                             lambda answer: status_of(answer) == 503, timeout=5, what='503 past MAX_CONNECTIONS')
        assert 'MAX_CONNECTIONS 8' in body_of(refused)['ERROR']
        assert parsed(refused).getheader('Retry-After') == '1'
        health = raw(capped_gateway.port, b'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        assert status_of(health) == 200 and body_of(health)['STATUS'] == 'OK'
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: capped_gateway.run(ODD, WHAT='back'), lambda a: a.status == 200, timeout=5,
               what='served again once the connections closed')


# -- log floods --------------------------------------------------------------------------------------
def test_a_flood_of_refused_calls_writes_one_line_a_second_with_the_count(processes, tmp_path, odd_folder):
    gateway = start_gateway(processes, tmp_path, endpoints=odd_folder, config=odd_config())
    assert gateway.post('/kill_server', {'SIGNATURE': ODD}).status == 200
    started = time.monotonic()
    for _ in range(300):
        assert gateway.run(ODD, WHAT='x').status == 503
        assert gateway.post('/kill_server', {'SIGNATURE': ODD}, headers={'Origin': 'http://evil.example'}).status == 403

    def flood_lines():
        lines = gateway.proc.stdout_lines
        return ([l for l in lines if 'to odd_answers: 503' in l], [l for l in lines if 'refused for client' in l])

    def accounted(group):
        """The calls a group of lines speaks for: one per plain line, the count of each summary."""
        return sum(int(l.split(' more like this')[0].rsplit(' ', 1)[-1]) if 'more like this' in l else 1
                   for l in group)

    # the last period's summary comes when its timer fires, after the last call: wait for it
    served, refused = wait_until(flood_lines, lambda found: all(accounted(g) == 300 for g in found), timeout=10,
                                 what='every call accounted for by a line or a summary count')
    # a period writes at most two lines (its first and its count), and periods do not overlap
    seconds = int(time.monotonic() - started) + 2
    for group in (served, refused):
        assert len(group) <= 2 * seconds, group  # 600 calls: one line and one count per second at most
        assert any('more like this in the last 1s' in l for l in group), group
