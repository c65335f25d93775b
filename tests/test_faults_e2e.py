"""Faults under load, end to end: the real gateway (``twistd -n -y bis.tac``) with real
children, endpoints written here (``slow``: ``_predict`` sleeps ``SECONDS``; ``hang``:
``_predict`` blocks for ever when asked), real signals and real sockets on loopback.

What a client sees is README's "Failure behaviour": 504 past ``TIMEOUT``; 502 at once for
requests in flight when a child dies, 503 until it is back; a hung (SIGSTOP) child replaced by
the support loop; a client that goes away costs nothing. And the gateway itself neither
leaks memory nor connections, nor logs tracebacks, while that happens.
"""

import collections
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import textwrap
import threading
import time

import psutil
import pytest

from gateway_process import start_gateway
from procs import ENDPOINTS_DIR, Processes, get, wait_until

SLOW_ENDPOINT = '''
    import time

    from bis_twisted import FlaskWorker


    class SlowWorker(FlaskWorker):
        """Sleeps inputs['SECONDS'] in _predict: a model that takes its time."""

        def _pre_process(self, inputs):
            return float(inputs.get('SECONDS', 0))

        def _predict(self, seconds):
            time.sleep(seconds)
            return seconds

        def _post_process(self, slept):
            return {'slept': slept}
'''

HANG_ENDPOINT = '''
    import threading

    from bis_twisted import FlaskWorker

    NEVER = threading.Event()


    class HangWorker(FlaskWorker):
        """With {"HANG": true}, _predict blocks for ever: a deadlocked model."""

        def _pre_process(self, inputs):
            return bool(inputs.get('HANG'))

        def _predict(self, hang):
            if hang:
                NEVER.wait()
            return 'answered'

        def _post_process(self, pred):
            return {'answer': pred}
'''


def endpoints_with_faulty_models(tmp_path):
    """``<tmp_path>/endpoints``: the repo's endpoints plus ``slow.py`` and ``hang.py``."""
    folder = tmp_path / 'endpoints'
    shutil.copytree(ENDPOINTS_DIR, str(folder), ignore=shutil.ignore_patterns('__pycache__'))
    (folder / 'slow.py').write_text(textwrap.dedent(SLOW_ENDPOINT), encoding='utf-8')
    (folder / 'hang.py').write_text(textwrap.dedent(HANG_ENDPOINT), encoding='utf-8')
    return folder


def wait_ready(gateway, timeout=30):
    return wait_until(lambda: gateway.get('/ready'), lambda r: r.status == 200, timeout=timeout, what='/ready 200')


def post(port, document, timeout=15.0):
    """POST /run on a fresh connection: ``(status, body dict)``; connection errors raise."""
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        connection.request('POST', '/run', json.dumps(document), {'Content-Type': 'application/json'})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b'{}')
    finally:
        connection.close()


def timed_post(port, document, timeout=15.0):
    started = time.monotonic()
    status, body = post(port, document, timeout)
    return status, body, time.monotonic() - started


def in_threads(calls):
    """Run each ``call()`` in its own thread at once; their results (or exceptions) in order,
    each with the monotonic time it ended."""
    results = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = (call(), time.monotonic())
        except Exception as exc:  # reported by the caller with what it expected
            results[i] = (exc, time.monotonic())

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    return threads, results


def child_health(port):
    """The model server's own /health (BUSY and QUEUED say what its pool is doing)."""
    return get('http://127.0.0.1:{}/health'.format(port), timeout=2).json()


def problems_in_logs(gateway, cache_dir):
    """Lines of the gateway's stdout and gateway.log that show a traceback or an unhandled error."""
    assert gateway.get('/health').status == 200  # what was logged before this is written by now
    marks = ('Traceback', 'Unhandled Error')
    lines = list(gateway.proc.stdout_lines)
    log_file = cache_dir / '_logs' / 'gateway.log'
    if log_file.exists():
        lines += log_file.read_text(encoding='utf-8', errors='replace').splitlines()
    return [line for line in lines if any(mark in line for mark in marks)]


# -- TIMEOUT ---------------------------------------------------------------------------------------
TIMEOUT = 1.0


@pytest.fixture(scope='module')
def timeout_gateway(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('timeouts')
    endpoints = endpoints_with_faulty_models(tmp_path)
    config = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {
        'hang': {'NR_WORKERS': 2, 'TIMEOUT': TIMEOUT},
        'slow': {'NR_WORKERS': 1, 'TIMEOUT': TIMEOUT}}}
    with Processes() as group:
        gateway = start_gateway(group, tmp_path, config=config, endpoints=endpoints)
        wait_ready(gateway)
        yield gateway


