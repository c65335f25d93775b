"""End-to-end: ``/reload_server``, ``/reload_config`` and SIGHUP with the real gateway
(``twistd -n -y bis.tac``), real model servers, real HTTP on loopback, real signals. The
endpoint files live in a temporary folder the tests rewrite between reloads."""

import json
import signal
import threading
import time

import pytest

from gateway_process import start_gateway
from procs import Processes, wait_until

VERSIONED = '''
import time

from bis_twisted import FlaskWorker

_CONFIG = {{'PAUSE': 0.01}}


class VersionedWorker(FlaskWorker):
  def _load_model(self):
    print('loading version {version}')
    {load}

  def _pre_process(self, inputs):
    return inputs['VALUE']

  def _predict(self, value):
    time.sleep(self.cfg_pause)  # a request is in flight for a while
    return value

  def _post_process(self, value):
    return {{'VERSION': '{version}', 'VALUE': value, 'DEVICE': self.device,
             'GREETING': self.config_data.get('GREETING')}}
'''


def write_endpoint(folder, version, load='pass', name='versioned'):
    (folder / '{}.py'.format(name)).write_text(VERSIONED.format(version=version, load=load))


class Stream(threading.Thread):
    """One client sending requests one after another until told to stop; keeps every
    (status, VERSION or error) it got, and when each request was sent."""

    def __init__(self, gateway, signature='versioned'):
        super().__init__(daemon=True)
        self.gateway = gateway
        self.signature = signature
        self.results = []
        self.sent_at = []  # time.monotonic() at which the request of results[i] was sent
        self.stop = threading.Event()

    def run(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            self.sent_at.append(time.monotonic())
            try:
                answer = self.gateway.post('/run', {'SIGNATURE': self.signature, 'VALUE': n}, timeout=10)
                body = answer.json()
                ok = answer.status == 200 and body['predict_result']['VALUE'] == n
                self.results.append((answer.status, body['predict_result']['VERSION'] if ok else body))
            except Exception as exc:  # kept: the test reports every request that was not answered
                self.results.append(('exception', '{}: {}'.format(type(exc).__name__, exc)))

    def versions(self):
        return [v for _, v in self.results]

    def versions_sent_after(self, moment):
        """The versions that answered the requests sent after ``moment``: a request sent
        before it may be answered by the old process after it, as a drain promises."""
        return [v for (_, v), sent in zip(self.results, self.sent_at) if sent > moment]

    def failures(self):
        return [r for r in self.results if r[0] != 200]


@pytest.fixture(scope='module')
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('reload')
    endpoints = tmp / 'endpoints'
    endpoints.mkdir()
    write_endpoint(endpoints, 'v1')
    config = {'NO_STARTUP_WAIT': True,
              'CONFIG_ENDPOINTS': {'versioned': {'REPLICAS': 2, 'NR_WORKERS': 1, 'LOAD_TIMEOUT': 20}}}
    with Processes() as group:
        gw = start_gateway(group, tmp, config=config, endpoints=endpoints)
        gw.endpoints = endpoints
        wait_until(lambda: gw.server('versioned')['REPLICAS'], lambda rs: all(r['ONLINE'] for r in rs),
                   timeout=30, what='both replicas online')
        yield gw


def stream_through(gateway, action, streams=2, settle=20):
    """Run ``action`` while ``streams`` clients send requests; returns the streams and what
    ``action`` returned, after ``settle`` more answers per client."""
    clients = [Stream(gateway) for _ in range(streams)]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: min(len(c.results) for c in clients), lambda n: n >= 10, timeout=15,
                   what='10 answers per client before the action')
        result = action()
        replied_at = time.monotonic()
        counts = [len(c.results) for c in clients]
        wait_until(lambda: [len(c.results) - n for c, n in zip(clients, counts)], lambda ns: min(ns) >= settle,
                   timeout=20, what='{} answers per client after the action'.format(settle))
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(15)
    assert not any(c.is_alive() for c in clients), 'a client is still waiting for an answer'
    return clients, result, replied_at


def test_reload_under_a_stream_fails_nothing_and_switches_to_the_new_code(gateway):
    before = {r['PID'] for r in gateway.server('versioned')['REPLICAS']}
    write_endpoint(gateway.endpoints, 'v2')
    clients, answer, replied_at = stream_through(
        gateway, lambda: gateway.post('/reload_server', {'SIGNATURE': 'versioned'}, timeout=60))
    assert answer.status == 200, answer
    assert answer.json()['REPLACED'] == 2
    for client in clients:
        assert client.failures() == [], client.failures()[:5]
        assert client.versions()[0] == 'v1'
        # once the reload has answered, every replica runs the new code
        after = client.versions_sent_after(replied_at)
        assert after and set(after) == {'v2'}, after
    listed = gateway.server('versioned')['REPLICAS']
    after = {r['PID'] for r in listed}
    assert not after & before and all(r['ONLINE'] for r in listed)
    # the new processes serve on the spare ports, the old ones are gone
    assert len({r['PORT'] for r in listed}) == 2
    assert not {c.pid for c in gateway.children()} & before


