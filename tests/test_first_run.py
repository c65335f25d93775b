"""What a new user meets first, and what a user of the original project expects, against the
real gateway (``twistd -n -y bis.tac``) and an endpoint written the way a user writes one."""

import base64
import http.client
import json
import os
import re
import shutil
import socket
import urllib.parse

import pytest

from gateway_process import GATEWAY_READY, GatewayProcess, free_port_block, start_gateway
from procs import REPO_ROOT, TWISTD, python_env

TEXT_STATS = '''
from bis_twisted import FlaskWorker

_CONFIG = {'GREETING': 'hi', 'PORTS': "the worker's own key, not a typo of PORT"}


class TextStatsWorker(FlaskWorker):
    def _load_model(self):
        print('text_stats: loading my word list...', flush=True)
        self.words = {'hello': 1}

    def _pre_process(self, inputs):
        if 'LOOKUP' in inputs:
            return self.words[inputs['LOOKUP']]  # KeyError for a word it does not know
        return inputs

    def _predict(self, inputs):
        if 'SHOW_CONFIG' in inputs:
            return {'config': self.config_data}
        if 'VALUE' in inputs:  # the original's example style: formats the decoded text
            return '{} -> {}'.format(inputs['VALUE'], int(inputs['VALUE']) + 5)
        return {'types': {k: type(v).__name__ for k, v in inputs.items()}, 'inputs': inputs}

    def _post_process(self, pred):
        return pred
'''

CONFIG = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'text_stats', 'MAX_BODY_MB': 2,
          'CONFIG_ENDPOINTS': {
              'text_stats': {'NR_WORKER': 2, 'GREETING': 'hello', 'HOST': '127.0.0.1'},
              'text_stats-bis': {'SERVER_CLASS': 'text_stats', 'DISABLED': True}}}


def b64(text):
    return base64.b64encode(text.encode('utf-8')).decode('ascii')


