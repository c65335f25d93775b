"""End-to-end: ``REPLICAS`` and ``URLS`` with the real gateway (``twistd -n -y bis.tac``), real
model-server processes, real HTTP on loopback and real signals."""

import concurrent.futures
import os
import signal
import socket
import threading
import time

import psutil
import pytest

from gateway_process import start_gateway
from procs import Processes, free_port, get, process_gone, start_model_server, wait_until

DEMO = 'dummy_model_demo2'
REPLICATED = {'CONFIG_ENDPOINTS': {DEMO: {'REPLICAS': 2, 'NR_WORKERS': 1, 'WEIGHT': 2, 'BIAS': 1}}}
REMOTE_HOST = '127.0.0.2'


def replicas(gateway, name=DEMO):
    return gateway.server(name)['REPLICAS']


def wait_replicas_online(gateway, timeout=20):
    return wait_until(lambda: replicas(gateway), lambda rs: all(r['ONLINE'] for r in rs), timeout=timeout,
                      what='both replicas of {} ONLINE in /list_servers'.format(DEMO))


def run(gateway, value, signature=DEMO, timeout=5.0):
    return gateway.post('/run', {'SIGNATURE': signature, 'INPUT_VALUE': value}, timeout=timeout)


def predicted(value, weight=2, bias=1):
    return {'dummy_model_predict': '{}*{} + {} = {} PREDICTED'.format(value, weight, bias, value * weight + bias)}


def served_inputs(port):
    """The INPUT_VALUEs one replica's worker says it predicted on (its own /notifications)."""
    notes = get('http://127.0.0.1:{}/notifications'.format(port)).json()
    return {item['NOTIF'].split('usr_input: ', 1)[1].split(' ', 1)[0]
            for key, items in notes.items() if key != 'GENERAL' for item in items
            if 'usr_input: ' in item['NOTIF']}


@pytest.fixture(scope='module')
def gateway(tmp_path_factory):
    with Processes() as group:
        gw = start_gateway(group, tmp_path_factory.mktemp('replicas'), config=REPLICATED)
        wait_replicas_online(gw)
        yield gw


def test_two_replicas_are_listed_with_their_own_port_and_pid(gateway):
    listed = wait_replicas_online(gateway)
    assert len(listed) == 2
    assert len({r['PORT'] for r in listed}) == 2 and len({r['PID'] for r in listed}) == 2
    assert [r['STATE'] for r in listed] == ['online', 'online']
    children = {c.pid for c in gateway.children()}
    assert {r['PID'] for r in listed} == children
    server = gateway.server(DEMO)
    assert server['ONLINE'] is True
    assert server['URLS'] == ['http://127.0.0.1:{}/run'.format(r['PORT']) for r in listed]


def test_system_status_sums_memory_per_endpoint_and_shows_each_replica(gateway):
    wait_replicas_online(gateway)
    status = gateway.get('/system_status').json()['SYSTEM_STATUS']
    per_replica = status['mem_replicas'][DEMO]
    assert len(per_replica) == 2 and all(mem > 0 for mem in per_replica)
    # both measured by psutil, rounded to 0.01 GB each
    assert status['mem_servers'][DEMO] == pytest.approx(sum(per_replica), abs=0.021)


def test_request_goes_to_the_idle_replica_while_the_other_is_busy(gateway):
    first, second = wait_replicas_online(gateway)
    # replica 0 frozen: whichever request the gateway routes first waits there (idle replicas
    # tie and the first wins), so the other one finds replica 0 busy and must go to replica 1
    os.kill(first['PID'], signal.SIGSTOP)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        try:
            futures = {pool.submit(run, gateway, value, timeout=15): value
                       for value in (1001, 1002)}
            done, pending = concurrent.futures.wait(futures, timeout=10,
                                                    return_when=concurrent.futures.FIRST_COMPLETED)
            assert len(done) == 1 and len(pending) == 1, 'no request was served while replica 0 was stopped'
        finally:
            os.kill(first['PID'], signal.SIGCONT)
        fast, slow = futures[done.pop()], futures[pending.pop()]
        answers = {futures[f]: f.result(timeout=10) for f in futures}
    for value, answer in answers.items():
        assert answer.status == 200, answer
        assert answer.json()['predict_result'] == predicted(value)
    assert str(slow) in served_inputs(first['PORT']) and str(fast) not in served_inputs(first['PORT'])
    assert str(fast) in served_inputs(second['PORT']) and str(slow) not in served_inputs(second['PORT'])