def test_reload_with_broken_code_keeps_the_old_processes_serving(gateway):
    wait_until(lambda: gateway.server('versioned')['REPLICAS'], lambda rs: all(r['ONLINE'] for r in rs),
               timeout=20, what='both replicas online')
    before = {r['PID'] for r in gateway.server('versioned')['REPLICAS']}
    write_endpoint(gateway.endpoints, 'v3', load="raise RuntimeError('weights file missing: /models/v3.bin')")
    try:
        clients, answer, _ = stream_through(
            gateway, lambda: gateway.post('/reload_server', {'SIGNATURE': 'versioned'}, timeout=60), settle=10)
    finally:
        write_endpoint(gateway.endpoints, 'v2')
    assert answer.status == 500, answer
    error = answer.json()['ERROR']
    assert 'weights file missing: /models/v3.bin' in error and '\n' not in error, error
    assert 'old one keeps serving' in error
    for client in clients:
        assert client.failures() == [], client.failures()[:5]
        assert 'v3' not in client.versions()
    listed = gateway.server('versioned')['REPLICAS']
    assert {r['PID'] for r in listed} == before
    assert {c.pid for c in gateway.children()} == before  # the failed new process is not retried


def test_reload_of_an_unknown_server_and_without_json_is_refused(gateway):
    answer = gateway.post('/reload_server', {'SIGNATURE': 'nope'})
    assert answer.status == 404 and 'nope' in answer.json()['ERROR']
    answer = gateway.post('/reload_server', {'SIGNATURE': 'versioned'}, headers={'Content-Type': 'text/plain'})
    assert answer.status == 415


# -- /reload_config and SIGHUP ------------------------------------------------------------------
def write_config(path, endpoints, extra=None):
    data = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': endpoints}
    data.update(extra or {})
    path.write_text(json.dumps(data))


@pytest.fixture(scope='module')
def config_gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('reload_config')
    endpoints = tmp / 'endpoints'
    endpoints.mkdir()
    for name in ('alpha', 'beta', 'gamma'):
        write_endpoint(endpoints, name + '-v1', name=name)
        text = (endpoints / '{}.py'.format(name)).read_text()
        (endpoints / '{}.py'.format(name)).write_text(text.replace('VersionedWorker', name.capitalize() + 'Worker'))
    config = {'alpha': {'NR_WORKERS': 1, 'GREETING': 'hello'}, 'beta': {'NR_WORKERS': 1},
              'delta': {'NR_WORKERS': 1, 'SERVER_CLASS': 'alpha'}}
    with Processes() as group:
        gw = start_gateway(group, tmp, config={'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': config},
                           endpoints=endpoints)
        gw.tmp = tmp
        gw.config_path = tmp / 'config_gateway.txt'
        for name in ('alpha', 'beta', 'delta'):
            gw.wait_online(name, timeout=30)
        yield gw


def pids(gateway, name):
    return gateway.server(name)['PID']


def test_invalid_config_changes_nothing(config_gateway):
    gw = config_gateway
    before = {name: pids(gw, name) for name in ('alpha', 'beta', 'delta')}
    good = gw.config_path.read_text()
    write_config(gw.config_path, {'alpha': {'NR_WORKERS': 'two'}, 'beta': {}})
    try:
        answer = gw.post('/reload_config', {})
    finally:
        gw.config_path.write_text(good)
    assert answer.status == 400, answer
    error = answer.json()['ERROR']
    assert "endpoint 'alpha': key 'NR_WORKERS' must be an integer >= 1, got 'two'" in error and '\n' not in error
    assert {name: pids(gw, name) for name in before} == before
    gw.path_before = good


