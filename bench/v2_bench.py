#!/usr/bin/env python3
"""V2 infer (the Open Inference Protocol) beside ``/run`` through one gateway, on the original's
dummy_model_demo2 with 2 workers, at c=64 with wrk, in one run:

    python bench/v2_bench.py                       # 3 rounds of 5 s per target
    python bench/v2_bench.py --duration 3 --rounds 5 --concurrency 16 64

Targets: ``/run`` through the gateway, ``POST /v2/models/dummy_model_demo2/infer`` through the
same gateway (the same model server behind both), and, as the calibration line, the model
server's own ``/run`` (what the machine gives without the gateway in this sitting). Each round
runs them in an order that turns round, so the machine's noise falls on all alike; each cell
is the median of the rounds, and the V2 / run ratio is also the median of each round's own
ratio (two runs a few seconds apart). On a shared machine req/s swing with the neighbours'
load; the CPU time the gateway and its model server spent per request (psutil, over each wrk
run) does much less, and is printed beside them. Writes the figures as JSON under
bench/results/.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run_bench as rb  # noqa: E402  (the gateway launcher, wrk and its parser)

MODEL = 'dummy_model_demo2'
RUN_BODY = {'SIGNATURE': MODEL, 'INPUT_VALUE': 3}
V2_BODY = {'inputs': [{'name': 'INPUT_VALUE', 'datatype': 'INT64', 'shape': [1], 'data': [3]}]}
CONFIG = {'CONFIG_ENDPOINTS': {MODEL: {'NR_WORKERS': 2, 'WEIGHT': 2, 'BIAS': 1}}}


def check_answers(gateway):
    """Both ways answer the same prediction before anything is measured."""
    status, run = rb.http('POST', gateway.url + '/run', RUN_BODY)
    assert status == 200, run
    status, v2 = rb.http('POST', gateway.url + '/v2/models/{}/infer'.format(MODEL), V2_BODY)
    assert status == 200, v2
    assert v2['outputs'][0]['data'] == [run['predict_result']['dummy_model_predict']], (run, v2)


def cpu_seconds(gateway):
    """CPU time (user + system) so far of the gateway and of its model servers."""
    parent = psutil.Process(gateway.proc.pid)
    children = sum(sum(p.cpu_times()[:2]) for p in parent.children(recursive=True))
    return sum(parent.cpu_times()[:2]), children


def measured(wrk_bin, gateway, url, body, concurrency, duration):
    """One wrk run, with the CPU microseconds per request of the gateway and of its model server."""
    before = cpu_seconds(gateway)
    run = rb.wrk(wrk_bin, url, body, concurrency, duration)
    after = cpu_seconds(gateway)
    requests = max(run['requests'], 1)
    run['gateway_cpu_us'] = (after[0] - before[0]) / requests * 1e6
    run['server_cpu_us'] = (after[1] - before[1]) / requests * 1e6
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=int, default=5)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--concurrency', type=int, nargs='+', default=[64])
    args = parser.parse_args()
    wrk_bin = rb.ensure_wrk()
    workdir = tempfile.mkdtemp(prefix='bis-v2-bench-')
    gateway = rb.Gateway(CONFIG, os.path.join(rb.REPO, 'endpoints'), workdir)
    try:
        check_answers(gateway)
        targets = {'/run via gateway': (gateway.url + '/run', RUN_BODY),
                   'V2 infer via gateway': (gateway.url + '/v2/models/{}/infer'.format(MODEL), V2_BODY),
                   'calibration: model server /run direct': (rb.direct_url(gateway, MODEL), RUN_BODY)}
        names = list(targets)
        cells = {(n, c): [] for n in names for c in args.concurrency}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for c in args.concurrency:
                for name in order:
                    url, body = targets[name]
                    cells[(name, c)].append(measured(wrk_bin, gateway, url, body, c, args.duration))
    finally:
        gateway.stop()
    table = {}
    for (name, c), runs in cells.items():
        table.setdefault(name, {})[c] = {k: statistics.median(run[k] for run in runs) for k in (
            'rps', 'p50_ms', 'p99_ms', 'errors', 'gateway_cpu_us', 'server_cpu_us')}
        table[name][c]['rounds_rps'] = [round(run['rps']) for run in runs]
    print('\n| | ' + ' | '.join('c={0} req/s | c={0} p50 / p99 ms | c={0} CPU us/request gateway + server'.format(c)
                                for c in args.concurrency) + ' |')
    print('|---' * (1 + 3 * len(args.concurrency)) + '|')
    for name in names:
        row = table[name]
        print('| {} | '.format(name) + ' | '.join('{:.0f} | {:.2f} / {:.1f} | {:.0f} + {:.0f}'.format(
            row[c]['rps'], row[c]['p50_ms'], row[c]['p99_ms'], row[c]['gateway_cpu_us'], row[c]['server_cpu_us'])
            for c in args.concurrency) + ' |')
    run, v2, direct = (table[n] for n in names)
    print('calibration: the model server alone answers {} at c={} (its /run, no gateway)'.format(
        ', '.join('{:.0f} req/s'.format(direct[c]['rps']) for c in args.concurrency), args.concurrency))
    for c in args.concurrency:
        paired = statistics.median(b['rps'] / a['rps'] for a, b in zip(cells[(names[0], c)], cells[(names[1], c)]))
        cpu = ((v2[c]['gateway_cpu_us'] + v2[c]['server_cpu_us']) /
               (run[c]['gateway_cpu_us'] + run[c]['server_cpu_us']))
        print('c={}: V2 / run req/s {:.3f} (medians; rounds: run {}, V2 {}), per-round median {:.3f}; CPU per request '
              'V2 / run {:.3f}; goal V2 within 10 % of run: {}'.format(
                  c, v2[c]['rps'] / run[c]['rps'], run[c]['rounds_rps'], v2[c]['rounds_rps'], paired, cpu,
                  'met' if paired >= 0.9 else 'NOT met'))
    errors = {n: sum(table[n][c]['errors'] for c in args.concurrency) for n in names}
    print('errors (non-2xx + socket), medians summed: {}'.format(errors))
    os.makedirs(rb.RESULTS, exist_ok=True)
    path = os.path.join(rb.RESULTS, 'v2-{}.json'.format(time.strftime('%Y%m%d-%H%M%S')))
    with open(path, 'w') as fh:
        json.dump({'duration': args.duration, 'rounds': args.rounds,
                   'table': {n: {str(c): v for c, v in row.items()} for n, row in table.items()}}, fh, indent=1)
    print('written to', path)


if __name__ == '__main__':
    main()