@pytest.fixture(scope='module')
def gateway(module_processes, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('first_run')
    folder = tmp_path / 'endpoints'
    folder.mkdir()
    (folder / 'text_stats.py').write_text(TEXT_STATS)
    return start_gateway(module_processes, tmp_path, config=CONFIG, endpoints=folder)


def test_a_typo_of_a_gateway_key_is_warned_about_at_start(gateway):
    line = gateway.proc.wait_for_line(r"key 'NR_WORKER' is not a gateway key", timeout=5).string
    assert line.endswith("endpoint 'text_stats': key 'NR_WORKER' is not a gateway key; did you mean "
                         "'NR_WORKERS'? (passed to the worker as config)"), line
    assert not [l for l in gateway.proc.stdout_lines if 'PORTS' in l and 'not a gateway key' in l]
    assert gateway.server('text_stats')['NR_WORKERS'] == 1  # the typo is not read as NR_WORKERS


def test_the_workers_config_data_is_what_the_user_wrote(gateway):
    answer = gateway.run('text_stats', SHOW_CONFIG=1)
    assert answer.status == 200, answer
    assert answer.json()['predict_result']['config'] == {
        'GREETING': 'hello', 'PORTS': "the worker's own key, not a typo of PORT", 'NR_WORKER': 2, 'HOST': '127.0.0.1'}


def test_base64_keys_reach_the_worker_as_text_as_in_the_original(gateway):
    answer = gateway.run('text_stats', VALUE=b64('20'), BASE64_KEYS=['VALUE'])
    assert answer.status == 200, answer
    assert answer.json()['predict_result'] == '20 -> 25'


def test_bad_base64_answers_400_naming_the_key(gateway):
    answer = gateway.run('text_stats', VALUE='not base64!', BASE64_KEYS=['VALUE'])
    assert answer.status == 400, answer
    assert answer.json()['ERROR'].startswith("input 'VALUE' (in BASE64_KEYS) is not valid base64"), answer
    assert gateway.run('text_stats', VALUE=b64('1'), BASE64_KEYS=['VALUE']).status == 200  # still serving


def test_get_run_reads_query_values_as_json_and_repeated_keys_as_a_list(gateway):
    query = urllib.parse.urlencode([('SIGNATURE', 'text_stats'), ('FEATURES', '[5.1,3.5,1.4,0.2]'),
                                    ('INPUT_VALUE', '7'), ('NAME', 'iris'), ('TAG', 'a'), ('TAG', 'b')])
    answer = gateway.get('/run?' + query)
    assert answer.status == 200, answer
    result = answer.json()['predict_result']
    assert result['inputs'] == {'FEATURES': [5.1, 3.5, 1.4, 0.2], 'INPUT_VALUE': 7, 'NAME': 'iris',
                                'TAG': ['a', 'b']}
    assert result['types'] == {'FEATURES': 'list', 'INPUT_VALUE': 'int', 'NAME': 'str', 'TAG': 'list'}


def test_err_file_is_the_endpoint_file_relative_to_the_endpoints_folder(gateway):
    answer = gateway.run('text_stats', LOOKUP='zebra')
    assert answer.status == 400, answer
    details = answer.json()['TextStatsWorker_ERROR']
    assert (details['ERR_TYPE'], details['ERR_FILE'], details['ERR_FUNC']) == ('KeyError', 'text_stats.py',
                                                                             '_pre_process')
    assert os.sep + 'endpoints' + os.sep not in json.dumps(answer.json())


def test_a_disabled_server_is_listed_under_stopped_servers(gateway):
    listed = gateway.get('/list_servers').json()
    assert list(listed['AVAIL_SERVERS']) == ['text_stats']
    assert list(listed['STOPPED_SERVERS']) == ['text_stats-bis']
    assert listed['STOPPED_SERVERS']['text_stats-bis']['PORT'] == gateway.port + 2  # its place in the file


def test_a_413_carries_the_gateway_fields(gateway):
    # the refusal comes as soon as the headers are read: the body is announced, never sent
    with socket.create_connection(('127.0.0.1', gateway.port), timeout=10) as sock:
        sock.sendall(b'POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                     b'Content-Length: %d\r\n\r\n' % (3 * 1024 * 1024))
        response = http.client.HTTPResponse(sock, method='POST')
        response.begin()
        body = json.loads(response.read())
    assert response.status == 413, body
    assert body['ERROR'].startswith('request body over the limit of 2097152 bytes')
    assert {'ver-app', 'ver-lib', 'hostname', 'worker_id', 'time', 'gw-uptime', 'request_id'} <= set(body), body


# -- changing an endpoint's code -------------------------------------------------------------------
def test_kill_server_then_start_server_runs_the_endpoints_new_code(processes, tmp_path):
    folder = tmp_path / 'endpoints'
    folder.mkdir()
    (folder / 'text_stats.py').write_text(TEXT_STATS)
    gateway = start_gateway(processes, tmp_path, endpoints=folder, config={
        'DEFAULT_SERVER': 'text_stats', 'CONFIG_ENDPOINTS': {'text_stats': {}}})
    assert gateway.run('text_stats', VALUE='20').json()['predict_result'] == '20 -> 25'

    (folder / 'text_stats.py').write_text(TEXT_STATS.replace("int(inputs['VALUE']) + 5", "int(inputs['VALUE']) * 2"))
    assert gateway.post('/kill_server', {'SIGNATURE': 'text_stats'}).status == 200
    assert gateway.post('/start_server', {'SIGNATURE': 'text_stats'}).status == 200
    gateway.wait_online('text_stats')
    assert gateway.run('text_stats', VALUE='20').json()['predict_result'] == '20 -> 40'


# -- two gateways in one folder ---------------------------------------------------------------------
def test_a_second_twistd_in_the_same_folder_runs_with_its_own_pidfile(processes, tmp_path):
    shutil.copy(os.path.join(REPO_ROOT, 'bis.tac'), tmp_path / 'bis.tac')
    (tmp_path / 'config_gateway.txt').write_text(json.dumps({
        'DEFAULT_SERVER': 'dummy_model_demo2', 'CONFIG_ENDPOINTS': {'dummy_model_demo2': {'WEIGHT': 2, 'BIAS': 1}}}))
    first_port = free_port_block(4)  # each gateway: its port and its child's
    second_port = first_port + 2

    def twistd(port, cache, *flags):
        env = python_env({'BIS_PORT': str(port), 'BIS_HOST': '127.0.0.1', 'BIS_CACHE': cache,
                          'BIS_ENDPOINTS': os.path.join(REPO_ROOT, 'endpoints')})
        return processes.start([TWISTD] + list(flags) + ['-n', '-y', 'bis.tac'], env=env, cwd=str(tmp_path),
                               name='twistd {}'.format(cache))

    first = twistd(first_port, '_cache')
    first.wait_for_line(GATEWAY_READY, timeout=30)
    assert (tmp_path / 'twistd.pid').read_text().strip() == str(first.pid)

    # the same command again is refused by twistd: the folder's twistd.pid is taken
    refused = twistd(second_port, '_cache2')
    assert refused.wait_exit(timeout=30) != 0
    assert any('Another twistd server is running' in line for line in refused.stdout_lines + refused.stderr_lines)

    # as the README says: its own pidfile (and cache) and it runs beside the first
    second = twistd(second_port, '_cache2', '--pidfile', 'twistd2.pid')
    second.wait_for_line(GATEWAY_READY, timeout=30)
    for proc, port in ((first, first_port), (second, second_port)):
        answer = GatewayProcess(proc, port).run('dummy_model_demo2', INPUT_VALUE=3)
        assert answer.status == 200, answer


# -- the test command ---------------------------------------------------------------------------------
def readme_test_command():
    with open(os.path.join(REPO_ROOT, 'README.md'), encoding='utf-8') as fh:
        text = fh.read()
    intro = text.split('\n---\n', 1)[0]
    commands = [line.strip() for line in intro.splitlines() if line.startswith('    ')]
    assert len(commands) == 2, commands  # install + run the gateway; install + run the tests
    return commands[1]


def test_ci_runs_exactly_the_readmes_test_command_in_a_copy_of_the_checkout():
    with open(os.path.join(REPO_ROOT, '.ci', 'run'), encoding='utf-8') as fh:
        script = fh.read()
    lines = [line for line in script.splitlines() if line.strip() and not line.startswith('#')]
    assert lines[-1] == readme_test_command()
    assert re.search(r'^work="\$\(mktemp -d\)"$', script, re.M), 'the copy is made in a fresh temporary folder'
    assert 'cd "$work/bis_twisted"' in script


def test_the_test_command_installs_no_recommends_and_upgrades_nothing_it_names():
    command = readme_test_command()
    install = re.search(r'apt-get install ([^)]*)\)', command).group(1).split()
    assert '--no-install-recommends' in install and '--no-upgrade' in install
    assert [word for word in install if not word.startswith('-')] == ['chromium', 'chromium-driver']