def test_config_reload_adds_removes_changes_and_resizes(config_gateway):
    gw = config_gateway
    before = {name: pids(gw, name) for name in ('alpha', 'beta', 'delta')}
    beta_pid = before['beta']
    write_config(gw.config_path, {'alpha': {'NR_WORKERS': 1, 'GREETING': 'bonjour'},  # changed: reloaded
                                  'delta': {'NR_WORKERS': 2, 'SERVER_CLASS': 'alpha'},  # resized in place
                                  'gamma': {'NR_WORKERS': 1}})  # added; beta removed
    answer = gw.post('/reload_config', {}, timeout=60)
    assert answer.status == 200, answer
    done = answer.json()
    assert done['ADDED'] == ['gamma'] and done['REMOVED'] == ['beta']
    assert done['RELOADED'] == ['alpha'] and done['RESIZED'] == ['delta']
    listed = gw.get('/list_servers').json()
    assert 'beta' not in listed['AVAIL_SERVERS'] and 'beta' not in listed['STOPPED_SERVERS']
    wait_until(lambda: beta_pid not in {c.pid for c in gw.children()}, timeout=15, what='beta stopped')
    assert gw.run('beta', VALUE=1).status == 404
    gw.wait_online('gamma', timeout=30)
    assert gw.run('gamma', VALUE=3).json()['predict_result']['VERSION'] == 'gamma-v1'
    alpha = gw.run('alpha', VALUE=2).json()['predict_result']
    assert alpha['GREETING'] == 'bonjour' and pids(gw, 'alpha') != before['alpha']
    # NR_WORKERS only: the same process, two workers now
    assert pids(gw, 'delta') == before['delta']
    assert gw.server('delta')['NR_WORKERS'] == 2


def test_sighup_reloads_the_config(config_gateway):
    gw = config_gateway
    alpha = pids(gw, 'alpha')
    gamma = pids(gw, 'gamma')
    write_config(gw.config_path, {'alpha': {'NR_WORKERS': 1, 'GREETING': 'bonjour'},
                                  'delta': {'NR_WORKERS': 2, 'SERVER_CLASS': 'alpha'},
                                  'gamma': {'NR_WORKERS': 1, 'GREETING': 'hi'}})
    since = len(gw.proc.stdout_lines)
    gw.proc.send_signal(signal.SIGHUP)
    gw.proc.wait_for_line(r'config reloaded from .*reloaded gamma', timeout=30, since=since)
    assert gw.run('gamma', VALUE=1).json()['predict_result']['GREETING'] == 'hi'
    assert pids(gw, 'alpha') == alpha and pids(gw, 'gamma') != gamma


# -- autoscaling and devices -----------------------------------------------------------------------
@pytest.fixture(scope='module')
def scaled_gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('autoscale')
    endpoints = tmp / 'endpoints'
    endpoints.mkdir()
    write_endpoint(endpoints, 'v1')
    entry = {'NR_WORKERS': 1, 'PAUSE': 0.2, 'REPLICAS': 1, 'MIN_REPLICAS': 1, 'MAX_REPLICAS': 2,
             'TARGET_IN_FLIGHT': 1, 'UPSCALE_DELAY': 1, 'DOWNSCALE_DELAY': 2, 'DEVICES': ['cuda:1', 3]}
    with Processes() as group:
        gw = start_gateway(group, tmp, config={'NO_STARTUP_WAIT': True,
                                               'CONFIG_ENDPOINTS': {'versioned': entry}}, endpoints=endpoints)
        gw.wait_online('versioned', timeout=30)
        yield gw


def child_environment(gateway):
    """{pid: (CUDA_VISIBLE_DEVICES, BIS_DEVICE)} of the gateway's model-server processes."""
    found = {}
    for child in gateway.children():
        env = child.environ()
        found[child.pid] = (env.get('CUDA_VISIBLE_DEVICES'), env.get('BIS_DEVICE'))
    return found


def test_a_burst_adds_a_replica_and_idle_removes_it_each_on_its_device(scaled_gateway):
    gw = scaled_gateway
    first = gw.server('versioned')
    assert first['REPLICAS_TARGET'] == 1 and first['MAX_REPLICAS'] == 2
    assert child_environment(gw) == {first['PID']: ('1', 'cuda:0')}
    assert gw.run('versioned', VALUE=1).json()['predict_result']['DEVICE'] == 'cuda:0'
    clients = [Stream(gw) for _ in range(4)]  # 4 in flight on one replica, the target is 1
    for client in clients:
        client.start()
    try:
        grown = wait_until(lambda: gw.server('versioned'), lambda s: s['REPLICAS_CURRENT'] == 2, timeout=30,
                           what='a second replica online')
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(15)
    assert all(c.failures() == [] for c in clients), [c.failures()[:3] for c in clients]
    second = [r for r in grown['REPLICAS'] if r['PID'] != first['PID']][0]
    assert child_environment(gw)[second['PID']] == ('3', 'cuda:0')
    metrics = gw.get('/metrics').text
    assert 'bis_autoscale_decisions_total{direction="up",endpoint="versioned"} 1.0' in metrics
    shrunk = wait_until(lambda: gw.server('versioned'), lambda s: s['REPLICAS_TARGET'] == 1, timeout=30,
                        what='back to one replica once idle')
    wait_until(lambda: set(child_environment(gw)), lambda pids: pids == {shrunk['PID']}, timeout=15,
               what='the removed replica stopped')
    assert 'autoscaling versioned: down to 1 replicas' in '\n'.join(gw.proc.stdout_lines)


