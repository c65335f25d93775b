"""``ConfigReloader`` on a Clock with a fake fleet: it owns the swap of the API key store (the
buckets of unchanged keys kept, the store dropped or made as the file says), an unusable file
changes nothing, and reloads run one at a time."""

import json
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from bis_twisted.errors import BadRequest
from bis_twisted.gateway.apikeys import KeyStore, hash_key
from bis_twisted.gateway.config import load_config
from bis_twisted.gateway.config_reload import ConfigReloader
from fakes import failure_of, result_of


class AppliedFleet:
    """``apply_config`` as the fleet's: what it was given; each waits on the test when ``gate`` is set."""

    def __init__(self):
        self.applied = []
        self.gate = None

    async def apply_config(self, config):
        self.applied.append(config)
        if self.gate is not None:
            await self.gate
        return {'ADDED': [], 'REMOVED': [], 'CHANGED': [], 'UNCHANGED': [], 'FAILED': {}}


class Routes:
    def __init__(self, keys):
        self.keys = keys
        self.refreshed = 0

    def refresh(self):
        self.refreshed += 1


def project(tmp_path, keys=None, access_log=True):
    folder = tmp_path / 'endpoints'
    folder.mkdir(exist_ok=True)
    config = {'CONFIG_ENDPOINTS': {}, 'ACCESS_LOG': access_log}
    if keys is not None:
        (tmp_path / 'keys.json').write_text(json.dumps(keys))
        config['API_KEYS'] = 'keys.json'
    (tmp_path / 'config_gateway.txt').write_text(json.dumps(config))
    return str(tmp_path / 'config_gateway.txt'), str(folder)


def reloader_for(tmp_path, keys=None):
    path, folder = project(tmp_path, keys)
    clock = Clock()
    config = load_config(path, folder, 5002)
    routes = Routes(KeyStore(config.api_keys, clock) if config.api_keys else None)
    log = SimpleNamespace(enabled=config.access_log)
    fleet = AppliedFleet()
    return ConfigReloader(path, folder, 5002, config, fleet, routes, log, clock), routes, fleet, log


def key(name, rate=None):
    entry = {'key_sha256': hash_key('k-' + name), 'endpoints': '*'}
    if rate is not None:
        entry['rate'] = rate
    return entry


def test_the_key_store_is_swapped_by_the_reload_its_unchanged_buckets_kept(tmp_path):
    reloader, routes, fleet, log = reloader_for(tmp_path, keys={'alpha': key('alpha', rate=1)})
    store = routes.keys
    bucket = store._buckets['alpha']
    project(tmp_path, keys={'alpha': key('alpha', rate=1), 'beta': key('beta')}, access_log=False)
    result_of(reloader.reload())
    assert routes.keys is store and store._buckets['alpha'] is bucket  # the same store, alpha's bucket kept
    assert sorted(store._keys) == ['alpha', 'beta'] and routes.refreshed == 1 and log.enabled is False
    assert reloader.config is fleet.applied[-1]
    project(tmp_path)  # no API_KEYS any more: no store
    result_of(reloader.reload())
    assert routes.keys is None
    project(tmp_path, keys={'gamma': key('gamma')})  # and one again
    result_of(reloader.reload())
    assert isinstance(routes.keys, KeyStore) and list(routes.keys._keys) == ['gamma']


@pytest.mark.parametrize('breakage', ['config', 'keys'])
def test_a_file_that_cannot_be_used_changes_nothing(tmp_path, breakage):
    reloader, routes, fleet, _log = reloader_for(tmp_path, keys={'alpha': key('alpha')})
    before, store = reloader.config, routes.keys
    if breakage == 'config':
        (tmp_path / 'config_gateway.txt').write_text('{"CONFIG_ENDPOINTS": {"x": {"NR_WORKERS": 0}}}')
    else:
        (tmp_path / 'keys.json').write_text(json.dumps({'alpha': {'key_sha256': 'short'}}))
    error = failure_of(reloader.reload(), BadRequest)
    assert ("endpoint 'x'" if breakage == 'config' else 'key_sha256') in error.message
    assert fleet.applied == [] and reloader.config is before and routes.keys is store and routes.refreshed == 0


def test_reloads_run_one_at_a_time(tmp_path):
    reloader, _routes, fleet, _log = reloader_for(tmp_path)
    fleet.gate = defer.Deferred()
    first, second = reloader.reload(), reloader.reload()
    assert len(fleet.applied) == 1 and not first.called  # the second waits for the first
    gate, fleet.gate = fleet.gate, None
    gate.callback(None)
    result_of(first), result_of(second)
    assert len(fleet.applied) == 2
