"""API keys of /run: the token bucket on a Clock, the file's validation, the checks of a
request, reloading, and ``bis-gateway key add``."""

import io
import json

import pytest
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from bis_twisted.apikeys import KeyStore, TokenBucket, add_key, key_hash, parse_keys
from bis_twisted.cli import key_main
from bis_twisted.errors import ConfigError, Forbidden, TooManyRequests, Unauthorized

KEY_A = 'key-a-0123456789abcdef'
KEY_B = 'key-b-0123456789abcdef'


def keys_file(tmp_path, **entries):
    path = tmp_path / 'api_keys.json'
    path.write_text(json.dumps(entries))
    return str(path)


def entry(key, endpoints='*', rate=1, burst=2):
    return {'key_sha256': key_hash(key), 'endpoints': endpoints, 'rate': rate, 'burst': burst}


def request_with(headers):
    request = DummyRequest([b'run'])
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name, [value])
    return request


def test_bucket_allows_a_burst_then_refuses_with_the_wait_for_a_token():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    assert bucket.take() == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.take() == pytest.approx(0.25)


def test_bucket_refills_at_its_rate_up_to_the_burst_only():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    for _ in range(5):
        bucket.take()
    clock.advance(0.3)  # 3 tokens back
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    assert bucket.take() > 0
    clock.advance(3600)  # a long idle refills to the burst, not beyond
    assert bucket.tokens == pytest.approx(5)


def test_bucket_rate_over_time_is_its_rate():
    clock = Clock()
    bucket = TokenBucket(rate=4, burst=1, clock=clock)
    allowed = 0
    for _ in range(1000):  # a caller trying every 10 ms for 10 s
        allowed += bucket.take() == 0
        clock.advance(0.01)
    assert 40 <= allowed <= 41


def test_missing_and_unknown_keys_are_401_not_allowed_403_over_rate_429(tmp_path):
    clock = Clock()
    store = KeyStore.load(keys_file(tmp_path, a=entry(KEY_A, ['demo'], rate=1, burst=1)), clock=clock)
    with pytest.raises(Unauthorized, match='needs an API key'):
        store.check(request_with({}), 'demo')
    with pytest.raises(Unauthorized, match='unknown API key'):
        store.check(request_with({'X-API-Key': 'wrong-key-0123456789'}), 'demo')
    with pytest.raises(Forbidden, match="'a' may not run 'other'; it may run: demo"):
        store.check(request_with({'X-API-Key': KEY_A}), 'other')
    assert store.check(request_with({'Authorization': 'Bearer ' + KEY_A}), 'demo') == 'a'
    with pytest.raises(TooManyRequests) as refused:
        store.check(request_with({'X-API-Key': KEY_A}), 'demo')
    assert refused.value.retry_after == 1
    clock.advance(1)
    assert store.check(request_with({'X-API-Key': KEY_A}), 'demo') == 'a'


def test_x_api_key_wins_over_authorization_so_a_caller_can_send_the_admin_token_too(tmp_path):
    store = KeyStore.load(keys_file(tmp_path, a=entry(KEY_A)), clock=Clock())
    assert store.check(request_with({'X-API-Key': KEY_A, 'Authorization': 'Bearer admin-token-xxxxxxxx'}),
                       'demo') == 'a'


def test_retry_after_is_the_whole_seconds_until_a_token(tmp_path):
    store = KeyStore.load(keys_file(tmp_path, slow=entry(KEY_A, rate=0.2, burst=1)), clock=Clock())
    store.check(request_with({'X-API-Key': KEY_A}), 'demo')
    with pytest.raises(TooManyRequests) as refused:
        store.check(request_with({'X-API-Key': KEY_A}), 'demo')
    assert refused.value.retry_after == 5


@pytest.mark.parametrize('bad, words', [
    ({'k': {'key_sha256': 'abc'}}, "key 'k': field 'key_sha256' must be 64 hex digits"),
    ({'k': dict(entry(KEY_A), rate=0)}, "key 'k': field 'rate' must be a number"),
    ({'k': dict(entry(KEY_A), burst=1.5)}, "key 'k': field 'burst' must be an integer"),
    ({'k': dict(entry(KEY_A), endpoints='demo')}, "key 'k': field 'endpoints' must be"),
    ({'k': dict(entry(KEY_A), rates=1)}, "key 'k': unknown field 'rates'"),
    ({'k': entry(KEY_A), 'j': entry(KEY_A)}, "key 'j': field 'key_sha256' is the same as key 'k'"),
    ([], 'top level must be a JSON object'),
])
def test_an_invalid_file_names_the_file_the_key_and_the_field(bad, words):
    with pytest.raises(ConfigError) as error:
        parse_keys(bad, 'keys.json')
    assert str(error.value).startswith('keys.json: ')
    assert words in str(error.value)


