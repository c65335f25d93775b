#!/usr/bin/env python3
"""One change, measured: the gateway of this checkout and of another one (``git worktree add
../before <commit>``), demo2 (2 workers) through each, alternated round after round at c=1 and
c=64, with each round's req/s ratio and each process's CPU per request::

    python bench/alternate_bench.py ../before            # 4 rounds of 3 s per cell
    python bench/alternate_bench.py ../before --rounds 6 --duration 5
    python bench/alternate_bench.py .                    # A/A: this checkout against itself

Each round runs the two gateways one after the other, in an order that turns each round, so a
machine that slows for a while weighs on both. The per-round ratios show the spread; run it
A/A (the same checkout twice) to see the spread of the method itself before quoting a change
smaller than it (on the 2-core machine two A/A runs gave 0.85-1.02 and 0.89-1.07 at c=64).
"""

import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peer_bench as pb  # noqa: E402
import run_bench as rb  # noqa: E402

CONCURRENCY = (1, 64)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('before', help='a checkout of this repository: the code to compare against')
    parser.add_argument('--rounds', type=int, default=4)
    parser.add_argument('--duration', type=int, default=3, help='seconds of wrk per cell')
    args = parser.parse_args()
    wrk_bin = rb.ensure_wrk()
    workdir = tempfile.mkdtemp(prefix='bis-alternate-bench-')
    endpoints = os.path.join(rb.REPO, 'endpoints')
    print('calibration: a fixed pure-Python loop took {:.0f} ms'.format(pb.calibration()))
    gateways = {'now': rb.Gateway(pb.CONFIG, endpoints, workdir),
                'before': pb.gateway_of(args.before, pb.CONFIG, endpoints, workdir)}
    try:
        targets = {}
        for name, gateway in gateways.items():
            (child_pid, _url), = pb.replicas(gateway, 'dummy_model_demo2')
            targets[name] = (gateway.url + '/run', gateway.proc.pid, child_pid)
        cells = {(name, c): [] for name in targets for c in CONCURRENCY}
        for r in range(args.rounds):
            for c in CONCURRENCY:
                for name in (list(targets) if r % 2 == 0 else list(reversed(list(targets)))):
                    url, gateway_pid, child_pid = targets[name]
                    before = pb.cpu_seconds([gateway_pid]), pb.cpu_seconds([child_pid])
                    out = rb.wrk(wrk_bin, url, pb.BODY, c, args.duration)
                    after = pb.cpu_seconds([gateway_pid]), pb.cpu_seconds([child_pid])
                    n = max(out['requests'], 1)
                    cells[(name, c)].append((out['rps'], out['p50_ms'], (after[0] - before[0]) / n * 1e6,
                                             (after[1] - before[1]) / n * 1e6))
        for (name, c), runs in cells.items():
            print('{:6} c={:<2} req/s {:6.0f}  p50 {:.3f} ms  CPU us/req: gateway {:.0f}, model server {:.0f}  '
                  'rounds {}'.format(name, c, statistics.median(r[0] for r in runs),
                                     statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs),
                                     statistics.median(r[3] for r in runs), [round(r[0]) for r in runs]))
        for c in CONCURRENCY:
            print('c={} now/before req/s per round: {}'.format(c, [
                round(now[0] / before[0], 2) for now, before in zip(cells[('now', c)], cells[('before', c)])]))
    finally:
        for gateway in gateways.values():
            gateway.stop()


if __name__ == '__main__':
    main()
