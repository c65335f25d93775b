"""End-to-end: no secret and no server path in a log line or an answer.

The README's support monitor prints the URL it posts to when a post fails (here: the gateway
process's requests go through an HTTP proxy that is not there); that URL carries the
per-start key the gateway gave it. A server whose ``_load_model`` fails is answered with a 503 naming its
file, relative to the endpoints folder.
"""

import re
import shutil
import textwrap


from gateway_process import start_gateway
from procs import ENDPOINTS_DIR, wait_until

BAD_LOAD = textwrap.dedent('''
    from bis_twisted import FlaskWorker


    class BadLoadWorker(FlaskWorker):
        def _load_model(self):
            raise FileNotFoundError('weights.bin is missing')

        def _pre_process(self, inputs):
            return inputs

        def _predict(self, inputs):
            return inputs

        def _post_process(self, pred):
            return pred
''')


def test_no_support_key_and_no_server_path_in_logs_or_answers(processes, tmp_path):
    endpoints = tmp_path / 'endpoints'
    endpoints.mkdir()
    for name in ('dummy_model_demo2.py', 'support_process.py'):
        shutil.copy(str(ENDPOINTS_DIR + '/' + name), str(endpoints / name))
    (endpoints / 'bad_load.py').write_text(BAD_LOAD)
    config = {'DEFAULT_SERVER': 'dummy_model_demo2', 'NO_STARTUP_WAIT': False, 'CONFIG_ENDPOINTS': {
        'dummy_model_demo2': {'NR_WORKERS': 1},
        'bad_load': {'NR_WORKERS': 1},
        'support_process': {'HOST': 'NO_HOST', 'PING_INTERVAL': 0.2}}}
    # the monitor's posts (requests, in the gateway's process) go to a proxy nobody serves:
    # each fails, and the monitor says where it failed to post
    nowhere = {'http_proxy': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9', 'no_proxy': '',
               'NO_PROXY': ''}
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoints, env=nowhere)
    gateway.proc.wait_for_line(r'Error while trying to deliver to http://')

    refused = wait_until(lambda: gateway.run('bad_load', X=1), lambda r: 'weights.bin' in r.text,
                         what="bad_load's 503 naming its load error")
    assert refused.status == 503
    error = refused.json()['ERROR']
    assert 'bad_load.py' in error and str(tmp_path) not in error, error
    for route in ('/list_servers', '/system_status'):
        assert str(tmp_path) not in gateway.get(route).text, route

    logs = [gateway.proc.stdout_lines, gateway.proc.stderr_lines]
    for path in (tmp_path / '_cache' / '_logs').iterdir():
        logs.append(path.read_text(errors='replace').splitlines())
    lines = [line for log in logs for line in log]
    keyed = [line for line in lines if 'SUPPORT_KEY=' in line]
    assert keyed, 'the monitor never printed its URL: the test proves nothing'
    assert all(re.search(r'SUPPORT_KEY=<hidden>', line) for line in keyed), keyed[:3]
    assert not [line for line in lines if re.search(r'SUPPORT_KEY=(?!<hidden>)', line)]
