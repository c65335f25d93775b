"""``bis-gateway check`` as the authority on a config: unknown and misspelt keys at every level,
ports in use or shared, a ``_load_model`` that raises (``--load``), each one line naming the
file, the entry and the key; and ``bis-gateway schema``, the same table as a JSON Schema."""

import json
import os
import socket
import subprocess
import sys

import jsonschema
import psutil
import pytest

from bis_twisted.gateway.config import parse_config
from bis_twisted.gateway.config_keys import ENDPOINT_KEYS, TOP_KEYS, config_schema
from bis_twisted.errors import ConfigError
from gateway_process import free_port_block
from procs import ENDPOINTS_DIR, REPO_ROOT
from test_cli_tools import bis_gateway, project

LOAD_FAILS = '''
    from bis_twisted import FlaskWorker


    def read_weights(path):
        with open(path) as fh:
            return fh.read()


    class LoadFailsWorker(FlaskWorker):
        def _load_model(self):
            self.weights = read_weights(self.cfg_weights_file)

        def _pre_process(self, inputs):
            return inputs

        def _predict(self, inputs):
            return inputs

        def _post_process(self, pred):
            return pred
'''


@pytest.mark.e2e
def test_the_typod_config_exits_1_with_one_line_per_mistake_naming_key_entry_and_suggestion(tmp_path):
    port = free_port_block(12)
    config = {'DEFUALT_SERVER': 'demo', 'CONFIG_ENDPOINTS': {
        'demo': {'SERVER_CLASS': 'dummy_model_demo2', 'NR_WORKER': 2, 'MAX_BATCH_SZE': 4, 'timeout': 5,
                 'WEIGHT': 3},
        'demo1': {'SERVER_CLASS': 'dummy_model_demo1', 'COLOUR': 'red'},
    }}
    folder = project(tmp_path, config)
    done = bis_gateway(folder, 'check', '--port', str(port))
    assert done.returncode == 1, done
    lines = done.stdout.splitlines()
    assert lines[-1] == 'bis-gateway check: 5 problems in config_gateway.txt', lines
    assert sorted(lines[:-1]) == sorted([
        "config_gateway.txt: top level: key 'DEFUALT_SERVER' is not a gateway key; did you mean 'DEFAULT_SERVER'?",
        "config_gateway.txt: endpoint 'demo': key 'NR_WORKER' is not a gateway key; did you mean 'NR_WORKERS'?",
        "config_gateway.txt: endpoint 'demo': key 'MAX_BATCH_SZE' is not a gateway key; did you mean "
        "'MAX_BATCH_SIZE'?",
        "config_gateway.txt: endpoint 'demo': key 'timeout' is not a gateway key; did you mean 'TIMEOUT'?",
        "config_gateway.txt: endpoint 'demo1': key 'COLOUR' is not a gateway key, and "
        "endpoints/dummy_model_demo1.py does not read it (not in its _CONFIG, no cfg_colour); remove it, or add "
        "it to _CONFIG",
    ])
    # WEIGHT is in dummy_model_demo2.py's _CONFIG: the worker's own key, not a mistake
    assert 'WEIGHT' not in done.stdout


@pytest.mark.e2e
def test_ports_in_use_and_ports_shared_between_entries_are_problems(tmp_path):
    base = free_port_block(20)
    held = socket.socket()
    held.bind(('127.0.0.1', base + 10))
    held.listen(1)
    gateway_held = socket.socket()
    gateway_held.bind(('127.0.0.1', base))
    gateway_held.listen(1)
    try:
        config = {'CONFIG_ENDPOINTS': {
            'a': {'SERVER_CLASS': 'dummy_model_demo1', 'PORT': base + 10},
            'b': {'SERVER_CLASS': 'dummy_model_demo1', 'PORT': base + 12, 'REPLICAS': 2},
            'c': {'SERVER_CLASS': 'dummy_model_demo1', 'PORT': base + 13},
        }}
        folder = project(tmp_path, config)
        done = bis_gateway(folder, 'check', '--port', str(base), '--host', '127.0.0.1')
    finally:
        held.close()
        gateway_held.close()
    assert done.returncode == 1, done
    lines = done.stdout.splitlines()
    assert "config_gateway.txt: endpoint 'c': key 'PORT': port {} is already used by endpoint 'b'".format(
        base + 13) in lines, lines
    # with the process that holds it, when the system tells (this test's own)
    holder = ' (pid {}: {})'.format(os.getpid(), psutil.Process().name())
    assert "config_gateway.txt: endpoint 'a': key 'PORT': port {} is in use by another process{}".format(
        base + 10, holder) in lines, lines
    assert 'config_gateway.txt: the gateway (--port / BIS_PORT): port {} is in use by another process{}'.format(
        base, holder) in lines, lines
    assert lines[-1] == 'bis-gateway check: 3 problems in config_gateway.txt', lines


