"""Users of the original basic_inference_server bring their files over by changing imports:
the README's run_gateway.py and endpoint files run on bis_twisted."""

import ast
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


def without_schemas(source):
    """``source`` less its ``INPUT_SCHEMA`` / ``OUTPUT_SCHEMA`` blocks (each with the comment
    above it and the blank line after it): what the example files added to the original's."""
    lines = source.splitlines()
    drop = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) in ('INPUT_SCHEMA', 'OUTPUT_SCHEMA')
                                                for t in node.targets):
            first, last = node.lineno - 1, node.end_lineno - 1
            while first > 0 and lines[first - 1].lstrip().startswith('#'):
                first -= 1
            if last + 1 < len(lines) and not lines[last + 1].strip():
                last += 1
            drop.update(range(first, last + 1))
    return '\n'.join(line for i, line in enumerate(lines) if i not in drop)


def test_readme_endpoint_files_differ_from_the_original_only_in_the_import_line():
    """...and in the INPUT_SCHEMA / OUTPUT_SCHEMA the examples declare (optional: an original
    file without them runs as it is)."""
    for name in ('dummy_model_demo1', 'dummy_model_demo2', 'support_process'):
        original = original_file('endpoints/{}.py'.format(name))
        with open('{}/endpoints/{}.py'.format(REPO_ROOT, name), encoding='utf-8') as fh:
            ours = without_schemas(fh.read())
        changed = [(a, b) for a, b in zip(original.strip().splitlines(), ours.strip().splitlines()) if a != b]
        assert len(original.strip().splitlines()) == len(ours.strip().splitlines())
        assert len(changed) == 1, changed
        assert re.search(r'basic_inference_server', changed[0][0]) and 'bis_twisted' in changed[0][1]