class Stream(threading.Thread):
    """One client sending requests one after another until told to stop; keeps every answer
    as (sent, answered, status or exception)."""

    def __init__(self, gateway, index):
        super().__init__(name='stream-{}'.format(index), daemon=True)
        self.gateway = gateway
        self.index = index
        self.results = []
        self.stop = threading.Event()

    def run(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            value = self.index * 100000 + n
            sent = time.monotonic()
            try:
                answer = run(self.gateway, value)
                ok = answer.status != 200 or answer.json()['predict_result'] == predicted(value)
                outcome = answer.status if ok else 'wrong answer: {!r}'.format(answer)
            except Exception as exc:  # kept and reported by the test: every request must be answered
                outcome = '{}: {}'.format(type(exc).__name__, exc)
            self.results.append((sent, time.monotonic(), outcome))


def test_sigkill_of_one_replica_under_load_fails_no_request_and_it_is_replaced(gateway):
    before = wait_replicas_online(gateway)
    victim, survivor = before  # replica 0: the one idle ties send most requests to
    streams = [Stream(gateway, i) for i in (1, 2)]
    for stream in streams:
        stream.start()
    try:
        wait_until(lambda: min(len(s.results) for s in streams), lambda n: n >= 20, timeout=10,
                   what='20 answers per client before the kill')
        killed_at = time.monotonic()
        os.kill(victim['PID'], signal.SIGKILL)
        replaced = wait_until(lambda: replicas(gateway)[0],
                              lambda r: r['PID'] not in (None, victim['PID']) and r['ONLINE'], timeout=15,
                              what='replica 0 replaced (new pid, ONLINE)')
        counts = [len(s.results) for s in streams]
        wait_until(lambda: [len(s.results) - c for s, c in zip(streams, counts)], lambda ns: min(ns) >= 20,
                   timeout=10, what='20 more answers per client after the replacement')
    finally:
        for stream in streams:
            stream.stop.set()
        for stream in streams:
            stream.join(10)
    assert not any(s.is_alive() for s in streams), 'a client is still waiting for an answer'
    results = [(s.index,) + r for s in streams for r in s.results]
    log = [line for line in gateway.proc.stdout_lines if ' 502 ' in line or 'exited' in line]
    # A request the killed replica had taken is sent once more, to the other replica
    # (RETRY_ON_CRASH, on by default): the clients see no error at all.
    failed = [r for r in results if r[3] != 200]
    assert not failed, 'answers other than 200 (sent/answered in s after the kill): {}\n{}'.format(
        [(i, round(a - killed_at, 4), round(b - killed_at, 4), o) for i, a, b, o in failed[:10]], '\n'.join(log))
    for stream in streams:
        assert [r[2] for r in stream.results].count(200) >= 40
    assert sum(1 for s in streams for r in s.results if r[1] > killed_at) >= 40  # the stream went on through the kill
    assert process_gone(victim['PID'])
    now_listed = replicas(gateway)
    assert now_listed[1]['PID'] == survivor['PID'] and now_listed[1]['ONLINE']
    assert replaced['PORT'] == victim['PORT'] and replaced['RESTARTS'] == 1
    assert replaced['ERROR'] == 'killed by signal 9'
    assert psutil.Process(replaced['PID']).ppid() == gateway.proc.pid
    assert served_inputs(replaced['PORT']), 'the new replica 0 served none of the stream'


# -- a remote model server (URLS) ---------------------------------------------------------------------
def require_second_loopback_address():
    """The remote test needs a second loopback address; fail (not skip) when it is missing."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((REMOTE_HOST, 0))
    except OSError as exc:
        pytest.fail('cannot bind to {} on this machine ({}); the URLS test needs a second loopback '
                    'address (Linux routes all of 127.0.0.0/8 to lo by default)'.format(REMOTE_HOST, exc))


def start_remote(processes, port):
    return start_model_server(processes, DEMO, host=REMOTE_HOST, port=port, config={'WEIGHT': 3})


def test_remote_server_is_served_goes_offline_when_killed_and_comes_back(processes, tmp_path):
    require_second_loopback_address()
    port = free_port(REMOTE_HOST)
    remote = start_remote(processes, port)
    url = 'http://{}:{}/run'.format(REMOTE_HOST, port)
    config = {'CONFIG_ENDPOINTS': {'remote_demo2': {'URLS': [url], 'HEALTH_INTERVAL': 0.5}}}
    gateway = start_gateway(processes, tmp_path, config=config)

    answer = run(gateway, 4, 'remote_demo2')
    assert answer.status == 200, answer
    assert answer.json()['predict_result'] == predicted(4, weight=3, bias=0)
    listed = gateway.server('remote_demo2')
    assert listed['ONLINE'] is True and listed['URLS'] == [url]
    assert [(r['URL'], r['STATE']) for r in listed['REPLICAS']] == [('http://{}:{}'.format(REMOTE_HOST, port), 'online')]

    remote.proc.kill()
    assert process_gone(remote.proc.pid)
    down = run(gateway, 4, 'remote_demo2')
    assert down.status == 503, down  # refused at once: not the 504 of a request left waiting
    assert down.headers['Retry-After'] == '1'
    assert "server 'remote_demo2'" in down.json()['ERROR']
    listed = gateway.server('remote_demo2')
    assert listed['ONLINE'] is False and listed['REPLICAS'][0]['STATE'] == 'offline'

    start_remote(processes, port)  # the same address again
    back = wait_until(lambda: run(gateway, 5, 'remote_demo2'), lambda r: r.status == 200, timeout=3,
                      what='/run to remote_demo2 answering 200 within a few ping intervals (0.5 s)')
    assert back.json()['predict_result'] == predicted(5, weight=3, bias=0)
    assert gateway.server('remote_demo2')['ONLINE'] is True