def test_hung_predict_gets_504_within_timeout_and_the_other_worker_still_serves(timeout_gateway):
    status, body, took = timed_post(timeout_gateway.port, {'SIGNATURE': 'hang', 'HANG': True})
    assert status == 504, body
    assert 'did not answer within its TIMEOUT of 1s' in body['ERROR']
    assert took >= TIMEOUT - 0.1, took  # not before the deadline (how soon after it: a Clock test's claim)
    # one worker is stuck for ever; the other one serves (NR_WORKERS 2): queued behind the
    # stuck one, this request would have had a 504 too
    status, body, took = timed_post(timeout_gateway.port, {'SIGNATURE': 'hang'})
    assert status == 200 and body['predict_result'] == {'answer': 'answered'}, body


def test_late_result_is_dropped_and_the_worker_serves_again(timeout_gateway):
    status, body, took = timed_post(timeout_gateway.port, {'SIGNATURE': 'slow', 'SECONDS': 1.6})
    # a gateway that waited for the 1.6 s result would have answered 200
    assert status == 504 and 'TIMEOUT of 1s' in body['ERROR'], (status, body, took)
    # the single worker finishes its 1.6 s, its result goes nowhere, and it is free again
    child_port = timeout_gateway.server('slow')['PORT']
    wait_until(lambda: child_health(child_port), lambda h: h['BUSY'] == 0, timeout=3, what='the worker free')
    status, body, took = timed_post(timeout_gateway.port, {'SIGNATURE': 'slow', 'SECONDS': 0})
    assert status == 200 and body['predict_result'] == {'slept': 0.0}, body


# -- client disconnects ---------------------------------------------------------------------------
def raw_request(port, document):
    sock = socket.create_connection(('127.0.0.1', port), timeout=10)
    body = json.dumps(document).encode('utf-8')
    sock.sendall(b'POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
                 b'Content-Length: %d\r\n\r\n%s' % (len(body), body))
    return sock


def test_64_clients_that_go_away_cost_nothing_and_leave_no_traceback(processes, tmp_path, http_front):
    endpoints = endpoints_with_faulty_models(tmp_path)
    config = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {'slow': {'NR_WORKERS': 2, 'TIMEOUT': 10}}}
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoints,
                            env={'BIS_HTTP_FRONT': http_front})
    wait_ready(gateway)
    child_port = gateway.server('slow')['PORT']

    clients = [raw_request(gateway.port, {'SIGNATURE': 'slow', 'SECONDS': 1}) for _ in range(64)]
    try:
        # every request reached the model server: 2 running, 62 waiting for a worker
        wait_until(lambda: child_health(child_port), lambda h: (h['BUSY'], h['QUEUED']) == (2, 62),
                   timeout=10, what='64 requests at the model server')
    finally:
        for i, sock in enumerate(clients):
            if i % 2:  # half of them reset the connection, half close it politely
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            sock.close()

    # the gateway abandoned the calls: the queued ones leave the model server's queue (served
    # one second per two workers, the 62 would take 31 s to leave it), the two running finish
    # their second and their workers are free again
    wait_until(lambda: child_health(child_port), lambda h: h['QUEUED'] == 0, timeout=10,
               what='the queue emptied by the disconnects')
    wait_until(lambda: child_health(child_port), lambda h: h['BUSY'] == 0, timeout=3, what='workers free')

    threads, results = in_threads([lambda: timed_post(gateway.port, {'SIGNATURE': 'slow', 'SECONDS': 0.2})
                                   for _ in range(4)])
    for thread in threads:
        thread.join(10)
    for (answer, _ended) in results:
        assert not isinstance(answer, Exception), answer
        status, body, took = answer
        assert status == 200, (status, body, took)

    # no connection to the model server is left over from the 64: the pool keeps alive only
    # those of the 4 later requests and of the health pings (over its Unix socket; TCP counted too)
    gateway_process = psutil.Process(gateway.proc.pid)
    left = wait_until(lambda: [c for c in gateway_process.net_connections('tcp')
                               if c.raddr and c.raddr.port == child_port] + gateway_process.net_connections('unix'),
                      lambda conns: len(conns) <= 6, timeout=5, what='at most 6 connections to the model server')
    print('disconnects: gateway connections to the model server afterwards: {}'.format(len(left)))
    assert problems_in_logs(gateway, tmp_path / '_cache') == []


