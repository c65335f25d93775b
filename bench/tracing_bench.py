#!/usr/bin/env python3
"""What the tracing hooks cost a request, tracing off (the default) and on, in one run:

    python bench/tracing_bench.py              # 200000 rounds off, 20000 on

Measured on the shared 2-core machine while others ran their tests (busy; ratios from one
run, repeated): the hooks off cost ~0.7 us per /run in both processes together (692 and
742 ns over a harness of 1.0-1.7 us; an empty call 62-68 ns), against 20-29 us for the dummy
worker's own execute alone; on, the SDK's seven spans cost 0.27-0.36 ms per /run.

Each round makes the hook calls one plain ``/run`` makes in the two processes (gateway:
``start_run``, ``hop_span``, ``with_context``, ``end_run``; model server: ``start_request``,
three ``hook_span``), on stand-in request objects, no network. Beside them, for scale: an
empty loop (the calibration line) and ``execute`` of the dummy_model_demo2 worker, the
model server's own work for one request without HTTP. "On" records into the SDK's in-memory
exporter (no export cost), so it is the SDK's price of the spans themselves.
"""

import argparse
import contextlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import defer  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402

from bis_twisted.shared import tracing  # noqa: E402


class FakeRequest:
    method = b'POST'
    path = b'/run'
    code = 200

    def getHeader(self, name):  # noqa: N802 - twisted's name
        return None

    def setHeader(self, name, value):  # noqa: N802
        pass

    def notifyFinish(self):  # noqa: N802
        return self.finished


class FakeTarget:
    base_url = 'http://127.0.0.1:5003'


def one_request(request, target, headers):
    run = tracing.start_run(request)
    with tracing.hop_span('demo', target):
        tracing.with_context(headers)
        on = tracing.enabled()
        if on:
            request.finished = defer.Deferred()
        tracing.start_request(request, 'rid-1', 'demo')
        for stage in STAGES:
            with tracing.hook_span(stage, 'rid-1'):
                pass
        if on:
            request.finished.callback(None)
    tracing.end_run(run, 200, 'demo', None)


def bare_request(request, target, headers):
    """The same shape without the hooks: what the harness costs by itself."""
    with NULL:
        tracing.enabled()
        for _stage in STAGES:
            with NULL:
                pass


STAGES = ('_pre_process', '_predict', '_post_process')
NULL = contextlib.nullcontext()


def per_call_ns(fn, rounds):
    started = time.perf_counter_ns()
    for _ in range(rounds):
        fn()
    return (time.perf_counter_ns() - started) / rounds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=200000)
    parser.add_argument('--rounds-on', type=int, default=20000)
    args = parser.parse_args()
    request, target, headers = FakeRequest(), FakeTarget(), Headers({b'Content-Type': [b'application/json']})

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'endpoints'))
    from dummy_model_demo2 import DummyModelDemo2Worker
    worker = DummyModelDemo2Worker(upstream_config={'WEIGHT': 2, 'BIAS': 1})
    worker.startup()
    calls = iter(range(10 ** 9))

    bare = per_call_ns(lambda: bare_request(request, target, headers), args.rounds)
    off = per_call_ns(lambda: one_request(request, target, headers), args.rounds)
    rows = [('calibration: empty call', per_call_ns(lambda: None, args.rounds)),
            ('harness alone (same loops, no hooks)', bare),
            ('hooks of one /run, tracing off', off),
            ('  of which the hooks (off minus harness)', off - bare),
            ('worker.execute of dummy_model_demo2 (scale)',
             per_call_ns(lambda: worker.execute({'INPUT_VALUE': 3}, next(calls), 'rid-1'), args.rounds // 10))]

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing._provider, tracing._tracer = provider, provider.get_tracer('bench')

    def on():
        one_request(request, target, headers)
        exporter.clear()
    rows.append(('hooks of one /run, tracing on (7 spans, in-memory export)', per_call_ns(on, args.rounds_on)))
    tracing.shutdown()

    width = max(len(name) for name, _ in rows)
    for name, ns in rows:
        print('{:<{}}  {:>10.0f} ns'.format(name, width, ns))


if __name__ == '__main__':
    main()
