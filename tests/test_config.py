"""Config validation: every unusable config stops the start with one line naming the file,
the endpoint and the key."""

import json
import subprocess
import sys

import pytest

from bis_twisted.gateway.config import load_config, parse_config
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
    (folder / 'text_stats.py').write_text('class TextStatWorker:\n    pass\n')
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
    ({'good': {'MAX_BATCH_SIZE': 0}},
     "cfg.txt: endpoint 'good': key 'MAX_BATCH_SIZE' must be an integer >= 1 (1: no batching), got 0"),
    ({'good': {'MAX_BATCH_SIZE': 8.5}},
     "cfg.txt: endpoint 'good': key 'MAX_BATCH_SIZE' must be an integer >= 1 (1: no batching), got 8.5"),
    ({'good': {'BATCH_TIMEOUT': -0.01}},
     "cfg.txt: endpoint 'good': key 'BATCH_TIMEOUT' must be a number of seconds >= 0, got -0.01"),
    ({'good': {'BATCH_TIMEOUT': '10ms'}},
     "cfg.txt: endpoint 'good': key 'BATCH_TIMEOUT' must be a number of seconds >= 0, got '10ms'"),
    ({'good': {'URLS': 'http://x'}},
     "cfg.txt: endpoint 'good': key 'URLS' must be a non-empty list of http:// URLs, got 'http://x'"),
    ({'good': []},
     "cfg.txt: endpoint 'good': must be an object of settings, got []"),
    # the key is blamed only where the entry has it
    ({'missing': {}},
     "cfg.txt: endpoint 'missing': endpoint file {ep}/missing.py does not exist (the file is named after "
     "the endpoint; set 'SERVER_CLASS' to use another)"),
    ({'alias': {'SERVER_CLASS': 'nope'}},
     "cfg.txt: endpoint 'alias': key 'SERVER_CLASS': endpoint file {ep}/nope.py does not exist"),
    ({'noclass': {}},
     "cfg.txt: endpoint 'noclass': {ep}/noclass.py has no class NoclassWorker (the file's name without "
     "underscores + 'Worker', any case; found: SomethingElse)"),
    ({'text_stats': {}},
     "cfg.txt: endpoint 'text_stats': {ep}/text_stats.py has no class TextStatsWorker (the file's name without "
     "underscores + 'Worker', any case; found: TextStatWorker)"),
    ({'alias': {'SERVER_CLASS': 'noclass'}},
     "cfg.txt: endpoint 'alias': key 'SERVER_CLASS': {ep}/noclass.py has no class NoclassWorker (the file's name "
     "without underscores + 'Worker', any case; found: SomethingElse)"),
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


def test_ports_count_up_from_gateway_port_in_file_order_and_skip_taken(endpoints):
    config = parse(endpoints, {
        'a': {'SERVER_CLASS': 'good', 'DISABLED': True},
        'b': {'SERVER_CLASS': 'good'},
        'c': {'SERVER_CLASS': 'good', 'PORT': 5004},
        'd': {'SERVER_CLASS': 'good', 'REPLICAS': 2},
        'support_process': {'HOST': 'NO_HOST', 'PING_INTERVAL': 2},
        'remote': {'URLS': ['http://127.0.0.2:7000/']},
    })
    ports = {e.name: e.ports for e in config.endpoints}
    # disabled servers keep their place: 'a' is first in the file, so it has the first port
    assert ports == {'a': (5003,), 'b': (5005,), 'c': (5004,), 'd': (5006, 5007),
                     'support_process': (), 'remote': ()}
    support = config.endpoint('support_process')
    assert support.is_support and support.ping_interval == 2 and not support.has_file
    assert config.endpoint('remote').urls == ('http://127.0.0.2:7000',)


def test_a_servers_default_port_does_not_move_when_another_is_enabled_or_added(endpoints):
    before = {'a': {'SERVER_CLASS': 'good'}, 'a-bis': {'SERVER_CLASS': 'good', 'DISABLED': True},
              'b': {'SERVER_CLASS': 'good', 'DISABLED': True}}
    enabled = dict(before, **{'a-bis': {'SERVER_CLASS': 'good'}})
    added = dict(before, c={'SERVER_CLASS': 'good'})
    ports = [{e.name: e.port for e in parse(endpoints, cfg).endpoints} for cfg in (before, enabled, added)]
    assert ports[0] == ports[1] == {'a': 5003, 'a-bis': 5004, 'b': 5005}
    assert ports[2] == {'a': 5003, 'a-bis': 5004, 'b': 5005, 'c': 5006}


