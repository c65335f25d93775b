"""``LOG_FORMAT: "json"`` end to end: the real gateway (``twistd -n -y bis.tac``) and its real
children, a run with answers, hook errors, an unknown SIGNATURE, a child that crashes mid
request, a config reload and a user's prints; then every line of every log file parses as a
JSON object, and the lines that name one of the run's requests carry its request_id."""

import glob
import json
import os
import re
import signal
import textwrap

import pytest

from gateway_process import start_gateway
from procs import http, wait_until
from test_faults_e2e import endpoints_with_faulty_models

pytestmark = pytest.mark.e2e

CHATTY_ENDPOINT = '''
    import os
    import sys

    from bis_twisted import FlaskWorker


    class ChattyWorker(FlaskWorker):
        """Prints like user code does; fails or dies when asked."""

        def _pre_process(self, inputs):
            return inputs

        def _predict(self, inputs):
            print('predicting for', inputs.get('WHO'), flush=True)
            sys.stderr.write('progress 10%\\rprogress 100%\\n')
            sys.stderr.flush()
            self.log.P('working on {}'.format(inputs.get('WHO')))
            if inputs.get('FAIL'):
                raise ValueError('asked to fail')
            if inputs.get('CRASH'):
                os._exit(3)
            return inputs.get('WHO')

        def _post_process(self, who):
            return {'hello': who}
'''

RECORD_KEYS = {'time', 'level', 'logger', 'message'}
RFC3339_UTC = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$')


def run(gateway, rid, **inputs):
    return http('POST', gateway.url('/run'), body=dict(inputs, SIGNATURE=inputs.pop('SIGNATURE', 'chatty')),
                headers={'X-Request-Id': rid}, timeout=15)


def read_records(logs_dir):
    """{file name: [records]}, failing on the first line that is not a JSON log record."""
    found = {}
    for path in sorted(glob.glob(os.path.join(logs_dir, '*.log*'))):
        records = []
        with open(path, encoding='utf-8') as fh:
            for number, line in enumerate(fh, 1):
                try:
                    record = json.loads(line)
                except ValueError:
                    raise AssertionError('{}:{} is not JSON: {!r}'.format(path, number, line)) from None
                assert isinstance(record, dict) and RECORD_KEYS <= set(record), (path, number, line)
                assert RFC3339_UTC.match(record['time']), (path, number, record['time'])
                records.append(record)
        found[os.path.basename(path)] = records
    return found


def test_every_log_line_is_json_and_request_lines_carry_their_request_id(processes, tmp_path):
    endpoints = endpoints_with_faulty_models(tmp_path)
    (endpoints / 'chatty.py').write_text(textwrap.dedent(CHATTY_ENDPOINT), encoding='utf-8')
    config = {'LOG_FORMAT': 'json', 'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {
        'chatty': {'NR_WORKERS': 1, 'HOST': '127.0.0.1'},
        'dummy_model_demo2': {'NR_WORKERS': 1, 'HOST': '127.0.0.1', 'WEIGHT': 2, 'BIAS': 1}}}
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoints)
    gateway.wait_online('chatty')
    gateway.wait_online('dummy_model_demo2')

    assert run(gateway, 'json-ok-1', WHO='ann').json()['predict_result'] == {'hello': 'ann'}
    assert run(gateway, 'json-fail-2', WHO='bob', FAIL=True).status == 500
    assert run(gateway, 'json-bad-3', SIGNATURE='nope').status == 404
    assert run(gateway, 'json-bad-4', SIGNATURE='dummy_model_demo2', WRONG=1).status >= 400
    assert run(gateway, 'json-crash-5', WHO='cy', CRASH=True).status in (502, 503)
    wait_until(lambda: run(gateway, 'json-after-crash-6', WHO='dee'), lambda r: r.status == 200,
               timeout=30, what='chatty answering again after its crash')

    config['CONFIG_ENDPOINTS']['chatty']['GREETING'] = 'changed'  # the entry changes: chatty is reloaded
    with open(str(tmp_path / 'config_gateway.txt'), 'w') as fh:
        json.dump(config, fh)
    seen = len(gateway.proc.stdout_lines)
    gateway.proc.send_signal(signal.SIGHUP)
    gateway.proc.wait_for_line('config reloaded', since=seen, timeout=30)
    wait_until(lambda: run(gateway, 'json-after-reload-7', WHO='eve'), lambda r: r.status == 200,
               timeout=30, what='chatty answering after the reload')

    gateway.proc.send_signal(signal.SIGTERM)
    gateway.proc.wait_exit(timeout=30)  # the log files are closed

    logs = read_records(str(tmp_path / '_cache' / '_logs'))
    assert 'gateway.log' in logs and any(name.startswith('chatty') for name in logs)
    stdout_records = [json.loads(line) for line in gateway.proc.stdout_lines if line.strip()]
    assert all(RECORD_KEYS <= set(r) for r in stdout_records)
    everything = [r for records in logs.values() for r in records] + stdout_records
    messages = [r['message'] for r in everything]
    assert any('predicting for ann' in m for m in messages)  # a user's print, wrapped
    assert any('progress 100%' in m for m in messages)  # a progress bar on stderr, wrapped
    assert any('config reloaded' in m for m in messages)

    rids = re.compile(r'json-[a-z-]+-\d')
    about_requests = [r for r in everything if rids.search(r['message'])]
    assert about_requests, 'no log line names a request of the run'
    for record in about_requests:
        assert record.get('request_id') in rids.findall(record['message']), record
    hook_errors = [r for r in logs['chatty.log'] if 'asked to fail' in r['message']]
    assert hook_errors and all(r['request_id'] == 'json-fail-2' and r['endpoint'] == 'chatty'
                               for r in hook_errors)
    worker_lines = [r for r in logs['chatty.log'] if r['message'].endswith('working on ann')]
    assert worker_lines and worker_lines[0]['request_id'] == 'json-ok-1' and 'worker_id' in worker_lines[0]


def test_bis_gateway_writes_json_when_the_environment_asks(processes, tmp_path):
    config = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {
        'dummy_model_demo2': {'NR_WORKERS': 1, 'HOST': '127.0.0.1', 'WEIGHT': 2, 'BIAS': 1}}}
    gateway = start_gateway(processes, tmp_path, config=config, use_twistd=False, env={'BIS_LOG_FORMAT': 'json'})
    gateway.wait_online('dummy_model_demo2')
    assert run(gateway, 'json-cli-1', SIGNATURE='dummy_model_demo2', WRONG=1).status >= 400
    gateway.proc.send_signal(signal.SIGTERM)
    gateway.proc.wait_exit(timeout=30)
    logs = read_records(str(tmp_path / '_cache' / '_logs'))
    assert set(logs) >= {'gateway.log', 'dummy_model_demo2.log'}
    assert all(RECORD_KEYS <= set(json.loads(line)) for line in gateway.proc.stdout_lines if line.strip())
    assert any(r.get('request_id') == 'json-cli-1' for r in logs['dummy_model_demo2.log'])