@pytest.mark.e2e
def test_load_runs_each_load_model_in_a_child_and_reports_the_line_that_failed(tmp_path):
    config = {'CONFIG_ENDPOINTS': {
        'load_fails': {'WEIGHTS_FILE': str(tmp_path / 'missing.bin'), 'LOAD_TIMEOUT': 30},
        'dummy_model_demo2': {},
    }}
    folder = project(tmp_path, config, {'load_fails': LOAD_FAILS})
    port = free_port_block(8)
    imported = bis_gateway(folder, 'check', '--port', str(port))
    assert imported.returncode == 0, imported  # importing is fine: only loading fails
    assert imported.stdout.splitlines() == ['bis-gateway check: config_gateway.txt OK: 2 endpoints imported']

    done = bis_gateway(folder, 'check', '--load', '--port', str(port))
    assert done.returncode == 1, done
    lines = done.stdout.splitlines()
    assert lines == [
        "config_gateway.txt: endpoint 'load_fails': _load_model failed: FileNotFoundError: [Errno 2] No such file "
        "or directory: '{}' (endpoints/load_fails.py:6)".format(tmp_path / 'missing.bin'),
        'bis-gateway check: 1 problem in config_gateway.txt'], lines

    (tmp_path / 'missing.bin').write_text('w')
    loaded = bis_gateway(folder, 'check', '--load', '--port', str(port))
    assert loaded.returncode == 0, loaded
    assert loaded.stdout.splitlines() == ['bis-gateway check: config_gateway.txt OK: 2 endpoints loaded']


def test_schema_command_prints_the_schema_the_gateway_validates_with(tmp_path):
    done = subprocess.run([sys.executable, '-m', 'bis_twisted.gateway.cli', 'schema'], capture_output=True,
                          text=True, cwd=str(tmp_path), timeout=60)
    assert done.returncode == 0, done
    schema = json.loads(done.stdout)
    assert schema == config_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    with open(REPO_ROOT + '/config_gateway.txt', encoding='utf-8') as fh:
        jsonschema.validate(json.load(fh), schema)


# a value each key refuses, and one it takes
_BAD_AND_GOOD = {
    'NR_WORKERS': ('two', 2), 'HOST': ('', '127.0.0.1'), 'PORT': (70000, 6000), 'DESCRIPTION': (3, 'x'),
    'DISABLED': ('yes', True), 'SERVER_CLASS': ('a/b', 'dummy_model_demo1'), 'PING_INTERVAL': (0, 1),
    'TIMEOUT': (True, 2.5), 'MAX_QUEUE': (-1, 0), 'REPLICAS': (0, 2.0), 'MAX_BATCH_SIZE': (0, 8),
    'BATCH_TIMEOUT': (-0.1, 0), 'MAX_BODY_MB': (0, 1), 'LOAD_TIMEOUT': ('60', 60), 'HEALTH_INTERVAL': (None, 1),
    'RETRY_ON_CRASH': (0, False), 'STREAM': ('no', False), 'MAX_RSS_MB': (-5, 500), 'MIN_REPLICAS': (0, 1),
    'MAX_REPLICAS': (65, 4), 'TARGET_IN_FLIGHT': (0, 2), 'UPSCALE_DELAY': (-1, 0), 'DOWNSCALE_DELAY': ('x', 10),
    'DEVICES': (['gpu0'], ['cuda:0', 1]), 'URLS': (['ftp://x'], ['http://10.0.0.2:5003']), 'URLS_REFRESH': (0, 30),
}


