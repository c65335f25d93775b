"""Supervision against endpoints written the way real models are: a helper process that holds
the server's output, a progress bar without newlines, a slow request during a stop, a slow
import, a leak, a child stopped while its gateway is killed. Real gateways, real children,
real signals."""

import json
import os
import signal
import threading
import time

import psutil
import pytest

from gateway_process import start_gateway
from procs import http, process_gone, start_model_server, wait_until

pytestmark = pytest.mark.timeout(60)

HELPER_HOLDER = '''
    import os
    import subprocess

    from bis_twisted import FlaskWorker


    class HelperHolderWorker(FlaskWorker):
        """Starts a helper that inherits stdout/stderr, as tokenizer pools and sidecars do."""

        def _load_model(self):
            self.helper = subprocess.Popen(['sleep', '900'])
            with open(self.config_data['PID_FILE'], 'w') as fh:
                fh.write(str(self.helper.pid))

        def _pre_process(self, inputs):
            return inputs

        def _predict(self, inputs):
            if inputs.get('DIE'):
                os._exit(1)
            return inputs.get('X', 0) * 2

        def _post_process(self, pred):
            return pred
'''

PROGRESS_BAR = '''
    import os
    import sys

    from bis_twisted import FlaskWorker


    class ProgressBarWorker(FlaskWorker):
        """Draws a download bar with carriage returns only, as tqdm does."""

        def _pre_process(self, inputs):
            return inputs

        def _predict(self, inputs):
            bar = '\\r 45%|' + '#' * 40 + '| 45/100 [00:01<00:02, 30.1it/s]'
            chunk = bar * (65536 // len(bar))
            for _ in range(inputs['MB'] * 16):
                sys.stderr.write(chunk)
            sys.stderr.flush()
            if inputs.get('DIE'):
                os._exit(3)
            return 'drawn'

        def _post_process(self, pred):
            return pred
'''

SLOW_ANSWER = '''
    import os
    import time

    from bis_twisted import FlaskWorker


    class SlowAnswerWorker(FlaskWorker):
        """Two seconds of work per request; says when it started."""

        def _pre_process(self, inputs):
            return inputs

        def _predict(self, inputs):
            open(os.path.join(self.config_data['STARTED_DIR'], str(inputs['N'])), 'w').close()
            time.sleep(2)
            return 'finished {}'.format(inputs['N'])

        def _post_process(self, pred):
            return pred
'''

SLOW_IMPORT = '''
    import time

    from bis_twisted import FlaskWorker

    time.sleep(4)  # a framework import, a model download into a cache


    class SlowImportWorker(FlaskWorker):
        def _pre_process(self, inputs):
            return inputs

        def _predict(self, inputs):
            return 'loaded at last'

        def _post_process(self, pred):
            return pred
'''

LEAKY = '''
    from bis_twisted import FlaskWorker

    _KEPT = []


    class LeakyWorker(FlaskWorker):
        """Keeps 20 MB of every request, as a cache without a bound does."""

        def _pre_process(self, inputs):
            return inputs

        def _predict(self, inputs):
            block = bytearray(20 * 2 ** 20)
            block[::4096] = b'x' * len(block[::4096])  # touched: resident, not just reserved
            _KEPT.append(block)
            return len(_KEPT)

        def _post_process(self, pred):
            return pred
'''


def listed(gateway, name):
    return gateway.server(name)  # started or stopped


def alive(pid):
    return not process_gone(pid)


def read_pid(path):
    return wait_until(lambda: int(open(path).read()), what='the helper pid in {}'.format(path))


