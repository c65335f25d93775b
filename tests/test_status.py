"""status.py: real psutil numbers, the alert thresholds, and the start/stop history file."""

import json
import os
import subprocess
import sys
import time

import psutil
import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from bis_twisted.gateway import status
from bis_twisted.gateway.status import StateHistory, system_alerts, system_status


def wall(seconds):
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(seconds))


@pytest.fixture
def sleeper():
    """A real child process holding ~50 MB (well above the 0.01 GB rounding), killed at
    teardown whatever happens. It says 'ready' once the memory is touched."""
    code = ("import sys, time; held = b'x' * 50_000_000; print('ready', flush=True); "
            "time.sleep(30)")
    child = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE)
    assert child.stdout.readline() == b'ready\n'
    yield child
    child.kill()
    child.wait(timeout=10)
    child.stdout.close()


@pytest.fixture
def vanished_pid():
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait(timeout=10)
    assert not psutil.pid_exists(child.pid)  # reaped; Linux does not reuse a pid this soon
    return child.pid


def warnings_text(events):
    return [formatEvent(e) for e in events if e.get('log_level') is not None
            and e['log_level'].name in ('warn', 'error')]


def test_status_reports_plausible_memory_and_disk(tmp_path):
    report = system_status(os.getpid(), {}, 'base_server', {}, str(tmp_path))
    assert report['info'] == status.INFO
    assert report['mem_total'] > 0
    assert 0 <= report['mem_avail'] <= report['mem_total']
    assert report['mem_gateway'] > 0  # this test process is the "gateway"
    assert report['mem_used'] == pytest.approx(report['mem_gateway'], abs=0.011)
    assert report['mem_sys'] >= 0
    assert 0 < report['disk_avail'] <= report['disk_total']
    for key in ('mem_avail', 'mem_gateway', 'mem_sys', 'mem_total', 'mem_used', 'disk_total'):
        assert round(report[key], 2) == report[key]


def test_status_carries_identity_versions_and_support_data(tmp_path, monkeypatch):
    monkeypatch.setenv('AID_APP_DOCKER', 'Yes')
    monkeypatch.setenv('AID_APP_ID', 'BaseAidApp')
    support = {'support_process': {'msg': 'Total Mem: 1.0GB'}}
    report = system_status(os.getpid(), {}, 'base_server', support, str(tmp_path / 'not_yet'))
    assert report['server_name'] == 'base_server'
    assert report['system_support_services'] == support
    assert report['docker'] is True
    assert report['app_id'] == 'BaseAidApp'
    assert report['py'] == sys.version.split(' ')[0]
    assert report['system']
    packages = report['monitored_packages']
    assert {'twisted', 'klein', 'treq', 'psutil', 'bis_twisted'} <= set(packages)
    json.dumps(report)  # the route sends it as it is


def test_status_outside_docker_uses_bare_metal_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv('AID_APP_DOCKER', raising=False)
    monkeypatch.delenv('AID_APP_ID', raising=False)
    report = system_status(os.getpid(), {}, None, {}, str(tmp_path))
    assert report['docker'] is False
    assert report['app_id'] == 'aid_app_bare_metal'


def test_missing_packages_are_skipped():
    assert status.monitored_packages(('twisted', 'no-such-package-bis')) == {
        'twisted': status.monitored_packages(('twisted',))['twisted']}


def test_a_running_server_process_counts_its_memory(sleeper, tmp_path):
    report = system_status(os.getpid(), {'demo': [sleeper.pid], 'solo': sleeper.pid},
                           'base_server', {}, str(tmp_path))
    # "solo" names the same process as "demo": it is counted once, under the first name
    assert report['mem_servers']['demo'] >= 0.04
    assert report['mem_servers']['solo'] == 0
    assert report['mem_used'] >= report['mem_servers']['demo']


