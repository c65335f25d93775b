"""API keys for /run: the token bucket and the key store on a Clock, the file's checks, and
``bis-gateway key add``."""

import json
import os
import stat
import subprocess
import sys

import pytest
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from bis_twisted.gateway.apikeys import KeyStore, TokenBucket, add_key, hash_key
from bis_twisted.errors import ConfigError, Forbidden, TooManyRequests, Unauthorized
from procs import REPO_ROOT, python_env


def test_bucket_spends_its_burst_then_refills_at_its_rate():
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    assert bucket.take() == pytest.approx(0.5)  # one token every 0.5 s
    clock.advance(0.5)
    assert bucket.take() == 0 and bucket.take() == pytest.approx(0.5)
    clock.advance(60)  # a long pause saves up the burst, no more
    assert [bucket.take() for _ in range(4)][:3] == [0, 0, 0] and bucket.take() > 0


def write_keys(path, **entries):
    path.write_text(json.dumps(entries))
    return str(path)


def request_with(headers):
    request = DummyRequest([b'run'])
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name, [value])
    return request


def test_store_identifies_by_either_header_and_refuses_missing_and_unknown_keys(tmp_path):
    path = write_keys(tmp_path / 'keys.json', alpha={'key_sha256': hash_key('k-alpha'), 'endpoints': '*'})
    store = KeyStore(path, Clock())
    assert store.identify(request_with({b'X-API-Key': b'k-alpha'})).name == 'alpha'
    assert store.identify(request_with({b'Authorization': b'Bearer k-alpha'})).name == 'alpha'
    with pytest.raises(Unauthorized) as missing:
        store.identify(request_with({}))
    assert missing.value.status == 401 and 'X-API-Key' in missing.value.message
    with pytest.raises(Unauthorized) as unknown:
        store.identify(request_with({b'X-API-Key': b'k-guess'}))
    assert unknown.value.message == 'unknown API key' and unknown.value.key_name == 'unknown'
    assert 'k-guess' not in unknown.value.message


def test_store_limits_endpoints_and_rate_per_key_apart(tmp_path):
    clock = Clock()
    path = write_keys(tmp_path / 'keys.json',
                      slow={'key_sha256': hash_key('k-slow'), 'endpoints': ['iris'], 'rate': 1, 'burst': 2},
                      free={'key_sha256': hash_key('k-free'), 'endpoints': '*'})
    store = KeyStore(path, clock)
    slow = store.identify(request_with({b'X-API-Key': b'k-slow'}))
    free = store.identify(request_with({b'X-API-Key': b'k-free'}))
    with pytest.raises(Forbidden) as forbidden:
        store.admit(slow, 'demo')
    assert forbidden.value.message == "API key 'slow' may not call 'demo'"
    store.admit(slow, 'iris')
    store.admit(slow, 'iris')
    with pytest.raises(TooManyRequests) as limited:
        store.admit(slow, 'iris')
    assert limited.value.status == 429 and limited.value.retry_after == 1
    for _ in range(100):  # the other key has its own bucket (none: unlimited)
        store.admit(free, 'iris')
    clock.advance(1)
    store.admit(slow, 'iris')


def test_reload_keeps_buckets_of_unchanged_keys_and_a_bad_file_changes_nothing(tmp_path):
    clock = Clock()
    keys = tmp_path / 'keys.json'
    entry = {'key_sha256': hash_key('k-a'), 'endpoints': '*', 'rate': 1, 'burst': 1}
    store = KeyStore(write_keys(keys, a=entry), clock)
    a = store.identify(request_with({b'X-API-Key': b'k-a'}))
    store.admit(a, 'x')
    write_keys(keys, a=entry, b={'key_sha256': hash_key('k-b'), 'endpoints': '*'})
    assert store.reload() == 2
    with pytest.raises(TooManyRequests):  # a's bucket survived the reload: no free burst
        store.admit(a, 'x')
    assert store.identify(request_with({b'X-API-Key': b'k-b'})).name == 'b'
    keys.write_text('{"b": {"key_sha256": "nothex"}}')
    with pytest.raises(ConfigError) as bad:
        store.reload()
    assert "key 'b': 'key_sha256' must be the 64 hex digits" in str(bad.value)
    assert store.identify(request_with({b'X-API-Key': b'k-b'})).name == 'b'  # unchanged


