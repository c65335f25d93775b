#!/usr/bin/env python3
"""The bis_twisted benchmark: one command, side-by-side figures from one run.

    python bench/run_bench.py                # full run (about 6 minutes)
    python bench/run_bench.py --duration 3   # shorter wrk runs

It starts the real gateway (``bis-gateway``) on loopback with the endpoints in
``bench/endpoints`` and drives it with ``wrk`` (installed with apt-get if missing):

- requests/s and p50/p99 latency straight to the endpoint server and through the gateway,
  for a trivial endpoint (echo) and a CPU-light one, at concurrency 1, 16, 64 and 256,
  direct and gateway runs interleaved so machine noise hits both alike;
- the gateway's and each child's memory;
- time from launch to ready (the example config_gateway.txt, and the bench config);
- time until a child's endpoint serves again after ``kill -9``;
- 1,000 requests at once to a model that sleeps 1 s with 100 workers: how many answered,
  in how long, with the gateway's peak memory;
- a CPU-bound endpoint with REPLICAS 1 and 2;
- the cost of the metrics and of the access log: the ratio to direct with ``METRICS`` on
  and off, and with ``ACCESS_LOG`` on and off (``--access-log`` runs this part alone);
- dynamic batching: the iris example and a numpy model with a fixed cost per call at
  concurrency 1, 16 and 64, ``MAX_BATCH_SIZE`` 1 and 32 side by side, and with ``--peers``
  LitServe's batched iris beside them (LitServe runs from its own venv, bench/.peers-venv,
  made on first use). ``--batching`` runs this part alone (under a minute).

Prints the table, and writes it (Markdown + JSON) and a PNG chart (if matplotlib is
installed: ``pip install -e '.[bench]'``) under ``bench/results/``.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, 'results')
CONCURRENCY = (1, 16, 64, 256)

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ensure_wrk():
    if shutil.which('wrk'):
        return shutil.which('wrk')
    print('wrk not found: installing it with apt-get (Debian package "wrk")', flush=True)
    subprocess.run(['apt-get', 'update', '-qq'], check=False)
    subprocess.run(['apt-get', 'install', '-y', '-qq', 'wrk'], check=True)
    return shutil.which('wrk')


def free_block(size):
    port = 30000 + (os.getpid() % 1000) * 20
    while True:
        try:
            socks = []
            for p in range(port, port + size):
                s = socket.socket()
                socks.append(s)
                s.bind(('127.0.0.1', p))
            return port
        except OSError:
            port += size
        finally:
            for s in socks:
                s.close()


def http(method, url, body=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={'Content-Type': 'application/json'})
    try:
        with _opener.open(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b'{}')
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b'{}')


def wait_for(probe, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.02)  # each /ready asks every child: polling harder would slow the start it measures
    raise RuntimeError('timed out waiting for ' + what)


def stop_group(proc, timeout):
    """TERM the process group ``proc`` leads, KILL it after ``timeout`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Gateway:
    def __init__(self, config, endpoints, workdir, env=None):
        self.port = free_block(16)
        cfg_path = os.path.join(workdir, 'config_{}.json'.format(self.port))
        with open(cfg_path, 'w') as fh:
            json.dump(config, fh)
        self.url = 'http://127.0.0.1:{}'.format(self.port)
        # a cache of its own: a gateway ends the children that other pid files in its cache name
        self.cache = os.path.join(workdir, '_cache_{}'.format(self.port))
        self.started = time.monotonic()
        # this checkout's bis_twisted, whether or not the package is installed
        env = dict(os.environ if env is None else env)
        env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO, env.get('PYTHONPATH')) if p)
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'bis_twisted.gateway.cli', '--config', cfg_path, '--port', str(self.port),
             '--host', '127.0.0.1', '--endpoints', endpoints, '--cache', self.cache],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        self.ready_at = wait_for(lambda: http('GET', self.url + '/ready', timeout=2)[0] == 200, 60, '/ready')

    @property
    def ready_seconds(self):
        return self.ready_at - self.started

    def servers(self):
        return http('GET', self.url + '/list_servers')[1]['AVAIL_SERVERS']

    def memory(self):
        gw = psutil.Process(self.proc.pid)
        out = {'gateway': gw.memory_info().rss / 2 ** 20}
        for name, info in self.servers().items():
            pids = [r['PID'] for r in info.get('REPLICAS', [])] or [info['PID']]
            out[name] = sum(psutil.Process(p).memory_info().rss for p in pids if p) / 2 ** 20
        return out

    def stop(self):
        stop_group(self.proc, 20)


def wrk(wrk_bin, url, body, concurrency, duration, timeout=10):
    script = tempfile.NamedTemporaryFile('w', suffix='.lua', delete=False)
    script.write('wrk.method = "POST"\nwrk.body = {!r}\nwrk.headers["Content-Type"] = "application/json"\n'
                 .format(json.dumps(body)))
    script.close()
    threads = min(2, concurrency)
    out = subprocess.run([wrk_bin, '-t', str(threads), '-c', str(concurrency), '-d', '{}s'.format(duration),
                          '--timeout', '{}s'.format(timeout), '--latency', '-s', script.name, url],
                         capture_output=True, text=True).stdout
    os.unlink(script.name)
    return parse_wrk(out)


def _ms(text):
    value, unit = re.match(r'([\d.]+)(us|ms|s|m)', text).groups()
    return float(value) * {'us': 0.001, 'ms': 1, 's': 1000, 'm': 60000}[unit]


def parse_wrk(out):
    rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
    p50 = _ms(re.search(r'\s50%\s+(\S+)', out).group(1))
    p99 = _ms(re.search(r'\s99%\s+(\S+)', out).group(1))
    total = int(re.search(r'(\d+) requests in', out).group(1))
    non2xx = int((re.search(r'Non-2xx or 3xx responses: (\d+)', out) or [0, 0])[1])
    sock = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', out)
    sock_errors = sum(int(x) for x in sock.groups()) if sock else 0
    return {'rps': rps, 'p50_ms': p50, 'p99_ms': p99, 'requests': total, 'errors': non2xx + sock_errors}


def direct_url(gateway, name):
    return gateway.servers()[name]['URLS'][0]


def bench_throughput(wrk_bin, gateway, duration):
    rows = []
    for name, body in (('echo', {'SIGNATURE': 'echo', 'INPUT_VALUE': 'x'}),
                       ('cpu_light', {'SIGNATURE': 'cpu_light', 'INPUT_VALUE': 200})):
        direct = direct_url(gateway, name)
        for c in CONCURRENCY:
            d = wrk(wrk_bin, direct, body, c, duration)
            g = wrk(wrk_bin, gateway.url + '/run', body, c, duration)
            row = {'endpoint': name, 'c': c, 'direct': d, 'gateway': g, 'ratio': g['rps'] / d['rps'] if d['rps'] else 0,
                   'added_p50_ms': g['p50_ms'] - d['p50_ms']}
            rows.append(row)
            print('{:<10} c={:<4} direct {:>8.0f} req/s p50 {:6.2f} ms p99 {:7.2f} ms | gateway {:>8.0f} req/s '
                  'p50 {:6.2f} ms p99 {:7.2f} ms | ratio {:4.0%} errors {}/{}'.format(
                      name, c, d['rps'], d['p50_ms'], d['p99_ms'], g['rps'], g['p50_ms'], g['p99_ms'],
                      row['ratio'], d['errors'], g['errors']), flush=True)
    return rows


def bench_recovery(gateway, name='echo'):
    pid = gateway.servers()[name]['PID']
    body = {'SIGNATURE': name, 'INPUT_VALUE': 'x'}
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    back = wait_for(lambda: http('POST', gateway.url + '/run', body, timeout=2)[0] == 200, 30, 'recovery')
    return back - killed


def bench_sleepers(gateway, count=1000):
    """``count`` requests at once (one thread and connection each) to a model that sleeps 1 s
    with 100 workers: how many were answered 200, how long the last one took, and the
    gateway's peak memory meanwhile."""
    peak = [0.0]
    stop = threading.Event()
    proc = psutil.Process(gateway.proc.pid)

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss / 2 ** 20)
            time.sleep(0.05)

    statuses = []
    latencies = []
    lock = threading.Lock()
    go = threading.Event()

    def one():
        go.wait()
        started = time.monotonic()
        try:
            status, _ = http('POST', gateway.url + '/run', {'SIGNATURE': 'sleeper', 'SECONDS': 1}, timeout=60)
        except OSError as exc:
            status = type(exc).__name__
        with lock:
            statuses.append(status)
            latencies.append(time.monotonic() - started)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    started = time.monotonic()
    go.set()
    for t in threads:
        t.join(120)
    wall = time.monotonic() - started
    stop.set()
    sampler.join()
    latencies.sort()
    by_status = {}
    for status in statuses:
        by_status[str(status)] = by_status.get(str(status), 0) + 1
    return {'sent': count, 'answered_200': by_status.get('200', 0), 'by_status': by_status, 'wall_s': wall,
            'p50_ms': latencies[len(latencies) // 2] * 1000, 'p99_ms': latencies[int(len(latencies) * 0.99) - 1] * 1000,
            'gateway_peak_mb': peak[0]}


def _median_run(runs):
    runs = sorted(runs, key=lambda r: r['rps'])
    return dict(runs[len(runs) // 2], all_rps=[r['rps'] for r in runs])


def bench_replicas(wrk_bin, gateway, duration, rounds=3):
    """CPU-bound endpoint with REPLICAS 1 and 2, interleaved ``rounds`` times; medians."""
    runs = {'cpu_bound_1': [], 'cpu_bound_2': []}
    for _ in range(rounds):
        for name in runs:
            runs[name].append(wrk(wrk_bin, gateway.url + '/run', {'SIGNATURE': name, 'INPUT_VALUE': 200000}, 8,
                                  duration))
    out = {name: _median_run(r) for name, r in runs.items()}
    print('CPU-bound REPLICAS 1 vs 2: {:.1f} vs {:.1f} req/s'.format(out['cpu_bound_1']['rps'],
                                                                    out['cpu_bound_2']['rps']), flush=True)
    return out


def bench_metrics_cost(wrk_bin, workdir, duration, rounds=4, key='METRICS'):
    """The same echo endpoint behind a gateway with ``key`` (METRICS, or ACCESS_LOG) on and
    one with it false, each against its own child directly, interleaved (the order flips each
    round): the ratio to direct, and the gateway's own req/s, with and without."""
    gateways = {}
    for label, switch in (('on', True), ('off', False)):
        config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'echo', key: switch,
                  'CONFIG_ENDPOINTS': {'echo': {'NR_WORKERS': 4}}}
        gateways[label] = Gateway(config, os.path.join(HERE, 'endpoints'), workdir)
    body = {'SIGNATURE': 'echo', 'INPUT_VALUE': 'x'}
    ratios = {'on': [], 'off': []}
    gateway_rps = {'on': [], 'off': []}
    cpu_us = {'on': [], 'off': []}  # the gateway's CPU time per request: far steadier than req/s
    try:
        for round_no in range(rounds):
            for label in (('on', 'off') if round_no % 2 == 0 else ('off', 'on')):
                gateway = gateways[label]
                process = psutil.Process(gateway.proc.pid)
                direct = wrk(wrk_bin, direct_url(gateway, 'echo'), body, 64, duration)
                cpu_before = sum(process.cpu_times()[:2])
                through = wrk(wrk_bin, gateway.url + '/run', body, 64, duration)
                cpu_us[label].append((sum(process.cpu_times()[:2]) - cpu_before) / through['requests'] * 1e6)
                ratios[label].append(through['rps'] / direct['rps'])
                gateway_rps[label].append(through['rps'])
    finally:
        for gateway in gateways.values():
            gateway.stop()
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    out = {label: median(r) for label, r in ratios.items()}
    out['gateway_rps'] = {label: sum(r) / len(r) for label, r in gateway_rps.items()}
    out['cpu_us_per_request'] = {label: median(r) for label, r in cpu_us.items()}
    out['runs'] = ratios
    print('ratio to direct at c=64: {} on {:.0%}, off {:.0%}; gateway mean req/s on {:.0f}, off {:.0f}; '
          'gateway CPU per request on {:.0f} us, off {:.0f} us'.format(
              key, out['on'], out['off'], out['gateway_rps']['on'], out['gateway_rps']['off'],
              out['cpu_us_per_request']['on'], out['cpu_us_per_request']['off']), flush=True)
    return out


BATCH_CONCURRENCY = (1, 16, 64)
BATCH_SIZES = (1, 32)
IRIS_BODY = {'FEATURES': [5.1, 3.5, 1.4, 0.2]}
MATMUL_BODY = {'X': [0.5, -1.0, 0.25, 2.0, 0.0, 1.5, -0.5, 1.0]}
# one BLAS thread per process: the fixed cost stays fixed, and BLAS threads do not fight
# the gateway and the other children for the two cores
BLAS_ENV = {'OPENBLAS_NUM_THREADS': '1', 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
# iris as the example config serves it (one worker: batched, its Python no longer needs a
# second one); the matrix product releases the GIL, so two worker threads
BATCH_SHAPES = {'iris': {'SERVER_CLASS': 'iris_classifier', 'NR_WORKERS': 1},
                'matmul': {'SERVER_CLASS': 'matmul', 'NR_WORKERS': 2}}
DIRECT_AT = (64,)
C1_ROUNDS = 3  # straight to the model server too (as LitServe is measured), at these c
PEERS_VENV = os.path.join(HERE, '.peers-venv')


def batching_endpoints(workdir):
    """bench/endpoints plus the iris example, in one folder for one gateway."""
    folder = os.path.join(workdir, 'batching-endpoints')
    os.makedirs(folder, exist_ok=True)
    for source in [os.path.join(HERE, 'endpoints', 'matmul.py'), os.path.join(REPO, 'endpoints', 'iris_classifier.py')]:
        shutil.copy(source, folder)
    return folder


def peers_python():
    """LitServe's interpreter, in its own venv under bench/ (made on first use)."""
    python = os.path.join(PEERS_VENV, 'bin', 'python')
    if not os.path.exists(python):
        print('making {} with litserve (first use)'.format(PEERS_VENV), flush=True)
        subprocess.run([sys.executable, '-m', 'venv', PEERS_VENV], check=True)
        subprocess.run([python, '-m', 'pip', 'install', '-q', 'litserve', 'scikit-learn', 'numpy'], check=True)
    return python


class LitServeIris:
    """LitServe serving the same iris model, batched (bench/peers/litserve_iris.py)."""

    def __init__(self, python, max_batch_size=32, batch_timeout=0.01, workers=2):
        self.port = free_block(1)
        self.url = 'http://127.0.0.1:{}/predict'.format(self.port)
        self.settings = {'max_batch_size': max_batch_size, 'batch_timeout': batch_timeout, 'workers': workers}
        self.proc = subprocess.Popen(
            [python, os.path.join(HERE, 'peers', 'litserve_iris.py'), str(self.port), str(max_batch_size),
             str(batch_timeout), str(workers)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=dict(os.environ, **BLAS_ENV))
        wait_for(lambda: http('POST', self.url, IRIS_BODY, timeout=2)[0] == 200, 60, 'LitServe to answer')

    def stop(self):
        stop_group(self.proc, 10)


def bench_batching(wrk_bin, workdir, duration, peers=False):
    """Through the gateway, for iris and the fixed-cost model: MAX_BATCH_SIZE 1 against 32 at
    each concurrency, interleaved, with LitServe's batched iris in the same round."""
    endpoints = {}
    for model, shape in BATCH_SHAPES.items():
        for size in BATCH_SIZES:
            endpoints['{}_b{}'.format(model, size)] = dict(shape, MAX_BATCH_SIZE=size, BATCH_TIMEOUT=0.01)
    config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'iris_b1', 'CONFIG_ENDPOINTS': endpoints}
    gateway = Gateway(config, batching_endpoints(workdir), workdir, env=dict(os.environ, **BLAS_ENV))
    litserve = LitServeIris(peers_python()) if peers else None
    rows = []
    try:
        for c in BATCH_CONCURRENCY:
            for model, body in (('iris', IRIS_BODY), ('matmul', MATMUL_BODY)):
                row = {'model': model, 'c': c}
                if c == 1:  # the added p50 is a fraction of a ms: median of interleaved short rounds
                    runs = {size: [] for size in BATCH_SIZES}
                    for _ in range(C1_ROUNDS):
                        for size in BATCH_SIZES:
                            runs[size].append(wrk(wrk_bin, gateway.url + '/run',
                                                  dict(body, SIGNATURE='{}_b{}'.format(model, size)), 1,
                                                  max(1, duration // 2)))
                    for size in BATCH_SIZES:
                        ordered = sorted(runs[size], key=lambda r: r['p50_ms'])
                        row['b{}'.format(size)] = dict(ordered[len(ordered) // 2],
                                                       p50_runs=[r['p50_ms'] for r in runs[size]])
                for size in BATCH_SIZES:
                    name = '{}_b{}'.format(model, size)
                    if c != 1:
                        row['b{}'.format(size)] = wrk(wrk_bin, gateway.url + '/run', dict(body, SIGNATURE=name), c,
                                                      duration)
                    if c in DIRECT_AT:
                        row['b{}_direct'.format(size)] = wrk(wrk_bin, direct_url(gateway, name), body, c, duration)
                if model == 'iris' and litserve is not None:
                    row['litserve'] = wrk(wrk_bin, litserve.url, body, c, duration)
                rows.append(row)
                print(_batching_line(row), flush=True)
        sizes = _mean_batch_sizes(gateway)
    finally:
        gateway.stop()
        if litserve is not None:
            litserve.stop()
    return {'rows': rows, 'shapes': BATCH_SHAPES, 'litserve': litserve.settings if litserve else None,
            'mean_batch_size': sizes}


def _mean_batch_sizes(gateway):
    """Requests per _predict call over the whole run, per endpoint (from /metrics)."""
    with _opener.open(gateway.url + '/metrics', timeout=10) as answer:
        text = answer.read().decode()
    found = {}
    for line in text.splitlines():
        match = re.match(r'bis_batch_size_(sum|count)\{endpoint="([^"]+)"\} (\S+)', line)
        if match:
            found.setdefault(match.group(2), {})[match.group(1)] = float(match.group(3))
    return {name: round(v['sum'] / v['count'], 1) for name, v in found.items() if v.get('count')}


def _batching_line(row):
    parts = ['{:<6} c={:<3}'.format(row['model'], row['c'])]
    for key in ('b1', 'b32', 'b1_direct', 'b32_direct', 'litserve'):
        if key in row:
            r = row[key]
            parts.append('{} {:>6.0f} req/s p50 {:6.2f} p99 {:7.2f} err {}'.format(
                key, r['rps'], r['p50_ms'], r['p99_ms'], r['errors']))
    return ' | '.join(parts)


def batching_table(batching):
    """One line per (model, c, path): gateway rows always, direct rows where measured."""
    lines = ['| model | c | path | b=1 req/s | b=1 p50 / p99 ms | b=32 req/s | b=32 p50 / p99 ms | b=32 / b=1 '
             '| LitServe b=32 req/s | LitServe p50 / p99 ms | ours b=32 / LitServe |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    ratio = lambda a, b: '{:.2f}x'.format(a['rps'] / b['rps']) if b and b['rps'] else ''  # noqa: E731
    cell = lambda r: ('{:.0f}'.format(r['rps']), '{:.2f} / {:.2f}'.format(r['p50_ms'], r['p99_ms'])) if r else ('', '')  # noqa: E731
    for row in batching['rows']:
        peer = row.get('litserve')
        for path, suffix in (('gateway', ''), ('direct', '_direct')):
            one, many = row.get('b1' + suffix), row.get('b32' + suffix)
            if many is None:
                continue
            cells = [row['model'], row['c'], path, *cell(one), *cell(many), ratio(many, one), *cell(peer),
                     ratio(many, peer) if peer else '']
            lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
    for row in batching['rows']:
        if row['c'] == 1 and 'p50_runs' in row['b1']:
            lines.append('')
            lines.append('{} c=1 p50 over {} interleaved rounds (median in the table): b=1 {} ms, b=32 {} ms; '
                         'batching on adds {:+.2f} ms'.format(row['model'], len(row['b1']['p50_runs']),
                                                             row['b1']['p50_runs'], row['b32']['p50_runs'],
                                                             row['b32']['p50_ms'] - row['b1']['p50_ms']))
    if batching.get('mean_batch_size'):
        lines += ['', 'requests per _predict call over the run: ' + ', '.join(
            '{} {}'.format(name, size) for name, size in sorted(batching['mean_batch_size'].items()))]
    return lines


def launch_to_ready_examples(workdir):
    gw = Gateway(json.load(open(os.path.join(REPO, 'config_gateway.txt'))), os.path.join(REPO, 'endpoints'), workdir)
    seconds = gw.ready_seconds
    gw.stop()
    return seconds


def write_report(report, stamp):
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, 'bench-' + stamp)
    with open(base + '.json', 'w') as fh:
        json.dump(report, fh, indent=2)
    lines = ['# bis_twisted benchmark {}'.format(stamp), '',
             'machine: {} cores, {:.0f} GiB, {}, Python {}'.format(
                 psutil.cpu_count(), psutil.virtual_memory().total / 2 ** 30, report['platform'], report['python']),
             '', '| endpoint | c | direct req/s | direct p50 ms | direct p99 ms | gateway req/s | gateway p50 ms '
                 '| gateway p99 ms | ratio | gateway errors |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in report['throughput']:
        lines.append('| {} | {} | {:.0f} | {:.2f} | {:.2f} | {:.0f} | {:.2f} | {:.2f} | {:.0%} | {} |'.format(
            r['endpoint'], r['c'], r['direct']['rps'], r['direct']['p50_ms'], r['direct']['p99_ms'],
            r['gateway']['rps'], r['gateway']['p50_ms'], r['gateway']['p99_ms'], r['ratio'], r['gateway']['errors']))
    s = report['sleepers']
    lines += ['', '| measure | value |', '|---|---|',
              '| launch to ready, example config_gateway.txt | {:.2f} s |'.format(report['ready_examples_s']),
              '| launch to ready, bench config | {:.2f} s |'.format(report['ready_bench_s']),
              '| serving again after kill -9 of a child | {:.3f} s |'.format(report['recovery_s']),
              '| 1,000 concurrent to a 1 s model, 100 workers | {} of {} answered 200 in {:.1f} s (p50 {:.0f} ms, '
              'p99 {:.0f} ms) |'.format(s['answered_200'], s['sent'], s['wall_s'], s['p50_ms'], s['p99_ms']),
              '| gateway peak memory during that | {:.0f} MB |'.format(s['gateway_peak_mb'])]
    for name, mb in report['memory_mb'].items():
        lines.append('| memory of {} | {:.0f} MB |'.format(name, mb))
    rep = report['replicas']
    lines.append('| CPU-bound, REPLICAS 1 vs 2 (c=8, median of 3 interleaved) | {:.1f} vs {:.1f} req/s ({:.2f}x) |'.format(
        rep['cpu_bound_1']['rps'], rep['cpu_bound_2']['rps'],
        rep['cpu_bound_2']['rps'] / rep['cpu_bound_1']['rps'] if rep['cpu_bound_1']['rps'] else 0))
    cost = report['metrics_cost']
    lines.append('| echo c=64 with metrics on vs off (4 interleaved rounds): median ratio to direct; gateway mean '
                 'req/s; gateway CPU per request | {:.0%} vs {:.0%}; {:.0f} vs {:.0f}; {:.0f} vs {:.0f} us |'.format(
                     cost['on'], cost['off'], cost['gateway_rps']['on'], cost['gateway_rps']['off'],
                     cost['cpu_us_per_request']['on'], cost['cpu_us_per_request']['off']))
    cost = report['access_log_cost']
    lines.append('| echo c=64 with the access log on vs off (4 interleaved rounds): median ratio to direct; gateway '
                 'mean req/s; gateway CPU per request | {:.0%} vs {:.0%}; {:.0f} vs {:.0f}; {:.0f} vs {:.0f} us |'.format(
                     cost['on'], cost['off'], cost['gateway_rps']['on'], cost['gateway_rps']['off'],
                     cost['cpu_us_per_request']['on'], cost['cpu_us_per_request']['off']))
    if report.get('batching'):
        lines += ['', 'Dynamic batching, through the gateway (shapes: {})'.format(report['batching']['shapes']), '']
        lines += batching_table(report['batching'])
    text = '\n'.join(lines) + '\n'
    with open(base + '.md', 'w') as fh:
        fh.write(text)
    print('\n' + text)
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('(no chart: pip install matplotlib)')
        return base
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for endpoint in ('echo', 'cpu_light'):
        rows = [r for r in report['throughput'] if r['endpoint'] == endpoint]
        cs = [r['c'] for r in rows]
        for path, style in (('direct', '--'), ('gateway', '-')):
            ax1.plot(cs, [r[path]['rps'] for r in rows], style, marker='o', label='{} {}'.format(endpoint, path))
            ax2.plot(cs, [r[path]['p99_ms'] for r in rows], style, marker='o', label='{} {}'.format(endpoint, path))
    for ax, title in ((ax1, 'throughput (req/s)'), (ax2, 'p99 latency (ms)')):
        ax.set_xscale('log', base=2)
        ax.set_xticks(CONCURRENCY)
        ax.set_xticklabels([str(c) for c in CONCURRENCY])
        ax.set_xlabel('concurrency')
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(base + '.png', dpi=100)
    print('chart: ' + base + '.png')
    return base


def write_batching_report(batching, stamp, duration):
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, 'batching-' + stamp)
    with open(base + '.json', 'w') as fh:
        json.dump(dict(batching, duration_s=duration), fh, indent=2)
    lines = ['# bis_twisted batching benchmark {}'.format(stamp), '',
             'machine: {} cores, {:.0f} GiB, Python {}; wrk {} s per cell; shapes: {}; LitServe: {}'.format(
                 psutil.cpu_count(), psutil.virtual_memory().total / 2 ** 30, sys.version.split()[0], duration,
                 batching['shapes'], batching['litserve']), ''] + batching_table(batching)
    text = '\n'.join(lines) + '\n'
    with open(base + '.md', 'w') as fh:
        fh.write(text)
    print('\n' + text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--duration', type=int, default=None, help='seconds per wrk run (default 5)')
    parser.add_argument('--batching', action='store_true',
                        help='run only the dynamic batching rows (2 s per wrk run unless --duration)')
    parser.add_argument('--peers', action='store_true', help="add LitServe's batched iris to the batching rows")
    parser.add_argument('--access-log', action='store_true',
                        help='run only the access log on/off rows (echo, c=64, 4 interleaved rounds)')
    args = parser.parse_args()
    wrk_bin = ensure_wrk()
    stamp = time.strftime('%Y%m%d-%H%M%S')
    workdir = tempfile.mkdtemp(prefix='bis-bench-')
    if args.duration is None:
        args.duration = 2 if args.batching else 5
    if args.access_log:
        bench_metrics_cost(wrk_bin, workdir, args.duration, key='ACCESS_LOG')
        return
    if args.batching:
        batching = bench_batching(wrk_bin, workdir, args.duration, peers=args.peers)
        write_batching_report(batching, stamp, args.duration)
        return
    config = {'NO_STARTUP_WAIT': False, 'DEFAULT_SERVER': 'echo', 'CONFIG_ENDPOINTS': {
        'echo': {'NR_WORKERS': 4},
        'cpu_light': {'NR_WORKERS': 4},
        'sleeper': {'NR_WORKERS': 100, 'MAX_QUEUE': 2000, 'TIMEOUT': 60},
        'cpu_bound_1': {'SERVER_CLASS': 'cpu_bound', 'NR_WORKERS': 4},
        'cpu_bound_2': {'SERVER_CLASS': 'cpu_bound', 'NR_WORKERS': 4, 'REPLICAS': 2},
    }}
    report = {'platform': sys.platform, 'python': sys.version.split()[0], 'duration_s': args.duration}
    report['ready_examples_s'] = launch_to_ready_examples(workdir)
    print('launch to ready (example config): {:.2f} s'.format(report['ready_examples_s']), flush=True)
    gateway = Gateway(config, os.path.join(HERE, 'endpoints'), workdir)
    try:
        report['ready_bench_s'] = gateway.ready_seconds
        report['throughput'] = bench_throughput(wrk_bin, gateway, args.duration)
        report['memory_mb'] = gateway.memory()
        report['recovery_s'] = bench_recovery(gateway)
        print('serving again {:.3f} s after kill -9'.format(report['recovery_s']), flush=True)
        report['sleepers'] = bench_sleepers(gateway)
        print('1000 concurrent to sleeper: {}'.format(report['sleepers']), flush=True)
        report['replicas'] = bench_replicas(wrk_bin, gateway, args.duration)
    finally:
        gateway.stop()
    report['metrics_cost'] = bench_metrics_cost(wrk_bin, workdir, args.duration)
    report['access_log_cost'] = bench_metrics_cost(wrk_bin, workdir, args.duration, key='ACCESS_LOG')
    report['batching'] = bench_batching(wrk_bin, workdir, args.duration, peers=args.peers)
    write_report(report, stamp)


if __name__ == '__main__':
    main()