def test_a_server_counts_its_children_and_the_gateway_does_not_count_them_again(sleeper,
                                                                                  tmp_path):
    # this test process plays a server whose worker child is the sleeper
    report = system_status(os.getpid(), {'tree': os.getpid()}, 'base_server', {}, str(tmp_path))
    own = psutil.Process().memory_info().rss / 1024 ** 3
    assert report['mem_servers']['tree'] >= round(own + 0.04, 2) - 0.01
    assert report['mem_gateway'] == 0


def test_a_vanished_or_stopped_server_counts_zero(vanished_pid, tmp_path):
    report = system_status(os.getpid(), {'gone': [vanished_pid], 'stopped': None},
                           'base_server', {}, str(tmp_path))
    assert report['mem_servers'] == {'gone': 0, 'stopped': 0}


def test_a_vanished_gateway_pid_counts_zero(vanished_pid, tmp_path):
    assert system_status(vanished_pid, {}, 'x', {}, str(tmp_path))['mem_gateway'] == 0


def test_no_alerts_when_memory_and_disk_are_plentiful():
    assert system_alerts({'mem_avail': 4.0, 'mem_total': 16.0,
                          'disk_avail': 20.0, 'disk_total': 100.0}) == {}


def test_low_memory_alert_under_15_percent():
    alerts = system_alerts({'mem_avail': 2.0, 'mem_total': 16.0,
                            'disk_avail': 50.0, 'disk_total': 100.0})
    assert set(alerts) == {'LOW_MEMORY'}
    assert '2.00' in alerts['LOW_MEMORY'] and '16.00' in alerts['LOW_MEMORY']
    assert '15 %' in alerts['LOW_MEMORY']


def test_low_disk_alert_under_10_percent():
    alerts = system_alerts({'mem_avail': 8.0, 'mem_total': 16.0,
                            'disk_avail': 9.5, 'disk_total': 100.0})
    assert set(alerts) == {'LOW_DISK'}
    assert '9.50' in alerts['LOW_DISK'] and '10 %' in alerts['LOW_DISK']


def test_alerts_ignore_missing_or_zero_totals():
    assert system_alerts({'mem_avail': 0, 'mem_total': 0}) == {}


def test_alerts_on_a_real_status_are_a_dict(tmp_path):
    assert isinstance(system_alerts(system_status(None, {}, 'x', {}, str(tmp_path))), dict)


def history_path(tmp_path):
    return str(tmp_path / '_cache' / '_data' / 'gw_state_history.json')


def test_startup_shutdown_startup_keeps_previous_start_and_runtime(tmp_path):
    clock = Clock()
    clock.advance(1_700_000_000)
    path = history_path(tmp_path)

    first = StateHistory(path, clock=clock)
    assert first.startup() == {'CURRENT_STARTUP': wall(1_700_000_000), 'PREVIOUS_STARTUP': None,
                               'LAST_SHUTDOWN': None, 'LAST_RUNTIME_HOURS': None}
    clock.advance(2 * 3600 + 3 * 60 + 4)
    first.shutdown()

    clock.advance(60)
    second = StateHistory(path, clock=clock)
    snapshot = second.startup()
    assert snapshot == {
        'CURRENT_STARTUP': wall(1_700_000_000 + 7384 + 60),
        'PREVIOUS_STARTUP': wall(1_700_000_000),
        'LAST_SHUTDOWN': wall(1_700_000_000 + 7384),
        'LAST_RUNTIME_HOURS': '2:03:04',
    }
    with open(path) as stream:
        assert json.load(stream) == snapshot


def test_runtime_past_a_day_keeps_counting_hours(tmp_path):
    clock = Clock()
    history = StateHistory(history_path(tmp_path), clock=clock)
    history.startup()
    clock.advance(26 * 3600 + 5)
    assert history.shutdown()['LAST_RUNTIME_HOURS'] == '26:00:05'