# -- a child killed mid-request -----------------------------------------------------------------------
def test_requests_in_flight_to_a_killed_child_fail_fast_and_later_ones_are_served(processes, tmp_path):
    endpoints = endpoints_with_faulty_models(tmp_path)
    config = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {'slow': {'NR_WORKERS': 4, 'TIMEOUT': 10}}}
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoints)
    wait_ready(gateway)
    server = gateway.server('slow')

    threads, results = in_threads([lambda: post(gateway.port, {'SIGNATURE': 'slow', 'SECONDS': 3})
                                   for _ in range(4)])
    wait_until(lambda: child_health(server['PORT']), lambda h: h['BUSY'] == 4, timeout=5,
               what='4 requests running')
    killed_at = time.monotonic()
    os.kill(server['PID'], signal.SIGKILL)
    for thread in threads:
        thread.join(10)

    for answer, ended in results:
        assert not isinstance(answer, Exception), answer
        status, body = answer
        # at once: a request left waiting for the dead process would have had its TIMEOUT's 504
        assert status in (502, 503), (status, body)
        assert 'ERROR' in body
    print('in-flight answers after kill -9:', [(a[0], round(e - killed_at, 3)) for a, e in results])

    served = wait_until(lambda: post(gateway.port, {'SIGNATURE': 'slow', 'SECONDS': 0}),
                        lambda answer: answer[0] == 200, timeout=20, what='slow served again')
    assert served[1]['predict_result'] == {'slept': 0.0}
    now = gateway.server('slow')
    assert now['PID'] != server['PID'] and now['RESTARTS'] == 1 and now['ERROR'] == 'killed by signal 9', now


# -- soak: steady traffic while one child is killed and another is stopped ---------------------------
SOAK_SECONDS = 16.0
CLIENT_THREADS = 8
REQUESTS_PER_THREAD = 2500  # a bound, whatever the machine's speed
SOAK_TIMEOUT = 2.0
ERROR_STATUSES = {502, 503, 504}
RSS_GROWTH_LIMIT = 30 * 1024 * 1024

Record = collections.namedtuple('Record', 'server started ended status error')


class Traffic:
    """``CLIENT_THREADS`` clients, each on its own kept-alive connection, sending /run to the
    servers in turn until stopped (or out of budget), recording every request."""

    def __init__(self, port, documents):
        self.port = port
        self.documents = documents
        self.records = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True, name='soak-{}'.format(i))
                         for i in range(CLIENT_THREADS)]

    def start(self):
        for thread in self._threads:
            thread.start()

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(SOAK_TIMEOUT * 5)
        assert not any(t.is_alive() for t in self._threads), 'a client is still waiting for an answer'

    def ok_after(self, server, moment):
        with self._lock:
            return [r for r in self.records if r.server == server and r.started > moment and r.status == 200]

    def count_ok(self):
        with self._lock:
            return sum(1 for r in self.records if r.status == 200)

    def _client(self, index):
        connection = http.client.HTTPConnection('127.0.0.1', self.port, timeout=SOAK_TIMEOUT * 5)
        try:
            for n in range(REQUESTS_PER_THREAD):
                if self._stop.is_set():
                    return
                server, document = self.documents[(index + n) % len(self.documents)]
                started = time.monotonic()
                status = error = None
                try:
                    connection.request('POST', '/run', document, {'Content-Type': 'application/json'})
                    response = connection.getresponse()
                    body = response.read()
                    status = response.status
                    if status != 200 and b'"ERROR"' not in body:
                        error = 'error answer without ERROR: {!r}'.format(body[:200])
                except Exception as exc:  # recorded: the test asserts there is none
                    error = '{}: {}'.format(type(exc).__name__, exc)
                    connection.close()
                with self._lock:
                    self.records.append(Record(server, started, time.monotonic(), status, error))
        finally:
            connection.close()


def gateway_connections(pid):
    """The gateway's TCP connections other than its listening socket."""
    return [c for c in psutil.Process(pid).net_connections('tcp') if c.status != psutil.CONN_LISTEN]


