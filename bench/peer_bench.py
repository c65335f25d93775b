#!/usr/bin/env python3
"""bis_twisted beside LitServe, the peer of the same shape (an HTTP front, worker processes),
and beside the floor of twisted.web itself, in one run:

    python bench/peer_bench.py --peers             # both cases, LitServe beside us
    python bench/peer_bench.py --case demo2        # ours only, the demo2 case
    python bench/peer_bench.py --case demo2 --gc-ab  # also a gateway with BIS_GC_FREEZE=0
    python bench/peer_bench.py --inner-ab          # also a gateway whose inner leg is HTTP (BIS_INNER_FRAMES=0)
    python bench/peer_bench.py --before ../main    # also a gateway running another checkout's code
    python bench/peer_bench.py --case demo2 --httptools  # also an httptools channel's floor (bench/floor_httptools.py)
    python bench/peer_bench.py --peers --case iris --duration 3 --rounds 3

Two cases, each its own table:

- ``demo2``: the original's dummy_model_demo2, 2 workers. Rows: through our gateway (on the
  default HTTP front, or ``BIS_HTTP_FRONT``'s), the same gateway on the other front
  (``gateway, httptools front`` or ``gateway, twisted front``), our model server direct (HTTP to its TCP port), a bare twisted.web ``Resource`` answering a
  constant (``bench/floor_twisted.py``: the floor of any twisted.web server here), and with
  ``--peers`` LitServe (``workers_per_device=2``).
- ``iris``: the iris example batched (``MAX_BATCH_SIZE`` 32, ``BATCH_TIMEOUT`` 0.01,
  ``NR_WORKERS`` 1, ``REPLICAS`` 2) through the gateway, the same with batching off
  (``MAX_BATCH_SIZE`` 1), one batched replica direct, and with ``--peers`` LitServe batched
  (32, 0.01, 2 workers).

For each concurrency (1, 16, 64) the targets run one after the other, in an order that turns
round each round, so the machine's noise falls on all alike; each cell is the median of the
rounds. Beside req/s and p50/p99, each of our rows has the CPU time (psutil: user + system)
the gateway and the model server(s) spent per request over that run, and the iris rows the
mean batch the model servers ran. Every table starts with a calibration line: the time of a
fixed pure-Python loop, to tell a slow machine from a slow change. LitServe runs from its own
venv (bench/.peers-venv, made on first use); results are written as JSON under bench/results/.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_bench as rb  # noqa: E402  (the gateway launcher, wrk and its parser)

CONCURRENCY = (1, 16, 64)
BODY = {'SIGNATURE': 'dummy_model_demo2', 'INPUT_VALUE': 3}
CONFIG = {'CONFIG_ENDPOINTS': {'dummy_model_demo2': {'NR_WORKERS': 2, 'WEIGHT': 2, 'BIAS': 1}}}
IRIS_SHAPE = {'SERVER_CLASS': 'iris_classifier', 'NR_WORKERS': 1, 'REPLICAS': 2, 'BATCH_TIMEOUT': 0.01}
IRIS_CONFIG = {'CONFIG_ENDPOINTS': {'iris_b32': dict(IRIS_SHAPE, MAX_BATCH_SIZE=32),
                                    'iris_b1': dict(IRIS_SHAPE, MAX_BATCH_SIZE=1)}}


def calibration(loops=3_000_000):
    """Milliseconds of a fixed pure-Python loop (the best of 3): the speed of this machine now."""
    best = None
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(loops):
            total += i & 7
        elapsed = (time.perf_counter() - started) * 1000
        best = elapsed if best is None else min(best, elapsed)
    return best


class Spawned:
    """A server of the bench's own (LitServe, the twisted.web floor), in a process group."""

    def __init__(self, argv, url, probe_body, env=None):
        self.url = url
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, env=env)
        rb.wait_for(lambda: rb.http('POST', self.url, probe_body, timeout=2)[0] == 200, 90, url + ' to answer')

    def pids(self):
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid] + [p.pid for p in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self):
        rb.stop_group(self.proc, 10)


