#!/usr/bin/env python3
"""V2 infer (the Open Inference Protocol) beside ``/run`` through one gateway, on the original's
dummy_model_demo2 with 2 workers, at c=64 with wrk, in one run:

    python bench/v2_bench.py                       # 3 rounds of 5 s per target
    python bench/v2_bench.py --duration 3 --rounds 5 --concurrency 16 64

Targets: ``/run`` through the gateway, ``POST /v2/models/dummy_model_demo2/infer`` through the
same gateway (the same model server behind both), and, as the calibration line, the model
server's own ``/run`` (what the machine gives without the gateway in this sitting). Each round
runs them in an order that turns round, so the machine's noise falls on all alike; each cell
is the median of the rounds. Prints req/s, p50 and p99, the V2 / run ratio, and writes them as
JSON under bench/results/.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

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
                    cells[(name, c)].append(rb.wrk(wrk_bin, url, body, c, args.duration))
    finally:
        gateway.stop()
    table = {}
    for (name, c), runs in cells.items():
        table.setdefault(name, {})[c] = {k: statistics.median(run[k] for run in runs)
                                         for k in ('rps', 'p50_ms', 'p99_ms', 'errors')}
        table[name][c]['rounds_rps'] = [round(run['rps']) for run in runs]
    print('\n| | ' + ' | '.join('c={0} req/s | c={0} p50 / p99 ms'.format(c) for c in args.concurrency) + ' |')
    print('|---' * (1 + 2 * len(args.concurrency)) + '|')
    for name in names:
        row = table[name]
        print('| {} | '.format(name) + ' | '.join('{:.0f} | {:.2f} / {:.1f}'.format(
            row[c]['rps'], row[c]['p50_ms'], row[c]['p99_ms']) for c in args.concurrency) + ' |')
    run, v2, direct = (table[n] for n in names)
    for c in args.concurrency:
        ratio = v2[c]['rps'] / run[c]['rps']
        print('c={}: V2 / run req/s {:.3f} (rounds: run {}, V2 {}); run / direct {:.2f}; goal V2 within 10 % of '
              'run: {}'.format(c, ratio, run[c]['rounds_rps'], v2[c]['rounds_rps'], run[c]['rps'] / direct[c]['rps'],
                               'met' if ratio >= 0.9 else 'NOT met'))
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