def test_soak_with_a_child_killed_and_another_stopped_answers_every_request(processes, tmp_path):
    endpoints = endpoints_with_faulty_models(tmp_path)
    config = {'NO_STARTUP_WAIT': True, 'CONFIG_ENDPOINTS': {
        'dummy_model_demo2': {'NR_WORKERS': 2, 'WEIGHT': 2, 'BIAS': 1, 'TIMEOUT': SOAK_TIMEOUT,
                              'HEALTH_INTERVAL': 0.5},
        'dummy_model_demo1': {'NR_WORKERS': 2, 'TIMEOUT': SOAK_TIMEOUT, 'HEALTH_INTERVAL': 0.5}}}
    gateway = start_gateway(processes, tmp_path, config=config, endpoints=endpoints)
    wait_ready(gateway)
    gateway_pid = gateway.proc.pid
    killed, stopped = gateway.server('dummy_model_demo2'), gateway.server('dummy_model_demo1')
    baseline_connections = len(gateway_connections(gateway_pid))

    traffic = Traffic(gateway.port, [
        ('dummy_model_demo2', json.dumps({'SIGNATURE': 'dummy_model_demo2', 'INPUT_VALUE': 4})),
        ('dummy_model_demo1', json.dumps({'SIGNATURE': 'dummy_model_demo1', 'INPUT_VALUE': 'hi'}))])
    began = time.monotonic()
    traffic.start()
    try:
        wait_until(traffic.count_ok, lambda n: n >= 1000, timeout=30, what='1000 answers of warm-up')
        rss_warm = psutil.Process(gateway_pid).memory_info().rss

        killed_at = time.monotonic()
        os.kill(killed['PID'], signal.SIGKILL)
        wait_until(lambda: traffic.ok_after('dummy_model_demo2', killed_at), timeout=20,
                   what='dummy_model_demo2 serving again after kill -9')

        stopped_at = time.monotonic()
        os.kill(stopped['PID'], signal.SIGSTOP)
        # the support loop pings every 0.5 s; 3 misses and the stopped child is replaced
        wait_until(lambda: traffic.ok_after('dummy_model_demo1', stopped_at), timeout=30,
                   what='dummy_model_demo1 replaced and serving again after SIGSTOP')
        wait_until(lambda: time.monotonic() - began, lambda t: t >= SOAK_SECONDS, timeout=SOAK_SECONDS + 30,
                   interval=0.25, what='the soak to run its course')
    finally:
        traffic.stop()
        try:
            os.kill(stopped['PID'], signal.SIGCONT)  # normally replaced (killed) by now
        except ProcessLookupError:
            pass
    ended = time.monotonic()

    records = traffic.records
    recovered = {server: min(r.started for r in traffic.ok_after(server, moment))
                 for server, moment in (('dummy_model_demo2', killed_at), ('dummy_model_demo1', stopped_at))}
    windows = {'dummy_model_demo2': (killed_at, recovered['dummy_model_demo2']),
               'dummy_model_demo1': (stopped_at, recovered['dummy_model_demo1'])}
    counts = collections.Counter((r.server, r.status) for r in records)
    print('soak: {} requests in {:.1f}s; by (server, status): {}'.format(len(records), ended - began, dict(counts)))
    print('soak: fault windows (s after start): {}'.format(
        {s: (round(a - began, 2), round(b - began, 2)) for s, (a, b) in windows.items()}))

    client_errors = [r for r in records if r.error]
    assert client_errors == [], client_errors[:5]
    assert {r.status for r in records} <= {200} | ERROR_STATUSES
    outside = [r for r in records if r.status != 200 and not (
        windows[r.server][0] - 0.05 <= r.ended and r.started <= windows[r.server][1] + 0.5)]
    assert outside == [], 'errors outside the fault windows: {}'.format(outside[:5])
    # each fault cost some requests (502 in flight, 503 while down, 504 for the stopped one),
    # and only a minority of that server's traffic
    for server in windows:
        errors = sum(n for (s, status), n in counts.items() if s == server and status != 200)
        assert 0 < errors < sum(n for (s, _), n in counts.items() if s == server) / 2, (server, errors)

    for server, document in traffic.documents:
        status, body = post(gateway.port, json.loads(document))
        assert status == 200, (server, body)
    now = {name: gateway.server(name) for name in ('dummy_model_demo2', 'dummy_model_demo1')}
    assert now['dummy_model_demo2']['PID'] != killed['PID'] and now['dummy_model_demo1']['PID'] != stopped['PID']
    assert 'did not answer 3 health checks in a row' in now['dummy_model_demo1']['ERROR'], now['dummy_model_demo1']

    rss_end = psutil.Process(gateway_pid).memory_info().rss
    print('soak: gateway RSS after warm-up {:.1f} MB, at the end {:.1f} MB ({:+.1f} MB)'.format(
        rss_warm / 2 ** 20, rss_end / 2 ** 20, (rss_end - rss_warm) / 2 ** 20))
    assert rss_end - rss_warm < RSS_GROWTH_LIMIT

    # the clients are gone: no connection from them is left (the support monitor's own
    # posts to /support_update_status come and go), and towards the children only the pool's
    # kept-alive ones: per child, at most one per client thread, one for the support loop's
    # pings and one for /list_servers' (all that ever ran at once)
    def inbound_and_outbound():
        connections = gateway_connections(gateway_pid)
        inbound = [c for c in connections if c.laddr.port == gateway.port]
        return inbound, [c for c in connections if c not in inbound]

    outbound_limit = 2 * (CLIENT_THREADS + 2)
    inbound, outbound = wait_until(
        inbound_and_outbound, lambda io: len(io[0]) <= 2 and len(io[1]) <= outbound_limit, timeout=10,
        what='at most 2 inbound and {} outbound gateway connections once the clients closed'.format(outbound_limit))
    print('soak: gateway TCP connections before the traffic {}, after the clients closed {} inbound + {} to the '
          'children (by state: {})'.format(baseline_connections, len(inbound), len(outbound),
                                           dict(collections.Counter(c.status for c in inbound + outbound))))
    assert problems_in_logs(gateway, tmp_path / '_cache') == []