def litserve_demo2(python, workers=2):
    port = rb.free_block(1)
    return Spawned([python, os.path.join(HERE, 'peers', 'litserve_demo2.py'), str(port), str(workers), '2', '1'],
                   'http://127.0.0.1:{}/predict'.format(port), {'INPUT_VALUE': 3})


def litserve_iris(python):
    port = rb.free_block(1)
    return Spawned([python, os.path.join(HERE, 'peers', 'litserve_iris.py'), str(port), '32', '0.01', '2'],
                   'http://127.0.0.1:{}/predict'.format(port), rb.IRIS_BODY, env=dict(os.environ, **rb.BLAS_ENV))


def floor_server(script='floor_twisted.py'):
    port = rb.free_block(1)
    return Spawned([sys.executable, os.path.join(HERE, script), str(port)], 'http://127.0.0.1:{}/run'.format(port), {})


def gateway_of(checkout, config, endpoints, workdir, env=None):
    """A gateway (and its children) running the code of another checkout of this repository
    (``--before``), for before/after rows in one run."""
    here = rb.REPO
    rb.REPO = os.path.abspath(checkout)  # the PYTHONPATH the launcher gives the gateway and so its children
    try:
        return rb.Gateway(config, endpoints, workdir, env=env)
    finally:
        rb.REPO = here


def children_cpu_seconds():
    """CPU seconds (user + system) of this process's ended children: wrk's, once it exited."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def replicas(gateway, name):
    """``[(pid, base url)]`` of the model servers of endpoint ``name``."""
    info = gateway.servers()[name]
    entries = info.get('REPLICAS') or [{'PID': info['PID'], 'URL': info['URLS'][0].rsplit('/', 1)[0]}]
    return [(entry['PID'], entry['URL'].rstrip('/')) for entry in entries]


def batches(urls):
    """``{size: count}`` of the batches the model servers at ``urls`` ran since they started."""
    counts = {}
    for url in urls:
        for size, count in rb.http('GET', url + '/health')[1].get('BATCHES', {}).items():
            counts[int(size)] = counts.get(int(size), 0) + count
    return counts


class Target:
    """One row: a URL, the body it takes, whose CPU counts as the gateway's and as the model
    server's, and whose batches count."""

    def __init__(self, name, url, body, gateway_pids=(), server_pids=(), other_pids=(), batch_urls=()):
        self.name, self.url, self.body = name, url, body
        self.gateway_pids, self.server_pids, self.other_pids = list(gateway_pids), list(server_pids), list(other_pids)
        self.batch_urls = list(batch_urls)

    def measure(self, wrk_bin, c, duration):
        before = (cpu_seconds(self.gateway_pids), cpu_seconds(self.server_pids), cpu_seconds(self.other_pids),
                  batches(self.batch_urls), children_cpu_seconds())
        run = rb.wrk(wrk_bin, self.url, self.body, c, duration)
        after = (cpu_seconds(self.gateway_pids), cpu_seconds(self.server_pids), cpu_seconds(self.other_pids),
                 batches(self.batch_urls), children_cpu_seconds())
        done = max(run['requests'], 1)
        run['wrk_cpu_us'] = (after[4] - before[4]) / done * 1e6  # the load generator's own share of the cores
        run['gateway_cpu_us'] = (after[0] - before[0]) / done * 1e6 if self.gateway_pids else None
        run['server_cpu_us'] = (after[1] - before[1]) / done * 1e6 if self.server_pids else None
        run['other_cpu_us'] = (after[2] - before[2]) / done * 1e6 if self.other_pids else None
        ran = {size: after[3].get(size, 0) - before[3].get(size, 0) for size in after[3]}
        calls = sum(ran.values())
        run['mean_batch'] = sum(size * n for size, n in ran.items()) / calls if calls else None
        return run