@pytest.mark.parametrize('entry,message', [
    ({'key_sha256': 'ab'}, "'key_sha256' must be the 64 hex digits"),
    ({'key_sha256': hash_key('x'), 'endpoints': 'iris'}, "'endpoints' must be \"*\" or a list"),
    ({'key_sha256': hash_key('x'), 'rate': 0}, "'rate' must be a number > 0"),
    ({'key_sha256': hash_key('x'), 'burst': 3}, "'burst' needs a 'rate'"),
])
def test_a_bad_keys_file_names_the_file_the_key_and_the_field(tmp_path, entry, message):
    path = write_keys(tmp_path / 'keys.json', team=entry)
    with pytest.raises(ConfigError) as bad:
        KeyStore(path, Clock())
    assert str(bad.value).startswith("{}: key 'team': ".format(path)) and message in str(bad.value)


def test_key_add_prints_the_key_once_and_stores_only_its_hash(tmp_path):
    config = tmp_path / 'config_gateway.txt'
    config.write_text(json.dumps({'API_KEYS': 'secrets/keys.json', 'CONFIG_ENDPOINTS': {}}))
    (tmp_path / 'secrets').mkdir()
    done = subprocess.run([sys.executable, '-m', 'bis_twisted.gateway.cli', 'key', 'add', 'team-a', '--allow',
                           'iris_classifier,dummy_model_demo2', '--rate', '5', '--config', str(config)],
                          capture_output=True, text=True, env=python_env(), cwd=REPO_ROOT, timeout=30)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    path = tmp_path / 'secrets' / 'keys.json'
    text = path.read_text()
    assert key not in text and key.startswith('bis_') and len(key) > 40
    assert json.loads(text) == {'team-a': {'key_sha256': hash_key(key), 'rate': 5.0,
                                           'endpoints': ['iris_classifier', 'dummy_model_demo2']}}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert key not in done.stderr and "added 'team-a'" in done.stderr
    again = subprocess.run([sys.executable, '-m', 'bis_twisted.gateway.cli', 'key', 'add', 'team-a', '--file', str(path)],
                           capture_output=True, text=True, env=python_env(), cwd=REPO_ROOT, timeout=30)
    assert again.returncode == 2 and "a key named 'team-a' exists already" in again.stderr
    assert add_key(str(path), 'team-b') != key


def test_a_gateway_whose_api_keys_file_is_missing_or_invalid_does_not_start(tmp_path):
    import subprocess
    import sys

    from procs import REPO_ROOT, python_env

    config = tmp_path / 'config_gateway.txt'
    config.write_text(json.dumps({'API_KEYS': 'keys.json', 'CONFIG_ENDPOINTS': {}}))
    argv = [sys.executable, '-m', 'bis_twisted.gateway.cli', '--config', str(config), '--port', '0',
            '--cache', str(tmp_path / '_cache')]
    missing = subprocess.run(argv, env=python_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2
    assert missing.stderr.startswith('bis-gateway: {}: '.format(tmp_path / 'keys.json'))
    assert len(missing.stderr.strip().splitlines()) == 1
    (tmp_path / 'keys.json').write_text(json.dumps({'team': {'key_sha256': 'x', 'rate': 1}}))
    invalid = subprocess.run(argv, env=python_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert invalid.returncode == 2
    assert "'team'" in invalid.stderr and "'key_sha256' must be the 64 hex digits" in invalid.stderr
    assert len(invalid.stderr.strip().splitlines()) == 1
