"""End-to-end: operating the real gateway (``twistd -n -y bis.tac``): /system_status, support
processes, hung-child replacement, the admin routes with and without ``BIS_ADMIN_TOKEN``,
/shutdown, the start/stop history across restarts, and /notifications.

Each test starts its own small gateway (one model server with one worker, plus what the test
needs) on free loopback ports; the ``processes`` fixture kills every process it started.
"""

import json
import os
import re
import signal
import sys
import time

import psutil
import pytest

from gateway_process import start_gateway
from procs import REPO_ROOT, http, process_gone, wait_until

pytestmark = pytest.mark.timeout(30)

DEMO = 'dummy_model_demo2'
DEMO_BIS = 'dummy_model_demo2-bis'
SUPPORT = 'support_process'
SERVER_NAME = 'ops_e2e_server'
TOKEN = 'tok-7f3a9c-admin-secret-e2e'
WRONG_TOKEN = 'wrong-91b2-not-the-secret'
HISTORY_FILE = 'gw_state_history.json'

STATUS_KEYS = {'info', 'mem_avail', 'mem_gateway', 'mem_servers', 'mem_sys', 'mem_total', 'mem_used',
               'disk_avail', 'disk_total', 'server_name', 'system', 'py', 'monitored_packages',
               'system_support_services'}
