"""Config validation: every unusable config stops the start with one line naming the file,
the endpoint and the key."""

import json
import subprocess
import sys

import pytest

from bis_twisted.config import load_config, parse_config
from bis_twisted.errors import ConfigError

from procs import REPO_ROOT, TWISTD, python_env

GOOD_ENDPOINT = '''
from bis_twisted import FlaskWorker

class GoodWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs
'''


@pytest.fixture
def endpoints(tmp_path):
    folder = tmp_path / 'endpoints'
    folder.mkdir()
    (folder / 'good.py').write_text(GOOD_ENDPOINT)
    (folder / 'broken.py').write_text('def oops(:\n')
    (folder / 'noclass.py').write_text('class SomethingElse:\n    pass\n')
    return str(folder)


def parse(endpoints_dir, endpoints, **top):
    data = dict(top, CONFIG_ENDPOINTS=endpoints)
    return parse_config(data, 'cfg.txt', endpoints_dir, gateway_port=5002)


BAD_CONFIGS = [
    ({'good': {'NR_WORKERS': 'two'}},
     "cfg.txt: endpoint 'good': key 'NR_WORKERS' must be an integer >= 1, got 'two'"),
    ({'good': {'NR_WORKERS': 0}},
     "cfg.txt: endpoint 'good': key 'NR_WORKERS' must be an integer >= 1, got 0"),
    ({'good': {'DISABLED': 'yes'}},
     "cfg.txt: endpoint 'good': key 'DISABLED' must be true or false, got 'yes'"),
    ({'good': {'PORT': 70000}},
     "cfg.txt: endpoint 'good': key 'PORT' must be an integer port 1-65535, got 70000"),
    ({'good': {'TIMEOUT': -1}},
     "cfg.txt: endpoint 'good': key 'TIMEOUT' must be a number of seconds > 0, got -1"),
    ({'good': {'URLS': 'http://x'}},
     "cfg.txt: endpoint 'good': key 'URLS' must be a non-empty list of http:// URLs, got 'http://x'"),
    ({'good': []},
     "cfg.txt: endpoint 'good': must be an object of settings, got []"),
    ({'missing': {}},
     "cfg.txt: endpoint 'missing': key 'SERVER_CLASS': endpoint file {ep}/missing.py does not exist"),
    ({'alias': {'SERVER_CLASS': 'nope'}},
     "cfg.txt: endpoint 'alias': key 'SERVER_CLASS': endpoint file {ep}/nope.py does not exist"),
    ({'noclass': {}},
     "cfg.txt: endpoint 'noclass': key 'SERVER_CLASS': {ep}/noclass.py has no class NoclassWorker "
     "(found: SomethingElse)"),
    ({'broken': {}},
     "cfg.txt: endpoint 'broken': endpoint file {ep}/broken.py:1: syntax error: invalid syntax"),
    ({'good': {'PORT': 6000}, 'good2': {'SERVER_CLASS': 'good', 'PORT': 6000}},
     "cfg.txt: endpoint 'good2': key 'PORT': port 6000 is already used by endpoint 'good'"),
    ({'good': {'PORT': 5002}},
     "cfg.txt: endpoint 'good': key 'PORT': port 5002 is already used by the gateway"),
]


@pytest.mark.parametrize('endpoints_cfg,message', BAD_CONFIGS)
def test_bad_endpoint_entry_names_file_endpoint_and_key(endpoints, endpoints_cfg, message):
    with pytest.raises(ConfigError) as caught:
        parse(endpoints, endpoints_cfg)
    assert str(caught.value) == message.format(ep=endpoints)


def test_bad_top_level_keys(endpoints):
    with pytest.raises(ConfigError, match=r"^cfg.txt: key 'NO_STARTUP_WAIT' must be true or false, got 1$"):
        parse(endpoints, {'good': {}}, NO_STARTUP_WAIT=1)
    with pytest.raises(ConfigError, match=r"^cfg.txt: key 'DEFAULT_SERVER' names 'zzz', which is not in "
                                          r"CONFIG_ENDPOINTS \(good\)$"):
        parse(endpoints, {'good': {}}, DEFAULT_SERVER='zzz')
    with pytest.raises(ConfigError, match=r"^cfg.txt: key 'CONFIG_ENDPOINTS' is missing"):
        parse_config({}, 'cfg.txt', endpoints)


