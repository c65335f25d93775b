"""``bis-gateway check`` and ``bis-gateway new NAME``, run as a user runs them (``python -m
bis_twisted.gateway.cli ...`` in a folder of their own), and the gateway still started by its flags."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from gateway_process import free_port_block, GATEWAY_READY, GatewayProcess
from procs import ENDPOINTS_DIR, REPO_ROOT, python_env

pytestmark = pytest.mark.timeout(120)

FAILS_TO_IMPORT = '''
    import numpyy_typo

    from bis_twisted import FlaskWorker


    class FailsToImportWorker(FlaskWorker):
        pass
'''

EXITS_ON_IMPORT = '''
    import sys

    print('loading...')
    sys.exit(7)
'''

BAD_SCHEMA = '''
    from bis_twisted import FlaskWorker

    INPUT_SCHEMA = {'type': 'object', 'required': 'X'}


    class BadSchemaWorker(FlaskWorker):
        pass
'''

NOT_A_WORKER = '''
    class NotAWorkerWorker:
        pass
'''


def bis_gateway(cwd, *args, env=None):
    """``bis-gateway <args>`` in ``cwd``; the finished process."""
    return subprocess.run([sys.executable, '-m', 'bis_twisted.gateway.cli'] + list(args), cwd=str(cwd),
                          env=python_env(env), capture_output=True, text=True, timeout=100)


def project(tmp_path, config, files=None):
    """A user's folder: ``config_gateway.txt`` and ``endpoints/`` (the repo's plus ``files``)."""
    shutil.copytree(ENDPOINTS_DIR, str(tmp_path / 'endpoints'), ignore=shutil.ignore_patterns('__pycache__'))
    for name, source in (files or {}).items():
        (tmp_path / 'endpoints' / (name + '.py')).write_text(textwrap.dedent(source), encoding='utf-8')
    (tmp_path / 'config_gateway.txt').write_text(json.dumps(config, indent=2), encoding='utf-8')
    return tmp_path


def test_check_of_the_example_config_exits_zero_with_a_one_line_summary(tmp_path):
    shutil.copy(REPO_ROOT + '/config_gateway.txt', str(tmp_path / 'config_gateway.txt'))
    shutil.copytree(ENDPOINTS_DIR, str(tmp_path / 'endpoints'), ignore=shutil.ignore_patterns('__pycache__'))
    done = bis_gateway(tmp_path, 'check')
    assert done.returncode == 0, done
    assert done.stdout.splitlines() == [
        'bis-gateway check: config_gateway.txt OK: 4 endpoints imported, 2 disabled, 1 support process']
    assert not (tmp_path / '_cache').exists()  # nothing was started


def test_check_prints_one_line_per_problem_naming_file_endpoint_and_key(tmp_path):
    config = {'DEFAULT_SERVER': 'dummy_model_demo2', 'CONFIG_ENDPOINTS': {
        'dummy_model_demo2': {'NR_WORKERS': 'two'},
        'ghost': {'NR_WORKERS': 1},
        'fails_to_import': {},
        'exits_on_import': {},
        'bad_schema': {},
        'not_a_worker': {},
        'iris_classifier': {'TIMEOUT': 5},
        'off_and_broken': {'SERVER_CLASS': 'fails_to_import', 'DISABLED': True},
    }}
    folder = project(tmp_path, config, {'fails_to_import': FAILS_TO_IMPORT, 'exits_on_import': EXITS_ON_IMPORT,
                                        'bad_schema': BAD_SCHEMA, 'not_a_worker': NOT_A_WORKER})
    (folder / 'endpoints' / 'exits_on_import.py').write_text(
        textwrap.dedent(EXITS_ON_IMPORT) + 'class ExitsOnImportWorker: pass\n')
    done = bis_gateway(folder, 'check')
    assert done.returncode == 1, done
    lines = done.stdout.splitlines()
    assert lines[-1] == 'bis-gateway check: 6 problems in config_gateway.txt'
    problems = sorted(lines[:-1])
    assert len(problems) == 6, lines
    expected = {
        'dummy_model_demo2': "config_gateway.txt: endpoint 'dummy_model_demo2': key 'NR_WORKERS' must be an "
                             "integer >= 1, got 'two'",
        # no SERVER_CLASS in the entry: the message names the file it looked for, not that key
        'ghost': "config_gateway.txt: endpoint 'ghost': endpoint file endpoints/ghost.py does not exist",
        'fails_to_import': "config_gateway.txt: endpoint 'fails_to_import': endpoints/fails_to_import.py: import "
                           "failed: No module named 'numpyy_typo'",
        'exits_on_import': "config_gateway.txt: endpoint 'exits_on_import': endpoints/exits_on_import.py: exit "
                           "code 7 while importing",
        'bad_schema': "config_gateway.txt: endpoint 'bad_schema': endpoints/bad_schema.py: INPUT_SCHEMA is not a "
                      "valid JSON Schema",
        'not_a_worker': "config_gateway.txt: endpoint 'not_a_worker': endpoints/not_a_worker.py: class "
                        "NotAWorkerWorker does not subclass bis_twisted.FlaskWorker",
    }
    for name, start in expected.items():
        found = [line for line in problems if line.startswith("config_gateway.txt: endpoint '{}'".format(name))]
        assert len(found) == 1 and found[0].startswith(start), (name, found, lines)
    # the healthy and the disabled entries are not reported
    assert not any('iris_classifier' in line or 'off_and_broken' in line for line in lines)


def test_check_of_a_file_that_is_not_json_is_one_line(tmp_path):
    (tmp_path / 'config_gateway.txt').write_text('{"CONFIG_ENDPOINTS": {,}}')
    done = bis_gateway(tmp_path, 'check')
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].startswith('config_gateway.txt: not valid JSON:')
    assert done.stdout.splitlines()[1] == 'bis-gateway check: 1 problem in config_gateway.txt'


def test_new_writes_a_skeleton_and_a_config_entry_that_check_passes_and_the_gateway_serves(processes, tmp_path):
    folder = project(tmp_path, {'CONFIG_ENDPOINTS': {'dummy_model_demo2': {'NR_WORKERS': 1}}})
    done = bis_gateway(folder, 'new', 'sentiment_v2')
    assert done.returncode == 0, done
    assert done.stdout.startswith('wrote endpoints/sentiment_v2.py (class SentimentV2Worker)')
    source = (folder / 'endpoints' / 'sentiment_v2.py').read_text()
    assert 'class SentimentV2Worker(FlaskWorker):' in source and 'INPUT_SCHEMA' in source
    config = json.loads((folder / 'config_gateway.txt').read_text())
    assert list(config['CONFIG_ENDPOINTS']) == ['dummy_model_demo2', 'sentiment_v2']
    assert config['CONFIG_ENDPOINTS']['sentiment_v2']['NR_WORKERS'] == 1

    checked = bis_gateway(folder, 'check')
    assert checked.returncode == 0, checked
    assert checked.stdout.startswith('bis-gateway check: config_gateway.txt OK: 2 endpoints imported')

    # refuses to overwrite the file or the entry, and writes nothing
    before = (folder / 'config_gateway.txt').read_text()
    again = bis_gateway(folder, 'new', 'sentiment_v2')
    assert again.returncode == 1
    assert again.stderr.strip() == ('bis-gateway new: endpoints/sentiment_v2.py already exists; nothing written '
                                    '(pick another name, or edit it)')
    config['CONFIG_ENDPOINTS']['only_in_config'] = {}
    (folder / 'config_gateway.txt').write_text(json.dumps(config))
    clash = bis_gateway(folder, 'new', 'only_in_config')
    assert clash.returncode == 1 and "endpoint 'only_in_config' is already configured" in clash.stderr
    assert not (folder / 'endpoints' / 'only_in_config.py').exists()
    assert bis_gateway(folder, 'new', 'bad-name').returncode == 1
    (folder / 'config_gateway.txt').write_text(before)

    # the skeleton serves through the real gateway, started by its flags as before
    port = free_port_block(6)
    proc = processes.python('-m', 'bis_twisted.gateway.cli', '--port', str(port), '--host', '127.0.0.1', cwd=str(folder),
                            name='bis-gateway')
    proc.wait_for_line(GATEWAY_READY, timeout=30)
    gateway = GatewayProcess(proc, port)
    gateway.wait_online('sentiment_v2', timeout=30)
    answer = gateway.run('sentiment_v2', TEXT='hello')
    assert answer.status == 200, answer
    assert answer.json()['predict_result'] == {'answer': 'you said HELLO'}
    refused = gateway.run('sentiment_v2', TEXT='')
    assert refused.status == 400
    assert refused.json()['ERROR'].startswith('INPUT_SCHEMA: TEXT: expected the text to answer;')
