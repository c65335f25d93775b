"""Users of the original basic_inference_server bring their files over by changing imports:
the README's run_gateway.py and endpoint files run on bis_twisted."""

import json
import re
import shutil

from gateway_process import GATEWAY_READY, free_port_block
from procs import REPO_ROOT, post, wait_until

# the original's run_gateway.py and endpoint files, verbatim from its README
ORIGINAL = REPO_ROOT + '/tests/original'


def original_file(name):
    with open('{}/{}'.format(ORIGINAL, name), encoding='utf-8') as fh:
        return fh.read()


def test_readme_run_gateway_py_starts_the_gateway_with_only_imports_changed(processes, tmp_path):
    source = original_file('run_gateway.py')
    migrated = source.replace('from basic_inference_server import', 'from bis_twisted import')
    # the README's script uses `in_debug` without defining it
    migrated = migrated.replace("if __name__ == '__main__':", "in_debug = False\n\nif __name__ == '__main__':", 1)
    assert migrated.count('bis_twisted') == 3
    (tmp_path / 'run_gateway.py').write_text(migrated)
    (tmp_path / 'app_ver.py').write_text("__VER__ = '9.9.9'\n")
    shutil.copytree(REPO_ROOT + '/endpoints', tmp_path / 'endpoints')
    (tmp_path / 'config_gateway.txt').write_text(json.dumps({
        'DEFAULT_SERVER': 'dummy_model_demo2', 'NO_STARTUP_WAIT': False,
        'CONFIG_ENDPOINTS': {'dummy_model_demo2': {'NR_WORKERS': 1, 'WEIGHT': 3, 'BIAS': 0}}}))
    port = free_port_block(4)
    gateway = processes.python('run_gateway.py', '--port', str(port), '--host', '127.0.0.1', cwd=str(tmp_path),
                               name='run_gateway.py')
    gateway.wait_for_line(GATEWAY_READY, timeout=30)
    answer = post('http://127.0.0.1:{}/run'.format(port), {'SIGNATURE': 'dummy_model_demo2', 'INPUT_VALUE': 2})
    assert answer.status == 200
    assert answer.json()['predict_result'] == {'dummy_model_predict': '2*3 + 0 = 6 PREDICTED'}
    # the original's cache layout: base_folder/app_folder holds the logs and the state
    wait_until(lambda: (tmp_path / '_cache' / '_data' / 'gw_state_history.json').exists(), what='history file')
    assert (tmp_path / '_cache' / '_logs' / 'gateway.log').exists()


def test_readme_endpoint_files_differ_from_the_original_only_in_the_import_line():
    for name in ('dummy_model_demo1', 'dummy_model_demo2', 'support_process'):
        original = original_file('endpoints/{}.py'.format(name))
        with open('{}/endpoints/{}.py'.format(REPO_ROOT, name), encoding='utf-8') as fh:
            ours = fh.read()
        changed = [(a, b) for a, b in zip(original.strip().splitlines(), ours.strip().splitlines()) if a != b]
        assert len(original.strip().splitlines()) == len(ours.strip().splitlines())
        assert len(changed) == 1, changed
        assert re.search(r'basic_inference_server', changed[0][0]) and 'bis_twisted' in changed[0][1]