# -- bis-gateway --reload ----------------------------------------------------------------------------
def test_reload_flag_watches_the_endpoint_files_and_the_config(tmp_path):
    endpoints = tmp_path / 'endpoints'
    endpoints.mkdir()
    write_endpoint(endpoints, 'v1')
    config = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {'versioned': {'NR_WORKERS': 1}}}
    with Processes() as group:
        gw = start_gateway(group, tmp_path, config=config, endpoints=endpoints, use_twistd=False,
                           extra_args=['--reload'])
        gw.wait_online('versioned', timeout=30)
        assert gw.run('versioned', VALUE=1).json()['predict_result']['VERSION'] == 'v1'
        since = len(gw.proc.stdout_lines)
        write_endpoint(endpoints, 'v2')
        gw.proc.wait_for_line(r'--reload: server versioned reloaded', timeout=30, since=since)
        assert gw.run('versioned', VALUE=2).json()['predict_result']['VERSION'] == 'v2'
        since = len(gw.proc.stdout_lines)
        write_endpoint(endpoints, 'v3', load="raise ValueError('no such checkpoint')")
        gw.proc.wait_for_line(r'--reload: server versioned not reloaded: .*no such checkpoint', timeout=30,
                              since=since)
        assert gw.run('versioned', VALUE=3).json()['predict_result']['VERSION'] == 'v2'
        since = len(gw.proc.stdout_lines)
        write_config(tmp_path / 'config_gateway.txt', {'versioned': {'NR_WORKERS': 1, 'GREETING': 'hey'}})
        write_endpoint(endpoints, 'v4')
        gw.proc.wait_for_line(r'--reload: config reloaded', timeout=30, since=since)
        answer = wait_until(lambda: gw.run('versioned', VALUE=4).json()['predict_result'],
                            lambda r: r['VERSION'] == 'v4', timeout=30, what='v4 served')
        assert answer['GREETING'] == 'hey'


def test_a_lone_server_reloaded_under_a_stream_fails_nothing(config_gateway):
    gw = config_gateway
    text = (gw.tmp / 'endpoints' / 'gamma.py').read_text()
    (gw.tmp / 'endpoints' / 'gamma.py').write_text(text.replace("'gamma-v1'", "'gamma-v2'"))
    old = pids(gw, 'gamma')
    clients = [Stream(gw, signature='gamma') for _ in range(2)]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: min(len(c.results) for c in clients), lambda n: n >= 10, timeout=15,
                   what='10 answers per client before the reload')
        answer = gw.post('/reload_server', {'SIGNATURE': 'gamma'}, timeout=60)
        replied_at = time.monotonic()
        counts = [len(c.results) for c in clients]
        wait_until(lambda: [len(c.results) - n for c, n in zip(clients, counts)], lambda ns: min(ns) >= 10,
                   timeout=20, what='10 answers per client after the reload')
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(15)
    assert answer.status == 200, answer
    for client in clients:
        assert client.failures() == [], client.failures()[:5]
        after = client.versions_sent_after(replied_at)
        assert client.versions()[0] == 'gamma-v1' and after and set(after) == {'gamma-v2'}, after
    assert pids(gw, 'gamma') != old


def test_reload_config_reads_the_api_keys_file_again(tmp_path):
    from bis_twisted.gateway.apikeys import add_key

    endpoints = tmp_path / 'endpoints'
    endpoints.mkdir()
    write_endpoint(endpoints, 'v1')
    keys_file = str(tmp_path / 'api_keys.json')
    old_key = add_key(keys_file, 'team-a')
    config = {'NO_STARTUP_WAIT': True, 'API_KEYS': 'api_keys.json',
              'CONFIG_ENDPOINTS': {'versioned': {'NR_WORKERS': 1}}}
    with Processes() as group:
        gw = start_gateway(group, tmp_path, config=config, endpoints=endpoints)
        gw.wait_online('versioned', timeout=30)

        def run_with(key):
            return gw.post('/run', {'SIGNATURE': 'versioned', 'VALUE': 1}, headers={'X-API-Key': key})

        assert run_with(old_key).status == 200
        new_key = add_key(keys_file, 'team-a-2')
        assert run_with(new_key).status == 401  # not read yet
        with open(keys_file) as fh:
            data = json.load(fh)
        del data['team-a']
        with open(keys_file, 'w') as fh:
            json.dump(data, fh)
        answer = gw.post('/reload_config', {})
        assert answer.status == 200, answer
        assert run_with(new_key).status == 200 and run_with(old_key).status == 401
        with open(keys_file, 'w') as fh:
            fh.write('{"team-b": 3}')
        answer = gw.post('/reload_config', {})
        assert answer.status == 400 and 'api_keys.json' in answer.json()['ERROR'], answer
        assert run_with(new_key).status == 200  # nothing changed