@pytest.mark.parametrize('key', sorted(ENDPOINT_KEYS))
def test_each_endpoint_key_is_judged_the_same_by_the_gateway_and_by_the_published_schema(key):
    bad, good = _BAD_AND_GOOD[key]
    validator = jsonschema.Draft7Validator(config_schema())
    for value, accepted in ((bad, False), (good, True)):
        entry = {key: value}
        if key in ('MIN_REPLICAS', 'MAX_REPLICAS', 'TARGET_IN_FLIGHT'):  # autoscaling keys go together
            entry = dict({'MAX_REPLICAS': 4, 'TARGET_IN_FLIGHT': 2}, **entry)
        data = {'CONFIG_ENDPOINTS': {'dummy_model_demo1': entry}}
        assert validator.is_valid(data) is accepted, (key, value)
        if accepted:
            parse_config(data, 'cfg', ENDPOINTS_DIR, gateway_port=free_port_block(4))
        else:
            with pytest.raises(ConfigError, match="key '{}' must be".format(key)):
                parse_config(data, 'cfg', ENDPOINTS_DIR)


def test_an_integral_float_is_an_integer_for_both_and_counts_as_one():
    data = {'CONFIG_ENDPOINTS': {'dummy_model_demo1': {'NR_WORKERS': 2.0, 'REPLICAS': 2.0, 'DEVICES': [1.0]}}}
    assert jsonschema.Draft7Validator(config_schema()).is_valid(data)
    endpoint = parse_config(data, 'cfg', ENDPOINTS_DIR, gateway_port=free_port_block(8)).endpoints[0]
    assert (endpoint.nr_workers, endpoint.replicas, endpoint.devices, len(endpoint.ports)) == (2, 2, (1,), 2)
    assert type(endpoint.entry['NR_WORKERS']) is int


def test_every_top_level_key_is_in_the_schema_and_an_unknown_one_is_refused_by_it():
    schema = config_schema()
    assert set(schema['properties']) == set(TOP_KEYS)
    assert not jsonschema.Draft7Validator(schema).is_valid({'CONFIG_ENDPOINTS': {}, 'DEFUALT_SERVER': 'x'})
    for key, (bad, good) in {'NO_STARTUP_WAIT': (1, True), 'MAX_CONNECTIONS': (0, 10),
                             'API_KEYS': ('  ', 'keys.json'), 'ACCESS_LOG': ('off', False),
                             'LOG_FORMAT': ('xml', 'json')}.items():
        with pytest.raises(ConfigError, match="key '{}' must be".format(key)):
            parse_config({'CONFIG_ENDPOINTS': {}, key: bad}, 'cfg', ENDPOINTS_DIR)
        parse_config({'CONFIG_ENDPOINTS': {}, key: good}, 'cfg', ENDPOINTS_DIR)


def test_version_flag_prints_the_version(tmp_path):
    from bis_twisted._version import __version__

    done = subprocess.run([sys.executable, '-m', 'bis_twisted.gateway.cli', '--version'], capture_output=True,
                          text=True, cwd=str(tmp_path), timeout=60)
    assert done.returncode == 0 and done.stdout == 'bis-gateway {}\n'.format(__version__), done


SLOW_LOAD = '''
    import time

    from bis_twisted import FlaskWorker


    class SlowLoadWorker(FlaskWorker):
        def _load_model(self):
            time.sleep(60)
'''


@pytest.mark.e2e
def test_load_past_load_timeout_is_one_line_naming_the_key(tmp_path):
    from bis_twisted.gateway.check import import_problems

    folder = project(tmp_path, {'CONFIG_ENDPOINTS': {}}, {'slow_load': SLOW_LOAD})
    config = parse_config({'CONFIG_ENDPOINTS': {'slow_load': {'LOAD_TIMEOUT': 1}}}, 'config_gateway.txt',
                          str(folder / 'endpoints'), gateway_port=free_port_block(4))
    # the import gets 3 s here (120 s in the command), the load its LOAD_TIMEOUT on top
    problems = import_problems('config_gateway.txt', list(config.endpoints), str(folder / 'endpoints'), timeout=3,
                               load=True)
    assert problems == ["config_gateway.txt: endpoint 'slow_load': key 'LOAD_TIMEOUT': {}/slow_load.py did not "
                        "import and load within 4 s".format(folder / 'endpoints')]
