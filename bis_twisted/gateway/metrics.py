"""Request statistics of the gateway: Prometheus metrics for ``/metrics`` and a short
rolling history (requests/s, p99 per window) for the status page.

The hot path pays one ``observe()`` per request: a count and a latency bucket in plain
lists (``_RequestTally``, made into ``bis_requests_total`` and ``bis_request_latency_seconds``
at scrape time), and an append to the current window. Everything else (in flight, restarts,
online, memory, queue depth) is read at scrape time.
"""

import bisect
import collections
import time

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

UNKNOWN = '_unknown'  # a SIGNATURE that names no endpoint: one label, not one per typo
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CHUNKS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10000, 100000)


class RecentStats:
    """Requests/s, 4xx and 5xx answers and p50/p99 latency over the last ``keep`` windows of
    ``window`` seconds. Windows start at multiples of ``window`` on the clock, so the windows
    of several of these (one per endpoint) line up."""

    def __init__(self, clock, window=5.0, keep=120, max_samples=2000):
        self._clock = clock
        self.window = window
        self._points = collections.deque(maxlen=keep)
        self._start = None
        self._count = 0
        self._errors = 0
        self._client_errors = 0
        self._samples = []
        self._max_samples = max_samples

    def observe(self, status, seconds):
        now = self._clock.seconds()
        if self._start is None:
            self._start = now - now % self.window
        self._roll(now)
        self._count += 1
        if status >= 500:
            self._errors += 1
        elif status >= 400:
            self._client_errors += 1
        if len(self._samples) < self._max_samples:
            self._samples.append(seconds)

    def _roll(self, now):
        while now - self._start >= self.window:
            self._points.append(self._close(self._start + self.window))
            self._start += self.window
            if now - self._start >= self.window * self._points.maxlen:  # long idle: skip ahead
                self._start = now - (now - self._start) % self.window

    def _close(self, end):
        samples = sorted(self._samples)

        def quantile(q):
            value = samples[min(len(samples) - 1, int(len(samples) * q))] if samples else None
            return round(value * 1000, 2) if value is not None else None

        point = {'t': end, 'rps': self._count / self.window, 'errors': self._errors,
                 'client_errors': self._client_errors, 'p50_ms': quantile(0.5), 'p99_ms': quantile(0.99)}
        self._count, self._errors, self._client_errors, self._samples = 0, 0, 0, []
        return point

    def points(self):
        if self._start is not None:
            self._roll(self._clock.seconds())
        return list(self._points)