def measured_stalls(gateway):
    """The reactor lag and collection pauses the gateway (its /metrics) and its model server
    (its /health) measured since they started: ``{process: {'REACTOR_LAG': {...}, 'GC_PAUSES':
    {generation: {...}}}}``, each with ``COUNT``, ``>5ms``, ``>50ms`` and ``MAX_MS``."""
    from prometheus_client.parser import text_string_to_metric_families

    child = rb.http('GET', rb.direct_url(gateway, 'dummy_model_demo2').rsplit('/', 1)[0] + '/health')[1]
    text = urllib.request.urlopen(gateway.url + '/metrics', timeout=10).read().decode()
    ours = {'REACTOR_LAG': {}, 'GC_PAUSES': {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(('bis_reactor_lag', 'bis_gc_pause')):
                continue
            generation = sample.labels.get('generation')
            into = ours['REACTOR_LAG'] if generation is None else ours['GC_PAUSES'].setdefault(generation, {})
            if sample.name.endswith('_max_seconds'):
                into['MAX_MS'] = round(sample.value * 1000, 2)
            elif sample.name.endswith('_count'):
                into['COUNT'] = int(sample.value)
            elif sample.name.endswith('_bucket') and sample.labels['le'] in ('0.005', '0.05'):
                into['<=' + sample.labels['le']] = int(sample.value)
    for into in [ours['REACTOR_LAG']] + list(ours['GC_PAUSES'].values()):
        into['>5ms'] = into.get('COUNT', 0) - into.pop('<=0.005', 0)
        into['>50ms'] = into.get('COUNT', 0) - into.pop('<=0.05', 0)
    return {'gateway': ours, 'model server': child.get('STALLS', {})}


def stalls_line(process, before, after):
    def delta(key, *path):
        b, a = before, after
        for step in path:
            b, a = b.get(step, {}), a.get(step, {})
        return a.get(key, 0) - b.get(key, 0)

    gens = sorted(after.get('GC_PAUSES', {}))
    return ('stalls of the {} during the load: reactor lag {} ticks over 5 ms, {} over 50 ms (max since start {} ms); '
            'collections: {}'.format(process, delta('>5ms', 'REACTOR_LAG'), delta('>50ms', 'REACTOR_LAG'),
                                     after.get('REACTOR_LAG', {}).get('MAX_MS'), ', '.join(
                                         'gen {} x{} ({} over 5 ms, {} over 50 ms)'.format(
                                             g, delta('COUNT', 'GC_PAUSES', g), delta('>5ms', 'GC_PAUSES', g),
                                             delta('>50ms', 'GC_PAUSES', g)) for g in gens) or 'none'))


OTHER_FRONT = {'twisted': 'httptools', 'httptools': 'twisted'}


def front_name():
    """The HTTP front the row "gateway" runs on: BIS_HTTP_FRONT, else the default."""
    from bis_twisted.shared.front import DEFAULT_FRONT, FRONT_VARIABLE
    return os.environ.get(FRONT_VARIABLE) or DEFAULT_FRONT


def demo2_targets(workdir, args, processes):
    gateway = rb.Gateway(CONFIG, os.path.join(rb.REPO, 'endpoints'), workdir)
    processes.append(gateway)
    (pid, base), = replicas(gateway, 'dummy_model_demo2')
    targets = [Target('gateway', gateway.url + '/run', BODY, [gateway.proc.pid], [pid]),
               Target('direct', rb.direct_url(gateway, 'dummy_model_demo2'), BODY, server_pids=[pid])]
    # the same gateway on the other HTTP front (HTTP_FRONT / BIS_HTTP_FRONT), beside the default one
    other = OTHER_FRONT[front_name()]
    on_other = rb.Gateway(CONFIG, os.path.join(rb.REPO, 'endpoints'), workdir,
                          env=dict(os.environ, BIS_HTTP_FRONT=other))
    processes.append(on_other)
    (other_pid, _), = replicas(on_other, 'dummy_model_demo2')
    targets.append(Target('gateway, {} front'.format(other), on_other.url + '/run', BODY, [on_other.proc.pid],
                          [other_pid]))
    floor = floor_server()
    processes.append(floor)
    targets.append(Target('twisted.web floor', floor.url, BODY, other_pids=floor.pids()))
    if args.httptools:
        parser_floor = floor_server('floor_httptools.py')
        processes.append(parser_floor)
        targets.append(Target('httptools-in-Twisted floor', parser_floor.url, BODY, other_pids=parser_floor.pids()))
    if args.before:
        before = gateway_of(args.before, CONFIG, os.path.join(rb.REPO, 'endpoints'), workdir)
        processes.append(before)
        (before_pid, _), = replicas(before, 'dummy_model_demo2')
        targets.append(Target('gateway before (--before)', before.url + '/run', BODY, [before.proc.pid], [before_pid]))
    if args.inner_ab:
        over_http = rb.Gateway(CONFIG, os.path.join(rb.REPO, 'endpoints'), workdir,
                               env=dict(os.environ, BIS_INNER_FRAMES='0'))
        processes.append(over_http)
        (http_pid, _), = replicas(over_http, 'dummy_model_demo2')
        targets.append(Target('gateway, inner leg over HTTP', over_http.url + '/run', BODY, [over_http.proc.pid],
                              [http_pid]))
    if args.gc_ab:
        unfrozen = rb.Gateway(CONFIG, os.path.join(rb.REPO, 'endpoints'), workdir,
                              env=dict(os.environ, BIS_GC_FREEZE='0'))
        processes.append(unfrozen)
        (other_pid, _), = replicas(unfrozen, 'dummy_model_demo2')
        targets.append(Target('gateway, no gc.freeze', unfrozen.url + '/run', BODY, [unfrozen.proc.pid], [other_pid]))
    if args.peers:
        litserve = litserve_demo2(rb.peers_python())
        processes.append(litserve)
        targets.append(Target('LitServe', litserve.url, {'INPUT_VALUE': 3}, other_pids=litserve.pids()))
    return targets


def iris_targets(workdir, args, processes):
    gateway = rb.Gateway(IRIS_CONFIG, rb.batching_endpoints(workdir), workdir, env=dict(os.environ, **rb.BLAS_ENV))
    processes.append(gateway)
    b32, b1 = replicas(gateway, 'iris_b32'), replicas(gateway, 'iris_b1')
    targets = []
    if args.before:
        before = gateway_of(args.before, IRIS_CONFIG, rb.batching_endpoints(workdir), workdir,
                            env=dict(os.environ, **rb.BLAS_ENV))
        processes.append(before)
        before32 = replicas(before, 'iris_b32')
        targets.append(Target('gateway b=32 before (--before)', before.url + '/run',
                              dict(rb.IRIS_BODY, SIGNATURE='iris_b32'), [before.proc.pid], [p for p, _ in before32],
                              batch_urls=[u for _, u in before32]))
    if args.inner_ab:
        over_http = rb.Gateway(IRIS_CONFIG, rb.batching_endpoints(workdir), workdir,
                               env=dict(os.environ, BIS_INNER_FRAMES='0', **rb.BLAS_ENV))
        processes.append(over_http)
        http32 = replicas(over_http, 'iris_b32')
        targets.append(Target('gateway b=32, inner leg over HTTP', over_http.url + '/run',
                              dict(rb.IRIS_BODY, SIGNATURE='iris_b32'), [over_http.proc.pid], [p for p, _ in http32],
                              batch_urls=[u for _, u in http32]))
    targets += [Target('gateway b=32', gateway.url + '/run', dict(rb.IRIS_BODY, SIGNATURE='iris_b32'),
                       [gateway.proc.pid], [p for p, _ in b32], batch_urls=[u for _, u in b32]),
                Target('gateway b=1', gateway.url + '/run', dict(rb.IRIS_BODY, SIGNATURE='iris_b1'),
                       [gateway.proc.pid], [p for p, _ in b1]),
                Target('direct b=32 (1 replica)', b32[0][1] + '/run', rb.IRIS_BODY, server_pids=[b32[0][0]],
                       batch_urls=[b32[0][1]])]
    if args.peers:
        litserve = litserve_iris(rb.peers_python())
        processes.append(litserve)
        targets.append(Target('LitServe b=32', litserve.url, rb.IRIS_BODY, other_pids=litserve.pids()))
    return targets


def measure(targets, wrk_bin, rounds, duration):
    names = [t.name for t in targets]
    cells = {(n, c): [] for n in names for c in CONCURRENCY}
    for r in range(rounds):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for c in CONCURRENCY:
            for target in order:
                cells[(target.name, c)].append(target.measure(wrk_bin, c, duration))
    table = {}
    for (name, c), runs in cells.items():
        table.setdefault(name, {})[c] = {k: (statistics.median(run[k] for run in runs)
                                             if runs[0][k] is not None else None)
                                         for k in ('rps', 'p50_ms', 'p99_ms', 'errors', 'gateway_cpu_us',
                                                   'server_cpu_us', 'other_cpu_us', 'wrk_cpu_us', 'mean_batch')}
    return table


def _us(value):
    return '-' if value is None else '{:.0f}'.format(value)


def print_table(case, table, calibrated):
    print('\n## {} (calibration: a fixed pure-Python loop took {:.0f} ms)\n'.format(case, calibrated))
    print('| | ' + ' | '.join('c={0} req/s | c={0} p50 / p99 ms'.format(c) for c in CONCURRENCY)
          + ' | c=64 CPU us/req: gateway / model server(s) / other / wrk | c=64 mean batch |')
    print('|---' * (3 + 2 * len(CONCURRENCY)) + '|')
    for name, row in table.items():
        at64 = row[64]
        print('| {} | '.format(name) + ' | '.join('{:.0f} | {:.2f} / {:.1f}'.format(
            row[c]['rps'], row[c]['p50_ms'], row[c]['p99_ms']) for c in CONCURRENCY)
              + ' | {} / {} / {} / {} | {} |'.format(_us(at64['gateway_cpu_us']), _us(at64['server_cpu_us']),
                                                     _us(at64['other_cpu_us']), _us(at64['wrk_cpu_us']),
                                                '-' if at64['mean_batch'] is None else '{:.1f}'.format(
                                                    at64['mean_batch'])))


def goals_demo2(table):
    gw, direct, floor = table['gateway'], table['direct'], table['twisted.web floor']
    goals = [('gateway / twisted.web floor req/s at c=64 >= 1.0', gw[64]['rps'] / floor[64]['rps'], lambda v: v >= 1.0),
             ('gateway / direct req/s at c=64 >= 1.0', gw[64]['rps'] / direct[64]['rps'], lambda v: v >= 1.0),
             ('gateway p50 / direct p50 at c=1 <= 1.5', gw[1]['p50_ms'] / direct[1]['p50_ms'], lambda v: v <= 1.5)]
    if 'LitServe' in table:
        lit = table['LitServe']
        goals.append(('gateway / LitServe req/s at c=64 >= 2.0', gw[64]['rps'] / lit[64]['rps'], lambda v: v >= 2.0))
        goals.extend(('gateway p99 / LitServe p99 at c={} < 1'.format(c), gw[c]['p99_ms'] / lit[c]['p99_ms'],
                      lambda v: v < 1) for c in CONCURRENCY)
    other = 'gateway, {} front'.format(OTHER_FRONT[front_name()])
    goals.append(('{} / gateway ({} front) req/s at c=64 (no goal: the fronts side by side)'.format(
        other, front_name()), table[other][64]['rps'] / gw[64]['rps'], lambda v: True))
    goals.append(('{} / twisted.web floor req/s at c=64 (no goal)'.format(other),
                  table[other][64]['rps'] / floor[64]['rps'], lambda v: True))
    return goals + cpu_goals(table, 'gateway', 'gateway before (--before)')


def cpu_goals(table, after, before):
    """Each process's CPU per request at c=64, after / before: at most half is the goal."""
    if before not in table:
        return []
    return [('{} CPU per request at c=64, after / before <= 0.5'.format(who), table[after][64][key] /
             table[before][64][key], lambda v: v <= 0.5)
            for who, key in (('gateway', 'gateway_cpu_us'), ('model server', 'server_cpu_us'))]


def goals_iris(table):
    b32, b1 = table['gateway b=32'], table['gateway b=1']
    goals = [('gateway b=32 p50 / gateway b=1 p50 at c=1 <= 1.1', b32[1]['p50_ms'] / b1[1]['p50_ms'],
              lambda v: v <= 1.1),
             ('gateway b=32 mean batch at c=64 near its reach (32: MAX_BATCH_SIZE, 64 clients on 2 replicas), '
              '>= 28', b32[64]['mean_batch'], lambda v: v >= 28)]
    if 'LitServe b=32' in table:
        lit = table['LitServe b=32']
        goals.append(('gateway b=32 / LitServe b=32 req/s at c=64 >= 1.5', b32[64]['rps'] / lit[64]['rps'],
                      lambda v: v >= 1.5))
        goals.append(('gateway b=32 p50 / LitServe b=32 p50 at c=1 < 1', b32[1]['p50_ms'] / lit[1]['p50_ms'],
                      lambda v: v < 1))
    return goals + cpu_goals(table, 'gateway b=32', 'gateway b=32 before (--before)')


CASES = {'demo2': (demo2_targets, goals_demo2), 'iris': (iris_targets, goals_iris)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--case', choices=sorted(CASES) + ['both'], default='both')
    parser.add_argument('--duration', type=int, default=5)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--before', metavar='CHECKOUT',
                        help='also a gateway running the code of another checkout (git worktree add ... main): '
                             'before/after rows in one run')
    parser.add_argument('--inner-ab', action='store_true',
                        help='also a gateway whose inner leg is HTTP (BIS_INNER_FRAMES=0), beside the framed one')
    parser.add_argument('--httptools', action='store_true',
                        help='demo2: also the floor of an httptools channel in a Twisted protocol (bench/floor_httptools.py)')
    parser.add_argument('--gc-ab', action='store_true', help='demo2: add a gateway whose processes do not gc.freeze()')
    parser.add_argument('--peers', action='store_true',
                        help='also LitServe (installed on first use into bench/.peers-venv, never the project\'s)')
    args = parser.parse_args()
    wrk_bin = rb.ensure_wrk()
    workdir = tempfile.mkdtemp(prefix='bis-peer-bench-')
    results = {}
    for case in (sorted(CASES) if args.case == 'both' else [args.case]):
        make_targets, goals = CASES[case]
        processes = []
        try:
            targets = make_targets(workdir, args, processes)
            stalls_before = measured_stalls(processes[0]) if case == 'demo2' else None
            before = calibration()
            table = measure(targets, wrk_bin, args.rounds, args.duration)
            calibrated = (before + calibration()) / 2
            stalls_after = measured_stalls(processes[0]) if case == 'demo2' else None
        finally:
            for process in processes:
                process.stop()
        print_table(case, table, calibrated)
        print()
        for text, value, met in goals(table):
            print('goal {}: {} ({:.2f})'.format(text, 'met' if met(value) else 'NOT met', value))
        for process in stalls_after or ():
            print(stalls_line(process, stalls_before[process], stalls_after[process]))
        errors = {n: sum(table[n][c]['errors'] for c in CONCURRENCY) for n in table}
        print('errors (non-2xx + socket), medians summed: {}'.format(errors))
        results[case] = {'calibration_ms': calibrated,
                         'table': {n: {str(c): v for c, v in row.items()} for n, row in table.items()}}
    os.makedirs(rb.RESULTS, exist_ok=True)
    path = os.path.join(rb.RESULTS, 'peers-{}.json'.format(time.strftime('%Y%m%d-%H%M%S')))
    with open(path, 'w') as fh:
        json.dump({'duration': args.duration, 'rounds': args.rounds, 'cases': results}, fh, indent=1)
    print('written to', path)


if __name__ == '__main__':
    main()