def test_reload_swaps_keys_keeps_buckets_and_an_invalid_file_changes_nothing(tmp_path):
    clock = Clock()
    path = keys_file(tmp_path, a=entry(KEY_A, rate=1, burst=1))
    store = KeyStore.load(path, clock=clock)
    store.check(request_with({'X-API-Key': KEY_A}), 'demo')
    keys_file(tmp_path, a=entry(KEY_A, rate=1, burst=1), b=entry(KEY_B))
    assert store.reload() == ['a', 'b']
    with pytest.raises(TooManyRequests):  # a reload hands no fresh burst to a flooding key
        store.check(request_with({'X-API-Key': KEY_A}), 'demo')
    assert store.check(request_with({'X-API-Key': KEY_B}), 'demo') == 'b'
    (tmp_path / 'api_keys.json').write_text('{"b": {"key_sha256": "nope"}}')
    with pytest.raises(ConfigError):
        store.reload()
    assert store.names == ['a', 'b']
    keys_file(tmp_path, b=entry(KEY_B))  # a removed key stops working
    store.reload()
    with pytest.raises(Unauthorized):
        store.check(request_with({'X-API-Key': KEY_A}), 'demo')


def test_key_add_prints_the_key_once_and_stores_only_its_hash(tmp_path):
    path = str(tmp_path / 'keys.json')
    out = io.StringIO()
    assert key_main(['add', 'team_a', '--file', path, '--endpoints', 'demo,iris', '--rate', '2.5',
                     '--burst', '4'], out=out) == 0
    key = out.getvalue().splitlines()[1]
    text = open(path).read()
    assert key not in text
    data = json.loads(text)
    assert data == {'team_a': {'key_sha256': key_hash(key), 'endpoints': ['demo', 'iris'], 'rate': 2.5, 'burst': 4}}
    store = KeyStore.load(path, clock=Clock())
    assert store.check(request_with({'X-API-Key': key}), 'iris') == 'team_a'
    with pytest.raises(ConfigError, match="key 'team_a' already exists"):
        add_key(path, 'team_a')
    assert json.loads(open(path).read()) == data


def test_key_add_finds_the_file_through_the_configs_api_keys(tmp_path):
    (tmp_path / 'config_gateway.txt').write_text(json.dumps({'API_KEYS': 'secrets/keys.json', 'CONFIG_ENDPOINTS': {}}))
    (tmp_path / 'secrets').mkdir()
    out = io.StringIO()
    assert key_main(['add', 'ops', '--config', str(tmp_path / 'config_gateway.txt')], out=out) == 0
    assert json.loads((tmp_path / 'secrets' / 'keys.json').read_text())['ops']['endpoints'] == '*'


def test_config_api_keys_is_a_path_from_the_config_files_folder(tmp_path):
    from bis_twisted.config import parse_config

    label = str(tmp_path / 'conf' / 'config_gateway.txt')
    config = parse_config({'API_KEYS': 'secrets/keys.json', 'CONFIG_ENDPOINTS': {}}, label)
    assert config.api_keys == str(tmp_path / 'conf' / 'secrets' / 'keys.json')
    assert parse_config({'CONFIG_ENDPOINTS': {}}, label).api_keys is None
    with pytest.raises(ConfigError, match="key 'API_KEYS' must be the path of a JSON file"):
        parse_config({'API_KEYS': {'a': 1}, 'CONFIG_ENDPOINTS': {}}, label)


def test_a_gateway_whose_api_keys_file_is_missing_or_invalid_does_not_start(tmp_path):
    import subprocess
    import sys

    from procs import REPO_ROOT, python_env

    config = tmp_path / 'config_gateway.txt'
    config.write_text(json.dumps({'API_KEYS': 'keys.json', 'CONFIG_ENDPOINTS': {}}))
    argv = [sys.executable, '-m', 'bis_twisted.cli', '--config', str(config), '--port', '0',
            '--cache', str(tmp_path / '_cache')]
    missing = subprocess.run(argv, env=python_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2
    assert missing.stderr.strip() == 'bis-gateway: {}: the API_KEYS file does not exist (create it with ' \
        '`bis-gateway key add NAME --file {}`)'.format(tmp_path / 'keys.json', tmp_path / 'keys.json')
    (tmp_path / 'keys.json').write_text(json.dumps({'team': {'key_sha256': 'x', 'rate': 1}}))
    invalid = subprocess.run(argv, env=python_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert invalid.returncode == 2
    assert "keys.json: key 'team': field 'key_sha256' must be 64 hex digits" in invalid.stderr
    assert len(invalid.stderr.strip().splitlines()) == 1
