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

``--overhead`` times instead, in this process, the gateway's own work per request in
``Rollouts.run`` with fleets that answer at once (no network, no child): an endpoint without
a rollout, under a canary, under a shadow (its copy answered too), beside the fleet's call
alone; best of 5 loops, in microseconds per request, after a calibration line.
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


def overhead(calls=20000, repeats=5):
    """Microseconds per request of ``Rollouts.run`` against fleets answering at once."""
    sys.path.insert(0, rb.REPO)
    from twisted.internet import defer, task

    from bis_twisted.gateway.candidates import Candidates
    from bis_twisted.gateway.config import EndpointConfig
    from bis_twisted.gateway.rollout import Rollout, Rollouts
    from bis_twisted.gateway.rollout_plan import Plan
    from bis_twisted.gateway.rollout_stats import RollbackRule
    from bis_twisted.shared.web import Answer

    answer = Answer(200, {}, raw=b'{"predict_result": 7, "worker_id": 0}')

    class Fleet:
        servers = {}

        async def run(self, name, payload, request_id=None, answer_fields=None):
            return answer

    class Request:
        def getHeader(self, name):
            return None

    def rollouts(shadow=None):
        clock = task.Clock()
        fleet = Fleet()
        subject = Rollouts(fleet, reactor=clock, candidates=Candidates(fleet, clock, fleet=Fleet()))
        if shadow is not None:
            plan = Plan(endpoint='demo', server_class='demo', percent=100.0 if shadow else 20.0, shadow=shadow,
                        tolerance=None, overrides={}, rule=RollbackRule())
            candidate = EndpointConfig(name='demo@candidate', server_class='demo', entry={}, nr_workers=4)
            rollout = Rollout(plan, candidate, clock, 'now')
            rollout.to('shadow' if shadow else 'canary', 'now')
            subject.live['demo'] = subject.last['demo'] = rollout
        return clock, subject

    def timed(call, clock):
        best = None
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(calls):
                defer.ensureDeferred(call())
                clock.advance(0)  # a shadow's copy goes in the reactor's next turn
            took = (time.perf_counter() - started) / calls * 1e6
            best = took if best is None else min(best, took)
        return best

    started = time.perf_counter()
    total = 0
    for i in range(2000000):
        total += i % 7
    print('calibration: a fixed pure-Python loop took {:.3f} s'.format(time.perf_counter() - started))
    request = Request()
    rows = {}
    clock, subject = rollouts()
    rows['the fleet\'s call alone'] = timed(lambda: subject.fleet.run('demo', b'{}', 'r', b'{"a":"b"}'), clock)
    for label, shadow in (('no rollout', None), ('canary 20%', False), ('shadow 100% (with its copy)', True)):
        clock, subject = rollouts(shadow)
        rows['Rollouts.run, ' + label] = timed(lambda: subject.run(request, 'demo', b'{}', 'r', b'{"a":"b"}'), clock)
    for label, value in rows.items():
        print('| {} | {:.1f} us |'.format(label, value))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=int, default=5)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--concurrency', type=int, nargs='+', default=[4, 32])
    parser.add_argument('--overhead', action='store_true', help='time Rollouts.run alone, in this process')
    args = parser.parse_args()
    if args.overhead:
        overhead()
        return
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