# -- 1. a helper process holds the child's pipes -------------------------------------------------------
def test_exit_of_a_child_whose_helper_holds_its_output_is_restarted_and_helpers_go(processes, tmp_path,
                                                                                   endpoint_folder):
    endpoint_folder.write('helper_holder', HELPER_HOLDER)
    pid_file = str(tmp_path / 'helper.pid')
    config = {'CONFIG_ENDPOINTS': {'helper_holder': {'PID_FILE': pid_file, 'HEALTH_INTERVAL': 0.5}}}
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoint_folder.path)
    gateway.wait_online('helper_holder')
    answer = gateway.run('helper_holder', X=4)
    assert answer.status == 200 and answer.json()['predict_result'] == 8, answer
    first = listed(gateway, 'helper_holder')
    first_helper = read_pid(pid_file)
    os.remove(pid_file)

    crashed_at = time.monotonic()
    assert gateway.run('helper_holder', DIE=True).status == 502
    back = wait_until(lambda: listed(gateway, 'helper_holder'),
                      lambda s: s['ONLINE'] and s['PID'] not in (None, first['PID']), timeout=10,
                      what='helper_holder restarted')
    recovered = time.monotonic() - crashed_at
    print('helper_holder serving again {:.2f}s after its exit'.format(recovered))  # the delay: a Clock test's
    assert back['RESTARTS'] == 1 and back['ERROR'].startswith('exit code 1')
    assert gateway.run('helper_holder', X=5).json()['predict_result'] == 10
    # the dead server's helper went with it: no helper outlives its server
    wait_until(lambda: process_gone(first_helper), what='the first helper (pid {}) gone'.format(first_helper),
               timeout=5)

    second_helper = read_pid(pid_file)
    stopping = time.monotonic()
    gateway.proc.popen.send_signal(signal.SIGTERM)
    gateway.proc.popen.wait(timeout=60)  # a gateway that waited for the helper would wait its 900 s
    print('gateway stopped in {:.2f}s with a helper running'.format(time.monotonic() - stopping))
    wait_until(lambda: process_gone(second_helper), what='the second helper gone with the gateway', timeout=5)


# -- 3. a progress bar without newlines --------------------------------------------------------------------
def test_twenty_megabytes_of_progress_bar_cost_the_gateway_little_and_stay_out_of_list_servers(
        processes, tmp_path, endpoint_folder):
    endpoint_folder.write('progress_bar', PROGRESS_BAR)
    config = {'CONFIG_ENDPOINTS': {'progress_bar': {'TIMEOUT': 30}}}
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoint_folder.path)
    gateway.wait_online('progress_bar')
    gateway_process = psutil.Process(gateway.proc.pid)
    cpu_before = sum(gateway_process.cpu_times()[:2])
    answer = http('POST', gateway.url('/run'), {'SIGNATURE': 'progress_bar', 'MB': 20}, timeout=30)
    assert answer.status == 200 and answer.json()['predict_result'] == 'drawn'
    assert gateway.get('/health').status == 200
    died = http('POST', gateway.url('/run'), {'SIGNATURE': 'progress_bar', 'MB': 1, 'DIE': True}, timeout=30)
    assert died.status == 502
    wait_until(lambda: listed(gateway, 'progress_bar'), lambda s: s['ONLINE'] and s['RESTARTS'] == 1,
               what='progress_bar back after its exit')
    cpu = sum(gateway_process.cpu_times()[:2]) - cpu_before
    print('gateway CPU for 21 MB of \\r output and a restart: {:.2f}s'.format(cpu))
    listing = gateway.get('/list_servers')
    assert len(listing.body) < 20000, 'list_servers is {} bytes'.format(len(listing.body))
    error = listing.json()['AVAIL_SERVERS']['progress_bar']['ERROR']
    assert error.startswith('exit code 3') and len(error) <= 300
    with open(tmp_path / '_cache' / '_logs' / 'progress_bar.log', encoding='utf-8', errors='replace') as fh:
        lines = fh.read().splitlines()
    assert len(lines) < 1000 and max(len(line) for line in lines) < 8300