HISTORY_KEYS = {'CURRENT_STARTUP', 'PREVIOUS_STARTUP', 'LAST_SHUTDOWN', 'LAST_RUNTIME_HOURS'}
WALL_TIME = re.compile(r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$')
DURATION = re.compile(r'^\d+:\d\d:\d\d$')


def small_config(support=None, disabled_twin=False, **demo):
    """demo2 with one worker (the gateway serves once it is ready), and optionally a support
    process entry and a disabled second server of the same class."""
    endpoints = {DEMO: dict({'NR_WORKERS': 1, 'HOST': '127.0.0.1', 'WEIGHT': 2, 'BIAS': 1,
                             'DESCRIPTION': 'demo2 for operations tests'}, **demo)}
    if disabled_twin:
        endpoints[DEMO_BIS] = {'SERVER_CLASS': DEMO, 'NR_WORKERS': 1, 'HOST': '127.0.0.1',
                               'WEIGHT': 2, 'BIAS': 1, 'DISABLED': True}
    if support is not None:
        endpoints[SUPPORT] = dict({'HOST': 'NO_HOST', 'DESCRIPTION': 'support for operations tests'}, **support)
    return {'DEFAULT_SERVER': DEMO, 'NO_STARTUP_WAIT': False, 'SERVER_NAME': SERVER_NAME,
            'CONFIG_ENDPOINTS': endpoints}


def servers(gateway):
    """Every configured server in /list_servers, started or stopped."""
    listed = gateway.get('/list_servers').json()
    return dict(listed['AVAIL_SERVERS'], **listed['STOPPED_SERVERS'])


def sections(gateway):
    """``(AVAIL_SERVERS names, STOPPED_SERVERS names)`` of /list_servers."""
    listed = gateway.get('/list_servers').json()
    return list(listed['AVAIL_SERVERS']), list(listed['STOPPED_SERVERS'])


def assert_runs(gateway, name=DEMO, value=3):
    answer = gateway.run(name, INPUT_VALUE=value)
    assert answer.status == 200, answer
    assert answer.json()['predict_result'] == {
        'dummy_model_predict': '{}*2 + 1 = {} PREDICTED'.format(value, value * 2 + 1)}
    return answer


def wait_gone(pid, what):
    wait_until(lambda: process_gone(pid), what='{} (pid {}) gone'.format(what, pid), timeout=10)


def assert_stays(probe, check, seconds, what):
    """Poll ``probe`` for ``seconds`` and fail at the first result ``check`` rejects: an
    absence (a stopped server that must not come back) is observed over a bounded window."""
    deadline = time.monotonic() + seconds
    polls = 0
    while time.monotonic() < deadline or polls < 2:
        result = probe()
        polls += 1
        assert check(result), '{} no longer holds after {} polls: {!r}'.format(what, polls, result)
        time.sleep(0.1)  # poll interval of a bounded negative check, not a wait for an event


def bearer(token):
    return {'Authorization': 'Bearer ' + token}


def gateway_log(tmp_path, cache=None):
    path = os.path.join(str(cache or tmp_path / '_cache'), '_logs', 'gateway.log')
    with open(path, encoding='utf-8', errors='replace') as fh:
        return fh.read()


# -- 1. /system_status ----------------------------------------------------------------------------
def test_system_status_has_every_documented_key_with_measured_values(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, config=small_config())
    pid = servers(gateway)[DEMO]['PID']

    for method in ('GET', 'POST'):
        answer = http(method, gateway.url('/system_status'), body={} if method == 'POST' else None)
        assert answer.status == 200, answer
        body = answer.json()
        status = body['SYSTEM_STATUS']
        assert STATUS_KEYS <= set(status), 'missing: {}'.format(STATUS_KEYS - set(status))
        assert status['server_name'] == SERVER_NAME
        assert set(status['mem_servers']) == {DEMO}
        assert status['mem_servers'][DEMO] > 0, status['mem_servers']  # pid {pid} is running
        assert status['mem_gateway'] > 0 and status['mem_total'] > 0 and status['disk_total'] > 0
        assert 0 < status['mem_avail'] <= status['mem_total']
        assert 0 < status['mem_used'] <= status['mem_total']
        assert status['mem_used'] >= status['mem_servers'][DEMO]
        assert 0 <= status['disk_avail'] <= status['disk_total']
        assert isinstance(status['info'], str) and isinstance(status['system'], str)
        assert status['py'] == '{}.{}.{}'.format(*sys.version_info[:3])
        assert isinstance(status['monitored_packages'], dict) and 'twisted' in status['monitored_packages']
        assert status['system_support_services'] == {}
        assert isinstance(body['SYSTEM_ALERTS'], dict)
        history = body['SYSTEM_HISTORY']
        assert set(history) == HISTORY_KEYS
        assert WALL_TIME.match(history['CURRENT_STARTUP']), history
        assert history['PREVIOUS_STARTUP'] is None and history['LAST_SHUTDOWN'] is None  # a new cache
    assert psutil.Process(pid).is_running()


# -- 2. the README's support process ----------------------------------------------------------------
def test_readme_support_process_reports_through_the_gateway(processes, tmp_path):
    with open(os.path.join(REPO_ROOT, 'endpoints', 'support_process.py'), encoding='utf-8') as fh:
        assert 'class ServerMonitor' in fh.read()  # the README's file, not a test double
    gateway = start_gateway(processes, tmp_path, config=small_config(support={'PING_INTERVAL': 0.5}))

    def reported():
        return gateway.get('/system_status').json()['SYSTEM_STATUS']['system_support_services']

    services = wait_until(reported, lambda s: {'msg', 'total_memory'} <= set(s.get(SUPPORT, {})),
                          timeout=10, what='support_process data in system_support_services')
    data = services[SUPPORT]
    assert data['msg'].startswith('Total Mem: ')
    assert data['total_memory'] > 0 and 'available_disk' in data and 'time' in data
    assert 'SIGNATURE' not in data
    # the support entry is not a model server
    assert list(servers(gateway)) == [DEMO]
    assert_runs(gateway)


# -- 3. a hung (SIGSTOP-ed) child is replaced by the support loop -------------------------------------
def test_sigstopped_child_is_replaced_after_missed_health_checks_with_no_support_entry(processes, tmp_path):
    # hang detection is always on: no support entry in this config
    gateway = start_gateway(processes, tmp_path, config=small_config(HEALTH_INTERVAL=0.5))
    assert_runs(gateway)
    before = servers(gateway)[DEMO]
    stopped = psutil.Process(before['PID'])  # psutil checks identity: never kills a reused pid
    try:
        stopped.send_signal(signal.SIGSTOP)
        after = wait_until(lambda: servers(gateway)[DEMO],
                           lambda s: s['PID'] not in (None, before['PID']) and s['ONLINE'],
                           timeout=15, what='{} replaced by a new, online process'.format(DEMO))
        assert_runs(gateway, value=5)
        assert 'did not answer 3 health checks in a row' in after['ERROR'], after
        assert after['RESTARTS'] == before['RESTARTS'] + 1
        wait_gone(before['PID'], 'the stopped child')
    finally:
        try:
            if stopped.is_running() and stopped.status() != psutil.STATUS_ZOMBIE:
                stopped.kill()
        except psutil.NoSuchProcess:
            pass


# -- 4. admin routes -------------------------------------------------------------------------------
def test_kill_server_stops_it_for_good_until_start_server(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, config=small_config(HEALTH_INTERVAL=0.5))
    before = servers(gateway)[DEMO]

    killed = gateway.post('/kill_server', {'SIGNATURE': DEMO})
    assert killed.status == 200, killed
    assert killed.json()['KILLED'] == [DEMO]
    wait_gone(before['PID'], 'the killed server')

    refused = gateway.run(DEMO, INPUT_VALUE=1)
    assert refused.status == 503, refused
    # stopped by an operator: retrying will not help, so no Retry-After; it says what will
    assert 'Retry-After' not in refused.headers
    assert '/start_server' in refused.json()['ERROR']
    for route, body in (('/notifications', {'SIGNATURE': DEMO}),
                        ('/update_workers', {'SIGNATURE': DEMO, 'NR_WORKERS': 2})):
        down = gateway.post(route, body)
        assert down.status == 503 and 'Retry-After' not in down.headers, (route, down)
        assert '/start_server' in down.json()['ERROR'], (route, down)
    assert gateway.post('/kill_server', {'SIGNATURE': DEMO}).status == 200  # stopping twice is fine

    # neither the supervisor (restart delay 0.2 s) nor the health loop (every 0.5 s)
    # brings it back
    assert_stays(lambda: servers(gateway)[DEMO],
                 lambda s: s['STATE'] == 'stopped' and s['PID'] is None and not s['ONLINE'],
                 2.0, '{} stopped'.format(DEMO))
    assert servers(gateway)[DEMO]['RESTARTS'] == before['RESTARTS']
    # the original's AVAIL_SERVERS are the started servers: a killed one is listed apart
    assert sections(gateway) == ([], [DEMO])

    started = gateway.post('/start_server', {'SIGNATURE': DEMO})
    assert started.status == 200, started
    now = gateway.wait_online(DEMO, timeout=10)
    assert now['PID'] != before['PID'] and now['STATE'] == 'online'
    assert_runs(gateway)
    again = gateway.post('/start_server', {'SIGNATURE': DEMO})
    assert again.status == 200 and 'already running' in again.json()['MESSAGE']
    assert servers(gateway)[DEMO]['PID'] == now['PID']
    assert sections(gateway) == ([DEMO], [])


def test_start_server_starts_a_disabled_one_and_kill_star_stops_all(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, config=small_config(disabled_twin=True))
    assert servers(gateway)[DEMO_BIS]['STATE'] == 'stopped'
    assert sections(gateway) == ([DEMO], [DEMO_BIS])
    assert gateway.run(DEMO_BIS, INPUT_VALUE=1).status == 503

    started = gateway.post('/start_server', {'SIGNATURE': DEMO_BIS})
    assert started.status == 200, started
    gateway.wait_online(DEMO_BIS, timeout=10)
    assert_runs(gateway, DEMO_BIS, value=4)
    assert sections(gateway) == ([DEMO, DEMO_BIS], [])

    pids = [s['PID'] for s in servers(gateway).values()]
    assert None not in pids and len(set(pids)) == 2
    killed = gateway.post('/kill_server', {'SIGNATURE': '*'})
    assert killed.status == 200, killed
    assert sorted(killed.json()['KILLED']) == sorted([DEMO, DEMO_BIS])
    for pid in pids:
        wait_gone(pid, 'a server killed by "*"')
    for name, server in servers(gateway).items():
        assert server['STATE'] == 'stopped' and server['ONLINE'] is False, (name, server)
        assert gateway.run(name, INPUT_VALUE=1).status == 503
    assert sections(gateway) == ([], [DEMO, DEMO_BIS])
    assert gateway.get('/health').status == 200


def test_update_workers_resizes_and_bad_input_is_refused(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, config=small_config())
    assert servers(gateway)[DEMO]['NR_WORKERS'] == 1

    grown = gateway.post('/update_workers', {'SIGNATURE': DEMO, 'NR_WORKERS': 3})
    assert grown.status == 200, grown
    assert grown.json()['NR_WORKERS'] == 3
    assert servers(gateway)[DEMO]['NR_WORKERS'] == 3
    assert_runs(gateway)

    for bad in ('x', 0, -1, 1.5, True, None):
        answer = gateway.post('/update_workers', {'SIGNATURE': DEMO, 'NR_WORKERS': bad})
        assert answer.status == 400, (bad, answer)
        assert 'NR_WORKERS' in answer.json()['ERROR']
    assert gateway.post('/update_workers', {'SIGNATURE': DEMO}).status == 400
    assert servers(gateway)[DEMO]['NR_WORKERS'] == 3

    for route, body in (('/update_workers', {'SIGNATURE': 'nope', 'NR_WORKERS': 2}),
                        ('/kill_server', {'SIGNATURE': 'nope'}),
                        ('/start_server', {'SIGNATURE': 'nope'}),
                        ('/notifications', {'SIGNATURE': 'nope'})):
        answer = gateway.post(route, body)
        assert answer.status == 404, (route, answer)
        assert "unknown SIGNATURE 'nope'" in answer.json()['ERROR'] and DEMO in answer.json()['ERROR']

    # the new size is kept when the server is started again
    pid = servers(gateway)[DEMO]['PID']
    assert gateway.post('/kill_server', {'SIGNATURE': DEMO}).status == 200
    wait_gone(pid, 'the killed server')
    assert gateway.post('/start_server', {'SIGNATURE': DEMO}).status == 200
    assert gateway.wait_online(DEMO, timeout=10)['NR_WORKERS'] == 3


def test_admin_token_is_required_refusals_change_nothing_and_it_is_never_logged(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, config=small_config(), env={'BIS_ADMIN_TOKEN': TOKEN})
    pid = servers(gateway)[DEMO]['PID']

    for route in ('/kill_server', '/start_server', '/update_workers', '/shutdown'):
        missing = gateway.post(route, {'SIGNATURE': DEMO})
        assert missing.status == 401, (route, missing)
        assert missing.headers.get('WWW-Authenticate', '').startswith('Bearer')
        assert 'Bearer' in missing.json()['ERROR']
        wrong = gateway.post(route, {'SIGNATURE': DEMO}, headers=bearer(WRONG_TOKEN))
        assert wrong.status == 403, (route, wrong)
        assert 'wrong' in wrong.json()['ERROR']
    not_bearer = gateway.post('/kill_server', {'SIGNATURE': DEMO}, headers={'Authorization': 'Basic ' + TOKEN})
    assert not_bearer.status == 401, not_bearer

    # nothing changed: same process, still serving, gateway still up
    assert servers(gateway)[DEMO]['PID'] == pid
    assert_runs(gateway)
    assert gateway.get('/health').status == 200

    resized = gateway.post('/update_workers', {'SIGNATURE': DEMO, 'NR_WORKERS': 2}, headers=bearer(TOKEN))
    assert resized.status == 200, resized
    killed = gateway.post('/kill_server', {'SIGNATURE': DEMO}, headers=bearer(TOKEN))
    assert killed.status == 200, killed
    wait_gone(pid, 'the server killed with the right token')
    started = gateway.post('/start_server', {'SIGNATURE': DEMO}, headers=bearer(TOKEN))
    assert started.status == 200, started
    gateway.wait_online(DEMO, timeout=10)

    # the refusals were logged, without either token
    gateway.proc.wait_for_line(r'admin route /shutdown refused', timeout=5)
    log_text = gateway_log(tmp_path)
    assert 'admin route /kill_server refused' in log_text
    printed = '\n'.join(gateway.proc.stdout_lines + gateway.proc.stderr_lines)
    for secret in (TOKEN, WRONG_TOKEN):
        assert secret not in log_text
        assert secret not in printed


# -- 5. /shutdown ----------------------------------------------------------------------------------
def test_shutdown_answers_then_gateway_exits_and_leaves_no_child(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, config=small_config(support={'PING_INTERVAL': 0.5}))
    children = [c.pid for c in gateway.children()]
    assert servers(gateway)[DEMO]['PID'] in children

    refused = gateway.post('/shutdown', {'SIGNATURE': 'please'})
    assert refused.status == 400, refused
    assert 'SAFE_KILL_SERVER_CMD' in refused.json()['ERROR']
    empty = gateway.post('/shutdown', {})
    assert empty.status == 400
    assert empty.json()['ERROR'] == ('to shut the gateway down the body must be '
                                     '{"SIGNATURE": "SAFE_KILL_SERVER_CMD"}, got no SIGNATURE')
    assert gateway.proc.returncode is None
    assert gateway.get('/health').status == 200
    assert_runs(gateway)

    answer = gateway.post('/shutdown', {'SIGNATURE': 'SAFE_KILL_SERVER_CMD'})
    assert answer.status == 200, answer
    assert 'shutting down' in answer.json()['MESSAGE']
    assert gateway.proc.wait_exit(timeout=15) == 0, gateway.proc.describe()
    for pid in children:
        wait_gone(pid, 'child of the shut-down gateway')
    with pytest.raises(OSError):
        gateway.get('/health', timeout=2)


# -- 6. the start/stop history ---------------------------------------------------------------------
def test_history_survives_a_restart_with_the_same_cache(processes, tmp_path):
    cache = tmp_path / 'shared_cache'
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    first = start_gateway(processes, tmp_path / 'a', config=small_config(), env={'BIS_CACHE': str(cache)})
    first_history = first.get('/system_status').json()['SYSTEM_HISTORY']
    assert first_history['PREVIOUS_STARTUP'] is None
    assert first.post('/shutdown', {'SIGNATURE': 'SAFE_KILL_SERVER_CMD'}).status == 200
    assert first.proc.wait_exit(timeout=15) == 0, first.proc.describe()
    saved = json.loads((cache / '_data' / HISTORY_FILE).read_text())
    assert saved['CURRENT_STARTUP'] == first_history['CURRENT_STARTUP'] and saved['LAST_SHUTDOWN']

    second = start_gateway(processes, tmp_path / 'b', config=small_config(), env={'BIS_CACHE': str(cache)})
    history = second.get('/system_status').json()['SYSTEM_HISTORY']
    assert history['PREVIOUS_STARTUP'] == first_history['CURRENT_STARTUP']
    assert WALL_TIME.match(history['LAST_SHUTDOWN']), history
    assert first_history['CURRENT_STARTUP'] <= history['LAST_SHUTDOWN'] <= history['CURRENT_STARTUP']
    assert DURATION.match(history['LAST_RUNTIME_HOURS']), history
    assert_runs(second)


def test_truncated_history_file_is_replaced_with_a_warning_naming_it(processes, tmp_path):
    cache = tmp_path / '_cache'
    history_path = cache / '_data' / HISTORY_FILE
    history_path.parent.mkdir(parents=True)
    history_path.write_text('{"CURRENT_STA')

    gateway = start_gateway(processes, tmp_path, config=small_config())
    assert_runs(gateway)
    history = gateway.get('/system_status').json()['SYSTEM_HISTORY']
    assert history['PREVIOUS_STARTUP'] is None and WALL_TIME.match(history['CURRENT_STARTUP'])
    warning = r'gateway history .*{}.* is unreadable'.format(re.escape(HISTORY_FILE))
    assert gateway.proc.wait_for_line(warning, timeout=5)
    assert re.search(warning, gateway_log(tmp_path)), 'no warning naming the file in gateway.log'
    # the next save replaced it with a readable history
    assert json.loads(history_path.read_text())['CURRENT_STARTUP'] == history['CURRENT_STARTUP']


# -- 7. /notifications -----------------------------------------------------------------------------
def test_notifications_show_the_run_under_its_call_id(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, config=small_config())
    run = assert_runs(gateway, value=7).json()
    call_id = str(run['call_id'])

    for method in ('POST', 'GET'):
        if method == 'POST':
            answer = gateway.post('/notifications', {'SIGNATURE': DEMO})
        else:
            answer = gateway.get('/notifications?SIGNATURE=' + DEMO)
        assert answer.status == 200, answer
        notifications = answer.json()
        assert 'GENERAL' in notifications
        assert call_id in notifications, notifications
        items = notifications[call_id]
        assert any('Predicting on usr_input: 7' in item['NOTIF'] for item in items), items
        for item in items:
            assert {'NOTIFICATION_TYPE', 'MODULE', 'time', 'NOTIF'} <= set(item)
        assert items[0]['NOTIFICATION_TYPE'] == 'LOG' and items[0]['MODULE'] == 'DummyModelDemo2Worker'
