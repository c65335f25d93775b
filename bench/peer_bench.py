#!/usr/bin/env python3
"""bis_twisted beside LitServe, the peer of the same shape (an HTTP front, worker processes),
on the original's dummy_model_demo2 with 2 workers on each side, in one run:

    python bench/peer_bench.py --peers         # 2 rounds of 5 s per cell, LitServe beside us
    python bench/peer_bench.py                 # ours only: gateway and direct
    python bench/peer_bench.py --gc-ab         # also a gateway with BIS_GC_FREEZE=0
    python bench/peer_bench.py --peers --duration 3 --rounds 3

Rows: through our gateway, our model server direct, and with ``--peers`` LitServe (0.2.x,
``workers_per_device=2``, ``accelerator="cpu"``, from its own venv bench/.peers-venv, made on
first use). For each
concurrency (1, 16, 64) the targets run one after the other, in an order that turns round each
round, so the machine's noise falls on all alike; each cell is the median of the rounds.
Prints req/s, p50 and p99 and the ratios the goals are stated in, and writes them as JSON under
bench/results/.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_bench as rb  # noqa: E402  (the gateway launcher, wrk and its parser)

CONCURRENCY = (1, 16, 64)
BODY = {'SIGNATURE': 'dummy_model_demo2', 'INPUT_VALUE': 3}
CONFIG = {'CONFIG_ENDPOINTS': {'dummy_model_demo2': {'NR_WORKERS': 2, 'WEIGHT': 2, 'BIAS': 1}}}


class LitServeDemo2:
    def __init__(self, python, workers=2):
        self.port = rb.free_block(1)
        self.url = 'http://127.0.0.1:{}/predict'.format(self.port)
        self.proc = subprocess.Popen(
            [python, os.path.join(HERE, 'peers', 'litserve_demo2.py'), str(self.port), str(workers), '2', '1'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        rb.wait_for(lambda: rb.http('POST', self.url, BODY, timeout=2)[0] == 200, 90, 'LitServe to answer')

    def stop(self):
        rb.stop_group(self.proc, 10)


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=int, default=5)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--gc-ab', action='store_true', help='add a gateway whose processes do not gc.freeze()')
    parser.add_argument('--peers', action='store_true',
                        help='also LitServe (installed on first use into bench/.peers-venv, never the project\'s)')
    args = parser.parse_args()
    wrk_bin = rb.ensure_wrk()
    workdir = tempfile.mkdtemp(prefix='bis-peer-bench-')
    endpoints = os.path.join(rb.REPO, 'endpoints')
    processes = []
    try:
        gateway = rb.Gateway(CONFIG, endpoints, workdir)
        processes.append(gateway)
        targets = {'gateway': gateway.url + '/run', 'direct': rb.direct_url(gateway, 'dummy_model_demo2')}
        if args.gc_ab:
            unfrozen = rb.Gateway(CONFIG, endpoints, workdir, env=dict(os.environ, BIS_GC_FREEZE='0'))
            processes.append(unfrozen)
            targets['gateway, no gc.freeze'] = unfrozen.url + '/run'
        if args.peers:
            litserve = LitServeDemo2(rb.peers_python())
            processes.append(litserve)
            targets['LitServe'] = litserve.url
        names = list(targets)
        cells = {(n, c): [] for n in names for c in CONCURRENCY}
        stalls_before = measured_stalls(gateway)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for c in CONCURRENCY:
                for name in order:
                    body = BODY if name != 'LitServe' else {'INPUT_VALUE': 3}
                    cells[(name, c)].append(rb.wrk(wrk_bin, targets[name], body, c, args.duration))
        stalls_after = measured_stalls(gateway)
        table = {}
        for (name, c), runs in cells.items():
            table.setdefault(name, {})[c] = {k: statistics.median(run[k] for run in runs)
                                             for k in ('rps', 'p50_ms', 'p99_ms', 'errors')}
    finally:
        for process in processes:
            process.stop()
    print('\n| | ' + ' | '.join('c={0} req/s | c={0} p50 / p99 ms'.format(c) for c in CONCURRENCY) + ' |')
    print('|---' * (1 + 2 * len(CONCURRENCY)) + '|')
    for name in names:
        row = table[name]
        print('| {} | '.format(name) + ' | '.join('{:.0f} | {:.2f} / {:.1f}'.format(
            row[c]['rps'], row[c]['p50_ms'], row[c]['p99_ms']) for c in CONCURRENCY) + ' |')
    gw, direct = table['gateway'], table['direct']
    print('\ngateway / direct req/s: ' + ', '.join('c={}: {:.2f}'.format(c, gw[c]['rps'] / direct[c]['rps'])
                                                   for c in CONCURRENCY))
    print('gateway added p50 at c=1: {:.2f} ms; gateway p99 / direct p99 at c=1: {:.1f}x'.format(
        gw[1]['p50_ms'] - direct[1]['p50_ms'], gw[1]['p99_ms'] / direct[1]['p99_ms']))
    if 'LitServe' in table:
        lit = table['LitServe']
        print('gateway / LitServe req/s: ' + ', '.join('c={}: {:.2f}'.format(c, gw[c]['rps'] / lit[c]['rps'])
                                                       for c in CONCURRENCY))
        print('gateway p99 / LitServe p99: ' + ', '.join('c={}: {:.2f}'.format(c, gw[c]['p99_ms'] / lit[c]['p99_ms'])
                                                         for c in CONCURRENCY))
    goals = [('gateway / direct req/s at c=64 >= 0.85', gw[64]['rps'] / direct[64]['rps'], lambda v: v >= 0.85),
             ('gateway p99 / direct p99 at c=1 <= 2', gw[1]['p99_ms'] / direct[1]['p99_ms'], lambda v: v <= 2),
             ('gateway added p50 at c=1 < 0.3 ms', gw[1]['p50_ms'] - direct[1]['p50_ms'], lambda v: v < 0.3)]
    if 'LitServe' in table:
        goals.append(('gateway / LitServe req/s at c=64 >= 1.3', gw[64]['rps'] / lit[64]['rps'], lambda v: v >= 1.3))
        goals.extend(('gateway p99 / LitServe p99 at c={} < 1'.format(c), gw[c]['p99_ms'] / lit[c]['p99_ms'],
                      lambda v: v < 1) for c in CONCURRENCY)
    for text, value, met in goals:
        print('goal {}: {} ({:.2f})'.format(text, 'met' if met(value) else 'NOT met', value))
    for process in stalls_after:
        print(stalls_line(process, stalls_before[process], stalls_after[process]))
    errors = {n: sum(table[n][c]['errors'] for c in CONCURRENCY) for n in names}
    print('errors (non-2xx + socket), medians summed: {}'.format(errors))
    os.makedirs(rb.RESULTS, exist_ok=True)
    path = os.path.join(rb.RESULTS, 'peers-{}.json'.format(time.strftime('%Y%m%d-%H%M%S')))
    with open(path, 'w') as fh:
        json.dump({'duration': args.duration, 'rounds': args.rounds,
                   'table': {n: {str(c): v for c, v in row.items()} for n, row in table.items()}}, fh, indent=1)
    print('written to', path)


if __name__ == '__main__':
    main()