# -- 4. a graceful stop writes the answers it waited for ------------------------------------------------------
def post_in_thread(url, body, results):
    def go():
        results.append(http('POST', url, body, timeout=20))
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_kill_server_during_four_two_second_requests_delivers_their_answers(processes, tmp_path, endpoint_folder):
    endpoint_folder.write('slow_answer', SLOW_ANSWER)
    started = tmp_path / 'started'
    started.mkdir()
    config = {'CONFIG_ENDPOINTS': {'slow_answer': {'NR_WORKERS': 4, 'STARTED_DIR': str(started)}}}
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoint_folder.path)
    gateway.wait_online('slow_answer')
    results = []
    threads = [post_in_thread(gateway.url('/run'), {'SIGNATURE': 'slow_answer', 'N': n}, results) for n in range(4)]
    wait_until(lambda: len(os.listdir(started)), lambda n: n == 4, what='4 requests running')
    assert gateway.post('/kill_server', {'SIGNATURE': 'slow_answer'}).status == 200
    for thread in threads:
        thread.join(20)
    assert sorted((r.status, r.json()['predict_result']) for r in results) == [
        (200, 'finished {}'.format(n)) for n in range(4)]
    assert listed(gateway, 'slow_answer')['STATE'] == 'stopped'


def test_standalone_server_on_sigterm_finishes_and_answers_the_running_request(processes, endpoint_folder, tmp_path):
    endpoint_folder.write('slow_answer', SLOW_ANSWER)
    started = tmp_path / 'started'
    started.mkdir()
    server = start_model_server(processes, 'slow_answer', endpoints=endpoint_folder.path,
                                config={'STARTED_DIR': str(started)})
    results = []
    thread = post_in_thread(server.url('/run'), {'N': 7}, results)
    wait_until(lambda: os.listdir(started), what='the request running')
    server.proc.popen.send_signal(signal.SIGTERM)
    thread.join(20)
    assert [(r.status, r.json()['predict_result']) for r in results] == [(200, 'finished 7')]
    assert server.proc.popen.wait(timeout=10) == 0


# -- 5. a slow import is loading, not hung ----------------------------------------------------------------------
def test_slow_import_is_left_to_load_and_one_past_its_load_timeout_is_restarted(processes, tmp_path,
                                                                                  endpoint_folder):
    endpoint_folder.write('slow_import', SLOW_IMPORT)
    config = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {
        'patient': {'SERVER_CLASS': 'slow_import', 'LOAD_TIMEOUT': 60, 'HEALTH_INTERVAL': 0.2},
        'impatient': {'SERVER_CLASS': 'slow_import', 'LOAD_TIMEOUT': 1}}}
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoint_folder.path)
    loading = gateway.run('patient')
    assert loading.status == 503 and 'starting (loading its workers)' in loading.json()['ERROR']
    served = wait_until(lambda: gateway.run('patient'), lambda a: a.status == 200, timeout=20,
                        what='the slow import served')
    assert served.json()['predict_result'] == 'loaded at last'
    assert listed(gateway, 'patient')['RESTARTS'] == 0  # 20 health intervals went by: not one ping counted
    impatient = wait_until(lambda: listed(gateway, 'impatient'), lambda s: s['RESTARTS'] >= 1,
                           what='impatient restarted')
    assert impatient['ERROR'] == 'did not become ready within LOAD_TIMEOUT (1s)'


# -- 6. a child stopped while its gateway is killed ---------------------------------------------------------------
def test_child_left_stopped_by_a_killed_gateway_is_ended_by_the_next_one(processes, tmp_path):
    config = {'CONFIG_ENDPOINTS': {'dummy_model_demo2': {'WEIGHT': 2, 'BIAS': 1}}}
    first = start_gateway(processes, tmp_path, config=config)
    child = psutil.Process(listed(first, 'dummy_model_demo2')['PID'])
    try:
        child.send_signal(signal.SIGSTOP)
        first.proc.popen.send_signal(signal.SIGKILL)
        first.proc.popen.wait(timeout=10)
        assert child.is_running() and child.status() == psutil.STATUS_STOPPED  # it holds its port
        second = start_gateway(processes, tmp_path, config=config, env={'BIS_PORT': str(first.port)})
        second.port = first.port
        wait_until(lambda: child.is_running() and child.status() != psutil.STATUS_ZOMBIE, lambda running: not running,
                   what='the stopped child ended', timeout=10)
        second.wait_online('dummy_model_demo2')
        answer = second.run('dummy_model_demo2', INPUT_VALUE=3)
        assert answer.status == 200 and answer.json()['predict_result'] == {
            'dummy_model_predict': '3*2 + 1 = 7 PREDICTED'}
    finally:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