def test_invalid_json_names_the_file(tmp_path, endpoints):
    path = tmp_path / 'config_gateway.txt'
    path.write_text('{"CONFIG_ENDPOINTS": {,}}')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), endpoints)
    assert str(caught.value).startswith('{}: not valid JSON: Expecting property name'.format(path))


def test_ports_count_up_from_gateway_port_enabled_first_and_skip_taken(endpoints):
    config = parse(endpoints, {
        'a': {'SERVER_CLASS': 'good', 'DISABLED': True},
        'b': {'SERVER_CLASS': 'good'},
        'c': {'SERVER_CLASS': 'good', 'PORT': 5004},
        'd': {'SERVER_CLASS': 'good', 'REPLICAS': 2},
        'support_process': {'HOST': 'NO_HOST', 'PING_INTERVAL': 2},
        'remote': {'URLS': ['http://127.0.0.2:7000/']},
    })
    ports = {e.name: e.ports for e in config.endpoints}
    assert ports == {'b': (5003,), 'c': (5004,), 'd': (5005, 5006), 'a': (5007,),
                     'support_process': (), 'remote': ()}
    support = config.endpoint('support_process')
    assert support.is_support and support.ping_interval == 2 and not support.has_file
    assert config.endpoint('remote').urls == ('http://127.0.0.2:7000',)


def test_worker_keys_are_kept_for_the_worker(endpoints):
    config = parse(endpoints, {'good': {'WEIGHT': 3, 'NR_WORKERS': 2}})
    assert config.endpoint('good').entry == {'WEIGHT': 3, 'NR_WORKERS': 2}


def test_example_config_in_repo_is_valid():
    config = load_config(REPO_ROOT + '/config_gateway.txt', REPO_ROOT + '/endpoints')
    enabled = [e.name for e in config.endpoints if e.is_spawned and not e.disabled]
    assert enabled == ['dummy_model_demo1', 'dummy_model_demo2', 'iris_classifier']
    assert [e.port for e in config.endpoints if e.name in enabled] == [5003, 5004, 5005]


@pytest.mark.parametrize('command', [[sys.executable, '-m', 'bis_twisted.cli'], [TWISTD, '-n', '-y', 'bis.tac']],
                         ids=['bis-gateway', 'twistd'])
def test_gateway_start_with_bad_config_exits_nonzero_with_one_line(tmp_path, endpoints, command):
    config = tmp_path / 'bad.txt'
    config.write_text(json.dumps({'CONFIG_ENDPOINTS': {'good': {'NR_WORKERS': 'two'}}}))
    env = python_env({'BIS_CONFIG': str(config), 'BIS_ENDPOINTS': endpoints,
                      'BIS_CACHE': str(tmp_path / 'cache'), 'BIS_PORT': '5902'})
    done = subprocess.run(command, cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines == ["bis-gateway: {}: endpoint 'good': key 'NR_WORKERS' must be an integer >= 1, got 'two'".format(
        config)], done.stderr


@pytest.mark.parametrize('key, bad, what', [
    ('HEAD_TIMEOUT', 0, 'a number of seconds > 0'), ('BODY_TIMEOUT', '10', 'a number of seconds > 0'),
    ('MAX_CONNECTIONS', 1.5, 'an integer >= 1'), ('MAX_BODIES_MB', -1, 'a number of MiB > 0'),
    ('MAX_ANSWER_MB', True, 'a number of MiB > 0'),
])
def test_bad_http_limits_name_the_key(endpoints, key, bad, what):
    with pytest.raises(ConfigError, match=r"^cfg.txt: key '{}' must be {}".format(key, what)):
        parse(endpoints, {'good': {}}, **{key: bad})


def test_http_limits_are_read(endpoints):
    config = parse(endpoints, {'good': {}}, HEAD_TIMEOUT=2, MAX_CONNECTIONS=50, MAX_ANSWER_MB=5)
    assert config.http_limits == {'HEAD_TIMEOUT': 2, 'MAX_CONNECTIONS': 50}
    assert config.max_answer_mb == 5
    assert 'HEAD_TIMEOUT' not in config.extra
