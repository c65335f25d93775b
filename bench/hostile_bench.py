"""Two measurements of the gateway under hostile load, each against a real gateway
(``python -m bis_twisted.gateway.cli``) on loopback with the repo's ``dummy_model_demo2``:

- ``slowloris``: N connections each sending one header byte a second; after D seconds, how
  many are still open and how many file descriptors the gateway holds (before: at start).
- ``bodies``: N concurrent POST /run with a body of M MiB; the gateway's peak RSS while they
  run, its RSS afterwards, and the statuses.
- ``answer``: one answer of M MiB from the model server (an endpoint written for it); the
  gateway's peak RSS and the status.

    python bench/hostile_bench.py slowloris --connections 500 --duration 30
    python bench/hostile_bench.py bodies --requests 100 --mib 7
    python bench/hostile_bench.py answer --mib 300
    python bench/hostile_bench.py ... --repo /path/to/another/checkout   # e.g. an older commit

Figures depend on the machine and what else runs on it: compare runs made side by side.
"""

import argparse
import collections
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


BIG_ANSWER = """
from bis_twisted import FlaskWorker


class BigAnswerWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs

    def _predict(self, inputs):
        return 'x' * int(inputs['MIB'] * 1024 * 1024)

    def _post_process(self, pred):
        return pred
"""


def start_gateway(repo, workdir, config, endpoints=None):
    port = free_port()
    while port + 1 == free_port():  # the child takes the next port
        port = free_port()
    path = os.path.join(workdir, 'config_gateway.txt')
    with open(path, 'w') as fh:
        json.dump(config, fh)
    env = dict(os.environ, PYTHONPATH=repo, PYTHONUNBUFFERED='1')
    env.pop('BIS_ADMIN_TOKEN', None)
    proc = subprocess.Popen([sys.executable, '-m', 'bis_twisted.gateway.cli', '--config', path, '--port', str(port),
                             '--host', '127.0.0.1', '--endpoints', endpoints or os.path.join(repo, 'endpoints'),
                             '--cache', os.path.join(workdir, '_cache')],
                            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection('127.0.0.1', port, timeout=2)
            conn.request('GET', '/ready')
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit('the gateway did not get ready')


CONFIG = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'dummy_model_demo2',
          'CONFIG_ENDPOINTS': {'dummy_model_demo2': {'NR_WORKERS': 4, 'WEIGHT': 2, 'BIAS': 1}}}


def slowloris(args, proc, port):
    gateway = psutil.Process(proc.pid)
    fds_before = gateway.num_fds()
    socks, opened_at = [], time.monotonic()
    for _ in range(args.connections):
        sock = socket.create_connection(('127.0.0.1', port), timeout=5)
        sock.sendall(b'POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\n')
        sock.setblocking(False)
        socks.append(sock)
    open_socks = set(socks)
    answers = collections.Counter()
    while time.monotonic() - opened_at < args.duration:
        for sock in list(open_socks):
            try:
                data = sock.recv(4096)
                if data:
                    answers[data.split(b'\r\n', 1)[0].decode('latin-1')] += 1
                open_socks.discard(sock)  # an answer or a close: the gateway let go
                continue
            except BlockingIOError:
                pass
            except OSError:
                open_socks.discard(sock)
                continue
            try:
                sock.send(b'X')
            except OSError:
                open_socks.discard(sock)
        time.sleep(1)
    fds_after = gateway.num_fds()
    for sock in socks:
        sock.close()
    return {'connections': args.connections, 'seconds': args.duration, 'still_open': len(open_socks),
            'gateway_fds_before': fds_before, 'gateway_fds_after': fds_after, 'answers': dict(answers)}


def bodies(args, proc, port):
    gateway = psutil.Process(proc.pid)
    rss_before = gateway.memory_info().rss
    pad = 'p' * int(args.mib * 1024 * 1024)
    body = json.dumps({'SIGNATURE': 'dummy_model_demo2', 'INPUT_VALUE': 1, 'PAD': pad}).encode()
    del pad
    statuses = collections.Counter()
    peak = [rss_before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], gateway.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    def one():
        try:
            conn = http.client.HTTPConnection('127.0.0.1', port, timeout=120)
            conn.request('POST', '/run', body, {'Content-Type': 'application/json'})
            answer = conn.getresponse()
            answer.read()
            statuses[answer.status] += 1
        except OSError as exc:
            statuses[type(exc).__name__] += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(args.requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    time.sleep(1)
    done.set()
    sampler.join()
    return {'requests': args.requests, 'MiB_each': args.mib, 'seconds': round(elapsed, 1),
            'statuses': {str(k): v for k, v in statuses.items()},
            'gateway_rss_before_MB': round(rss_before / 1e6), 'gateway_peak_rss_MB': round(peak[0] / 1e6),
            'gateway_rss_after_MB': round(gateway.memory_info().rss / 1e6)}


def answer(args, proc, port):
    gateway = psutil.Process(proc.pid)
    rss_before = gateway.memory_info().rss
    peak = [rss_before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], gateway.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=300)
    conn.request('POST', '/run', json.dumps({'SIGNATURE': 'big_answer', 'MIB': args.mib}).encode(),
                 {'Content-Type': 'application/json'})
    response = conn.getresponse()
    body = response.read()
    time.sleep(0.5)
    done.set()
    sampler.join()
    return {'MiB': args.mib, 'status': response.status, 'answer_bytes': len(body),
            'error': json.loads(body).get('ERROR') if response.status != 200 else None,
            'gateway_rss_before_MB': round(rss_before / 1e6), 'gateway_peak_rss_MB': round(peak[0] / 1e6)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('what', choices=['slowloris', 'bodies', 'answer'])
    parser.add_argument('--repo', default=REPO, help='checkout whose gateway to run (default: this one)')
    parser.add_argument('--connections', type=int, default=500)
    parser.add_argument('--duration', type=float, default=30)
    parser.add_argument('--requests', type=int, default=100)
    parser.add_argument('--mib', type=float, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        config, endpoints = CONFIG, None
        if args.what == 'answer':
            endpoints = os.path.join(workdir, 'endpoints')
            os.makedirs(endpoints)
            with open(os.path.join(endpoints, 'big_answer.py'), 'w') as fh:
                fh.write(BIG_ANSWER)
            config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'big_answer',
                      'CONFIG_ENDPOINTS': {'big_answer': {'TIMEOUT': 240}}}
        proc, port = start_gateway(os.path.abspath(args.repo), workdir, config, endpoints)
        try:
            result = {'slowloris': slowloris, 'bodies': bodies, 'answer': answer}[args.what](args, proc, port)
        finally:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
    print(json.dumps(result))


if __name__ == '__main__':
    main()