class GatewayMetrics:
    """The gateway's Prometheus registry (its own, so several gateways in one process in
    tests do not collide)."""

    def __init__(self, fleet, supervisor, clock, scaling=None, stalls=None):
        self.fleet = fleet
        self._clock = clock
        self.scaling = scaling if scaling is not None else {}  # (endpoint, 'up' | 'down') -> decisions
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # the gateway's own CPU, memory, fds
        self._tally = _RequestTally()
        self.registry.register(self._tally)
        self._first_chunk = Histogram('bis_stream_first_chunk_seconds',
                                      'Streaming answers: time from the request to the first chunk sent, by endpoint',
                                      ['endpoint'], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._chunks = Histogram('bis_stream_chunks', 'Streaming answers: chunks sent per answer, by endpoint',
                                 ['endpoint'], buckets=CHUNKS_BUCKETS, registry=self.registry)
        self._by_key = Counter('bis_api_key_requests', 'Requests to /run by API key name (never the key) and '
                               'HTTP status; "unknown" for a missing or unknown key', ['key', 'code'],
                               registry=self.registry)
        self.recent = RecentStats(clock)
        # per endpoint, for the status page's charts (an unknown SIGNATURE counts in `recent` only)
        self.recent_by_endpoint = {name: RecentStats(clock) for name in fleet.servers}
        self.health = {}  # server name -> its last /health answers (queue depth, busy), set at scrape
        self.registry.register(_FleetCollector(self, supervisor))
        if stalls is not None:
            self.registry.register(_StallCollector(stalls))

    def observe_key(self, key_name, status):
        self._by_key.labels(key_name, str(status)).inc()

    def observe(self, endpoint, status, seconds, protocol='run'):
        endpoint = endpoint if endpoint in self.fleet.servers else UNKNOWN
        self._tally.observe(endpoint, status, protocol, seconds)
        self.recent.observe(status, seconds)
        by_endpoint = self.recent_by_endpoint.get(endpoint)
        if by_endpoint is None and endpoint != UNKNOWN:  # added by a config reload
            by_endpoint = self.recent_by_endpoint[endpoint] = RecentStats(self._clock)
        if by_endpoint is not None:
            by_endpoint.observe(status, seconds)

    def observe_stream(self, endpoint, first_chunk_seconds, chunks):
        """A streaming answer ended: ``first_chunk_seconds`` is None when no chunk went out."""
        endpoint = endpoint if endpoint in self.fleet.servers else UNKNOWN
        if first_chunk_seconds is not None:
            self._first_chunk.labels(endpoint).observe(first_chunk_seconds)
        self._chunks.labels(endpoint).observe(chunks)

    def stats(self):
        """What ``/stats`` answers: the gateway's windows and each endpoint's."""
        return {'WINDOW_SECONDS': self.recent.window, 'POINTS': self.recent.points(),
                'ENDPOINTS': {name: recent.points() for name, recent in self.recent_by_endpoint.items()}}

    def render(self):
        """The text exposition (blocking: reads /proc; call it off the reactor thread)."""
        return generate_latest(self.registry)


class _RequestTally:
    """``bis_requests_total`` (by endpoint, code, protocol) and ``bis_request_latency_seconds``
    (by endpoint, protocol; ``LATENCY_BUCKETS``), as prometheus_client's Counter and Histogram
    expose them (``_created`` included), counted in plain lists on the reactor thread:
    prometheus_client takes a lock for each of the three values a request moves. ``collect``
    runs in a thread at scrape time; it reads copies, each made in one step under the GIL."""

    _REQUESTS_HELP = ('Inference requests answered, by endpoint, HTTP status and protocol ("run": /run, '
                      '"v2": the Open Inference Protocol\'s infer)')
    _LATENCY_HELP = 'Time to answer an inference request, by endpoint and protocol'

    def __init__(self):
        self._counts = {}  # (endpoint, status, protocol) -> [count, created]
        self._latency = {}  # (endpoint, protocol) -> [[count per bucket, +Inf last], sum, created]

    def observe(self, endpoint, status, protocol, seconds):
        counted = self._counts.get((endpoint, status, protocol))
        if counted is None:
            counted = self._counts[(endpoint, status, protocol)] = [0, time.time()]
        counted[0] += 1
        timed = self._latency.get((endpoint, protocol))
        if timed is None:
            timed = self._latency[(endpoint, protocol)] = [[0] * (len(LATENCY_BUCKETS) + 1), 0.0, time.time()]
        timed[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bound >= seconds: le
        timed[1] += seconds

    def collect(self):
        requests = CounterMetricFamily('bis_requests', self._REQUESTS_HELP, labels=['endpoint', 'code', 'protocol'])
        for (endpoint, status, protocol), (count, created) in sorted(dict(self._counts).items()):
            requests.add_metric([endpoint, str(status), protocol], count, created=created)
        yield requests
        latency = HistogramMetricFamily('bis_request_latency_seconds', self._LATENCY_HELP,
                                        labels=['endpoint', 'protocol'])
        for (endpoint, protocol), (counts, total, created) in sorted(dict(self._latency).items()):
            counts, cumulative, buckets = list(counts), 0, []
            for bound, count in zip(LATENCY_BUCKETS + (float('inf'),), counts):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([endpoint, protocol], buckets, total)
            latency.samples.append(Sample('bis_request_latency_seconds_created',
                                          {'endpoint': endpoint, 'protocol': protocol}, created, None, None))
        yield latency


class _FleetCollector:
    """What is read at scrape time: per endpoint in flight, online, restarts, memory, queue."""

    def __init__(self, metrics, supervisor):
        self._metrics = metrics
        self._supervisor = supervisor

    def collect(self):
        fleet = self._metrics.fleet
        in_flight = GaugeMetricFamily('bis_requests_in_flight', 'Requests sent to an endpoint and not answered yet',
                                      labels=['endpoint'])
        online = GaugeMetricFamily('bis_server_online', 'Replicas of an endpoint answering /health', labels=['endpoint'])
        restarts = CounterMetricFamily('bis_server_restarts', 'Restarts of an endpoint\'s processes', labels=['endpoint'])
        memory = GaugeMetricFamily('bis_server_memory_bytes', 'Resident memory of an endpoint\'s processes',
                                   labels=['endpoint'])
        queued = GaugeMetricFamily('bis_server_queue_depth', 'Requests waiting for a worker', labels=['endpoint'])
        busy = GaugeMetricFamily('bis_server_busy_workers', 'Workers running a request', labels=['endpoint'])
        batches = HistogramMetricFamily('bis_batch_size', 'Requests per _predict call (MAX_BATCH_SIZE), by endpoint',
                                        labels=['endpoint'])
        for name, server in fleet.servers.items():
            answers = self._metrics.health.get(name, [])
            in_flight.add_metric([name], sum(t.in_flight for t in server.targets))
            online.add_metric([name], sum(1 for a in answers if a is not None))
            queued.add_metric([name], sum(a.get('QUEUED', 0) for a in answers if a))
            busy.add_metric([name], sum(a.get('BUSY', 0) for a in answers if a))
            batch_counts = collections.Counter()
            for answer in answers:
                for size, count in ((answer or {}).get('BATCHES') or {}).items():
                    batch_counts[int(size)] += count
            if batch_counts:
                batches.add_metric([name], *_histogram(batch_counts, BATCH_SIZE_BUCKETS))
            states = [self._supervisor.status(t.child_name) for t in server.targets if t.child_name is not None]
            restarts.add_metric([name], sum(state.restarts for state in states))
            memory.add_metric([name], sum(_rss(state.pid) for state in states))
        scaling = CounterMetricFamily('bis_autoscale_decisions', 'Replicas added (up) or removed (down) by the '
                                      'autoscaler, by endpoint', labels=['endpoint', 'direction'])
        replicas = GaugeMetricFamily('bis_server_replicas', 'Replicas in the rotation of an endpoint (the '
                                     'autoscaler\'s target count)', labels=['endpoint'])
        for (name, direction), count in sorted(self._metrics.scaling.items()):
            scaling.add_metric([name, direction], count)
        for name, server in fleet.servers.items():
            replicas.add_metric([name], sum(1 for t in server.targets if t.active))
        return [in_flight, online, restarts, memory, queued, busy, batches, scaling, replicas]


class _StallCollector:
    """The gateway's own reactor lag and garbage-collector pauses (``shared.stalls``)."""

    def __init__(self, stalls):
        self._stalls = stalls

    def collect(self):
        lag = HistogramMetricFamily('bis_reactor_lag_seconds', 'How late the gateway\'s reactor ran a timer due '
                                    'every {:g} s: what held it up'.format(self._stalls.interval))
        lag.add_metric([], *_spread_buckets(self._stalls.lag))
        lag_max = GaugeMetricFamily('bis_reactor_lag_max_seconds', 'The largest reactor lag since start')
        lag_max.add_metric([], self._stalls.lag.largest)
        pauses = HistogramMetricFamily('bis_gc_pause_seconds', 'Garbage collections of the gateway, by generation',
                                       labels=['generation'])
        pause_max = GaugeMetricFamily('bis_gc_pause_max_seconds', 'The longest collection since start, by generation',
                                      labels=['generation'])
        for generation, spread in sorted(self._stalls.gc_pauses.items()):
            pauses.add_metric([str(generation)], *_spread_buckets(spread))
            pause_max.add_metric([str(generation)], spread.largest)
        return [lag, lag_max, pauses, pause_max]


def _spread_buckets(spread):
    buckets = [(str(bound), count) for bound, count in zip(spread.bounds, spread.counts)]
    buckets.append(('+Inf', spread.count))
    return buckets, spread.total


def _histogram(counts, bounds):
    """``(buckets, sum)`` for HistogramMetricFamily from ``{value: how many times}``: the
    children report exact batch sizes since they started, the buckets are cumulative."""
    buckets = [(str(bound), sum(n for value, n in counts.items() if value <= bound)) for bound in bounds]
    buckets.append(('+Inf', sum(counts.values())))
    return buckets, sum(value * n for value, n in counts.items())


def _rss(pid):
    if not pid:
        return 0
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0
