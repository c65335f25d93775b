#!/usr/bin/env python3
"""The gateway's own work per ``/run``, in memory: the real site (``GuardedSite`` with the
access log on), the real routes, a fleet whose child answers at once with a complete answer
(the bytes a model server writes), over a ``StringTransport``: no sockets, no child, so only
the HTTP front, the route and the answer's write are timed, on each front, beside
twisted.web's own floor (``floor_twisted.py``'s constant ``Resource`` on a plain ``Site``, the
same request):

    python bench/front_path_bench.py                 # both fronts, microseconds per request
    python bench/front_path_bench.py --profile httptools   # cProfile of one front, top 30

Each row is the best of ``--repeats`` loops of ``--calls`` requests, after a calibration
line (a fixed pure-Python loop: a slow machine, not a slow change).
"""

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from twisted.internet import task  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.logger import globalLogBeginner  # noqa: E402
from twisted.web.server import Site  # noqa: E402

from bis_twisted.gateway.accesslog import AccessLog, Stamped  # noqa: E402
from bis_twisted.gateway.routes import Gateway  # noqa: E402
from bis_twisted.shared.front import FRONTS  # noqa: E402
from bis_twisted.shared.web import Answer, make_site  # noqa: E402
from peer_bench import calibration  # noqa: E402  (the one calibration loop of the bench scripts)

BODY = b'{"SIGNATURE": "dummy_model_demo2", "INPUT_VALUE": 3}'
REQUEST = (b'POST /run HTTP/1.1\r\nHost: 127.0.0.1:5000\r\nContent-Type: application/json\r\n'
           b'Content-Length: %d\r\n\r\n%s' % (len(BODY), BODY))
ANSWER = (b'{"predict_result":7,"worker_id":"dummy_model_demo2:1","time":"2026-12-07 08:00:00.000",'
          b'"request_id":"%s","ver-app":"0.3","ver-lib":"0.3","hostname":"h","gw-uptime":"0:00:01"}')


class InstantFleet:
    """A ready fleet whose one server answers every request at once, complete."""

    servers = {}

    async def run(self, name, payload, request_id=None, answer_fields=None):
        return Answer(200, {}, raw=ANSWER % request_id.encode('ascii'))

    def shown_servers(self):
        return {}




def floor_connection():
    """twisted.web alone: bench/floor_twisted.py's constant ``Resource`` on a plain ``Site``."""
    from floor_twisted import Constant
    clock = task.Clock()
    site = Site(Constant())
    site.log = lambda request: None
    site.reactor = clock
    channel = site.buildProtocol(IPv4Address('TCP', '127.0.0.1', 40000))
    channel.callLater = clock.callLater
    transport = StringTransport(peerAddress=IPv4Address('TCP', '127.0.0.1', 40000))
    channel.makeConnection(transport)
    return channel, transport


def connection(front, lean=True):
    if front == 'floor':
        return floor_connection()
    clock = task.Clock()
    gateway = Gateway(InstantFleet(), reactor=clock, app_version='bench')
    site = make_site(Stamped(gateway.resource(), clock), gateway_fields=gateway.gateway_fields,
                     channel=FRONTS[front])
    site.log = AccessLog(clock)
    site.lean_paths = frozenset({b'/run'}) if lean else frozenset()
    site.callLater = clock.callLater
    channel = site.buildProtocol(IPv4Address('TCP', '127.0.0.1', 40000))
    channel.callLater = clock.callLater
    transport = StringTransport(peerAddress=IPv4Address('TCP', '127.0.0.1', 40000))
    channel.makeConnection(transport)
    return channel, transport


def loop(front, calls, lean=True):
    channel, transport = connection(front, lean)
    answered = 0
    started = time.perf_counter()
    for _ in range(calls):
        channel.dataReceived(REQUEST)
        if len(transport.io.getvalue()) > 1 << 20:
            answered += _answers(transport)
    elapsed = time.perf_counter() - started
    answered += _answers(transport)
    assert answered == calls, (answered, calls)
    return elapsed / calls * 1e6


def _answers(transport):
    written = transport.value()
    transport.clear()
    count = written.count(b'HTTP/1.1 ')
    assert written.count(b'HTTP/1.1 200 ') == count, written[:600]
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--calls', type=int, default=5000)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--profile', choices=sorted(FRONTS))
    parser.add_argument('--sort', default='tottime', help='the profile sorted by (pstats keys, comma-separated)')
    parser.add_argument('--top', type=int, default=30)
    args = parser.parse_args()
    # the access log's events made and published, but written nowhere
    globalLogBeginner.beginLoggingTo([lambda event: None], discardBuffer=True, redirectStandardIO=False)
    print('calibration: a fixed pure-Python loop took {:.0f} ms'.format(calibration()))
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(loop, args.profile, args.calls)
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(*args.sort.split(',')).print_stats(args.top)
        print(out.getvalue())
        return
    for front, lean, name in (('httptools', True, 'httptools'), ('httptools', False, 'httptools, twisted.web Request'),
                              ('twisted', False, 'twisted'), ('floor', False, 'twisted.web floor (a constant)')):
        best = min(loop(front, args.calls, lean) for _ in range(args.repeats))
        print('{:32} {:6.1f} us per /run (best of {} x {})'.format(name, best, args.repeats, args.calls))


if __name__ == '__main__':
    main()