def test_a_key_close_to_a_gateway_key_is_warned_about_once_and_still_passed_to_the_worker(endpoints, tmp_path):
    (tmp_path / 'endpoints' / 'demo.py').write_text(
        "_CONFIG = {'PORTS': [1, 2], 'WEIGHT': 0}\n\nclass DemoWorker:\n    pass\n")
    config = parse(endpoints, {
        'demo': {'NR_WORKER': 4, 'nr_workers': 2, 'TIMEOUTS': 3, 'WEIGHT': 1, 'PORTS': [3], 'THRESHOLD': 0.5},
        'good': {'DESCRIPTON': 'x', 'NR_WORKERS': 1}}, NO_STARTUP_WAITS=True, COMMENT='free text')
    assert list(config.warnings) == [
        "cfg.txt: key 'NO_STARTUP_WAITS' is not a gateway key; did you mean 'NO_STARTUP_WAIT'? (ignored)",
        "cfg.txt: endpoint 'demo': key 'NR_WORKER' is not a gateway key; did you mean 'NR_WORKERS'? "
        "(passed to the worker as config)",
        "cfg.txt: endpoint 'demo': key 'nr_workers' is not a gateway key; did you mean 'NR_WORKERS'? "
        "(passed to the worker as config)",
        "cfg.txt: endpoint 'demo': key 'TIMEOUTS' is not a gateway key; did you mean 'TIMEOUT'? "
        "(passed to the worker as config)",
        "cfg.txt: endpoint 'good': key 'DESCRIPTON' is not a gateway key; did you mean 'DESCRIPTION'? "
        "(passed to the worker as config)",
    ]  # PORTS is in demo.py's own _CONFIG: the worker's key, not a typo
    assert config.endpoint('demo').nr_workers == 1
    assert config.endpoint('demo').entry['NR_WORKER'] == 4


def test_the_example_config_has_no_warnings():
    assert load_config(REPO_ROOT + '/config_gateway.txt', REPO_ROOT + '/endpoints').warnings == ()


def test_worker_keys_are_kept_for_the_worker(endpoints):
    config = parse(endpoints, {'good': {'WEIGHT': 3, 'NR_WORKERS': 2}})
    assert config.endpoint('good').entry == {'WEIGHT': 3, 'NR_WORKERS': 2}


def test_example_config_in_repo_is_valid():
    config = load_config(REPO_ROOT + '/config_gateway.txt', REPO_ROOT + '/endpoints')
    enabled = [e.name for e in config.endpoints if e.is_spawned and not e.disabled]
    assert enabled == ['dummy_model_demo1', 'dummy_model_demo2', 'iris_classifier', 'text_streamer']
    # every configured server has its port in file order, the disabled ones too
    assert [(e.name, e.port) for e in config.endpoints] == [
        ('dummy_model_demo1', 5003), ('dummy_model_demo1-bis', 5004), ('dummy_model_demo2', 5005),
        ('dummy_model_demo2-bis', 5006), ('iris_classifier', 5007), ('text_streamer', 5008),
        ('support_process', None)]


@pytest.mark.parametrize('command', [[sys.executable, '-m', 'bis_twisted.gateway.cli'], [TWISTD, '-n', '-y', 'bis.tac']],
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


@pytest.mark.parametrize('name', ['iris@candidate', 'demo#1', '../etc', 'a b', '', '.hidden', 'new\nline'])
def test_an_endpoint_name_that_would_collide_or_escape_is_refused_by_name(tmp_path, name):
    with pytest.raises(ConfigError) as bad:
        parse_config({'CONFIG_ENDPOINTS': {name: {'HOST': 'NO_HOST'}}}, 'config_gateway.txt', str(tmp_path))
    assert str(bad.value).startswith("config_gateway.txt: endpoint {!r}: a name of letters, digits".format(name))