# -- memory recycling -------------------------------------------------------------------------------------------
def test_leaking_model_is_recycled_at_max_rss_and_keeps_serving(processes, tmp_path, endpoint_folder):
    endpoint_folder.write('leaky', LEAKY)
    config = {'CONFIG_ENDPOINTS': {'leaky': {'MAX_RSS_MB': 200, 'HEALTH_INTERVAL': 0.2}}}
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoint_folder.path)
    first = gateway.wait_online('leaky')
    statuses = []
    for _ in range(60):
        answer = gateway.run('leaky')
        statuses.append((answer.status, answer.headers.get('Retry-After')))
        if answer.status == 200 and answer.json()['predict_result'] == 1 and len(statuses) > 1:
            break  # a new process answered: it holds one block
        time.sleep(0.05)  # the pace of a client: the health loop samples between requests
    now = wait_until(lambda: listed(gateway, 'leaky'), lambda s: s['ONLINE'] and s['RECYCLES'] >= 1,
                     what='leaky recycled')
    assert now['PID'] != first['PID'] and now['RESTARTS'] == 0
    assert psutil.Process(now['PID']).memory_info().rss < 200 * 2 ** 20
    # the new process starts beside the old one (its slot's spare port): no request fails
    assert set(statuses) == {(200, None)}, statuses
    assert json.loads(gateway.run('leaky').body)['predict_result'] >= 1


# -- 2. a restart that cannot spawn (out of file descriptors) -------------------------------------------
def test_restart_that_fails_for_want_of_descriptors_is_retried_and_stop_still_saves_history(processes, tmp_path):
    import socket
    config = {'CONFIG_ENDPOINTS': {'dummy_model_demo2': {'WEIGHT': 2, 'BIAS': 1}}}
    limit = 64
    gateway = start_gateway(processes, tmp_path, config=config,
                            wait=False, prefix=['prlimit', '--nofile={0}:{0}'.format(limit)])
    gateway.proc.wait_for_line(r'gateway serving on http://', timeout=30)
    assert gateway.proc.wait_for_line(r'open files limit: soft {0} -> {0}, hard {0}'.format(limit), timeout=5)
    first = gateway.wait_online('dummy_model_demo2')
    held = []
    try:
        for _ in range(limit):  # take every descriptor the gateway has left
            sock = socket.create_connection(('127.0.0.1', gateway.port), timeout=5)
            held.append(sock)
        wait_until(lambda: psutil.Process(gateway.proc.pid).num_fds(), lambda n: n >= limit - 1, timeout=10,
                   what='the gateway out of descriptors')
        os.kill(first['PID'], signal.SIGKILL)
        gateway.proc.wait_for_line(r'could not start the process: \[Errno 24\]', timeout=10)
    finally:
        for sock in held:
            sock.close()
    back = wait_until(lambda: gateway.server('dummy_model_demo2'), lambda s: s['ONLINE'], timeout=40,
                      what='dummy_model_demo2 started once descriptors were free')
    assert back['PID'] != first['PID']
    answer = gateway.run('dummy_model_demo2', INPUT_VALUE=2)
    assert answer.status == 200, answer
    gateway.proc.popen.send_signal(signal.SIGTERM)
    # twistd ends itself with the signal that stopped it, to report it
    assert gateway.proc.popen.wait(timeout=20) in (0, -signal.SIGTERM)
    with open(tmp_path / '_cache' / '_data' / 'gw_state_history.json', encoding='utf-8') as fh:
        assert json.load(fh)['LAST_SHUTDOWN'] is not None