def test_continues_a_file_the_original_project_wrote(tmp_path):
    path = history_path(tmp_path)
    os.makedirs(os.path.dirname(path))
    with open(path, 'w') as stream:
        stream.write('{\n  "CURRENT_STARTUP": "2023-12-15 23:54:15",\n'
                     '  "LAST_RUNTIME_HOURS": "0:01:23",\n'
                     '  "LAST_SHUTDOWN": "2023-12-15 23:55:38",\n'
                     '  "PREVIOUS_STARTUP": "2023-12-15 23:30:24"\n}')
    clock = Clock()
    clock.advance(1_702_800_000)
    snapshot = StateHistory(path, clock=clock).startup()
    assert snapshot['PREVIOUS_STARTUP'] == '2023-12-15 23:54:15'
    assert snapshot['LAST_SHUTDOWN'] == '2023-12-15 23:55:38'
    assert snapshot['LAST_RUNTIME_HOURS'] == '0:01:23'
    assert snapshot['CURRENT_STARTUP'] == wall(1_702_800_000)


def test_shutdown_without_startup_continues_the_saved_history(tmp_path):
    path = history_path(tmp_path)
    clock = Clock()
    clock.advance(1_700_000_000)
    StateHistory(path, clock=clock).startup()
    clock.advance(90)
    snapshot = StateHistory(path, clock=clock).shutdown()
    assert snapshot['CURRENT_STARTUP'] == wall(1_700_000_000)
    assert snapshot['LAST_RUNTIME_HOURS'] == '0:01:30'


@pytest.mark.parametrize('content', [
    b'{"CURRENT_STARTUP": "2023-12-15 23:5',   # truncated by a crash mid-write
    b'["not", "an", "object"]',
    b'\xff\xfe garbage',
    b'',
])
def test_unreadable_file_warns_and_starts_a_fresh_history(tmp_path, log_events, content):
    path = history_path(tmp_path)
    os.makedirs(os.path.dirname(path))
    with open(path, 'wb') as stream:
        stream.write(content)
    clock = Clock()
    snapshot = StateHistory(path, clock=clock).startup()
    assert snapshot['PREVIOUS_STARTUP'] is None
    assert snapshot['CURRENT_STARTUP'] == wall(0)
    warnings = warnings_text(log_events)
    assert any(path in text and 'unreadable' in text for text in warnings), warnings
    with open(path) as stream:
        assert json.load(stream) == snapshot  # replaced by a good file


def test_wrong_typed_values_are_dropped_with_a_warning(tmp_path, log_events):
    path = history_path(tmp_path)
    os.makedirs(os.path.dirname(path))
    with open(path, 'w') as stream:
        json.dump({'CURRENT_STARTUP': 12345, 'LAST_SHUTDOWN': '2023-12-15 23:55:38'}, stream)
    snapshot = StateHistory(path, clock=Clock()).startup()
    assert snapshot['PREVIOUS_STARTUP'] is None
    assert snapshot['LAST_SHUTDOWN'] == '2023-12-15 23:55:38'
    assert any('CURRENT_STARTUP' in text for text in warnings_text(log_events))


def test_a_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch, log_events):
    path = history_path(tmp_path)
    clock = Clock()
    history = StateHistory(path, clock=clock)
    history.startup()
    with open(path, 'rb') as stream:
        before = stream.read()

    def failing_replace(src, dst):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(status.os, 'replace', failing_replace)
    clock.advance(10)
    snapshot = history.shutdown()  # logged, not raised
    monkeypatch.undo()

    assert snapshot['LAST_RUNTIME_HOURS'] == '0:00:10'  # kept in memory
    with open(path, 'rb') as stream:
        assert stream.read() == before
    assert os.listdir(os.path.dirname(path)) == ['gw_state_history.json']  # no temp file left
    assert any('could not save' in text and path in text for text in warnings_text(log_events))


def test_the_data_folder_is_created(tmp_path):
    path = str(tmp_path / 'fresh_cache' / '_data' / 'gw_state_history.json')
    StateHistory(path, clock=Clock()).startup()
    assert os.path.isfile(path)


def test_in_cache_uses_the_usual_path(tmp_path):
    history = StateHistory.in_cache(str(tmp_path / '_cache'), clock=Clock())
    assert history.path == history_path(tmp_path)
