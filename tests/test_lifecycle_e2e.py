"""End-to-end: a gateway's life as a process manager sees it. A port it cannot listen on and a
cache folder another gateway holds make it exit 2 at once with one line and no child; SIGTERM
stops a healthy one with exit 0, every child gone, and nothing logged above INFO."""

import os
import re
import signal
import socket

import psutil
import pytest

from gateway_process import start_gateway
from procs import wait_until

CONFIG = {'DEFAULT_SERVER': 'dummy_model_demo2', 'CONFIG_ENDPOINTS': {
    'dummy_model_demo2': {'NR_WORKERS': 1}, 'dummy_model_demo1': {'NR_WORKERS': 1}}}
LOUD = re.compile(r'#(critical|error)\]|CRITICAL|Traceback')


def model_servers_of(pid):
    """The model-server processes whose parent is ``pid``."""
    try:
        return [c for c in psutil.Process(pid).children() if 'bis_twisted.model_server' in ' '.join(c.cmdline())]
    except psutil.NoSuchProcess:
        return []


def loud_lines(lines):
    return [line for line in lines if LOUD.search(line)]


@pytest.mark.parametrize('use_twistd', [True, False], ids=['twistd', 'bis-gateway'])
def test_a_port_in_use_exits_2_with_one_line_and_starts_no_child(processes, tmp_path, use_twistd):
    holder = socket.socket()
    holder.bind(('127.0.0.1', 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        gateway = start_gateway(processes, tmp_path, config=CONFIG, use_twistd=use_twistd, wait=False,
                                env={'BIS_PORT': str(port)})
        code = gateway.proc.wait_exit(timeout=30)
    finally:
        holder.close()

    assert code == 2, gateway.proc.describe()
    said = [line for line in gateway.proc.stdout_lines + gateway.proc.stderr_lines if 'cannot listen' in line]
    assert len(said) == 1, gateway.proc.describe()
    # the holder is this test's own process
    assert said[0].endswith('bis-gateway: cannot listen on 127.0.0.1:{0}: port {0} is in use by another process '
                            '(pid {1}: {2}); stop it or give another --port / BIS_PORT'.format(
                                port, os.getpid(), psutil.Process().name()))
    assert not any('started server' in line for line in gateway.proc.stdout_lines), gateway.proc.describe()
    pids = tmp_path / '_cache' / '_pids'
    assert not pids.exists() or os.listdir(str(pids)) == []


def test_sigterm_stops_a_healthy_gateway_with_exit_0_its_children_gone_and_no_error_logged(processes, tmp_path):
    gateway = start_gateway(processes, tmp_path, config=CONFIG)
    assert gateway.run('dummy_model_demo2', INPUT_VALUE=4).status == 200
    wait_until(lambda: model_servers_of(gateway.proc.pid), lambda c: len(c) == 2, what='two model servers')
    children = model_servers_of(gateway.proc.pid)

    gateway.proc.send_signal(signal.SIGTERM)
    gateway.proc.send_signal(signal.SIGTERM)  # a second TERM (a process manager's, then docker's)

    assert gateway.proc.wait_exit(timeout=30) == 0, gateway.proc.describe()
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, child
    log = (tmp_path / '_cache' / '_logs' / 'gateway.log').read_text().splitlines()
    assert any('Server Shut Down' in line or 'Main loop terminated' in line for line in log)
    assert loud_lines(log) == [] and loud_lines(gateway.proc.stdout_lines + gateway.proc.stderr_lines) == []
    assert os.listdir(str(tmp_path / '_cache' / '_pids')) == []
    assert (tmp_path / '_cache' / 'gateway.lock').read_text() == ''  # no pid left for a gateway that is gone


def test_a_second_gateway_on_the_same_cache_folder_exits_2_naming_the_first(processes, tmp_path):
    first = start_gateway(processes, tmp_path, config=CONFIG)

    second = start_gateway(processes, tmp_path, config=CONFIG, wait=False)

    assert second.proc.wait_exit(timeout=30) == 2, second.proc.describe()
    said = [line for line in second.proc.stderr_lines if 'in use by another gateway' in line]
    expected = ('bis-gateway: the cache folder {} is in use by another gateway (pid {}); stop it, or give this one '
                'a cache folder of its own (--cache / BIS_CACHE)').format(tmp_path / '_cache', first.proc.pid)
    assert said == [expected]
    # the first one's children and pid files are untouched, and it serves on
    assert len(os.listdir(str(tmp_path / '_cache' / '_pids'))) == 2
    assert first.run('dummy_model_demo2', INPUT_VALUE=4).status == 200
