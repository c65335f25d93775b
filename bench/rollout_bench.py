#!/usr/bin/env python3
"""What a shadow rollout costs the stable version: the original's dummy_model_demo2 (2 workers)
behind one gateway, loaded with wrk, without a rollout and with a shadow candidate (the same
file, getting a copy of every request), in one run:

    python bench/rollout_bench.py                          # 3 rounds of 5 s, c=4 and c=32
    python bench/rollout_bench.py --duration 3 --rounds 5 --concurrency 2 16

The candidate runs on the same machine as the stable: on a small one their CPU is shared, so
a copy's work can slow the stable's answers. A copy is only sent while the stable has a free
worker and the candidate one too (else it is dropped and counted): at c=4 most copies go, at
c=32 most are dropped. Each round runs "no rollout" and "shadow" in an order that turns round
(the rollout is started and aborted each time: ``POST /rollout``), each cell is the median of
the rounds, and the shadow / none ratio of p50 is also the median of each round's own ratio.
The calibration line is the model server's own ``/run`` (no gateway) at the lowest
concurrency, in the same sitting. Copies sent, compared and dropped come from
``/list_servers``' ``ROLLOUT``. Writes the figures as JSON under bench/results/.
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
CONFIG = {'CONFIG_ENDPOINTS': {MODEL: {'NR_WORKERS': 2, 'WEIGHT': 2, 'BIAS': 1}}}
NAMES = ('no rollout', 'shadow 100%')


def start_shadow(gateway):
    status, body = rb.http('POST', gateway.url + '/rollout', {'SIGNATURE': MODEL, 'SHADOW': True}, timeout=120)
    assert status == 200, body


def end_shadow(gateway):
    """Abort the shadow; its copies sent, compared and dropped."""
    rollout = rb.http('GET', gateway.url + '/list_servers')[1]['AVAIL_SERVERS'][MODEL]['ROLLOUT']
    status, body = rb.http('POST', gateway.url + '/rollout', {'SIGNATURE': MODEL, 'ABORT': True}, timeout=60)
    assert status == 200, body
    return {'copies': rollout['VERSIONS']['candidate']['REQUESTS'], 'compared': rollout['COMPARED'],
            'dropped': rollout['SHADOW_DROPPED'], 'agreement': rollout['AGREEMENT']}


def one_run(wrk_bin, gateway, name, concurrency, duration):
    if name == NAMES[1]:
        start_shadow(gateway)
    run = rb.wrk(wrk_bin, gateway.url + '/run', RUN_BODY, concurrency, duration)
    if name == NAMES[1]:
        time.sleep(0.5)  # the last copies are answered: the figures below count them
        run.update(end_shadow(gateway))
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=int, default=5)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--concurrency', type=int, nargs='+', default=[4, 32])
    args = parser.parse_args()
    wrk_bin = rb.ensure_wrk()
    workdir = tempfile.mkdtemp(prefix='bis-rollout-bench-')
    gateway = rb.Gateway(CONFIG, os.path.join(rb.REPO, 'endpoints'), workdir)
    try:
        calibration = rb.wrk(wrk_bin, rb.direct_url(gateway, MODEL), RUN_BODY, min(args.concurrency), args.duration)
        cells = {(n, c): [] for n in NAMES for c in args.concurrency}
        for r in range(args.rounds):
            order = NAMES[r % 2:] + NAMES[:r % 2]
            for c in args.concurrency:
                for name in order:
                    cells[(name, c)].append(one_run(wrk_bin, gateway, name, c, args.duration))
    finally:
        gateway.stop()
    print('\n| | ' + ' | '.join('c={0} req/s | c={0} p50 / p99 ms'.format(c) for c in args.concurrency) +
          ' | copies sent / dropped (shadow) |')
    print('|---' * (2 + 2 * len(args.concurrency)) + '|')
    table = {}
    for name in NAMES:
        row = table[name] = {}
        for c in args.concurrency:
            runs = cells[(name, c)]
            row[c] = {k: statistics.median(run[k] for run in runs) for k in ('rps', 'p50_ms', 'p99_ms', 'errors')}
            if name == NAMES[1]:
                row[c].update({k: statistics.median(run[k] for run in runs) for k in ('copies', 'dropped')})
        copies = ', '.join('c={}: {:.0f} / {:.0f}'.format(c, row[c]['copies'], row[c]['dropped'])
                           for c in args.concurrency) if name == NAMES[1] else '-'
        print('| {} | '.format(name) + ' | '.join('{:.0f} | {:.2f} / {:.1f}'.format(
            row[c]['rps'], row[c]['p50_ms'], row[c]['p99_ms']) for c in args.concurrency) + ' | {} |'.format(copies))
    print('calibration: the model server alone (its /run, no gateway) at c={}: {:.0f} req/s, p50 {:.2f} ms'.format(
        min(args.concurrency), calibration['rps'], calibration['p50_ms']))
    for c in args.concurrency:
        paired = statistics.median(b['p50_ms'] / a['p50_ms'] for a, b in zip(cells[(NAMES[0], c)],
                                                                           cells[(NAMES[1], c)]))
        print('c={}: stable p50 with a shadow / without: {:.3f} (per-round median; rounds {} vs {} ms); goal within '
              '10 %: {}'.format(c, paired, [round(r['p50_ms'], 2) for r in cells[(NAMES[0], c)]],
                                [round(r['p50_ms'], 2) for r in cells[(NAMES[1], c)]],
                                'met' if paired <= 1.1 else 'NOT met'))
    errors = {n: sum(table[n][c]['errors'] for c in args.concurrency) for n in NAMES}
    print('errors (non-2xx + socket), medians summed: {}'.format(errors))
    os.makedirs(rb.RESULTS, exist_ok=True)
    path = os.path.join(rb.RESULTS, 'rollout-{}.json'.format(time.strftime('%Y%m%d-%H%M%S')))
    with open(path, 'w') as fh:
        json.dump({'duration': args.duration, 'rounds': args.rounds, 'calibration': calibration,
                   'table': {n: {str(c): v for c, v in row.items()} for n, row in table.items()}}, fh, indent=1)
    print('written to', path)


if __name__ == '__main__':
    main()
