#!/usr/bin/env python3
"""The gateway's own routing work per request: ``Fleet.run`` over a ready two-replica fleet
whose client answers at once (no network, no child), so only picking a replica, counting it
in flight and the Deferreds around it are timed. ``--before PATH`` times another checkout's
fleet in the same run, one after the other, round by round:

    python bench/fleet_route_bench.py
    python bench/fleet_route_bench.py --before ../main --rounds 3

Each row is the best of ``--repeats`` loops of ``--calls`` calls, in microseconds per call,
after a calibration line (a fixed pure-Python loop: a slow machine, not a slow change).
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

ONE_TREE = r'''
import pathlib, sys, tempfile, time
sys.path.insert(0, TREE)
sys.path.insert(0, TREE + '/tests')
from twisted.internet import defer
from bis_twisted.gateway.config import parse_config
from bis_twisted.gateway.fleet import Fleet
from bis_twisted.gateway.supervisor import Supervisor
from bis_twisted.protocol import expected_class_name
from bis_twisted.shared.web import Answer
from fakes import ProcessReactor

folder = pathlib.Path(tempfile.mkdtemp())
(folder / 'demo.py').write_text('class {}:\n    pass\n'.format(expected_class_name('demo')))
config = parse_config({'CONFIG_ENDPOINTS': {'demo': {'REPLICAS': 2}}}, 'bench', str(folder))
reactor = ProcessReactor()


class AtOnce:
    def post_json(self, url, payload, timeout, what, **kwargs):
        return defer.succeed(Answer(200, {}))


supervisor = Supervisor(reactor=reactor)
fleet = Fleet(config, supervisor, AtOnce(), str(folder), reactor=reactor)
fleet.register_children()
supervisor.startService()
reactor.ready('demo#0', 'demo#1')
best = None
for _ in range(REPEATS):
    started = time.perf_counter()
    for _ in range(CALLS):
        d = defer.Deferred.fromCoroutine(fleet.run('demo', b'{}', 'rid', b'{}'))
        assert d.called
    took = (time.perf_counter() - started) / CALLS * 1e6
    best = took if best is None else min(best, took)
print(best)
'''


def calibration():
    started = time.perf_counter()
    sum(range(10 ** 7))
    return (time.perf_counter() - started) * 1e3


def time_tree(tree, calls, repeats):
    code = ONE_TREE.replace('TREE', repr(os.path.abspath(tree))).replace('REPEATS', str(repeats)).replace(
        'CALLS', str(calls))
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd='/')
    return float(done.stdout.strip())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--before', help='another checkout, timed beside this one')
    parser.add_argument('--calls', type=int, default=200000)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--rounds', type=int, default=2)
    args = parser.parse_args()
    trees = [('this checkout', REPO)] + ([('before', args.before)] if args.before else [])
    for n in range(args.rounds):
        print('round {}: calibration sum(range(1e7)) {:.0f} ms'.format(n + 1, calibration()))
        for label, tree in (trees if n % 2 == 0 else trees[::-1]):
            print('  {:<14} {:.2f} us per Fleet.run'.format(label, time_tree(tree, args.calls, args.repeats)))


if __name__ == '__main__':
    main()
